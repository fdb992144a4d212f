"""The noise schedules equal the CompVis formulas; q(x_t | x_0) is the closed form."""

import math

import numpy as np
import pytest
import torch

from ldmkit.diffusion.schedule import NoiseSchedule, make_betas


def test_linear_is_compvis_scaled_linear():
    betas = make_betas("linear", 1000, 0.0015, 0.0195).numpy()
    expected = np.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=np.float64) ** 2
    np.testing.assert_allclose(betas, expected, rtol=0, atol=1e-15)
    assert betas[0] == pytest.approx(0.0015) and betas[-1] == pytest.approx(0.0195)


def test_sqrt_linear_and_cosine():
    np.testing.assert_allclose(make_betas("sqrt_linear", 10, 1e-4, 2e-2).numpy(),
                               np.linspace(1e-4, 2e-2, 10) ** 0.5, atol=1e-15)
    s, T = 8e-3, 50
    f = [math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    expected = [min(1 - f[t + 1] / f[t], 0.999) for t in range(T)]
    np.testing.assert_allclose(make_betas("cosine", T).numpy(), expected, atol=1e-12)


def test_unknown_schedule_names_choices():
    with pytest.raises(ValueError, match="linear, cosine, sqrt_linear"):
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
