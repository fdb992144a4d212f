"""Objectives: ε / v / x0 targets on a hand case, conversions back to ε and x0, min-SNR weights."""

import math

import pytest
import torch

from ldmkit.diffusion.objectives import min_snr_weight, snr, target, to_eps, to_x0
from ldmkit.diffusion.schedule import NoiseSchedule
from ldmkit.errors import UserError

SCHED = NoiseSchedule("linear", 1000, 0.0015, 0.0195)


def test_targets_on_a_hand_case():
    t = torch.tensor([0, 500])
    x0, noise = torch.full((2, 1, 1, 1), 2.0), torch.full((2, 1, 1, 1), -1.0)
    a = SCHED.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.equal(target("eps", SCHED, x0, noise, t), noise)
    assert torch.equal(target("x0", SCHED, x0, noise, t), x0)
    v = target("v", SCHED, x0, noise, t)
    torch.testing.assert_close(v, a.sqrt() * -1.0 - (1 - a).sqrt() * 2.0)
    # t=500 of the CompVis linear schedule: a = prod(1 - betas[:501])
    betas = torch.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=torch.float64) ** 2
    a500 = torch.prod(1 - betas[:501]).item()
    assert v[1].item() == pytest.approx(-math.sqrt(a500) - 2 * math.sqrt(1 - a500), rel=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_perfect_prediction_converts_back_to_the_true_eps_and_x0(prediction):
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 4, 4, generator=gen), torch.randn(4, 3, 4, 4, generator=gen)
    t = torch.tensor([1, 100, 600, 998])
    x_t = SCHED.q_sample(x0, t, noise)
    out = target(prediction, SCHED, x0, noise, t)
    torch.testing.assert_close(to_eps(prediction, SCHED, out, x_t, t), noise, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(to_x0(prediction, SCHED, out, x_t, t), x0, atol=2e-3, rtol=1e-3)


def test_min_snr_weights():
    t = torch.tensor([0, 999])
    s = snr(SCHED, t)
    assert s[0] > 5 > s[1]  # low noise: SNR above gamma; high noise: below
    torch.testing.assert_close(min_snr_weight("eps", SCHED, t, 5.0), torch.stack([5 / s[0], torch.tensor(1.0)]))
    torch.testing.assert_close(min_snr_weight("v", SCHED, t, 5.0), torch.stack([5 / (s[0] + 1), s[1] / (s[1] + 1)]))
    torch.testing.assert_close(min_snr_weight("x0", SCHED, t, 5.0), torch.stack([torch.tensor(5.0), s[1]]))
    with pytest.raises(UserError, match="eps, v, x0"):
        target("score", SCHED, torch.zeros(1), torch.zeros(1), torch.tensor([0]))
