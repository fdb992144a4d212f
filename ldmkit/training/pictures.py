"""Pictures of a training run: reconstruction grids (autoencoder) or EMA sample grids (LDM) every N training steps
into ``<run>/images/``, and the loss curves (from the CSV log) as ``<run>/loss.png`` when training ends.

The grids run on rank 0 only, without gradients, in eval mode, and leave the global RNGs and the modules' state
as they found them: a run with pictures trains exactly like one without (and resumes bit-exactly)."""

from __future__ import annotations

import csv
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, IterableDataset

from ldmkit.errors import UserError, check_whole
from ldmkit.training.callbacks import training_step_of
from ldmkit.training.resume import rng_states, set_rng_states

PANEL_COLUMNS = 3  # loss.png: panels per row
SMOOTH_ABOVE = 50  # loss.png: series with more points get a moving average over len / SMOOTH_ABOVE points
GRID_COLUMNS = 8  # sample grids: images per row


@contextmanager
def quiet_eval(*modules: nn.Module) -> Iterator[None]:
    """No gradients, eval mode inside; afterwards every train flag and the global RNGs are as before."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    states = rng_states()
    try:
        for module in modules:
            module.eval()
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training
        set_rng_states(states)


def check_options(every_n_steps: int, count: int) -> None:
    """``images.every_n_steps`` must be >= 0 and ``images.count`` >= 1 (else one line)."""
    check_whole(every_n_steps, "images.every_n_steps", 0, hint=" (0 = only at the end)")
    check_whole(count, "images.count", 1)


class _Grids(pl.Callback, ABC):
    """Every ``every_n_steps`` training steps and at the end of training, rank 0 writes
    ``<run>/images/<prefix>_step_<N>.png`` from a fixed set of validation items (read once at train start)."""

    prefix = "grid"

    def __init__(self, run_dir: Path, val: Dataset | IterableDataset | None, every_n_steps: int, count: int) -> None:
        check_options(every_n_steps, count)
        self.folder = Path(run_dir) / "images"
        self.val, self.every, self.count = val, every_n_steps, count
        self.items: list[dict] | None = None
        self.written: int | None = None

    @abstractmethod
    def draw(self, pl_module: pl.LightningModule, items: list[dict]) -> tuple[Tensor, int] | None:
        """The grid's images in [-1, 1] and its images per row (None: nothing to draw)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Rank 0 reads the fixed validation items (the global RNGs untouched)."""
        if not trainer.is_global_zero or self.val is None:
            return
        from ldmkit.data.access import first_items

        states = rng_states()
        try:
            self.items = first_items(self.val, self.count)
        finally:
            set_rng_states(states)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        """A grid every ``every_n_steps`` training steps (once per step under gradient accumulation)."""
        step = training_step_of(trainer, pl_module)
        if self.every and step > 0 and step % self.every == 0:
            self.write(trainer, pl_module, step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The final step's grid (unless the periodic one has it)."""
        self.write(trainer, pl_module, training_step_of(trainer, pl_module))

    def write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        """Draw and save the grid of ``step`` on rank 0 (once per step)."""
        if not trainer.is_global_zero or self.written == step:
            return
        self.written = step
        drawn = self.draw(pl_module, self.items or [])
        if drawn is not None:
            from ldmkit.images import save_grid

            images, nrow = drawn
            save_grid(images, self.folder / f"{self.prefix}_step_{step}.png", nrow=nrow)


class ReconstructionGrids(_Grids):
    """Autoencoder: ``recon_step_<N>.png``, validation images (top row) over their reconstructions (bottom)."""

    prefix = "recon"

    def draw(self, pl_module: pl.LightningModule, items: list[dict]) -> tuple[Tensor, int] | None:
        """Originals and reconstructions (posterior mode) of the fixed validation images."""
        if not items:
            return None
        ae = pl_module.ae
        images = torch.stack([item["image"] for item in items]).to(pl_module.device)
        with quiet_eval(ae):
            rec, _ = ae(images, sample_posterior=False)
        return torch.cat([images, rec.clamp(-1, 1)]).cpu(), len(items)


class SampleGrids(_Grids):
    """LDM: ``samples_step_<N>.png``, DDIM samples of the EMA weights for the fixed validation conditions, each
    from a fixed seed (seed + i for sample i), so the grids of a run are comparable step to step."""

    prefix = "samples"

    def __init__(self, run_dir: Path, val: Dataset | IterableDataset | None, every_n_steps: int, count: int,
                 steps: int = 20, seed: int = 0) -> None:
        super().__init__(run_dir, val, every_n_steps, count)
        self.steps, self.seed = steps, seed
        self.ema_ldm: nn.Module | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check ``images.steps`` against the noise schedule before training starts."""
        from ldmkit.diffusion.samplers import ddim_timesteps

        num = pl_module.ldm.schedule.num_timesteps
        check_whole(self.steps, "images.steps", what=" of DDIM steps")
        try:
            ddim_timesteps(num, self.steps)
        except UserError as exc:
            raise UserError(f"images.{str(exc).removeprefix('sampler.')}") from None

    def sampler(self, pl_module: pl.LightningModule) -> nn.Module:
        """The EMA weights as a ``LatentDiffusion`` (shares the module's schedule and frozen first stage)."""
        if self.ema_ldm is None:
            from ldmkit.models.ldm import LatentDiffusion

            ldm, ema = pl_module.ldm, pl_module.ema.module
            self.ema_ldm = LatentDiffusion(ema["unet"], ema["cond"], ldm.schedule, ldm.first_stage, ldm.latent_shape,
                                           ldm.prediction)
        return self.ema_ldm

    def conditions(self, pl_module: pl.LightningModule, items: list[dict]) -> tuple[Any, int]:
        """The conditioner's values for the fixed items on the module's device (None: the null condition)."""
        from pytorch_lightning.utilities import move_data_to_device
        from torch.utils.data import default_collate

        from ldmkit.models.conditioners import NoConditioner

        if isinstance(pl_module.ldm.cond, NoConditioner) or not items:
            return None, self.count
        values = pl_module.ldm.cond.values(default_collate(items))
        return move_data_to_device(values, pl_module.device), len(items)

    def draw(self, pl_module: pl.LightningModule, items: list[dict]) -> tuple[Tensor, int]:
        """``count`` DDIM samples (``steps`` steps, no guidance) of the EMA weights."""
        from ldmkit.diffusion.samplers import sample_ddim

        ldm = self.sampler(pl_module)
        values, n = self.conditions(pl_module, items)
        generators = [torch.Generator().manual_seed(self.seed + i) for i in range(n)]
        with quiet_eval(ldm):
            x = ldm.sample(values, n=n, sampler=partial(sample_ddim, steps=self.steps), generator=generators)
        return x.cpu(), min(n, GRID_COLUMNS)


def read_losses(path: Path) -> dict[str, tuple[list[float], list[float]]]:
    """``train/*`` series of a Lightning ``metrics.csv`` as name -> (steps, values) (the step counter left out)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    if not path.is_file():
        return series
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("step"):
                continue
            for key, value in row.items():
                if key and key.startswith("train/") and key != "train/step" and value not in (None, ""):
                    steps, values = series.setdefault(key.removeprefix("train/"), ([], []))
                    steps.append(float(row["step"]))
                    values.append(float(value))
    return series


def moving_average(steps: list[float], values: list[float], window: int) -> tuple[list[float], list[float]]:
    """Means of ``window`` consecutive values, at the steps of the windows' ends."""
    import numpy as np

    means = np.convolve(np.asarray(values, dtype=float), np.ones(window) / window, mode="valid")
    return steps[window - 1:], means.tolist()


def plot_losses(series: dict[str, tuple[list[float], list[float]]], out: Path) -> None:
    """One panel per series (value vs step), saved as a PNG atomically."""
    from matplotlib.figure import Figure

    from ldmkit.atomic import atomic_path

    cols = min(PANEL_COLUMNS, len(series))
    rows = math.ceil(len(series) / cols)
    fig = Figure(figsize=(4 * cols, 3 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax, (name, (steps, values)) in zip(axes, sorted(series.items()), strict=False):
        if len(values) > SMOOTH_ABOVE:  # noisy per-step values: faint, with a moving average on top
            ax.plot(steps, values, lw=0.8, alpha=0.35)
            ax.plot(*moving_average(steps, values, len(values) // SMOOTH_ABOVE), lw=1.5, color="C0")
        else:
            ax.plot(steps, values, lw=1, marker=".")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(series):]:
        ax.set_visible(False)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


class LossPlot(pl.Callback):
    """When training ends, rank 0 flushes the loggers and plots ``<run>/logs/metrics.csv`` to ``<run>/loss.png``."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Plot every logged ``train/*`` series, or say why there is no plot."""
        if not trainer.is_global_zero:
            return
        from ldmkit.console import console

        for logger in trainer.loggers:
            logger.save()
        series = read_losses(self.run_dir / "logs" / "metrics.csv")
        if not series:
            console.print(f"no loss plot: no training losses logged yet (one row every "
                          f"trainer.log_every_n_steps={trainer.log_every_n_steps} steps)")
            return
        plot_losses(series, self.run_dir / "loss.png")
