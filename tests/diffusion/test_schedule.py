"""The noise schedules equal the CompVis formulas; q(x_t | x_0) is the closed form."""

import math

import numpy as np
import pytest
import torch

from ldmkit.diffusion.schedule import NoiseSchedule, make_betas
from ldmkit.errors import UserError


def test_linear_is_compvis_scaled_linear():
    betas = make_betas("linear", 1000, 0.0015, 0.0195).numpy()
    expected = np.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=np.float64) ** 2
    np.testing.assert_allclose(betas, expected, rtol=0, atol=1e-15)
    assert betas[0] == pytest.approx(0.0015) and betas[-1] == pytest.approx(0.0195)


def test_sqrt_linear_sqrt_and_cosine():
    # CompVis make_beta_schedule: "sqrt_linear" is linear in beta, "sqrt" its square root
    np.testing.assert_allclose(make_betas("sqrt_linear", 10, 1e-4, 2e-2).numpy(), np.linspace(1e-4, 2e-2, 10), atol=1e-15)
    np.testing.assert_allclose(make_betas("sqrt", 10, 1e-4, 2e-2).numpy(),
                               np.linspace(1e-4, 2e-2, 10) ** 0.5, atol=1e-15)
    sched = NoiseSchedule("sqrt_linear", 1000, 0.0015, 0.0195)
    assert sched.betas[0].item() == pytest.approx(0.0015)
    assert sched.alphas_cumprod[-1].item() == pytest.approx(np.prod(1 - np.linspace(0.0015, 0.0195, 1000)), rel=1e-4)
    assert 2e-5 < sched.alphas_cumprod[-1].item() < 3e-5
    s, T = 8e-3, 50
    f = [math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    expected = [min(1 - f[t + 1] / f[t], 0.999) for t in range(T)]
    np.testing.assert_allclose(make_betas("cosine", T).numpy(), expected, atol=1e-12)


def test_unknown_schedule_names_choices():
    with pytest.raises(UserError, match="linear, cosine, sqrt_linear, sqrt"):
        make_betas("quadratic", 10)


def test_alphas_cumprod_and_q_sample():
    sched = NoiseSchedule("linear", 1000, 0.0015, 0.0195)
    betas = np.linspace(0.0015**0.5, 0.0195**0.5, 1000) ** 2
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-6)
    x0, noise = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    a = torch.tensor(np.cumprod(1 - betas)[[0, 10, 500, 999]], dtype=torch.float32).view(4, 1, 1, 1)
    torch.testing.assert_close(sched.q_sample(x0, t, noise), a.sqrt() * x0 + (1 - a).sqrt() * noise)
    torch.testing.assert_close(sched.predict_x0(sched.q_sample(x0, t, noise), t, noise), x0, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_schedule_stays_float32_whatever_the_module_dtype(dtype):
    """16-true / bf16-true training casts the model: the schedule must not follow (cosine ā_T would become 0)."""
    sched = NoiseSchedule("cosine", 1000)
    before = {k: v.clone() for k, v in sched._buffers.items()}
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), sched).to(dtype)
    assert model[0].weight.dtype == dtype
    for name, value in before.items():
        assert getattr(sched, name).dtype == torch.float32 and torch.equal(getattr(sched, name), value), name
    assert sched.alphas_cumprod[-1] > 0 and sched.sqrt_alphas_cumprod[0] != sched.sqrt_alphas_cumprod[1]
    x0 = torch.randn(2, 3, 4, 4, dtype=dtype)
    assert sched.q_sample(x0, torch.tensor([0, 999]), torch.randn_like(x0)).dtype == dtype  # fits the cast UNet
