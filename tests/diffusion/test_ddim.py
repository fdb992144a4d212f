"""DDIM: CompVis timesteps, exact answer for a point-mass data distribution, determinism and seeds."""

import pytest
import torch

from ldmkit.diffusion.cond import Cond
from ldmkit.diffusion.guidance import guided_eps
from ldmkit.diffusion.samplers import ddim_timesteps, sample_ddim
from ldmkit.diffusion.schedule import NoiseSchedule
from ldmkit.errors import UserError

SCHED = NoiseSchedule("linear", 1000, 0.0015, 0.0195)


def point_mass_eps(c: torch.Tensor):
    """The exact eps-predictor when all data equals ``c``."""
    def eps(x, t, **_):
        a = SCHED.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * c) / (1 - a).sqrt()
    return eps


def test_compvis_timesteps_seen_by_model():
    seen = []

    def model(x, t, **_):
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    sample_ddim(model, torch.randn(2, 3, 4, 4), SCHED, steps=10)
    assert seen == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert ddim_timesteps(1000, 4).tolist() == [1, 251, 501, 751]
    with pytest.raises(UserError, match="1..1000"):
        ddim_timesteps(1000, 0)


def test_point_mass_closed_form():
    c = torch.full((1, 3, 4, 4), 0.7)
    x_T = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    out = sample_ddim(point_mass_eps(c), x_T.clone(), SCHED, steps=20)
    a_T = SCHED.alphas_cumprod[ddim_timesteps(1000, 20)[-1]].double()
    a_0 = SCHED.alphas_cumprod[0].double()
    eps = (x_T.double() - a_T.sqrt() * c) / (1 - a_T).sqrt()
    expected = a_0.sqrt() * c + (1 - a_0).sqrt() * eps   # final "previous alpha" is alphas_cumprod[0]
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-4)


def test_eta0_deterministic_eta1_seeded():
    model = point_mass_eps(torch.zeros(1, 3, 4, 4))
    x = torch.randn(2, 3, 4, 4)
    a = sample_ddim(model, x.clone(), SCHED, steps=10, eta=0.0, generator=torch.Generator().manual_seed(1))
    b = sample_ddim(model, x.clone(), SCHED, steps=10, eta=0.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    c1 = sample_ddim(model, x.clone(), SCHED, steps=10, eta=1.0, generator=torch.Generator().manual_seed(1))
    c2 = sample_ddim(model, x.clone(), SCHED, steps=10, eta=1.0, generator=torch.Generator().manual_seed(1))
    c3 = sample_ddim(model, x.clone(), SCHED, steps=10, eta=1.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(c1, c2) and not torch.allclose(c1, c3)


def test_classifier_free_guidance_combination():
    def eps_fn(x, t, cond):
        calls.append(x.shape[0])
        return x * 0 + cond.context.view(-1, 1, 1, 1)

    calls = []
    guided = guided_eps(eps_fn, 3.0)
    x, t = torch.zeros(2, 1, 2, 2), torch.tensor([5, 5])
    cond = Cond(torch.tensor([2.0, 4.0]))
    uncond = Cond(torch.tensor([1.0, 1.0]))
    out = guided(x, t, cond, uncond)
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([1 + 3 * (2 - 1.0), 1 + 3 * (4 - 1.0)]))
    torch.testing.assert_close(guided_eps(eps_fn, 1.0)(x, t, cond, uncond)[:, 0, 0, 0], torch.tensor([2.0, 4.0]))
    assert calls == [4, 2]  # one batched pass with guidance, one conditional pass at scale 1


def test_quad_timesteps_equal_compvis_float64_rule():
    """CompVis: ((np.linspace(0, sqrt(T * .8), S)) ** 2).astype(int) + 1, in float64 (float32 differed for 43 S)."""
    import numpy as np

    from ldmkit.diffusion.samplers import ddim_timesteps

    assert ddim_timesteps(1000, 6, "quad").tolist() == [1, 33, 129, 289, 513, 801]
    for steps in range(2, 201):
        expected = (np.linspace(0, np.sqrt(1000 * 0.8), steps) ** 2).astype(int) + 1
        assert ddim_timesteps(1000, steps, "quad").tolist() == expected.tolist(), steps
