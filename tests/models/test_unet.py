"""Tests for the CompVis-layout diffusion UNet (ldmkit.models.unet) and its attention layers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import compat_entries
from torch import nn

from ldmkit.errors import UserError
from ldmkit.models.attention import AttentionBlock, BasicTransformerBlock, CrossAttention
from ldmkit.models.unet import UNetModel, attention_heads, timestep_embedding

FIXTURES = Path(__file__).parents[1] / "fixtures/compat"

# the constructor arguments in the headers of the tsv files
CROSSATTN_KWARGS = dict(
    in_channels=4,
    out_channels=4,
    model_channels=32,
    attention_resolutions=[1, 2],
    num_res_blocks=2,
    channel_mult=[1, 2],
    num_head_channels=16,
    use_spatial_transformer=True,
    transformer_depth=1,
    context_dim=64,
)
UNCOND_KWARGS = dict(
    in_channels=3,
    out_channels=3,
    model_channels=32,
    attention_resolutions=[2],
    num_res_blocks=1,
    channel_mult=[1, 2],
    num_heads=2,
)
CASES = {"unet_crossattn": CROSSATTN_KWARGS, "unet_uncond_selfattn": UNCOND_KWARGS}


def _randomize(module: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Overwrite every parameter with non-zero random values (undoing the zero initialisation)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_norm_scale = name.endswith("weight") and p.ndim == 1  # GroupNorm / LayerNorm gains
            p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if is_norm_scale else 0.0))
    return module


def _small(**kw) -> UNetModel:
    """A tiny cross-attention UNet (32/64 channels, 2 levels) for behavioural tests."""
    args = dict(CROSSATTN_KWARGS, num_res_blocks=1, context_dim=16)
    args.update(kw)
    return UNetModel(**args)


def _inputs(b: int = 2, c: int = 4, size: int = 8, seed: int = 0):
    """Latents, timesteps and a context sequence (B, 5, 16)."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, c, size, size, generator=g),
        torch.tensor([10, 500][:b]),
        torch.randn(b, 5, 16, generator=g),
    )


# ---------------------------------------------------------------- CompVis state-dict compatibility


def test_tsv_headers_match_the_arguments_used():
    header = " ".join(
        line for line in (FIXTURES / "unet_crossattn.tsv").read_text().splitlines() if line.startswith("#")
    )
    for token in (
        "model_channels=32",
        "attention_resolutions=[1,2]",
        "num_res_blocks=2",
        "channel_mult=[1,2]",
        "num_head_channels=16",
        "use_spatial_transformer=True",
        "context_dim=64",
        "in_channels=4",
    ):
        assert token in header
    header = " ".join(
        line
        for line in (FIXTURES / "unet_uncond_selfattn.tsv").read_text().splitlines()
        if line.startswith("#")
    )
    for token in ("in_channels=3", "attention_resolutions=[2]", "num_res_blocks=1", "num_heads=2"):
        assert token in header


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_dict_keys_and_shapes_match_compvis_in_order(name):
    expected = compat_entries(name)
    assert len(expected) > 100  # the parser actually read the file
    got = [(k, tuple(v.shape)) for k, v in UNetModel(**CASES[name]).state_dict().items()]
    assert got == expected


@pytest.mark.parametrize("name", sorted(CASES))
def test_load_compvis_shaped_state_dict_strict(name):
    g = torch.Generator().manual_seed(1)
    sd = {k: torch.randn(shape, generator=g) for k, shape in compat_entries(name)}
    unet = UNetModel(**CASES[name])
    result = unet.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(unet.out[2].weight, sd["out.2.weight"])
    x = torch.randn(1, CASES[name]["in_channels"], 8, 8)
    ctx = torch.randn(1, 3, 64) if name == "unet_crossattn" else None
    with torch.no_grad():
        assert torch.isfinite(unet(x, torch.tensor([3]), context=ctx)).all()


