"""Readers for checkpoints of other latent-diffusion code bases (CompVis latent-diffusion)."""
