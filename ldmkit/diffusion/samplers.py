"""Samplers with one k-diffusion-style signature: ``sample_x(model, x, schedule, extra_args, callback, ...)``.

``model(x, t, **extra_args)`` (an ``EpsModel``) returns the predicted noise ε for a batch of timesteps ``t`` (long
here; the σ-space samplers pass fractional ones; ``LatentDiffusion.eps`` converts v / x0 predictions, so every
sampler serves every objective); ``x`` is the starting noise N(0, I); the result is the final latent. After each
step ``callback`` gets the same ``step_info`` from every sampler. This module holds the discrete-time samplers (DDPM,
DDIM, PLMS); ``k_samplers`` the σ-space ones (Euler, Euler ancestral, Heun, DPM-Solver++ 2M). Each declares its
rule for ``steps`` (``steps_rule``), which ``check_sampler`` applies before sampling starts.

img2img / SDEdit (Meng et al. 2022), the same for every sampler: with ``init`` (a clean latent z0) and
``strength`` s in [0, 1] a sampler runs only the last ``int(s·steps)`` of its steps (as CompVis' img2img and
diffusers), starting from z0 noised with ``x`` to the first of them; s = 1 is plain sampling from ``x`` (the
same noise, bit for bit) and s = 0 returns z0.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from ldmkit.diffusion.schedule import NoiseSchedule, sigma_of, x0_from_eps
from ldmkit.errors import UserError, check_whole

EpsModel = Callable[..., Tensor]  # model(x, t, **extra_args) -> the predicted noise ε (what every sampler calls)
Callback = Callable[[dict], None]
StepsRule = Callable[[int, int, dict], object]  # (steps, T, options): a one-line UserError for a count it cannot run
Sampler = TypeVar("Sampler", bound=Callable[..., Tensor])

Generators = torch.Generator | list[torch.Generator] | None


def randn_like(x: Tensor, generator: Generators = None) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device (reproducible on any device).

    A list of generators draws sample i of the batch from generator i, so a sample's noise does not depend on
    the batch it is in."""
    if isinstance(generator, list | tuple):
        if len(generator) != x.shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {x.shape[0]}")
        return torch.stack([randn_like(x[i], g) for i, g in enumerate(generator)])
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def check_steps(steps: int, maximum: int | None = None) -> int:
    """``steps`` if at least 1 (and at most ``maximum``), else a one-line error."""
    if maximum is not None and not 1 <= steps <= maximum:
        raise UserError(f"sampler.steps must be in 1..{maximum}, got {steps}")
    if steps < 1:
        raise UserError(f"sampler.steps must be >= 1, got {steps}")
    return steps


def steps_rule(rule: StepsRule) -> Callable[[Sampler], Sampler]:
    """Decorator: declare a sampler's rule for ``steps`` (given T and its options), which ``check_sampler`` applies."""

    def declare(sampler: Sampler) -> Sampler:
        """The sampler, marked with its rule."""
        sampler.steps_rule = rule  # type: ignore[attr-defined]
        return sampler

    return declare


def any_steps(steps: int, num_timesteps: int, options: dict) -> None:
    """Any count from 1 (samplers not bound to the trained timesteps, e.g. in σ-space)."""
    check_steps(steps)


def step_info(i: int, total: int, x: Tensor, denoised: Tensor, t: Tensor, sigma: Tensor) -> dict:
    """What every sampler tells its callback after step ``i`` of ``total``: the latent ``x``, the x0 estimate
    ``denoised`` and where the step was, as the timestep ``t`` (int, or float between trained ones) and its σ."""
    return {"i": i, "total": total, "x": x, "denoised": denoised, "t": t.item(), "sigma": float(sigma)}


DEFAULT_STRENGTH = 0.75  # img2img strength when none is given (CompVis' scripts/img2img.py)


def check_strength(value: Any) -> float:
    """The img2img strength as a float in [0, 1], else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise UserError(f"strength={value!r}: must be a number in [0, 1] (0 = the init image's reconstruction, "
                        "1 = plain sampling)")
    return float(value)


def kept_steps(steps: int, strength: float) -> int:
    """How many of a sampler's ``steps`` img2img runs: int(strength·steps) as CompVis / diffusers (the float
    product's rounding error, e.g. 0.29·100 = 28.999…, does not drop a step)."""
    return min(steps, int(check_strength(strength) * steps + 1e-6))


def img2img_start(ts: Tensor, x: Tensor, schedule: NoiseSchedule, init: Tensor | None,
                  strength: float) -> tuple[Tensor, Tensor]:
    """A discrete sampler's (ascending) timesteps and start: all of them from the noise ``x``, or for img2img the
    ``kept_steps`` lowest from ``init`` noised with ``x`` to the highest kept one (no steps: ``init`` itself)."""
    kept = len(ts) if init is None else kept_steps(len(ts), strength)
    if kept == len(ts):
        return ts, x
    if kept == 0:
        return ts[:0], init.to(x.dtype)
    ts = ts[:kept]
    return ts, schedule.q_sample(init.to(x.dtype), ts[-1].expand(x.shape[0]), x)


