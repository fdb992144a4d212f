"""σ-space samplers (Karras et al. 2022) on a discrete VP model, with the shared sampler signature.

The VP latent x_t = √ā x0 + √(1−ā) ε is x_t·√(1+σ²) in σ-space with σ = √((1−ā)/ā); the denoiser
D(x, σ) = x − σ·ε(x/√(1+σ²), t(σ)) calls the model at the fractional timestep t(σ) interpolated in log σ
between the trained ones, as k-diffusion's ``CompVisDenoiser`` (``quantize=True``: the nearest trained one).
Starting noise x ~ N(0, I) is the VP x_T, i.e. x·√(1+σ_max²) in σ-space; for img2img (``init``, ``strength``)
the σ list keeps its last steps and x starts at init + σ·noise (SDEdit, Meng et al. 2022).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ldmkit.diffusion.samplers import (
    Callback,
    EpsModel,
    Generators,
    any_steps,
    check_steps,
    kept_steps,
    randn_like,
    step_info,
    steps_rule,
)
from ldmkit.diffusion.schedule import NoiseSchedule, sigma_of


def model_sigmas(schedule: NoiseSchedule) -> Tensor:
    """σ of every trained timestep, ascending (float64)."""
    return sigma_of(schedule.alphas_cumprod.double())


def sigma_to_t(sigma: Tensor, sigmas: Tensor, quantize: bool = False) -> Tensor:
    """The (B,) timesteps of σs, as k-diffusion ``DiscreteSchedule.sigma_to_t``: fractional, linear in log σ between
    the two trained neighbours (clamped to [0, T − 1]); ``quantize``: the nearest trained one in log σ (long)."""
    log_sigma = sigma.reshape(-1).log()
    log_sigmas = sigmas.log().to(sigma.device, log_sigma.dtype)
    dists = log_sigma[None] - log_sigmas[:, None]
    if quantize:
        return dists.abs().argmin(0)
    low = dists.ge(0).cumsum(0).argmax(0).clamp(max=len(log_sigmas) - 2)
    w = ((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1])).clamp(0, 1)
    return (1 - w) * low + w * (low + 1)


def t_to_sigma(t: Tensor, sigmas: Tensor) -> Tensor:
    """σ at (fractional) timesteps ``t``: log σ interpolated between the trained neighbours (k-diffusion
    ``t_to_sigma``, the inverse of ``sigma_to_t``)."""
    log_sigmas = sigmas.log().to(t.device)
    t = t.to(log_sigmas.dtype)
    low, high, w = t.floor().long(), t.ceil().long(), t.frac()
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


def get_sigmas(schedule: NoiseSchedule, steps: int, karras: bool = False, rho: float = 7.0) -> Tensor:
    """``steps`` σs from σ_max down (uniform in timestep, or Karras et al. Eq. 5 with ρ), then a final 0."""
    check_steps(steps)
    sig = model_sigmas(schedule)
    if karras:
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        lo, hi = sig[0] ** (1 / rho), sig[-1] ** (1 / rho)
        out = (hi + ramp * (lo - hi)) ** rho
    else:
        t = torch.linspace(len(sig) - 1, 0, steps, dtype=torch.float64)
        low, frac = t.floor().long(), t - t.floor()
        high = (low + 1).clamp(max=len(sig) - 1)
        out = ((1 - frac) * sig[low].log() + frac * sig[high].log()).exp()
    return torch.cat([out, out.new_zeros(1)])


class Denoiser:
    """D(x, σ): the x0 estimate of an ε-model at σ, in σ-space."""

    def __init__(self, model: EpsModel, schedule: NoiseSchedule, extra_args: dict | None,
                 quantize: bool = False) -> None:
        self.model, self.extra_args, self.quantize = model, extra_args or {}, quantize
        self.sigmas = model_sigmas(schedule)

    def timestep(self, sigma: Tensor) -> Tensor:
        """The (1,) timestep the model is called at for σ (fractional, or the nearest trained one: ``quantize``)."""
        return sigma_to_t(sigma, self.sigmas, self.quantize)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        """x − σ·ε(x / √(1+σ²), t(σ))."""
        t = self.timestep(sigma).expand(x.shape[0])
        c_in = (1 / (sigma**2 + 1).sqrt()).to(x.dtype)
        return x - sigma.to(x.dtype) * self.model(x * c_in, t, **self.extra_args)


def _prepare(x: Tensor, schedule: NoiseSchedule, steps: int, karras: bool, init: Tensor | None = None,
             strength: float = 1.0) -> tuple[Tensor, Tensor]:
    """σ list on x's device and the starting point in σ-space: the noise ``x`` as x_T, or for img2img the last
    ``kept_steps`` steps starting from init + σ·x (no steps: init itself; all steps: plain sampling)."""
    sigmas = get_sigmas(schedule, steps, karras).to(x.device)
    kept = kept_steps(steps, strength) if init is not None else steps
    if kept == steps:
        return sigmas, x * (1 + sigmas[0] ** 2).sqrt().to(x.dtype)
    sigmas = sigmas[steps - kept:]
    return sigmas, init.to(x.dtype) + x * sigmas[0].to(x.dtype)


def _report(callback: Callback | None, denoise: Denoiser, i: int, total: int, x: Tensor, sigma: Tensor,
            denoised: Tensor) -> None:
    """Tell the callback (if any) that step ``i`` of ``total``, at ``sigma``, is done."""
    if callback is not None:
        callback(step_info(i, total, x, denoised, denoise.timestep(sigma), sigma))


@steps_rule(any_steps)
@torch.no_grad()
def sample_euler(
    model: EpsModel, x: Tensor, schedule: NoiseSchedule, extra_args: dict | None = None,
    callback: Callback | None = None, steps: int = 50, karras: bool = False,
    generator: Generators = None, quantize: bool = False, init: Tensor | None = None, strength: float = 1.0,
) -> Tensor:
    """Euler on the probability-flow ODE (Karras et al. 2022, Alg. 1 without churn)."""
    denoise = Denoiser(model, schedule, extra_args, quantize)
    sigmas, x = _prepare(x, schedule, steps, karras, init, strength)
    steps = len(sigmas) - 1
    for i in range(steps):
        d0 = denoise(x, sigmas[i])
        x = x + (x - d0) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        _report(callback, denoise, i, steps, x, sigmas[i], d0)
    return x


@steps_rule(any_steps)
@torch.no_grad()
def sample_euler_ancestral(
    model: EpsModel, x: Tensor, schedule: NoiseSchedule, extra_args: dict | None = None,
    callback: Callback | None = None, steps: int = 50, karras: bool = False, eta: float = 1.0,
    generator: Generators = None, quantize: bool = False, init: Tensor | None = None, strength: float = 1.0,
) -> Tensor:
    """Euler ancestral (k-diffusion ``sample_euler_ancestral``): Euler to σ_down, then fresh noise σ_up."""
    denoise = Denoiser(model, schedule, extra_args, quantize)
    sigmas, x = _prepare(x, schedule, steps, karras, init, strength)
    steps = len(sigmas) - 1
    for i in range(steps):
        d0 = denoise(x, sigmas[i])
        s, s_next = sigmas[i], sigmas[i + 1]
        up = (eta * (s_next**2 * (s**2 - s_next**2) / s**2).sqrt()).clamp(max=s_next)
        down = (s_next**2 - up**2).sqrt()
        x = x + (x - d0) / s * (down - s)
        if s_next > 0:
            x = x + randn_like(x, generator) * up.to(x.dtype)
        _report(callback, denoise, i, steps, x, s, d0)
    return x


@steps_rule(any_steps)
@torch.no_grad()
def sample_heun(
    model: EpsModel, x: Tensor, schedule: NoiseSchedule, extra_args: dict | None = None,
    callback: Callback | None = None, steps: int = 50, karras: bool = True,
    generator: Generators = None, quantize: bool = False, init: Tensor | None = None, strength: float = 1.0,
) -> Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 1, deterministic); 2·steps − 1 model calls."""
    denoise = Denoiser(model, schedule, extra_args, quantize)
    sigmas, x = _prepare(x, schedule, steps, karras, init, strength)
    steps = len(sigmas) - 1
    for i in range(steps):
        d0 = denoise(x, sigmas[i])
        d = (x - d0) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_next = x + d * dt
            d_next = (x_next - denoise(x_next, sigmas[i + 1])) / sigmas[i + 1]
            x = x + (d + d_next) / 2 * dt
        _report(callback, denoise, i, steps, x, sigmas[i], d0)
    return x


