"""Classifier-free guidance (Ho & Salimans 2021): eps = eps_u + s (eps_c - eps_u), both in one batch."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ldmkit.diffusion.cond import Cond, NullLearner, cat_batch


def guided_eps(eps_fn: Callable[..., Tensor], scale: float) -> Callable[..., Tensor]:
    """Wrap the ε-model ``eps_fn(x, t, cond)`` into ``f(x, t, cond, uncond)`` applying guidance scale ``scale``."""

    def guided(x: Tensor, t: Tensor, cond: Cond, uncond: Cond | None = None) -> Tensor:
        """Guided noise prediction; with no ``uncond`` (or scale 1) a single conditional pass."""
        if uncond is None or scale == 1.0:
            return eps_fn(x, t, cond)
        both = cat_batch([uncond, cond])
        eps_u, eps_c = eps_fn(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        return eps_u + scale * (eps_c - eps_u)

    return guided


DEFAULT_SCALE = 3.0


def guidance_scale(requested: float | None, cond: NullLearner) -> float:
    """The scale to use: the requested one, else 3 for models trained with conditioning dropout and 1 (no
    guidance) for the rest (unconditional models, and sr / inpaint, trained without a null condition)."""
    if requested is not None:
        return float(requested)
    return DEFAULT_SCALE if cond.learned_null() else 1.0