def test_head_counts_follow_compvis():
    unet = UNetModel(**CROSSATTN_KWARGS)  # num_head_channels=16 -> heads = ch // 16
    assert unet.input_blocks[1][1].transformer_blocks[0].attn1.heads == 2
    assert unet.input_blocks[4][1].transformer_blocks[0].attn2.heads == 4
    assert unet.middle_block[1].transformer_blocks[0].attn1.dim_head == 16
    unet = UNetModel(**UNCOND_KWARGS)  # num_heads=2 at every width
    assert unet.input_blocks[3][1].num_heads == 2 and unet.output_blocks[1][1].num_heads == 2
    unet = UNetModel(**dict(UNCOND_KWARGS, num_heads=-1, num_head_channels=16))
    assert unet.middle_block[1].num_heads == 4


@pytest.mark.parametrize(
    ("ch", "num_heads", "num_head_channels", "legacy", "spatial", "expected"),
    [
        (64, 4, -1, True, True, (4, 16)),  # fixed heads: width ch // heads
        (64, 4, -1, True, False, (4, -1)),  # legacy AttentionBlock gets num_head_channels as given
        (64, 4, -1, False, False, (4, 16)),
        (64, -1, 16, True, True, (4, 16)),  # heads of num_head_channels each
        (96, 8, 32, False, False, (3, 32)),  # num_head_channels wins over num_heads
        (128, 8, 32, True, False, (4, 32)),
    ],
)
def test_attention_heads_rule(ch, num_heads, num_head_channels, legacy, spatial, expected):
    assert attention_heads(ch, num_heads, num_head_channels, legacy=legacy, spatial=spatial) == expected


def test_invalid_configurations_raise():
    with pytest.raises(UserError):
        UNetModel(**dict(UNCOND_KWARGS, context_dim=8))  # context without a spatial transformer
    with pytest.raises(UserError):
        UNetModel(**dict(CROSSATTN_KWARGS, context_dim=None))
    with pytest.raises(UserError):
        UNetModel(**dict(UNCOND_KWARGS, num_heads=-1))
    with pytest.raises(UserError, match=r"model_channels=16 .* multiples of 32"):
        UNetModel(**dict(UNCOND_KWARGS, model_channels=16))


# ---------------------------------------------------------------- UNet behaviour


@pytest.mark.parametrize("size", [8, 16])
def test_fresh_unet_outputs_zero_with_input_shape(size):
    unet = _small(out_channels=3)
    x, t, ctx = _inputs(size=size)
    with torch.no_grad():
        out = unet(x, t, context=ctx)
    assert out.shape == (2, 3, size, size)
    assert torch.equal(out, torch.zeros_like(out))


def test_context_timestep_and_mask_affect_output():
    torch.manual_seed(0)
    unet = _randomize(_small()).eval()
    x, t, ctx = _inputs()
    with torch.no_grad():
        base = unet(x, t, context=ctx)
        assert base.abs().mean() > 1e-3 and torch.isfinite(base).all()
        assert not torch.allclose(unet(x, t, context=ctx + 1.0), base, atol=1e-4)
        assert not torch.allclose(unet(x, t + 100, context=ctx), base, atol=1e-4)
        # a masked context token has no influence; an unmasked one does
        mask = torch.ones(2, 5, dtype=torch.bool)
        mask[:, 3] = False
        changed = ctx.clone()
        changed[:, 3] += 5.0
        masked = unet(x, t, context=ctx, context_mask=mask)
        torch.testing.assert_close(unet(x, t, context=changed, context_mask=mask), masked, rtol=0, atol=1e-5)
        assert not torch.allclose(unet(x, t, context=changed), base, atol=1e-4)


def test_scalar_timestep_is_broadcast():
    unet = _randomize(_small()).eval()
    x, _, ctx = _inputs()
    with torch.no_grad():
        full = unet(x, torch.tensor([7, 7]), context=ctx)
        torch.testing.assert_close(unet(x, 7, context=ctx), full)
        torch.testing.assert_close(unet(x, torch.tensor(7), context=ctx), full)


