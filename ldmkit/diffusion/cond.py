"""What a denoiser is conditioned on: a ``Cond`` (cross-attention tokens and/or channels joined to the latent), how
Conds combine (batch-wise for guidance, part-wise for several conditioners), and what guidance asks of a conditioner.

Conditioners (``ldmkit.models``) produce Conds; samplers and guidance pass them through to the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Cond:
    """What a conditioner hands the UNet: cross-attention ``context`` (B, L, D) with key ``mask`` (B, L)
    (True = attend; None = all), ``concat`` channels (B, C, h, w) joined to the latent (resized to it), and a
    global ``vector`` (B, V) added to the time embedding (SDXL's ``adm_in_channels`` input, e.g. a pooled caption)."""

    context: Tensor | None = None
    mask: Tensor | None = None
    concat: Tensor | None = None
    vector: Tensor | None = None


class NullLearner(Protocol):
    """What guidance asks of a conditioner: whether training taught the model its null (unconditional) input."""

    def learned_null(self) -> bool:
        """Whether training dropped conditions (drop_prob > 0 somewhere), i.e. the null condition was learned."""


def _join(parts: list[Tensor | None], dim: int) -> Tensor | None:
    """Concatenate the non-None tensors along ``dim`` (None when there are none)."""
    present = [p for p in parts if p is not None]
    return torch.cat(present, dim) if present else None


def _masks(conds: list[Cond]) -> list[Tensor | None]:
    """Each Cond's key mask, filled with True where a Cond has context but no mask (only if any mask exists)."""
    if all(c.mask is None for c in conds):
        return [None] * len(conds)
    return [c.mask if c.mask is not None or c.context is None
            else torch.ones(c.context.shape[:2], dtype=torch.bool, device=c.context.device) for c in conds]


def resize_to(c: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize conditioning channels to a spatial size: area-average down, bilinear up."""
    if tuple(c.shape[-2:]) == tuple(size):
        return c
    if c.shape[-2] >= size[0] and c.shape[-1] >= size[1]:
        return F.interpolate(c, size=size, mode="area")
    return F.interpolate(c, size=size, mode="bilinear", align_corners=False)


def _same_size(maps: list[Tensor | None]) -> list[Tensor | None]:
    """Concat maps brought to one spatial size (the largest), e.g. a 1x1 null map next to a full-size one."""
    present = [m for m in maps if m is not None]
    if not present:
        return maps
    size = (max(m.shape[-2] for m in present), max(m.shape[-1] for m in present))
    return [None if m is None else resize_to(m, size) for m in maps]


def cat_batch(conds: list[Cond]) -> Cond:
    """Stack Conds along the batch (e.g. unconditional + conditional for guidance in one pass)."""
    concat = _join(_same_size([c.concat for c in conds]), 0)
    return Cond(_join([c.context for c in conds], 0), _join(_masks(conds), 0), concat,
                _join([c.vector for c in conds], 0))


def merge(conds: list[Cond]) -> Cond:
    """Combine several conditioners' outputs for one batch: tokens joined along L, channels along C, vectors along
    their features."""
    return Cond(_join([c.context for c in conds], 1), _join(_masks(conds), 1), _join([c.concat for c in conds], 1),
                _join([c.vector for c in conds], 1))
