"""Correctness guards for the speed switches: with a switch on, outputs (and gradients, and trained weights)
equal those with it off within the dtype's tolerance, so no optimisation silently changes results."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from conftest import run_cli, run_inprocess
from safetensors.torch import load_file

from ldmkit.diffusion.samplers import get_sampler
from ldmkit.diffusion.schedule import NoiseSchedule
from ldmkit.errors import UserError
from ldmkit.models.conditioners import ClassConditioner
from ldmkit.models.first_stage import IdentityStage
from ldmkit.models.ldm import LatentDiffusion
from ldmkit.models.unet import UNetModel
from ldmkit.speed import Speed, for_sampling, prepare, set_threads, training_precision


def _unet(seed: int = 0) -> UNetModel:
    """A small cross-attention UNet with every weight moved off its (partly zero) init."""
    torch.manual_seed(seed)
    unet = UNetModel(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(1, 2), num_head_channels=16, use_spatial_transformer=True, context_dim=24)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return unet


def _inputs(batch: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents, timesteps and a context sequence."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, 8, 8, generator=g), torch.tensor([1, 250, 500, 999][:batch]), \
        torch.randn(batch, 5, 24, generator=g)


def _output_and_grads(unet: torch.nn.Module, x, t, ctx) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The UNet's output and the gradients of a fixed loss."""
    unet.zero_grad(set_to_none=True)
    out = unet(x, t, context=ctx)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return out.detach(), {n: p.grad.detach().clone() for n, p in unet.named_parameters()}


def test_channels_last_same_output_and_gradients_and_state_dict_names():
    x, t, ctx = _inputs()
    plain = _unet()
    fast = prepare(copy.deepcopy(plain), Speed(channels_last=True))
    assert fast.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert list(fast.state_dict()) == list(plain.state_dict())
    out_a, grads_a = _output_and_grads(plain, x, t, ctx)
    out_b, grads_b = _output_and_grads(fast, x, t, ctx)
    assert out_a.abs().mean() > 0.05  # a real output, not zeros
    torch.testing.assert_close(out_b, out_a, rtol=1e-4, atol=1e-5)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_compile_same_output_and_state_dict_names():
    x, t, ctx = _inputs(2)
    plain = _unet().eval()
    fast = prepare(copy.deepcopy(plain), Speed(compile=True))
    assert list(fast.state_dict()) == list(plain.state_dict())  # checkpoints stay loadable
    with torch.no_grad():
        torch.testing.assert_close(fast(x, t[:2], context=ctx), plain(x, t[:2], context=ctx), rtol=1e-4, atol=1e-5)


def test_threads_do_not_change_results():
    x, t, ctx = _inputs()
    unet = _unet().eval()
    before = torch.get_num_threads()
    try:
        with torch.no_grad():
            set_threads(1)
            one = unet(x, t, context=ctx)
            set_threads(2)
            two = unet(x, t, context=ctx)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(one, two, rtol=1e-4, atol=1e-5)


def _ldm() -> LatentDiffusion:
    """A class-conditional LDM (cross-attention to a label embedding) on the identity first stage (3 x 8 x 8)."""
    torch.manual_seed(0)
    cond = ClassConditioner(num_classes=4, embed_dim=24)
    ldm = LatentDiffusion(_unet(), cond, NoiseSchedule(), IdentityStage(), latent_shape=(3, 8, 8)).eval()
    with torch.no_grad():
        cond.embedding.weight.normal_()
    return ldm


@pytest.mark.parametrize("switches", [{"autocast": "bf16"}, {"autocast": "bf16", "channels_last": True}])
def test_reduced_precision_sampling_matches_float32_within_bf16_tolerance(switches):
    labels = torch.tensor([0, 1, 2, 3])
    generators = [torch.Generator().manual_seed(i) for i in range(4)]
    reference = _ldm().sample(labels, sampler=partial(get_sampler("ddim"), steps=10), guidance=2.0, generator=generators)
    fast = for_sampling(_ldm(), Speed(**switches))
    assert fast.sample_dtype is torch.bfloat16
    generators = [torch.Generator().manual_seed(i) for i in range(4)]
    out = fast.sample(labels, sampler=partial(get_sampler("ddim"), steps=10), guidance=2.0, generator=generators)
    assert out.dtype == torch.float32 and out.shape == reference.shape
    assert reference.std() > 0.1
    # bf16 keeps 8 bits of mantissa: the UNet's noise estimate is off by ~1e-2 per step, the images by a few 1e-2
    assert (out - reference).abs().mean() < 0.03
    assert (out - reference).abs().max() < 0.3
    assert not torch.equal(out, reference)  # it really ran in bf16


def test_training_precision_follows_speed_autocast_without_contradiction():
    assert training_precision("32-true", Speed()) == "32-true"
    assert training_precision("32-true", Speed(autocast="bf16")) == "bf16-mixed"
    assert training_precision("bf16-mixed", Speed(autocast="bf16")) == "bf16-mixed"
    assert training_precision("bf16-mixed", Speed()) == "bf16-mixed"
    with pytest.raises(UserError, match="contradicts trainer.precision=16-mixed"):
        training_precision("16-mixed", Speed(autocast="bf16"))


@pytest.mark.parametrize("node, message", [
    ({"autocast": "fp8"}, "speed.autocast=fp8 is not one of: null, bf16, fp16"),
    ({"threads": 0}, "speed.threads=0 must be a positive integer"),
    ({"fast": True}, "speed: unknown keys ['fast']"),
])
def test_bad_switches_are_one_line_errors(node, message):
    with pytest.raises(UserError) as err:
        Speed.from_config(node)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_train_ldm_channels_last_trains_the_same_weights(tiny_ae, tmp_path):
    common = ("train-ldm", f"ae={tiny_ae}", "cond=class", "dataset.size=24", "loader.batch_size=4",
              "unet.model_channels=32", "unet.num_head_channels=16", "trainer.max_steps=3", "images.count=1",
              "images.steps=2", "optim.lr=5e-4")  # the tolerance below is a fraction of one step at this rate
    run_cli(*common, f"out={tmp_path}/plain")
    run_cli(*common, "speed.channels_last=true", "speed.threads=2", f"out={tmp_path}/fast")
    plain, fast = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("plain", "fast"))
    assert list(plain) == list(fast)
    moved = 0
    for key, value in plain.items():
        # Adam's m/sqrt(v) turns float noise in near-zero gradients into up to a few % of one step (lr 5e-4)
        torch.testing.assert_close(fast[key], value, rtol=1e-3, atol=5e-5, msg=key)
        moved += int(key.endswith("weight") and value.abs().sum() > 0)
    assert moved > 10


def test_sample_cli_rejects_a_bad_switch_in_one_line(tmp_path):
    proc = run_inprocess("sample", "ckpt=nowhere", "speed.autocast=fp8", f"out={tmp_path}/s")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: speed.autocast=fp8 is not one of: null, bf16, fp16"]
    assert not list(tmp_path.rglob("*.png"))
