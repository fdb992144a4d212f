"""Classifier-free guidance (Ho & Salimans 2021): eps = eps_u + s (eps_c - eps_u), both in one batch."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _cat(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """Concatenate two optional tensors along the batch."""
    return None if a is None else torch.cat([a, b])


def cfg_denoiser(eps_fn: Callable[..., Tensor], scale: float) -> Callable[..., Tensor]:
    """Wrap ``eps_fn(x, t, context, mask)`` into ``f(x, t, cond, uncond)`` applying guidance scale ``scale``."""

    def denoise(x: Tensor, t: Tensor, cond: tuple, uncond: tuple | None = None) -> Tensor:
        """Guided noise prediction; ``cond``/``uncond`` are (context, mask) pairs."""
        if uncond is None or scale == 1.0:
            return eps_fn(x, t, *cond)
        ctx = _cat(uncond[0], cond[0])
        mask = _cat(uncond[1], cond[1])
        eps_u, eps_c = eps_fn(torch.cat([x, x]), torch.cat([t, t]), ctx, mask).chunk(2)
        return eps_u + scale * (eps_c - eps_u)

    return denoise
