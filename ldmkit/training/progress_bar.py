"""Training progress: Lightning's rich bar on a terminal, plain log lines off one (no TQDM ``\\r`` updates in CI)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO, Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar, RichProgressBar

from ldmkit.progress import Tracker, default_console, progress_mode
from ldmkit.training.callbacks import training_step_of


def metrics_text(metrics: dict[str, Any]) -> str:
    """``loss 0.0412, kl 11.3``: the progress-bar metrics without their ``train/`` prefix and step counters."""
    parts = []
    for key, value in metrics.items():
        name = key.removeprefix("train/")
        if name in ("step", "v_num"):
            continue
        try:
            parts.append(f"{name} {float(value):.4g}")
        except (TypeError, ValueError):
            parts.append(f"{name} {value}")
    return ", ".join(parts)


class PlainProgressBar(ProgressBar):
    """Off a terminal: every ``LDMKIT_PROGRESS_INTERVAL`` seconds (and at the end) one line from rank 0 like
    ``train-ldm: 120/1000 (12%) 3.2 steps/s, loss 0.0412, elapsed 0:00:37, ETA 0:04:35`` (training steps, as
    ``trainer.max_steps`` counts them)."""

    def __init__(self, name: str = "train", interval: float | None = None, stream: IO[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.name, self.interval, self.stream, self.clock = name, interval, stream, clock
        self.enabled = True
        self.tracker: Tracker | None = None
        self.task = 0

    def disable(self) -> None:
        """Lightning turns the bar off (e.g. on other ranks)."""
        self.enabled = False

    def enable(self) -> None:
        """Lightning turns the bar back on."""
        self.enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the line's clock at the first step of this run (a resumed run's earlier steps leave the rate)."""
        if not (self.enabled and trainer.is_global_zero):
            return
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.tracker = Tracker(mode="plain", interval=self.interval, stream=self.stream, clock=self.clock)
        self.tracker.__enter__()
        self.task = self.tracker.add(self.name, total, unit="step", completed=training_step_of(trainer, pl_module))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """A line when the interval has passed since the last one."""
        if self.tracker is not None:
            self.tracker.update(self.task, completed=training_step_of(trainer, pl_module),
                                info=metrics_text(trainer.progress_bar_metrics))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The final line."""
        if self.tracker is not None:
            self.tracker.__exit__(None, None, None)
            self.tracker = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """No final line after an error: the error is the last word."""
        self.tracker = None


def progress_bar(trainer_cfg: dict[str, Any], name: str) -> ProgressBar | None:
    """The bar for this run: rich on a terminal, plain lines off one, none when off or ``enable_progress_bar=false``."""
    mode = progress_mode(default_console())
    if mode == "off" or trainer_cfg.get("enable_progress_bar", True) is False:
        return None
    return RichProgressBar() if mode == "rich" else PlainProgressBar(name)
