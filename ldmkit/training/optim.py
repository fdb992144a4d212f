"""The optimiser and learning-rate schedule of the training tasks (the ``optim=`` and ``lr_schedule=`` config
groups): partials the LightningModules call with their parameters or optimiser, checked before training starts,
and the warm-up + cosine factor ldmkit adds to torch's schedules."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from ldmkit.errors import UserError

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], Optimizer]
ScheduleFactory = Callable[[Optimizer], LRScheduler]

TASK_KEYS = ("scale_lr",)  # keys of the optim node the task reads itself: not optimiser arguments
PIP_NAMES = {"lion_pytorch": "lion-pytorch"}  # import name -> package name, where they differ


def require_target(node: Mapping[str, Any], option: str) -> None:
    """The node's ``_target_`` must be importable: else one line naming the package to install (or the name)."""
    target = str(node.get("_target_", ""))
    top, (module, _, name) = target.split(".")[0], target.rpartition(".")
    if not module:
        raise UserError(f"{option}._target_={target!r}: expected a dotted import path (package.module.Name)")
    if importlib.util.find_spec(top) is None:
        pip = PIP_NAMES.get(top, top)
        raise UserError(f"{option}._target_={target} needs the {pip} package: pip install {pip}")
    try:
        found = hasattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise UserError(f"{option}._target_={target} cannot be imported: {exc}") from None
    if not found:
        raise UserError(f"{option}._target_={target}: {module} has no {name}")


def _built(node: Mapping[str, Any] | DictConfig, option: str, **kwargs: Any) -> Callable:
    """``instantiate(node, **kwargs)`` (plain Python lists and dicts as arguments) after :func:`require_target`."""
    from hydra.utils import instantiate

    require_target(node, option)
    return instantiate(node, _convert_="all", **kwargs)


def _tried(make: Callable[[], Any], option: str) -> Any:
    """``make()``, a constructor's complaint about its arguments turned into one line naming ``option``."""
    try:
        return make()
    except (TypeError, ValueError) as exc:
        raise UserError(f"{option}: {str(exc).splitlines()[0]}") from None


def from_config(optim: DictConfig, lr_schedule: DictConfig | None,
                lr: float | None = None) -> tuple[OptimizerFactory, ScheduleFactory | None]:
    """The ``optim`` partial (``lr`` replacing ``optim.lr`` when given) and the ``lr_schedule`` partial (None: a
    constant rate), both tried on a probe parameter: a missing package or a wrong argument is one line."""
    spec = {k: v for k, v in OmegaConf.to_container(optim, resolve=True).items() if k not in TASK_KEYS}
    optimizer = _built(spec, "optim", **({} if lr is None else {"lr": lr}))
    probe = _tried(lambda: optimizer([torch.nn.Parameter(torch.zeros(1))]), "optim")
    if lr_schedule is None:
        return optimizer, None
    schedule = _built(lr_schedule, "lr_schedule")
    _tried(lambda: schedule(probe), "lr_schedule")
    return optimizer, schedule


@dataclass
class WarmupCosine:
    """The rate factor at step n: linear from ``start_factor`` to 1 over ``warmup_steps``, then a cosine down to
    ``min_factor`` at ``total_steps``, held after (CompVis' LambdaWarmUpCosineScheduler)."""

    warmup_steps: int = 0
    total_steps: int = 1000
    start_factor: float = 0.0
    min_factor: float = 0.0

    def __call__(self, step: int) -> float:
        """The factor of optim.lr at training step ``step``."""
        if step < self.warmup_steps:
            return self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class ConfiguredLambdaLR(LambdaLR):
    """LambdaLR whose checkpoint keeps the step count but not the factor's fields: a resumed run follows the schedule
    its config asks for (the same for an interrupted run; a finished run extended to a larger trainer.max_steps
    follows the longer curve instead of staying at its end)."""

    def state_dict(self) -> dict:
        """torch's state with the factors' fields left out (None per factor, as for plain functions)."""
        return {**super().state_dict(), "lr_lambdas": [None] * len(self.lr_lambdas)}


def warmup_cosine(optimizer: Optimizer, warmup_steps: int = 0, total_steps: int = 1000, start_factor: float = 0.0,
                  min_factor: float = 0.0) -> LambdaLR:
    """A :class:`ConfiguredLambdaLR` over :class:`WarmupCosine`."""
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be between 0 and total_steps={total_steps}")
    return ConfiguredLambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, start_factor, min_factor))

