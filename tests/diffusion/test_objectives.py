"""Objectives: ε / v / x0 targets on a hand case, conversions back to ε and x0, min-SNR weights, timesteps."""

import math

import pytest
import torch

from ldmkit.diffusion.objectives import min_snr_weight, sample_timesteps, snr, target, to_eps, to_x0
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


def test_logit_normal_timesteps_follow_their_distribution():
    torch.manual_seed(0)
    uniform = sample_timesteps(20000, 1000)
    assert uniform.dtype == torch.long and 0 <= uniform.min() < 10 and 990 < uniform.max() <= 999
    for mean in (0.0, -0.5):
        t = sample_timesteps(200000, 1000, "logit_normal", mean, 1.0)
        assert t.dtype == torch.long and 0 <= t.min() and t.max() <= 999
        # t/T = sigmoid(n), n ~ N(mean, 1): the median is T * sigmoid(mean); t < T * sigmoid(-2) has P(n < -2)
        assert abs(t.float().median().item() - 1000 * torch.sigmoid(torch.tensor(mean)).item()) < 10
        below = (t < int(1000 * torch.sigmoid(torch.tensor(-2.0)))).float().mean().item()
        assert abs(below - 0.5 * math.erfc((2 + mean) / math.sqrt(2))) < 0.003  # 5 standard errors
    for kind, std, message in [("lognorm", 1.0, "objective.timesteps='lognorm' is not one of: uniform, logit_normal"),
                               ("logit_normal", 0.0, "objective.timestep_std=0.0 must be > 0")]:
        with pytest.raises(UserError) as err:
            sample_timesteps(4, 1000, kind, 0.0, std)
        assert str(err.value) == message
