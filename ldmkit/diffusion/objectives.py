"""Training objectives: what the network predicts (ε, v or x0) and the optional min-SNR loss weighting.

ε-prediction: Ho et al. 2020 (the paper's Eq. 2). v-prediction: Salimans & Ho 2022, v = √ā ε − √(1−ā) x0.
x0-prediction: the clean latent itself. Min-SNR-γ weighting: Hang et al. 2023. Logit-normal timesteps:
Esser et al. 2024 (SD3), t/T = sigmoid(n), n ~ N(mean, std).
Samplers only ever see ε: ``to_eps`` converts any prediction, so one wrapper serves every objective.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ldmkit.diffusion.schedule import NoiseSchedule, x0_from_eps
from ldmkit.errors import UserError

PREDICTIONS = ("eps", "v", "x0")
TIMESTEPS = ("uniform", "logit_normal")


def _coefficients(schedule: NoiseSchedule, t: Tensor, ndim: int) -> tuple[Tensor, Tensor]:
    """(√ā_t, √(1−ā_t)) shaped to broadcast over a (B, ...) tensor."""
    shape = (-1, *([1] * (ndim - 1)))
    if t.is_floating_point():  # σ-space samplers call between trained timesteps: ā from σ(t) interpolated in log σ
        from ldmkit.diffusion.k_samplers import model_sigmas, t_to_sigma

        sigma = t_to_sigma(t, model_sigmas(schedule))
        a = (1 + sigma**2).rsqrt()
        return a.float().reshape(shape), (sigma * a).float().reshape(shape)
    return (schedule.sqrt_alphas_cumprod.to(t.device)[t].reshape(shape),
            schedule.sqrt_one_minus_alphas_cumprod.to(t.device)[t].reshape(shape))


def check_prediction(prediction: str) -> str:
    """The prediction name, else a one-line error listing the valid ones."""
    if prediction not in PREDICTIONS:
        raise UserError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
    return prediction


def target(prediction: str, schedule: NoiseSchedule, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """The regression target for ``prediction`` given clean latents x0 and the noise mixed in at t."""
    if check_prediction(prediction) == "eps":
        return noise
    if prediction == "x0":
        return x0
    a, s = _coefficients(schedule, t, x0.ndim)
    return a * noise - s * x0


def to_eps(prediction: str, schedule: NoiseSchedule, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """The ε implied by a network ``output`` of kind ``prediction`` at (x_t, t)."""
    if check_prediction(prediction) == "eps":
        return output
    a, s = _coefficients(schedule, t, x_t.ndim)
    if prediction == "x0":
        return (x_t - a * output) / s
    return a * output + s * x_t


def to_x0(prediction: str, schedule: NoiseSchedule, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """The x0 implied by a network ``output`` of kind ``prediction`` at (x_t, t)."""
    if check_prediction(prediction) == "x0":
        return output
    a, s = _coefficients(schedule, t, x_t.ndim)
    if prediction == "eps":
        return x0_from_eps(x_t, output, a, s)
    return a * x_t - s * output


def snr(schedule: NoiseSchedule, t: Tensor) -> Tensor:
    """Signal-to-noise ratio ā_t / (1 − ā_t) per timestep."""
    a = schedule.alphas_cumprod.to(t.device)[t]
    return a / (1 - a)


def min_snr_weight(prediction: str, schedule: NoiseSchedule, t: Tensor, gamma: float) -> Tensor:
    """Per-sample loss weight min(SNR, γ) expressed for the objective: /SNR (ε), /(SNR+1) (v), ·1 (x0)."""
    s = snr(schedule, t)
    clipped = s.clamp(max=gamma)
    if check_prediction(prediction) == "eps":
        return clipped / s
    if prediction == "v":
        return clipped / (s + 1)
    return clipped


def check_timesteps(kind: str, std: float) -> str:
    """The timestep distribution's name, else a one-line error (also for a std that is not positive)."""
    if kind not in TIMESTEPS:
        raise UserError(f"objective.timesteps={kind!r} is not one of: {', '.join(TIMESTEPS)}")
    if not std > 0:
        raise UserError(f"objective.timestep_std={std} must be > 0")
    return kind


def sample_timesteps(n: int, num_timesteps: int, kind: str = "uniform", mean: float = 0.0, std: float = 1.0,
                     device: torch.device | str | None = None) -> Tensor:
    """``n`` training timesteps in [0, T): uniform (the paper), or logit-normal t/T = sigmoid(N(mean, std))."""
    if check_timesteps(kind, std) == "uniform":
        return torch.randint(0, num_timesteps, (n,), device=device)
    u = torch.sigmoid(torch.randn(n, device=device) * std + mean)
    return (u * num_timesteps).long().clamp_(max=num_timesteps - 1)
