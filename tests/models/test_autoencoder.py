"""Tests for the CompVis-layout KL autoencoder (ldmkit.models.autoencoder)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import compat_entries
from torch import nn

from ldmkit.models.autoencoder import AttnBlock, AutoencoderKL, DiagonalGaussian, Downsample, Upsample

TSV = Path(__file__).parents[1] / "fixtures/compat/autoencoder_kl_f4.tsv"

# the constructor arguments in the header of autoencoder_kl_f4.tsv
TSV_KWARGS = dict(
    embed_dim=4,
    z_channels=4,
    resolution=32,
    in_channels=3,
    out_ch=3,
    ch=32,
    ch_mult=[1, 2, 4],
    num_res_blocks=1,
    attn_resolutions=[],
    dropout=0.0,
)


def _tiny(ch_mult=(1, 1, 1), **kw) -> AutoencoderKL:
    """A small model (32 channels everywhere) for behavioural tests."""
    args = dict(embed_dim=3, z_channels=4, ch=32, ch_mult=ch_mult, num_res_blocks=1, resolution=32)
    args.update(kw)
    return AutoencoderKL(**args)


def _smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random but smooth images in [-1, 1]: upsampled low-resolution noise through tanh."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, 4, 4, generator=g)
    return torch.tanh(F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False))


# ---------------------------------------------------------------- CompVis state-dict compatibility


def test_tsv_header_matches_the_arguments_used():
    header = " ".join(line for line in TSV.read_text().splitlines() if line.startswith("#"))
    assert "embed_dim=4" in header and "ch_mult=[1,2,4]" in header and "z_channels=4" in header
    assert "ch=32" in header and "num_res_blocks=1" in header and "attn_resolutions=[]" in header


def test_state_dict_keys_and_shapes_match_compvis_in_order():
    expected = compat_entries("autoencoder_kl_f4")
    assert len(expected) > 100  # the parser actually read the file
    ae = AutoencoderKL(**TSV_KWARGS)
    got = [(k, tuple(v.shape)) for k, v in ae.state_dict().items()]
    assert got == expected


def test_load_compvis_shaped_state_dict_strict():
    g = torch.Generator().manual_seed(1)
    sd = {k: torch.randn(shape, generator=g) for k, shape in compat_entries("autoencoder_kl_f4")}
    ae = AutoencoderKL(**TSV_KWARGS)
    result = ae.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(
        ae.decoder.up[0].block[0].nin_shortcut.weight, sd["decoder.up.0.block.0.nin_shortcut.weight"]
    )
    assert ae.last_layer() is ae.decoder.conv_out.weight
    # up.0 is the finest level: it runs last and feeds norm_out / conv_out
    assert ae.decoder.up[0].block[-1].out_channels == ae.decoder.conv_out.in_channels == 32


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("levels,f", [(2, 2), (3, 4), (4, 8)])
def test_shapes_for_downsampling_factors(levels, f):
    torch.manual_seed(0)
    ae = _tiny(ch_mult=(1,) * levels).eval()
    assert ae.downsample_factor == f and ae.latent_channels == 3
    x = _smooth_images(2, 32)
    with torch.no_grad():
        post = ae.encode(x)
        assert post.mean.shape == (2, 3, 32 // f, 32 // f)
        assert post.sample().shape == (2, 3, 32 // f, 32 // f)
        rec, post2 = ae(x)
    assert rec.shape == (2, 3, 32, 32)
    assert isinstance(post2, DiagonalGaussian)
    assert ae.decode(post.mode()).shape == (2, 3, 32, 32)


def test_attention_blocks_at_requested_pixel_size():
    ae = _tiny(ch_mult=(1, 1, 1), num_res_blocks=2, attn_resolutions=[16])
    keys = {k.rsplit(".", 1)[0] for k in ae.state_dict()}
    # encoder levels: 0 -> 32 px, 1 -> 16 px, 2 -> 8 px
    assert {"encoder.down.1.attn.0.q", "encoder.down.1.attn.1.q"} <= keys
    assert not any(k.startswith(("encoder.down.0.attn", "encoder.down.2.attn")) for k in keys)
    # decoder level 1 (16 px) has num_res_blocks + 1 attention blocks
    assert {"decoder.up.1.attn.0.q", "decoder.up.1.attn.1.q", "decoder.up.1.attn.2.q"} <= keys
    assert not any(k.startswith(("decoder.up.0.attn", "decoder.up.2.attn")) for k in keys)
    assert "encoder.mid.attn_1.q" in keys and "decoder.mid.attn_1.q" in keys
    with torch.no_grad():
        rec, _ = ae(_smooth_images(1, 32))
    assert rec.shape == (1, 3, 32, 32)


def test_no_attention_outside_mid_by_default():
    ae = _tiny()
    assert not any(".attn." in k for k in ae.state_dict())


# ---------------------------------------------------------------- DiagonalGaussian


def test_logvar_is_clamped():
    params = torch.cat(
        [torch.zeros(1, 2, 2, 2), torch.full((1, 1, 2, 2), 100.0), torch.full((1, 1, 2, 2), -100.0)], 1
    )
    post = DiagonalGaussian(params)
    assert torch.all(post.logvar[:, 0] == 20.0) and torch.all(post.logvar[:, 1] == -30.0)
    torch.testing.assert_close(post.var[:, 0], torch.full((1, 2, 2), math.exp(20.0)))
    torch.testing.assert_close(post.std, torch.exp(0.5 * post.logvar))


def test_kl_closed_form_hand_built():
    # sample 0: mean (1, -2), logvar (ln 2, 0) -> 0.5 * [(1 + 2 - 1 - ln 2) + (4 + 1 - 1 - 0)] = 3 - ln(2) / 2
    # sample 1: mean (0, 0),  logvar (0, 0)    -> 0
    params = torch.tensor([[1.0, -2.0, math.log(2.0), 0.0], [0.0, 0.0, 0.0, 0.0]]).view(2, 4, 1, 1)
    post = DiagonalGaussian(params)
    kl = post.kl()
    assert kl.shape == (2,)
    torch.testing.assert_close(kl, torch.tensor([3.0 - math.log(2.0) / 2, 0.0]))
    assert torch.equal(post.mode(), params[:, :2])


def test_kl_is_zero_for_standard_normal_and_sums_over_chw():
    post = DiagonalGaussian(torch.zeros(3, 8, 4, 5))
    assert torch.equal(post.kl(), torch.zeros(3))
    # a constant per-element KL of k sums over C*H*W = 4*4*5 elements
    post = DiagonalGaussian(torch.cat([torch.ones(3, 4, 4, 5), torch.zeros(3, 4, 4, 5)], 1))
    torch.testing.assert_close(post.kl(), torch.full((3,), 0.5 * 80))


def test_sample_reproducible_and_has_right_moments():
    mean, std = 3.0, 0.5
    params = torch.cat([torch.full((4, 2, 64, 64), mean), torch.full((4, 2, 64, 64), math.log(std**2))], 1)
    post = DiagonalGaussian(params)
    a = post.sample(generator=torch.Generator().manual_seed(123))
    b = post.sample(generator=torch.Generator().manual_seed(123))
    c = post.sample(generator=torch.Generator().manual_seed(124))
    assert a.shape == (4, 2, 64, 64) and a.dtype == params.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(a.mean().item() - mean) < 0.02  # 32768 draws: standard error ~0.003
    assert abs(a.std().item() - std) < 0.02


def test_sample_is_reparameterised():
    params = torch.randn(2, 6, 3, 3, requires_grad=True)
    DiagonalGaussian(params).sample(generator=torch.Generator().manual_seed(0)).sum().backward()
    assert params.grad is not None and torch.all(params.grad[:, :3] == 1.0)
    assert params.grad[:, 3:].abs().sum() > 0


def test_forward_generator_reproducible_and_mode_deterministic():
    torch.manual_seed(0)
    ae = _tiny(ch_mult=(1, 1)).eval()
    x = _smooth_images(2, 16)
    with torch.no_grad():
        r1, _ = ae(x, generator=torch.Generator().manual_seed(5))
        r2, _ = ae(x, generator=torch.Generator().manual_seed(5))
        m1, post = ae(x, sample_posterior=False)
        m2 = ae.decode(post.mean)
    assert torch.equal(r1, r2)
    torch.testing.assert_close(m1, m2)
    assert not torch.allclose(r1, m1)


# ---------------------------------------------------------------- attention


def _reference_attn(block: AttnBlock, x: torch.Tensor) -> torch.Tensor:
    """CompVis' bmm/softmax AttnBlock.forward."""
    h_ = block.norm(x)
    q, k, v = block.q(h_), block.k(h_), block.v(h_)
    b, c, h, w = q.shape
    q = q.reshape(b, c, h * w).permute(0, 2, 1)
    k = k.reshape(b, c, h * w)
    w_ = torch.bmm(q, k) * (int(c) ** (-0.5))
    w_ = torch.nn.functional.softmax(w_, dim=2)
    v = v.reshape(b, c, h * w)
    w_ = w_.permute(0, 2, 1)
    h_ = torch.bmm(v, w_).reshape(b, c, h, w)
    return x + block.proj_out(h_)


