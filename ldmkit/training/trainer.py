"""The Lightning Trainer every training task uses: run-dir logging, checkpoints for resuming, progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger


def make_trainer(trainer_cfg: dict[str, Any], run_dir: Path, callbacks: list | None = None) -> pl.Trainer:
    """A Trainer from ``trainer.*`` keys writing logs to ``run_dir/logs`` and ``run_dir/checkpoints/last.ckpt``."""
    import sys

    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from ldmkit.errors import UserError

    bar = RichProgressBar() if sys.stderr.isatty() else TQDMProgressBar(refresh_rate=50)
    try:
        return pl.Trainer(
            **trainer_cfg,
            default_root_dir=str(run_dir),
            logger=CSVLogger(str(run_dir), name="logs", version=""),
            callbacks=[ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), save_last=True, save_top_k=0), bar,
                       *(callbacks or [])],
            enable_model_summary=False,
        )
    except (ValueError, TypeError, MisconfigurationException) as exc:  # a bad trainer.* option
        raise UserError(f"trainer: {str(exc).splitlines()[0]}") from None
