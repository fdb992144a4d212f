"""σ -> t of the σ-space samplers as k-diffusion's ``CompVisDenoiser``: log-σ interpolation by default,
the nearest trained timestep with ``quantize``. Reference numbers: k-diffusion 4601bf0,
``DiscreteSchedule.sigma_to_t`` on this schedule (float32 ā), copied here."""

import math
from functools import partial

import pytest
import torch

from ldmkit.diffusion.k_samplers import model_sigmas, sample_dpmpp_2m, sigma_to_t, t_to_sigma
from ldmkit.diffusion.objectives import to_eps
from ldmkit.diffusion.samplers import check_sampler, get_sampler
from ldmkit.diffusion.schedule import NoiseSchedule
from ldmkit.errors import UserError

SCHED = NoiseSchedule("linear", 1000, 0.0015, 0.0195)
# k-diffusion: CompVisDenoiser(quantize=False).sigma_to_t(get_sigmas_karras(20, σ_min, σ_max)) on SCHED
KDIFF_KARRAS20_T = [999.0, 973.16675, 945.28821, 915.03839, 882.00659, 845.66913, 805.34552, 760.13434,
                    708.82391, 649.77893, 580.84363, 499.46619, 403.71582, 295.56601, 186.30779, 96.09597,
                    39.44258, 12.81926, 3.00697, 0.0]
KDIFF_KARRAS5_T = [999.0, 855.09747, 616.70251, 161.15178, 0.0]


def test_sigma_to_t_interpolates_log_sigma_and_quantize_rounds():
    toy = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    sig = torch.tensor([1.0, 4.0, 8.0, 2**0.25, 1.5, 3.0, 0.5, 16.0], dtype=torch.float64)
    t = sigma_to_t(sig, toy)
    assert t.is_floating_point() and torch.equal(t[:3], torch.tensor([0.0, 2.0, 3.0], dtype=torch.float64))
    # between trained σs: the fraction of the way in log σ (2^¼: 0.25, 1.5: log2(1.5), 3: 1 + log2(1.5)); outside: clamped
    expected = [0.25, math.log2(1.5), 1 + math.log2(1.5), 0.0, 3.0]
    torch.testing.assert_close(t[3:], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    assert sigma_to_t(sig, toy, quantize=True).tolist() == [0, 2, 3, 0, 1, 2, 0, 3]
    torch.testing.assert_close(t_to_sigma(t[:6], toy), sig[:6], rtol=1e-12, atol=0)  # its inverse

    sigmas = model_sigmas(SCHED)  # every trained σ maps to its own integer timestep exactly
    assert torch.equal(sigma_to_t(sigmas, sigmas), torch.arange(1000, dtype=torch.float64))
    real = sigma_to_t(torch.tensor([1.0, 10.0], dtype=torch.float64), sigmas)
    torch.testing.assert_close(real, torch.tensor([254.04065, 736.80096], dtype=torch.float64), rtol=0, atol=1e-3)
    assert sigma_to_t(torch.tensor([1.0, 10.0]), sigmas, quantize=True).tolist() == [254, 737]


@pytest.mark.parametrize("quantize", [False, True])
def test_karras_run_calls_the_model_at_fractional_timesteps_unless_quantized(quantize):
    seen = []

    def eps_model(x, t):
        seen.append(t[0].item())
        assert t.shape == (x.shape[0],)
        return 0.1 * x

    x = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    get_sampler("dpmpp_2m")(eps_model, x, SCHED, steps=20, karras=True, quantize=quantize)
    reference = torch.tensor(KDIFF_KARRAS20_T, dtype=torch.float64)
    if quantize:  # k-diffusion quantize=True: the nearest trained timestep (differs by up to 0.47)
        assert seen == sigma_to_t(t_to_sigma(reference, model_sigmas(SCHED)), model_sigmas(SCHED), True).tolist()
        assert all(isinstance(v, int) for v in seen)
    else:
        torch.testing.assert_close(torch.tensor(seen, dtype=torch.float64), reference, rtol=0, atol=1e-3)
        assert max(abs(v - round(v)) for v in seen) > 0.45


def test_fractional_t_converts_v_and_x0_predictions_at_the_interpolated_sigma():
    x, out = torch.randn(3, 2, 2, 2), torch.randn(3, 2, 2, 2)
    whole = torch.tensor([10, 500, 999])
    for kind in ("v", "x0"):  # an integer-valued float t = the trained timestep
        torch.testing.assert_close(to_eps(kind, SCHED, out, x, whole.double()), to_eps(kind, SCHED, out, x, whole))
    t = torch.tensor([254.04065, 0.5, 998.25], dtype=torch.float64)
    sigma = t_to_sigma(t, model_sigmas(SCHED)).float().view(-1, 1, 1, 1)
    a, s = (1 + sigma**2).rsqrt(), sigma * (1 + sigma**2).rsqrt()
    torch.testing.assert_close(to_eps("v", SCHED, out, x, t), a * out + s * x)
    torch.testing.assert_close(to_eps("x0", SCHED, out, x, t), (x - a * out) / s)
    assert abs(sigma[0].item() - 1.0) < 1e-4  # σ(t(1.0)) = 1


def test_quantize_must_be_a_boolean():
    sampler = get_sampler("euler")
    with pytest.raises(UserError, match="sampler.quantize='yes': must be true or false"):
        check_sampler(partial(sampler, quantize="yes"), 1000)


def test_fractional_t_reaches_the_unet_through_guidance_and_a_v_model():
    from ldmkit.models.conditioners import ClassConditioner
    from ldmkit.models.first_stage import IdentityStage
    from ldmkit.models.ldm import LatentDiffusion
    from ldmkit.models.unet import UNetModel

    torch.manual_seed(0)
    unet = UNetModel(in_channels=3, out_channels=3, model_channels=64, channel_mult=(1,), num_res_blocks=1,
                     attention_resolutions=(), num_head_channels=32, use_spatial_transformer=True, context_dim=8)
    for weight in unet.parameters():  # off the zero init of the output conv (64 channels: GroupNorm groups of
        # 2 keep part of the time embedding's per-channel shift, groups of 1 would remove it)
        weight.data.normal_(0, 0.1)
    ldm = LatentDiffusion(unet, ClassConditioner(2, 8), SCHED, IdentityStage(resolution=4), (3, 4, 4), "v").eval()
    seen = []
    unet.register_forward_pre_hook(lambda _, args: seen.append(args[1].clone()))
    ldm.sample(torch.tensor([0, 1]), sampler=partial(sample_dpmpp_2m, steps=5), guidance=2.0)
    assert all(t.shape == (4,) and t.is_floating_point() for t in seen)  # cond + uncond in one batch
    torch.testing.assert_close(seen[1][:2].double(), torch.tensor(KDIFF_KARRAS5_T[1:2] * 2, dtype=torch.float64),
                               rtol=0, atol=1e-3)
    with torch.no_grad():  # the embedding is not truncated: t between two trained steps gives its own output
        x, context = torch.randn(1, 3, 4, 4), torch.randn(1, 1, 8)
        out = [unet(x, torch.tensor([t]), context=context) for t in (254.0, 254.5, 255.0)]
    assert (out[1] - out[0]).abs().max() > 1e-4 and (out[1] - out[2]).abs().max() > 1e-4
