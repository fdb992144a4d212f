"""Small Lightning callbacks: model-dir snapshots at fixed steps and training throughput."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytorch_lightning as pl


class Snapshots(pl.Callback):
    """Call ``write(step)`` (rank 0) once the weights of each listed step exist, EMA included: at the start of
    the next batch (the module updates its EMA after the callbacks' batch-end hooks) or at the end of training."""

    def __init__(self, steps: list[int], write: Callable[[int], None]) -> None:
        self.pending = sorted({int(s) for s in steps})
        self.write = write

    def _flush(self, trainer: pl.Trainer) -> None:
        """Write every pending snapshot whose step has been reached."""
        while self.pending and self.pending[0] <= trainer.global_step:
            step = self.pending.pop(0)
            if trainer.is_global_zero and step == trainer.global_step:
                self.write(step)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        """Snapshot the steps completed by the previous batch."""
        self._flush(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Snapshot the last step if it is listed."""
        self._flush(trainer)


class Throughput(pl.Callback):
    """Training samples per second (all ranks) after ``warmup`` steps, measured between batch starts and the end."""

    def __init__(self, batch_size: int, warmup: int = 5) -> None:
        self.batch_size, self.warmup = batch_size, warmup
        self.start: tuple[float, int] | None = None
        self.samples_per_s: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        """Start the clock once warm-up steps are done (or at the first step of a short run)."""
        warm = min(self.warmup, max(0, (trainer.max_steps or 0) // 5))
        if self.start is None and trainer.global_step >= warm:
            self.start = (time.perf_counter(), trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """samples/s = timed steps × batch × world size / elapsed."""
        if self.start is None or trainer.global_step <= self.start[1]:
            return
        elapsed = time.perf_counter() - self.start[0]
        steps = trainer.global_step - self.start[1]
        self.samples_per_s = steps * self.batch_size * trainer.world_size / elapsed
