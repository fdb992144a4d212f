"""Hydra configs shipped with ldmkit (the repo-level conf/ folder)."""
