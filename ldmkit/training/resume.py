"""Resuming training exactly: which checkpoint (``resume=``), whether it is safe and fits the model, and the state
Lightning does not keep itself (RNG states, the position inside the epoch); plus pre-emption (SIGTERM/SIGUSR1
save a checkpoint before the process exits) and a final checkpoint when training ends."""

from __future__ import annotations

import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ldmkit.errors import UserError
from ldmkit.safeload import torch_load
from ldmkit.training.loader import start_mid_epoch

LAST = Path("checkpoints") / "last.ckpt"


def rng_states() -> dict[str, Any]:
    """The global RNG states (torch CPU/CUDA, numpy, python) as types a weights-only load accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def find_checkpoint(resume: Any, out: Path) -> Path | None:
    """``resume=false`` -> None; ``true`` -> the newest checkpoint of ``out`` (error if none); ``auto`` -> it or
    None; a ``.ckpt`` file or a run dir -> its checkpoint."""
    if resume in (None, False) or str(resume).lower() in ("false", "none", ""):
        return None
    where = out if resume is True or str(resume).lower() in ("true", "auto") else Path(str(resume)).expanduser()
    if where.is_file():
        return where
    found = [p for p in (where / LAST, *where.glob("hpc_ckpt_*.ckpt")) if p.is_file()]  # + Lightning's SLURM saves
    if found:
        return max(found, key=lambda p: p.stat().st_mtime)
    if str(resume).lower() == "auto":
        return None
    if where == out:
        raise UserError(f"resume=true: no checkpoint in {out}/checkpoints/: pass out=<the run dir to continue> "
                        "or resume=PATH (a .ckpt or a run dir)")
    raise UserError(f"resume={resume}: no such checkpoint (expected a .ckpt file or a run dir with {LAST})")


def check_checkpoint(path: Path, module: pl.LightningModule) -> dict:
    """Read a checkpoint weights-only (pickled code is refused, never run) and check it holds this model:
    same weight names and shapes. Returns the checkpoint (memory-mapped)."""
    ckpt = torch_load(path, mmap=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "loops" not in ckpt:
        raise UserError(f"resume={path}: not a Lightning training checkpoint of ldmkit (no state_dict/loops)")
    have = ckpt["state_dict"]
    want = {k: v for k, v in module.state_dict().items() if k in have or module.strict_loading}
    missing = [k for k in want if k not in have]
    wrong = [k for k in want if k in have and tuple(have[k].shape) != tuple(want[k].shape)]
    if missing or wrong or len(have) > len(want):
        extra = [k for k in have if k not in want]
        what = (f"{len(missing)} missing weights (e.g. {missing[0]})" if missing else
                f"{len(wrong)} weights of another shape (e.g. {wrong[0]})" if wrong else
                f"{len(extra)} unknown weights (e.g. {extra[0]})")
        raise UserError(f"resume={path}: the checkpoint is of another model than this config builds ({what}); "
                        "resume with the run's own config")
    return ckpt


def logged_steps(ckpt: dict) -> tuple[int, dict | None]:
    """The logger step the checkpoint was written at (the resumed run logs the steps after it) and the log row of
    that step, which Lightning only hands to the logger after the checkpoint is written."""
    state = ckpt["loops"].get("fit_loop", {}).get("epoch_loop.state_dict", {})
    ours = next((v for k, v in ckpt.get("callbacks", {}).items() if str(k).startswith(Resumable.__name__)), {})
    return int(state.get("_batches_that_stepped", ckpt.get("global_step", 0))), ours.get("log_row")


class Resumable(pl.Callback):
    """Keeps a run resumable: writes ``path`` every ``every_n_steps`` optimiser steps, at the last step, and on
    SIGTERM (raised by Lightning after the step) or SIGUSR1 (stops after the step) before the process exits;
    the epoch position and RNG states go into it and come back on resume (the loader restarts at the next
    unread batch)."""

    def __init__(self, loader: DataLoader, path: Path, every_n_steps: int | None = None) -> None:
        self.loader, self.path, self.every = loader, path, every_n_steps
        self.epoch = self.batches = 0
        self.row: dict | None = None
        self.signal: int | None = None
        self.saved_at = -1
        self.previous_usr1: Any = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Handle SIGUSR1 (Lightning keeps it on SLURM, where it saves and requeues the job itself)."""
        from lightning_fabric.plugins.environments import SLURMEnvironment

        if hasattr(signal, "SIGUSR1") and not SLURMEnvironment.detect():
            def stop(signum: int, frame: Any) -> None:
                """Finish the current step, then save and stop."""
                self.signal = signum

            self.previous_usr1 = signal.signal(signal.SIGUSR1, stop)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Give SIGUSR1 back."""
        if self.previous_usr1 is not None:
            signal.signal(signal.SIGUSR1, self.previous_usr1)
            self.previous_usr1 = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A new epoch: no batch of it is done yet."""
        self.epoch, self.batches = trainer.current_epoch, 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        """Count the batches done in this epoch and keep this step's log row; save when due."""
        self.batches = batch_idx + 1
        logs = trainer._logger_connector  # the step's row exists here, but reaches the logger only after the save
        self.row = None
        if trainer.loggers and logs.should_update_logs:
            step = trainer.fit_loop.epoch_loop._batches_that_stepped
            self.row = {"epoch": trainer.current_epoch, "step": step,
                        **{k: float(v) for k, v in logs.metrics["log"].items()}}
        if self.signal is not None:  # SIGUSR1
            trainer.should_stop = True
        step = trainer.global_step
        if self.signal is not None or 0 < trainer.max_steps <= step or (self.every and step % self.every == 0):
            self._save(trainer)  # mid-epoch state: a resume continues this epoch, also to extend max_steps

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """Flush the logs first, so every row before the checkpoint's step is on disk."""
        for logger in trainer.loggers:
            logger.save()

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs beyond Lightning's own state."""
        return {"rng": rng_states(), "epoch": self.epoch, "batches": self.batches, "log_row": self.row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the RNG states and make the loader continue where the checkpoint was written."""
        set_rng_states(state["rng"])
        epoch, batches = int(state["epoch"]), int(state["batches"])
        try:
            if batches >= len(self.loader):
                epoch, batches = epoch + 1, 0
        except TypeError:  # a stream without a length
            pass
        self.epoch, self.batches = epoch, batches
        if batches and not start_mid_epoch(self.loader, epoch, batches):
            from ldmkit.console import console

            console.print(f"resume: this dataset cannot skip the {batches} batches already read in epoch {epoch}; "
                          "it restarts the stream")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """SIGTERM: save before Lightning re-raises it."""
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            self.signal = int(signal.SIGTERM)
            self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The final state, unless the last batch saved it: a checkpoint to resume or extend the run from."""
        if self.saved_at != trainer.global_step:
            self._save(trainer)

    def _save(self, trainer: pl.Trainer) -> None:
        """Write the checkpoint now."""
        trainer.save_checkpoint(self.path)
        self.saved_at = trainer.global_step
