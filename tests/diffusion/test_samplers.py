"""Every sampler on a Gaussian data distribution (closed-form optimal ε), and DDIM / PLMS against a literal
transcription of the CompVis DDIMSampler / PLMSSampler loops (numpy, float64)."""

import numpy as np
import pytest
import torch

from ldmkit.diffusion.k_samplers import model_sigmas, t_to_sigma
from ldmkit.diffusion.samplers import get_sampler
from ldmkit.diffusion.schedule import NoiseSchedule
from ldmkit.errors import UserError

SCHED = NoiseSchedule("linear", 1000, 0.0015, 0.0195)
MU, SD = 0.5, 0.3


def alpha_bar(t):
    """ā at timesteps t: the schedule's, or at a fractional t 1/(1+σ(t)²) with σ interpolated in log σ."""
    if t.is_floating_point():
        return 1 / (1 + t_to_sigma(t, model_sigmas(SCHED)) ** 2)
    return SCHED.alphas_cumprod[t]


def gaussian_eps(x, t):
    """E[ε | x_t] when x0 ~ N(MU, SD²): √(1−ā)(x_t − √ā MU) / (ā SD² + 1 − ā)."""
    a = alpha_bar(t).view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * SD**2 + 1 - a)


# (sampler, options, std tolerance): first-order samplers need many steps, higher-order ones few; the ancestral
# ones keep a small known under-dispersion (DDPM's lower-bound variance beta-tilde).
CASES = [
    ("ddpm", dict(steps=1000), 0.015),
    ("ddim", dict(steps=500), 0.005),
    ("ddim", dict(steps=500, eta=1.0), 0.02),
    ("ddim", dict(steps=200, discretize="quad"), 0.01),
    ("plms", dict(steps=100), 0.01),
    ("euler", dict(steps=200), 0.015),
    ("euler_a", dict(steps=500), 0.02),
    ("heun", dict(steps=20), 0.015),
    ("dpmpp_2m", dict(steps=20), 0.01),
    ("dpmpp_2m", dict(steps=100, karras=False), 0.02),  # σ between trained steps, ε at the fractional t
]