@steps_rule(any_steps)
@torch.no_grad()
def sample_dpmpp_2m(
    model: EpsModel, x: Tensor, schedule: NoiseSchedule, extra_args: dict | None = None,
    callback: Callback | None = None, steps: int = 20, karras: bool = True,
    generator: Generators = None, quantize: bool = False, init: Tensor | None = None, strength: float = 1.0,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) in σ-space, as k-diffusion ``sample_dpmpp_2m``."""
    denoise = Denoiser(model, schedule, extra_args, quantize)
    sigmas, x = _prepare(x, schedule, steps, karras, init, strength)
    steps = len(sigmas) - 1
    old = None
    for i in range(steps):
        d0 = denoise(x, sigmas[i])
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()  # t_next = inf at σ = 0
        h = t_next - t
        ratio = (sigmas[i + 1] / sigmas[i]).to(x.dtype)
        if old is None or sigmas[i + 1] == 0:
            x = ratio * x - torch.expm1(-h).to(x.dtype) * d0
        else:
            r = (t - (-sigmas[i - 1].log())) / h
            d = (1 + 1 / (2 * r)).to(x.dtype) * d0 - (1 / (2 * r)).to(x.dtype) * old
            x = ratio * x - torch.expm1(-h).to(x.dtype) * d
        old = d0
        _report(callback, denoise, i, steps, x, sigmas[i], d0)
    return x
