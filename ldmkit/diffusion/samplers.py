"""Samplers with one k-diffusion-style signature: ``sample_x(model, x, schedule, extra_args, callback, ...)``.

``model(x, t, **extra_args)`` returns the predicted noise eps for a batch of discrete timesteps ``t``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ldmkit.diffusion.schedule import NoiseSchedule

Denoiser = Callable[..., Tensor]
Callback = Callable[[dict], None]


def randn_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device (reproducible on any device)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def ddim_timesteps(num_timesteps: int, steps: int, discretize: str = "uniform") -> Tensor:
    """The DDIM sub-sequence, ascending, exactly as CompVis ``make_ddim_timesteps`` (note the +1 shift)."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"sampler.steps must be in 1..{num_timesteps}, got {steps}")
    if discretize == "uniform":
        ts = torch.arange(0, num_timesteps, num_timesteps // steps)
    elif discretize == "quad":
        ts = (torch.linspace(0, (num_timesteps * 0.8) ** 0.5, steps) ** 2).long()
    else:
        raise ValueError(f"unknown ddim discretize {discretize!r}; choose uniform or quad")
    return ts + 1


@torch.no_grad()
def sample_ddim(
    model: Denoiser,
    x: Tensor,
    schedule: NoiseSchedule,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    steps: int = 50,
    eta: float = 0.0,
    discretize: str = "uniform",
    generator: torch.Generator | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021, Eq. 12): deterministic for eta=0, DDPM-like variance for eta=1."""
    extra_args = extra_args or {}
    ts = ddim_timesteps(schedule.num_timesteps, steps, discretize).to(x.device)
    a_all = schedule.alphas_cumprod.to(x.device, torch.float64)
    alphas = a_all[ts]
    alphas_prev = torch.cat([a_all[:1], a_all[ts[:-1]]])
    for i in reversed(range(len(ts))):
        t = ts[i].expand(x.shape[0])
        a, a_prev = alphas[i], alphas_prev[i]
        eps = model(x, t, **extra_args)
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
        x0 = (x - (1 - a).sqrt().to(x.dtype) * eps) / a.sqrt().to(x.dtype)
        direction = (1 - a_prev - sigma**2).sqrt().to(x.dtype) * eps
        x = a_prev.sqrt().to(x.dtype) * x0 + direction
        if eta > 0:
            x = x + sigma.to(x.dtype) * randn_like(x, generator)
        if callback is not None:
            callback({"x": x, "i": len(ts) - 1 - i, "t": int(ts[i]), "denoised": x0, "total": len(ts)})
    return x
