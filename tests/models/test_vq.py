"""VQ first stage: CompVis layout, nearest-code quantisation, straight-through gradients, codebook stats."""

import pytest
import torch
from conftest import compat_entries

from ldmkit.models.autoencoder import PointPosterior
from ldmkit.models.first_stage import FirstStage, IdentityStage, latent_scale
from ldmkit.models.vq import VectorQuantizer, VQModel


def _vq(**kw) -> VQModel:
    args = dict(embed_dim=3, n_embed=64, z_channels=3, ch=32, ch_mult=[1, 2, 4], num_res_blocks=1,
                attn_resolutions=[], resolution=32, in_channels=3, out_ch=3, dropout=0.0)
    return VQModel(**{**args, **kw})


def test_state_dict_matches_compvis_vq_f4_in_order():
    entries = compat_entries("vq_f4")
    state = _vq().state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == entries
    _vq().load_state_dict({k: torch.randn(s) for k, s in entries}, strict=True)


def test_quantizer_picks_nearest_code_and_loss_formula():
    q = VectorQuantizer(n_embed=3, embed_dim=2, beta=0.25)
    q.embedding.weight.data = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.0]])
    z = torch.tensor([[0.9, 1.2], [-1.5, 0.2], [0.1, -0.1], [0.6, 0.6]]).t().reshape(1, 2, 2, 2)
    z_q, loss, idx, perplexity = q(z)
    assert idx.flatten().tolist() == [1, 2, 0, 1]
    codes = q.embedding.weight[idx.flatten()].t().reshape(1, 2, 2, 2)
    torch.testing.assert_close(z_q, codes)
    mse = ((codes - z) ** 2).mean()
    torch.testing.assert_close(loss, 1.25 * mse)  # codebook term + beta * commitment term (equal values)
    p = torch.tensor([0.25, 0.5, 0.25])
    torch.testing.assert_close(perplexity, torch.exp(-(p * p.log()).sum()))


def test_straight_through_passes_gradients_to_encoder_and_codebook():
    torch.manual_seed(0)
    vq = _vq()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    rec, post = vq(x)
    assert rec.shape == x.shape and isinstance(post, PointPosterior)
    assert post.indices.shape == (2, 8, 8) and post.indices.min() >= 0 and post.indices.max() < 64
    ((rec - x).abs().mean() + post.reg_loss()).backward()
    assert vq.encoder.conv_in.weight.grad.abs().sum() > 0  # through the straight-through estimator
    assert vq.quantize.embedding.weight.grad.abs().sum() > 0  # the codebook term
    logs = post.logs()
    assert 1 <= logs["perplexity"] <= 64 and 1 <= logs["codes_used"] <= 64


def test_latents_are_pre_quantisation_and_decode_quantises_first():
    torch.manual_seed(0)
    vq = _vq().eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        post = vq.encode(x)
        h = vq.quant_conv(vq.encoder(x))
        torch.testing.assert_close(post.mean, h)
        assert torch.equal(post.std, torch.zeros_like(h)) and torch.equal(post.sample(), h)
        quantised = vq.quantize.lookup(vq.quantize.indices(h))
        torch.testing.assert_close(vq.decode(h), vq.decode_quantized(quantised))
        torch.testing.assert_close(vq.decode(h + 1e-6), vq.decode(h))  # snaps to the same codes
        torch.testing.assert_close(vq(x)[0], vq.decode(h))
    assert latent_scale(vq, x) == 1.0


@pytest.mark.parametrize("ch_mult,f", [((1, 2), 2), ((1, 2, 4), 4), ((1, 2, 4, 4), 8), ((1, 1, 2, 2, 4), 16)])
def test_vq_downsampling_factors(ch_mult, f):
    vq = _vq(ch_mult=ch_mult, embed_dim=4, z_channels=4).eval()
    with torch.no_grad():
        z = vq.encode(torch.zeros(1, 3, 32, 32)).mean
        assert vq.downsample_factor == f and z.shape == (1, 4, 32 // f, 32 // f)
        assert vq.decode(z).shape == (1, 3, 32, 32)


def test_identity_stage_is_exact():
    stage = FirstStage(IdentityStage(in_channels=3), 1.0)
    x = torch.rand(2, 3, 16, 16)
    assert stage.downsample_factor == 1 and stage.latent_channels == 3
    assert torch.equal(stage.encode(x), x) and torch.equal(stage.decode(x), x)
    assert latent_scale(stage.ae, x) == 1.0 and len(stage.state_dict()) == 0
