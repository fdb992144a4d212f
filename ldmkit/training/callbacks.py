"""Small Lightning callbacks: model-dir snapshots at fixed steps, training throughput, the non-finite guard."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch

from ldmkit.errors import UserError


class Snapshots(pl.Callback):
    """Call ``write(step)`` (rank 0) once the weights of each listed step exist, EMA included (the module updates
    its EMA inside the optimiser step, before any batch-end hook)."""

    def __init__(self, steps: list[int], write: Callable[[int], None]) -> None:
        self.pending = sorted({int(s) for s in steps})
        self.write = write

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        """Write every pending snapshot whose step has been reached (steps already passed on resume are dropped)."""
        while self.pending and self.pending[0] <= trainer.global_step:
            step = self.pending.pop(0)
            if trainer.is_global_zero and step == trainer.global_step:
                self.write(step)


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


def training_step_of(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
    """Training steps done: Lightning's ``global_step`` (the autoencoder module counts its generator updates only)."""
    return int(trainer.global_step)


class FiniteGuard(pl.Callback):
    """Stop at a non-finite loss before its backward pass (no update uses it), and never write a checkpoint of
    non-finite weights: the last checkpoint stays good. One line names the step and the checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.saved_step: int | None = None

    def _stop(self, what: str, step: int, trainer: pl.Trainer) -> None:
        """Raise the one-line error about training step ``step``."""
        at = f" (step {self.saved_step})" if self.saved_step is not None else ""
        last = (f"the last checkpoint {self.path}{at} is intact and resume=true continues from it"
                if self.path.is_file() else "no checkpoint was written yet")
        clip = (" or a lower trainer.gradient_clip_val" if trainer.gradient_clip_val
                else " or trainer.gradient_clip_val=1.0" if trainer.lightning_module.automatic_optimization else "")
        raise UserError(f"{what} at training step {step}: training stopped; {last} (try a lower optim.lr{clip})")

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        """Check the loss on every rank; all ranks stop together."""
        finite = bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(finite, all=True):
            value = loss.item() if not finite else "non-finite on another rank"
            self._stop(f"the loss is {value}", training_step_of(trainer, pl_module) + 1, trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """Refuse to write non-finite weights (raised before the file is touched)."""
        bad = [k for k, v in checkpoint["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            self._stop(f"the weights became non-finite ({bad[0]})", training_step_of(trainer, pl_module), trainer)
        self.saved_step = training_step_of(trainer, pl_module)