def test_attn_block_matches_bmm_softmax_reference():
    torch.manual_seed(0)
    block = AttnBlock(64)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        x = torch.randn(2, 64, 6, 5)
        torch.testing.assert_close(block(x), _reference_attn(block, x), atol=1e-5, rtol=1e-5)


def _delta_conv_(conv: nn.Conv2d, row: int, col: int) -> None:
    """Make a 3x3 conv copy each channel from one kernel tap (identity across channels, no bias)."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        for c in range(conv.out_channels):
            conv.weight[c, c, row, col] = 1.0


def test_downsample_pads_right_and_bottom_then_strides():
    down = Downsample(2)
    _delta_conv_(down.conv, 0, 0)  # out[i, j] = padded[2i, 2j]
    x = torch.randn(1, 2, 6, 6)
    y = down(x)
    assert y.shape == (1, 2, 3, 3)
    torch.testing.assert_close(y, x[:, :, ::2, ::2])  # CompVis pads (0, 1, 0, 1): no shift at the top-left
    _delta_conv_(
        down.conv, 2, 2
    )  # out[i, j] = padded[2i + 2, 2j + 2]: the last row / column hits the zero pad
    y = down(x)
    torch.testing.assert_close(y[:, :, :2, :2], x[:, :, 2::2, 2::2])
    assert torch.all(y[:, :, 2, :] == 0) and torch.all(y[:, :, :, 2] == 0)


def test_upsample_is_nearest_then_conv():
    up = Upsample(2)
    _delta_conv_(up.conv, 1, 1)  # centre tap: identity
    x = torch.randn(1, 2, 3, 4)
    torch.testing.assert_close(up(x), x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))


def test_group_norms_are_compvis_style():
    norms = [m for m in _tiny().modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == 32 and m.eps == 1e-6 and m.affine for m in norms)


# ---------------------------------------------------------------- training


def test_a_few_adam_steps_reduce_l1_loss():
    torch.manual_seed(0)
    ae = _tiny(ch_mult=(1, 1))
    x = _smooth_images(8, 16, seed=3)
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        rec, _ = ae(x, sample_posterior=False)
        loss = (rec - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert ae.last_layer().grad is not None


def test_bad_channel_count_is_rejected():
    with pytest.raises(ValueError, match="multiples of 32"):
        AutoencoderKL(embed_dim=3, z_channels=3, ch=16)
    with pytest.raises(ValueError):
        AutoencoderKL(embed_dim=3, z_channels=3, ch_mult=())


def test_hydra_style_listconfig_arguments():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"ch_mult": [1, 1], "attn_resolutions": [16]})
    ae = AutoencoderKL(embed_dim=3, z_channels=3, ch_mult=cfg.ch_mult, attn_resolutions=cfg.attn_resolutions)
    assert ae.downsample_factor == 2
    assert any(k.startswith("decoder.up.1.attn") for k in ae.state_dict())
    assert not any(k.startswith("decoder.up.0.attn") for k in ae.state_dict())


def test_module_is_an_nn_module_with_keyword_only_constructor():
    with pytest.raises(TypeError):
        AutoencoderKL(4, 4)  # type: ignore[misc]
    assert isinstance(_tiny(), nn.Module)