@pytest.mark.parametrize("name,options,std_tol", CASES)
def test_samplers_recover_a_gaussian(name, options, std_tol):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 1, 1, 1, generator=gen, dtype=torch.float64)
    calls = []

    def model(x, t):
        calls.append(1)
        return gaussian_eps(x, t)

    out = get_sampler(name)(model, x, SCHED, generator=gen, **options)
    # the N(0, I) start misses the true x_T mean √ā_T·MU (0.034 at t=999, 0.065 at quad's t=801)
    assert abs(out.mean().item() - MU) < 0.02 and abs(out.std().item() - SD) < std_tol, (out.mean(), out.std())
    expected = {"plms": options["steps"] + 1, "heun": 2 * options["steps"] - 1}.get(name, options["steps"])
    if name == "ddim" and options.get("discretize") != "quad":
        expected = len(range(0, 1000, 1000 // options["steps"]))
    assert len(calls) == expected


def test_deterministic_samplers_repeat_and_stochastic_follow_the_seed():
    x = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    for name in ("ddim", "plms", "euler", "heun", "dpmpp_2m"):
        a = get_sampler(name)(gaussian_eps, x, SCHED, steps=10)
        assert torch.equal(a, get_sampler(name)(gaussian_eps, x, SCHED, steps=10))
    for name in ("ddpm", "euler_a"):
        a = get_sampler(name)(gaussian_eps, x, SCHED, steps=10, generator=torch.Generator().manual_seed(3))
        b = get_sampler(name)(gaussian_eps, x, SCHED, steps=10, generator=torch.Generator().manual_seed(3))
        c = get_sampler(name)(gaussian_eps, x, SCHED, steps=10, generator=torch.Generator().manual_seed(4))
        assert torch.equal(a, b) and not torch.equal(a, c)


def _nonlinear_eps(x, t):
    """A non-linear ε-model, so history-based samplers are tested off the linear case."""
    return torch.sin(3 * x) * 0.5 + 0.1 * x + 0.0002 * t.view(-1, 1, 1, 1).to(x.dtype)


def _compvis_reference(kind: str, x: np.ndarray, steps: int, eta: float = 0.0) -> np.ndarray:
    """The CompVis DDIMSampler.ddim_sampling / PLMSSampler.plms_sampling loops, uniform discretisation."""
    betas = np.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=np.float64) ** 2
    ac = np.cumprod(1.0 - betas).astype(np.float32).astype(np.float64)  # CompVis keeps a float32 buffer
    ddim_t = np.asarray(list(range(0, 1000, 1000 // steps))) + 1
    alphas, alphas_prev = ac[ddim_t], np.asarray([ac[0]] + ac[ddim_t[:-1]].tolist())
    sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    eps_fn = lambda v, t: _nonlinear_eps(torch.from_numpy(v), torch.full((v.shape[0],), t)).numpy()  # noqa: E731
    time_range = np.flip(ddim_t)
    total = ddim_t.shape[0]

    def x_prev_and_x0(x, e_t, index):
        a_t, a_prev, sigma_t = alphas[index], alphas_prev[index], sigmas[index]
        pred_x0 = (x - np.sqrt(1 - a_t) * e_t) / np.sqrt(a_t)
        dir_xt = np.sqrt(1.0 - a_prev - sigma_t**2) * e_t
        return np.sqrt(a_prev) * pred_x0 + dir_xt, pred_x0

    old_eps = []
    for i, step in enumerate(time_range):
        index = total - i - 1
        e_t = eps_fn(x, step)
        if kind == "ddim":
            x, _ = x_prev_and_x0(x, e_t, index)
            continue
        t_next = time_range[min(i + 1, len(time_range) - 1)]
        if len(old_eps) == 0:
            x_prev, _ = x_prev_and_x0(x, e_t, index)
            e_t_prime = (e_t + eps_fn(x_prev, t_next)) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x, _ = x_prev_and_x0(x, e_t_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
    return x


@pytest.mark.parametrize("kind,steps", [("ddim", 10), ("ddim", 50), ("plms", 10), ("plms", 50)])
def test_ddim_and_plms_match_the_compvis_loops(kind, steps):
    x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = get_sampler(kind)(_nonlinear_eps, x.clone(), SCHED, steps=steps)
    ref = _compvis_reference(kind, x.numpy().copy(), steps)
    assert np.abs(ours.numpy() - ref).max() < 1e-5


def test_bad_sampler_settings_are_user_errors():
    with pytest.raises(UserError, match="unknown sampler 'lms'; choose one of ddpm, ddim, plms"):
        get_sampler("lms")
    with pytest.raises(UserError, match="pick a divisor of 1000 up to 500"):
        get_sampler("ddim")(gaussian_eps, torch.zeros(1, 1, 1, 1), SCHED, steps=3)
    with pytest.raises(UserError, match="sampler.steps must be"):
        get_sampler("ddpm")(gaussian_eps, torch.zeros(1, 1, 1, 1), SCHED, steps=0)


def test_per_sample_generators_make_noise_independent_of_the_batch():
    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    x = torch.zeros(3, 1, 2, 2)
    batch = get_sampler("euler_a")(gaussian_eps, torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(9)),
                                   SCHED, steps=5, generator=gens([10, 11, 12]))
    start = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(9))
    single = get_sampler("euler_a")(gaussian_eps, start[1:2], SCHED, steps=5, generator=gens([11]))
    torch.testing.assert_close(batch[1:2], single)
    from ldmkit.diffusion.samplers import randn_like
    torch.testing.assert_close(randn_like(x, gens([1, 2, 3]))[2], randn_like(x[:1], gens([3]))[0])
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        randn_like(x, gens([1, 2]))


# --- img2img (SDEdit): the same truncation for every sampler ---------------------------------------------------

# (sampler, first timestep run at strength 0.5 of 10 steps, model calls): the discrete ones start at the highest of
# their 5 lowest timesteps; euler / euler_a at t(σ) of the 6th of 10 σs evenly spaced in t; heun / dpmpp_2m at
# the 6th Karras σ (a fractional t)
IMG2IMG = [("ddpm", 444, 5), ("ddim", 401, 5), ("plms", 401, 6), ("euler", 444.0, 5), ("euler_a", 444.0, 5),
           ("heun", 537.3317, 9), ("dpmpp_2m", 537.3317, 5)]


@pytest.mark.parametrize("name,first_t,calls", IMG2IMG, ids=[c[0] for c in IMG2IMG])
def test_img2img_runs_the_last_steps_from_the_noised_init(name, first_t, calls):
    init = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    seen = []

    def model(x, t):
        seen.append((t[0].item(), x.clone()))
        return gaussian_eps(x, t)

    def run(**kw):
        generators = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]
        return get_sampler(name)(model, noise, SCHED, steps=10, generator=generators, **kw)

    plain = run()
    assert torch.equal(run(init=init, strength=1.0), plain)  # the same noise draws, bit for bit
    assert torch.equal(run(init=init, strength=0.0), init)  # no step
    seen.clear()
    run(init=init, strength=0.5)
    t, x = seen[0]
    assert len(seen) == calls and t == pytest.approx(first_t, abs=1e-4)
    a = alpha_bar(torch.tensor([t])).float()  # the model sees z0 noised with the start noise to that t
    torch.testing.assert_close(x, a.sqrt() * init + (1 - a).sqrt() * noise)


def test_img2img_strength_is_checked_and_counts_steps_as_compvis():
    from ldmkit.diffusion.samplers import kept_steps

    assert [kept_steps(50, 0.6), kept_steps(100, 0.29), kept_steps(10, 0.55), kept_steps(7, 1)] == [30, 29, 5, 7]
    for bad in (1.5, -0.1, float("nan"), True, "a"):
        with pytest.raises(UserError, match="strength=.*: must be a number in \\[0, 1\\]"):
            get_sampler("ddim")(gaussian_eps, torch.zeros(1, 1, 1, 1), SCHED, steps=10,
                                init=torch.zeros(1, 1, 1, 1), strength=bad)


# --- what every sampler reports and checks ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ddpm", "ddim", "plms", "euler", "euler_a", "heun", "dpmpp_2m"])
def test_every_sampler_reports_the_same_step_info(name):
    from ldmkit.diffusion.k_samplers import sigma_to_t

    infos = []
    get_sampler(name)(gaussian_eps, torch.zeros(2, 1, 2, 2), SCHED, steps=10, callback=infos.append,
                      generator=torch.Generator().manual_seed(0))
    assert [info["i"] for info in infos] == list(range(10)) and {info["total"] for info in infos} == {10}
    assert all(set(info) == {"i", "total", "x", "denoised", "t", "sigma"} for info in infos)
    t = [info["t"] for info in infos]
    sigma = torch.tensor([info["sigma"] for info in infos], dtype=torch.float64)
    assert (sigma.diff() < 0).all()  # from noise down to the data
    if name in ("ddpm", "ddim", "plms"):  # a discrete sampler's σ is that of its trained timestep
        assert all(isinstance(v, int) for v in t) and torch.equal(sigma, model_sigmas(SCHED)[t])
    else:  # a σ-space sampler's t is where it calls the model
        assert torch.equal(torch.tensor(t, dtype=torch.float64), sigma_to_t(sigma, model_sigmas(SCHED)))


def test_check_sampler_applies_the_rule_a_sampler_declares():
    from functools import partial

    from ldmkit.diffusion.k_samplers import sample_euler
    from ldmkit.diffusion.samplers import check_sampler, check_steps, sample_ddim, sample_ddpm, steps_rule

    @steps_rule(lambda steps, num_timesteps, options: check_steps(steps, num_timesteps // 100))
    def declared(model, x, schedule, steps=20, eta=0.0):
        return x

    def undeclared(model, x, schedule, steps=0):
        return x

    check_sampler(partial(sample_euler, steps=2000), 1000)  # σ-space: any count from 1
    for sampler, error in [(declared, "sampler.steps must be in 1..10, got 20"), (undeclared, "must be >= 1, got 0"),
                           (partial(declared, steps=5, eta=-1), "sampler.eta=-1: must be a finite number >= 0"),
                           (partial(sample_ddpm, steps=2000), "in 1..1000, got 2000"),
                           (partial(sample_ddim, steps=3), "pick a divisor of 1000"),
                           (partial(sample_ddim, steps=2.5), "sampler.steps=2.5: must be a whole number")]:
        with pytest.raises(UserError, match=error):
            check_sampler(sampler, 1000)
