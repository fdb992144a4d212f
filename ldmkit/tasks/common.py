"""What every task shares that belongs to a Hydra run: its output dir."""

from __future__ import annotations

from pathlib import Path


def run_dir() -> Path:
    """This job's output dir: ``out=`` (or its per-job sub-dir in a multirun)."""
    from hydra.core.hydra_config import HydraConfig

    path = Path(HydraConfig.get().runtime.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path