def test_class_labels_change_output():
    unet = _randomize(UNetModel(**dict(UNCOND_KWARGS, num_classes=5, use_scale_shift_norm=True))).eval()
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([1, 2])
    with torch.no_grad():
        a = unet(x, t, y=torch.tensor([0, 1]))
        b = unet(x, t, y=torch.tensor([3, 1]))
    assert not torch.allclose(a[0], b[0], atol=1e-4)
    torch.testing.assert_close(a[1], b[1])  # the unchanged label gives the same sample
    with pytest.raises(ValueError):
        unet(x, t)  # a class-conditional model needs y


def test_global_vector_is_added_to_the_time_embedding_like_a_class_embedding():
    torch.manual_seed(0)
    vec = _randomize(UNetModel(**dict(UNCOND_KWARGS, adm_in_channels=4, use_scale_shift_norm=True))).eval()
    cls = UNetModel(**dict(UNCOND_KWARGS, num_classes=2, use_scale_shift_norm=True)).eval()
    v = torch.randn(2, 4)
    state = {k: p for k, p in vec.state_dict().items() if not k.startswith("vector_emb.")}
    with torch.no_grad():
        state["label_emb.weight"] = vec.vector_emb(v)  # class i's embedding = the vector MLP's output for v[i]
    cls.load_state_dict(state)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 500])
    with torch.no_grad():
        out = vec(x, t, vector=v)
        torch.testing.assert_close(out, cls(x, t, y=torch.tensor([0, 1])))
        assert not torch.allclose(vec(x, t, vector=v.flip(0))[0], out[0], atol=1e-4)
    with pytest.raises(ValueError, match="adm_in_channels"):
        vec(x, t)