def ddim_timesteps(num_timesteps: int, steps: int, discretize: str = "uniform") -> Tensor:
    """The DDIM sub-sequence, ascending, exactly as CompVis ``make_ddim_timesteps`` (note the +1 shift)."""
    check_steps(steps, num_timesteps)
    if discretize == "uniform":
        ts = torch.arange(0, num_timesteps, num_timesteps // steps)
    elif discretize == "quad":
        # CompVis' numpy rule: np.linspace's float64 steps (torch.linspace rounds some S differently)
        ts = torch.from_numpy((np.linspace(0, np.sqrt(num_timesteps * 0.8), steps) ** 2).astype(np.int64))
    else:
        raise UserError(f"unknown sampler.discretize={discretize!r}; choose uniform or quad")
    if int(ts[-1]) + 1 >= num_timesteps:
        raise UserError(f"sampler.steps={steps}: the CompVis uniform rule range(0, {num_timesteps}, "
                        f"{num_timesteps // steps}) + 1 reaches t={int(ts[-1]) + 1}; pick a divisor of {num_timesteps} "
                        f"up to {num_timesteps // 2}, e.g. 10, 20, 50, 100, 200, 250")
    return ts + 1


def _ddim_alphas(schedule: NoiseSchedule, ts: Tensor) -> tuple[Tensor, Tensor]:
    """ā at the sub-sequence and the "previous" ā (CompVis: ā_0 before the first step, not 1), float64."""
    a_all = schedule.alphas_cumprod.to(ts.device, torch.float64)
    return a_all[ts], torch.cat([a_all[:1], a_all[ts[:-1]]])


def _ddim_step(x: Tensor, eps: Tensor, a: Tensor, a_prev: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """One deterministic DDIM update x_t -> x_prev (noise added by the caller) and the x0 estimate."""
    x0 = x0_from_eps(x, eps, a.sqrt().to(x.dtype), (1 - a).sqrt().to(x.dtype))
    direction = (1 - a_prev - sigma**2).sqrt().to(x.dtype) * eps
    return a_prev.sqrt().to(x.dtype) * x0 + direction, x0


def _subsequence_steps(steps: int, num_timesteps: int, options: dict) -> None:
    """DDIM / PLMS: the CompVis sub-sequence of ``steps`` timesteps must exist."""
    ddim_timesteps(num_timesteps, steps, options.get("discretize", "uniform"))


def _respaced_steps(steps: int, num_timesteps: int, options: dict) -> None:
    """DDPM: 1..T of the trained timesteps."""
    check_steps(steps, num_timesteps)


def _report(callback: Callback | None, ts: Tensor, i: int, a: Tensor, x: Tensor, x0: Tensor) -> None:
    """Tell the callback (if any) that the step at ``ts[i]`` (ā = ``a``) is done (steps count up as ``i`` goes down)."""
    if callback is not None:
        callback(step_info(len(ts) - 1 - i, len(ts), x, x0, ts[i], sigma_of(a)))


@steps_rule(_subsequence_steps)
@torch.no_grad()
def sample_ddim(
    model: EpsModel,
    x: Tensor,
    schedule: NoiseSchedule,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    steps: int = 50,
    eta: float = 0.0,
    discretize: str = "uniform",
    generator: Generators = None,
    init: Tensor | None = None,
    strength: float = 1.0,
) -> Tensor:
    """DDIM (Song et al. 2021, Eq. 12): deterministic for eta=0, DDPM-like variance for eta=1."""
    extra_args = extra_args or {}
    ts, x = img2img_start(ddim_timesteps(schedule.num_timesteps, steps, discretize).to(x.device), x, schedule,
                          init, strength)
    alphas, alphas_prev = _ddim_alphas(schedule, ts)
    for i in reversed(range(len(ts))):
        t = ts[i].expand(x.shape[0])
        a, a_prev = alphas[i], alphas_prev[i]
        eps = model(x, t, **extra_args)
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
        x, x0 = _ddim_step(x, eps, a, a_prev, sigma)
        if eta > 0:
            x = x + sigma.to(x.dtype) * randn_like(x, generator)
        _report(callback, ts, i, a, x, x0)
    return x


@steps_rule(_subsequence_steps)
@torch.no_grad()
def sample_plms(
    model: EpsModel,
    x: Tensor,
    schedule: NoiseSchedule,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    steps: int = 50,
    discretize: str = "uniform",
    generator: Generators = None,
    init: Tensor | None = None,
    strength: float = 1.0,
) -> Tensor:
    """PLMS (Liu et al. 2022, Alg. 2 as in CompVis): Adams–Bashforth on ε, 2-evaluation warm-up; S+1 calls."""
    extra_args = extra_args or {}
    ts, x = img2img_start(ddim_timesteps(schedule.num_timesteps, steps, discretize).to(x.device), x, schedule,
                          init, strength)
    alphas, alphas_prev = _ddim_alphas(schedule, ts)
    zero = alphas.new_zeros(())
    old: list[Tensor] = []
    for i in reversed(range(len(ts))):
        t = ts[i].expand(x.shape[0])
        eps = model(x, t, **extra_args)
        if not old:  # pseudo improved Euler: evaluate again at the DDIM prediction for the next timestep
            x_next, _ = _ddim_step(x, eps, alphas[i], alphas_prev[i], zero)
            eps_next = model(x_next, ts[max(i - 1, 0)].expand(x.shape[0]), **extra_args)
            eps_prime = (eps + eps_next) / 2
        elif len(old) == 1:
            eps_prime = (3 * eps - old[-1]) / 2
        elif len(old) == 2:
            eps_prime = (23 * eps - 16 * old[-1] + 5 * old[-2]) / 12
        else:
            eps_prime = (55 * eps - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
        x, x0 = _ddim_step(x, eps_prime, alphas[i], alphas_prev[i], zero)
        old = [*old, eps][-3:]
        _report(callback, ts, i, alphas[i], x, x0)
    return x


@steps_rule(_respaced_steps)
@torch.no_grad()
def sample_ddpm(
    model: EpsModel,
    x: Tensor,
    schedule: NoiseSchedule,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    steps: int = 1000,
    generator: Generators = None,
    init: Tensor | None = None,
    strength: float = 1.0,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) with posterior variance β̃, respaced to ``steps``."""
    extra_args = extra_args or {}
    T = schedule.num_timesteps
    check_steps(steps, T)
    ts = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().unique().to(x.device)
    ts, x = img2img_start(ts, x, schedule, init, strength)
    a_all = schedule.alphas_cumprod.to(x.device, torch.float64)
    for i in reversed(range(len(ts))):
        a = a_all[ts[i]]
        a_prev = a_all[ts[i - 1]] if i > 0 else a.new_ones(())
        beta = 1 - a / a_prev  # the respaced beta between the two kept timesteps
        eps = model(x, ts[i].expand(x.shape[0]), **extra_args)
        x0 = x0_from_eps(x, eps, a.sqrt().to(x.dtype), (1 - a).sqrt().to(x.dtype))
        mean = ((a_prev.sqrt() * beta / (1 - a)).to(x.dtype) * x0
                + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a)).to(x.dtype) * x)
        x = mean + ((beta * (1 - a_prev) / (1 - a)).sqrt().to(x.dtype) * randn_like(x, generator) if i > 0 else 0)
        _report(callback, ts, i, a, x, x0)
    return x


def get_sampler(name: str) -> Callable[..., Tensor]:
    """A sampler function by name: ddpm, ddim, plms, euler, euler_a, heun, dpmpp_2m."""
    from ldmkit.diffusion import k_samplers

    table = {"ddpm": sample_ddpm, "ddim": sample_ddim, "plms": sample_plms, "euler": k_samplers.sample_euler,
             "euler_a": k_samplers.sample_euler_ancestral, "heun": k_samplers.sample_heun,
             "dpmpp_2m": k_samplers.sample_dpmpp_2m}
    if name not in table:
        raise UserError(f"unknown sampler {name!r}; choose one of {', '.join(table)}")
    return table[name]


def _boolean(key: str, value: Any) -> None:
    """A true/false sampler option, else a one-line error naming it."""
    if not isinstance(value, bool):
        raise UserError(f"sampler.{key}={value!r}: must be true or false")


def _noise_scale(key: str, value: Any) -> None:
    """A finite noise scale >= 0 (eta), else a one-line error naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"sampler.{key}={value!r}: must be a number")
    if not (math.isfinite(value) and value >= 0):
        raise UserError(f"sampler.{key}={value}: must be a finite number >= 0 (0 = deterministic)")


OPTION_RULES: dict[str, Callable[[str, Any], None]] = {"quantize": _boolean, "eta": _noise_scale}  # wherever taken


def check_sampler(sampler: Callable[..., Tensor], num_timesteps: int) -> None:
    """Stop on step counts and options the sampler cannot use (one line), before any sampling starts: ``steps``
    by the rule the sampler declares (``steps_rule``; none declared: at least 1), other options by ``OPTION_RULES``."""
    func = getattr(sampler, "func", sampler)
    defaults = {k: p.default for k, p in inspect.signature(func).parameters.items() if p.default is not p.empty}
    options = {**defaults, **getattr(sampler, "keywords", {})}
    if "steps" not in options:
        return
    check_whole(options["steps"], "sampler.steps")
    getattr(func, "steps_rule", any_steps)(options["steps"], num_timesteps, options)
    for key, rule in OPTION_RULES.items():
        if key in options:
            rule(key, options[key])
