"""The Lightning Trainer every training task uses: run-dir logging, atomic checkpoints, resuming, pre-emption."""

from __future__ import annotations

import csv
import signal
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from torch.utils.data import DataLoader

from ldmkit import atomic
from ldmkit.atomic import leftovers
from ldmkit.errors import UserError
from ldmkit.training.callbacks import FiniteGuard
from ldmkit.training.progress_bar import progress_bar
from ldmkit.training.resume import LAST, Resumable, check_checkpoint, find_checkpoint, logged_steps


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file in the checkpoint's folder, fsync, rename: a crash mid-write keeps the
    previous checkpoint (Lightning's own save goes through a temp file in /tmp and a copy when /tmp is another
    filesystem)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically."""
        with atomic.atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    """Replace the CSV file ``path`` atomically with a header and ``rows``."""
    with atomic.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer, but a resumed run keeps the rows logged before its checkpoint plus the
    checkpoint step's own row (Lightning's deletes ``metrics.csv``), then appends."""

    def __init__(self, log_dir: str, resumed: tuple[int, dict | None] | None) -> None:
        self.resumed = resumed
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        """Trim ``metrics.csv`` to the rows before the resumed step, add that step's row, keep the columns."""
        path = Path(self.metrics_file_path)
        if self.resumed is None or not path.is_file():
            return super()._check_log_dir_exists()
        step, row = self.resumed
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("step", "") == "" or int(float(r["step"])) < step]
        if row and int(row["step"]) >= step:  # written in the batch-end hook, before Lightning logged it
            rows.append(row)
            fields += sorted(set(row) - set(fields))
        _write_csv(path, fields, rows)
        self.metrics_keys = fields

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        """Lightning's rewrite (new columns), but atomic."""
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        _write_csv(Path(self.metrics_file_path), fieldnames, rows)


class RunCSVLogger(CSVLogger):
    """CSV logs in ``<run>/logs/metrics.csv``; on resume the earlier rows stay."""

    def __init__(self, run_dir: Path, resumed: tuple[int, dict | None] | None = None) -> None:
        super().__init__(str(run_dir), name="logs", version="")
        self.resumed = resumed

    @property
    def experiment(self) -> ExperimentWriter:
        """The writer (created on first use, on rank 0)."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, self.resumed)
        return self._experiment


def extra_loggers(makers: Any, run_dir: Path) -> list:
    """The ``logger=`` option's loggers (Hydra partials, e.g. TensorBoard) built with ``save_dir=run_dir``."""
    loggers = []
    for name, make in dict(makers or {}).items():
        try:
            loggers.append(make(save_dir=str(run_dir)))
        except ModuleNotFoundError as exc:
            raise UserError(f"logger={name} needs the {exc.name or name} package: pip install {name}") from None
    return loggers


class _DropTips:
    """A logging filter dropping Lightning's advertising lines ("Tip: ... try installing litlogger")."""

    def filter(self, record) -> bool:
        """Keep every record but the tips."""
        return "Tip:" not in str(record.getMessage())


def quiet_lightning() -> None:
    """Silence what Lightning prints on every run that says nothing about this run."""
    import logging

    # its INFO line "weights_only was not set" is about what a checkpoint holds (everything): not news
    logging.getLogger("pytorch_lightning.trainer.connectors.checkpoint_connector").setLevel(logging.WARNING)
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in rank_zero.filters):
        rank_zero.addFilter(_DropTips())
    # Lightning cannot see that Resumable restarts the loader mid-epoch: its warning would be wrong
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
    # the frozen first stage (and a frozen text encoder) are in eval mode on purpose
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    # Lightning's own use of torch's LeafSpec (deprecated in torch, not in anything ldmkit calls)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)


def make_trainer(trainer_cfg: dict[str, Any], run_dir: Path, callbacks: list | None = None,
                 resumed_logs: tuple[int, dict | None] | None = None, loggers: list | None = None,
                 name: str = "train") -> pl.Trainer:
    """A Trainer from ``trainer.*`` keys: logs in ``run_dir/logs`` (+ ``loggers``), atomic checkpoint writes (the
    :class:`Resumable` callback decides when), non-finite losses stop it; progress named ``name`` (a rich bar on a
    terminal, plain lines off one)."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    quiet_lightning()
    bar = progress_bar(trainer_cfg, name)
    try:
        return pl.Trainer(
            **{**trainer_cfg, "enable_progress_bar": bar is not None},  # else Lightning adds its own bar
            default_root_dir=str(run_dir),
            logger=[RunCSVLogger(run_dir, resumed_logs), *(loggers or [])],  # the CSV log first: resume reads it
            callbacks=[*([bar] if bar else []), FiniteGuard(run_dir / LAST), *(callbacks or [])],
            enable_checkpointing=False,  # Resumable writes last.ckpt: periodically, on signals, at the end
            plugins=[AtomicCheckpointIO()],
            use_distributed_sampler=False,  # the EpochSampler splits map-style data over ranks itself
            enable_model_summary=False,
        )
    except (ValueError, TypeError, MisconfigurationException) as exc:  # a bad trainer.* option
        raise UserError(f"trainer: {str(exc).splitlines()[0]}") from None


def fit(cfg: Any, module: pl.LightningModule, loader: DataLoader, run_dir: Path, callbacks: list | None = None,
        loggers: list | None = None, name: str = "train") -> pl.Trainer:
    """Train ``module`` (resuming per ``cfg.resume``) with the CSV log plus ``loggers``, progress named ``name``;
    ``trainer.max_steps`` and ``checkpoint.every_n_steps`` count training steps (Lightning's ``global_step``: the
    autoencoder module keeps its discriminator's updates out of it). SIGTERM/SIGUSR1 save and exit 128+signal."""
    ckpt_path = find_checkpoint(cfg.resume, run_dir)
    keep = logged_steps(check_checkpoint(ckpt_path, module)) if ckpt_path else None
    trainer_cfg = dict(cfg.trainer)
    for leftover in leftovers(run_dir / LAST):  # a write that a kill interrupted
        leftover.unlink(missing_ok=True)
    every = cfg.checkpoint.every_n_steps
    resumable = Resumable(loader, run_dir / LAST, every or None)
    trainer = make_trainer(trainer_cfg, run_dir, [*(callbacks or []), resumable], keep, loggers, name)
    if ckpt_path:
        _say(trainer, f"resuming from {ckpt_path}")
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    try:
        trainer.fit(module, loader, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        pass
    if resumable.signal is not None:
        name = signal.Signals(resumable.signal).name
        _say(trainer, f"stopped by {name} after step {trainer.global_step}: checkpoint "
                      f"{run_dir / LAST}; continue with resume=true out={run_dir}")
        raise SystemExit(128 + resumable.signal)
    return trainer


def _say(trainer: pl.Trainer, text: str) -> None:
    """One line on stderr from rank 0."""
    if trainer.is_global_zero:
        from ldmkit.console import console

        console.print(text)