@pytest.mark.parametrize("kwargs", [{}, UNCOND_KWARGS], ids=["crossattn", "selfattn"])
def test_gradient_checkpointing_gives_same_outputs_and_gradients(kwargs):
    base = dict(kwargs) if kwargs else dict(CROSSATTN_KWARGS, num_res_blocks=1, context_dim=16)
    base["dropout"] = 0.1  # RNG state must be replayed identically in the recomputation
    plain = _randomize(UNetModel(**base, use_checkpoint=False)).train()
    ckpt = UNetModel(**dict(base, use_checkpoint=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    x, t, ctx = _inputs(c=base["in_channels"])
    ctx = ctx if base.get("context_dim") else None
    outs, grads = [], []
    for model in (plain, ckpt):
        model.zero_grad()
        torch.manual_seed(123)
        out = model(x, t, context=ctx)
        (out**2).mean().backward()
        outs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(outs[1], outs[0])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)
    assert any(g.abs().sum() > 0 for g in grads[0].values())


# ---------------------------------------------------------------- timestep embedding


def test_timestep_embedding_closed_form():
    dim = 8
    emb = timestep_embedding(torch.tensor([0, 3, 250]), dim)
    assert emb.shape == (3, dim)
    for row, t in zip(emb, (0, 3, 250), strict=True):
        freqs = [10000 ** (-i / (dim // 2)) for i in range(dim // 2)]
        expected = [math.cos(t * f) for f in freqs] + [math.sin(t * f) for f in freqs]  # cos half first
        torch.testing.assert_close(row, torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=1e-5)
    assert timestep_embedding(torch.tensor([5]), 7).shape == (1, 7)  # odd dim: zero-padded


# ---------------------------------------------------------------- attention layers


def _reference_cross_attention(attn: CrossAttention, x, context, mask=None):
    """CompVis CrossAttention.forward written out with einsum and softmax."""
    h = attn.heads
    q, k, v = attn.to_q(x), attn.to_k(context), attn.to_v(context)
    b, n, inner = q.shape
    d = inner // h
    q, k, v = (t.reshape(b, -1, h, d).permute(0, 2, 1, 3).reshape(b * h, -1, d) for t in (q, k, v))
    sim = torch.einsum("bid,bjd->bij", q, k) * d**-0.5
    if mask is not None:
        m = mask.repeat_interleave(h, dim=0)[:, None, :]
        sim = sim.masked_fill(~m, -torch.finfo(sim.dtype).max)
    out = torch.einsum("bij,bjd->bid", sim.softmax(dim=-1), v)
    out = out.reshape(b, h, n, d).permute(0, 2, 1, 3).reshape(b, n, h * d)
    return attn.to_out(out)


def test_cross_attention_matches_reference_and_respects_mask():
    torch.manual_seed(0)
    attn = CrossAttention(12, context_dim=10, heads=3, dim_head=4).eval()
    x, ctx = torch.randn(2, 6, 12), torch.randn(2, 5, 10)
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, ctx), _reference_cross_attention(attn, x, ctx), atol=1e-5, rtol=0)
        masked = attn(x, ctx, mask=mask)
        torch.testing.assert_close(masked, _reference_cross_attention(attn, x, ctx, mask), atol=1e-5, rtol=0)
        changed = ctx.clone()
        changed[0, 2] += 10.0
        changed[0, 4] -= 10.0
        torch.testing.assert_close(attn(x, changed, mask=mask), masked, atol=1e-6, rtol=0)
        assert not torch.allclose(attn(x, changed), attn(x, ctx), atol=1e-4)
        # every key masked: uniform attention, as CompVis' -finfo.max fill (no NaN)
        none = torch.zeros(2, 5, dtype=torch.bool)
        torch.testing.assert_close(attn(x, ctx, mask=none), _reference_cross_attention(attn, x, ctx, none))
        # self-attention when context is None
        self_attn = CrossAttention(12, heads=2, dim_head=6).eval()
        torch.testing.assert_close(
            self_attn(x), _reference_cross_attention(self_attn, x, x), atol=1e-5, rtol=0
        )


def test_basic_transformer_block_order():
    torch.manual_seed(0)
    block = _randomize(BasicTransformerBlock(16, 2, 8, context_dim=6), std=0.3).eval()
    x, ctx = torch.randn(2, 4, 16), torch.randn(2, 3, 6)
    with torch.no_grad():
        ref = block.attn1(block.norm1(x)) + x
        ref = block.attn2(block.norm2(ref), ctx) + ref
        proj, gate = block.ff.net[0].proj(block.norm3(ref)).chunk(2, dim=-1)
        ref = block.ff.net[2](proj * F.gelu(gate)) + ref
        torch.testing.assert_close(block(x, ctx), ref)


def _legacy_qkv_attention(qkv: torch.Tensor, n_heads: int) -> torch.Tensor:
    """CompVis QKVAttentionLegacy.forward, verbatim."""
    bs, width, length = qkv.shape
    ch = width // (3 * n_heads)
    q, k, v = qkv.reshape(bs * n_heads, ch * 3, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    a = torch.einsum("bts,bcs->bct", weight, v)
    return a.reshape(bs, -1, length)


def _new_order_qkv_attention(qkv: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The other (QKVAttention, 'new order') head layout: split q, k, v first, then heads."""
    bs, width, length = qkv.shape
    ch = width // (3 * n_heads)
    q, k, v = (t.reshape(bs * n_heads, ch, length) for t in qkv.chunk(3, dim=1))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(ch), dim=-1)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)


def test_attention_block_matches_compvis_legacy_qkv_attention():
    torch.manual_seed(0)
    block = _randomize(AttentionBlock(64, num_heads=4), std=0.2).eval()
    x = torch.randn(2, 64, 4, 4)
    with torch.no_grad():
        flat = x.reshape(2, 64, -1)
        qkv = block.qkv(block.norm(flat))
        ref = (flat + block.proj_out(_legacy_qkv_attention(qkv, 4))).reshape(x.shape)
        torch.testing.assert_close(block(x), ref, atol=1e-5, rtol=0)
        # the head layout matters: the other ordering gives a different result for the same weights
        other = (flat + block.proj_out(_new_order_qkv_attention(qkv, 4))).reshape(x.shape)
        assert not torch.allclose(other, ref, atol=1e-3)
