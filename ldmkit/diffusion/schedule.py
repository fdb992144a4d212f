"""Noise schedules (CompVis ``make_beta_schedule``) and the forward process q(x_t | x_0) (Ho et al. 2020)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ldmkit.errors import UserError

SCHEDULES = ("linear", "cosine", "sqrt_linear", "sqrt")


def make_betas(
    schedule: str,
    timesteps: int,
    linear_start: float = 1e-4,
    linear_end: float = 2e-2,
    cosine_s: float = 8e-3,
) -> Tensor:
    """Betas (float64, shape (T,)) exactly as CompVis ``make_beta_schedule``."""
    if schedule == "linear":
        return torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2
    if schedule == "sqrt_linear":  # CompVis' name for betas linear in beta itself
        return torch.linspace(linear_start, linear_end, timesteps, dtype=torch.float64)
    if schedule == "sqrt":
        return torch.linspace(linear_start, linear_end, timesteps, dtype=torch.float64) ** 0.5
    if schedule == "cosine":  # Nichol & Dhariwal 2021, Eq. 17
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps + cosine_s
        alphas = torch.cos(steps / (1 + cosine_s) * math.pi / 2).pow(2)
        alphas = alphas / alphas[0]
        return (1 - alphas[1:] / alphas[:-1]).clamp(0, 0.999)
    raise UserError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def sigma_of(alphas_cumprod: Tensor) -> Tensor:
    """σ = √((1−ā)/ā): the noise level of ā in σ-space (x_t·√(1+σ²) = x0 + σ ε)."""
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


def x0_from_eps(x_t: Tensor, eps: Tensor, sqrt_a: Tensor, sqrt_one_minus_a: Tensor) -> Tensor:
    """x0 = (x_t − √(1−ā) ε) / √ā, the inverse of q_sample (coefficients given in the dtype the caller wants)."""
    return (x_t - sqrt_one_minus_a * eps) / sqrt_a


def _extract(values: Tensor, t: Tensor, ndim: int) -> Tensor:
    """Gather per-timestep values and reshape to broadcast over a (B, ...) tensor of ``ndim`` dims."""
    return values.to(t.device)[t].reshape(-1, *([1] * (ndim - 1)))


class NoiseSchedule(nn.Module):
    """The discrete variance-preserving schedule: betas, alphas_cumprod and q(x_t | x_0)."""

    def __init__(
        self,
        schedule: str = "linear",
        timesteps: int = 1000,
        linear_start: float = 0.0015,
        linear_end: float = 0.0195,
        cosine_s: float = 8e-3,
    ) -> None:
        super().__init__()
        betas = make_betas(schedule, timesteps, linear_start, linear_end, cosine_s)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.schedule = schedule
        self.num_timesteps = timesteps
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.register_buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt().float(), persistent=False)
        self.register_buffer(
            "sqrt_one_minus_alphas_cumprod", (1.0 - alphas_cumprod).sqrt().float(), persistent=False
        )

    def _apply(self, fn, recurse: bool = True):  # nn.Module's signature
        """Moves follow ``.to(device)``, but the schedule keeps its float32 values whatever the module dtype
        (bf16/fp16 would turn ā_T into 0 or √ā_0 into √ā_1)."""
        kept = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, buf in self._buffers.items():
            if buf is not None and buf.dtype != kept[name].dtype:
                self._buffers[name] = kept[name].to(buf.device)
        return self

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps (in x_0's dtype; computed with the float32 schedule)."""
        return (
            _extract(self.sqrt_alphas_cumprod, t, x0.ndim) * x0
            + _extract(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise
        ).to(x0.dtype)

    def predict_x0(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_0 from x_t and the predicted noise."""
        a = _extract(self.alphas_cumprod, t, x_t.ndim)
        return x0_from_eps(x_t, eps, a.sqrt(), (1 - a).sqrt()).to(x_t.dtype)
