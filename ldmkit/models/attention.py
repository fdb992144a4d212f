"""Attention layers of the CompVis latent-diffusion UNet (``ldm/modules/attention.py`` and openaimodel's
``AttentionBlock``).

Module and parameter names follow CompVis exactly so that published UNet weights load with
``strict=True``. ``SpatialTransformer`` is the cross-attention conditioning mechanism of Rombach et al.
2022, Sec. 3.3; ``AttentionBlock`` is the plain spatial self-attention of the unconditional models.
All attention products use ``torch.nn.functional.scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

__all__ = [
    "GroupNorm32",
    "zero_module",
    "GEGLU",
    "FeedForward",
    "CrossAttention",
    "BasicTransformerBlock",
    "SpatialTransformer",
    "AttentionBlock",
]


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back (openaimodel's ``normalization``)."""

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` in float32, return it in its own dtype."""
        return super().forward(x.float()).type(x.dtype)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero all parameters of ``module`` in place and return it."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class GEGLU(nn.Module):
    """Gated GELU projection: ``proj`` to 2·dim_out, value · gelu(gate)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        """Project and gate."""
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """CompVis GEGLU feed-forward: ``net.0.proj`` (dim -> 2·mult·dim), ``net.1`` Dropout, ``net.2`` Linear."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner_dim = int(dim * mult)
        self.net = nn.Sequential(
            GEGLU(dim, inner_dim), nn.Dropout(dropout), nn.Linear(inner_dim, dim_out or dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the feed-forward network to the last dimension."""
        return self.net(x)


class CrossAttention(nn.Module):
    """Multi-head (cross-)attention with bias-free q/k/v projections; self-attention when context is None."""

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head**-0.5
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Attend from ``x`` (B, N, query_dim) to ``context`` (B, L, context_dim); ``mask`` (B, L) True=keep."""
        context = x if context is None else context
        q, k, v = (
            rearrange(t, "b n (h d) -> b h n d", h=self.heads)
            for t in (self.to_q(x), self.to_k(context), self.to_v(context))
        )
        attn_mask = None
        if mask is not None:
            # CompVis fills masked logits with -finfo.max: a sample whose keys are all masked gets uniform
            # attention. Same here without NaN: keep all its keys and zero its queries (all logits equal).
            keep = mask.reshape(mask.shape[0], -1).to(device=q.device, dtype=torch.bool)
            empty = ~keep.any(dim=-1)
            q = q.masked_fill(empty[:, None, None, None], 0.0)
            attn_mask = (keep | empty[:, None])[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention, cross-attention, GEGLU feed-forward, each residual."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        d_head: int,
        dropout: float = 0.0,
        context_dim: int | None = None,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        # registration order = CompVis state-dict order: attn1, ff, attn2, norm1..3
        self.attn1 = CrossAttention(dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(
            dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout
        )
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.checkpoint = checkpoint

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Transform tokens ``x`` (B, N, dim), optionally conditioned on ``context`` with key mask ``mask``."""
        if self.checkpoint and torch.is_grad_enabled():
            return _checkpoint(self._forward, x, context, mask, use_reentrant=False)
        return self._forward(x, context, mask)

    def _forward(self, x: Tensor, context: Tensor | None, mask: Tensor | None) -> Tensor:
        """The block's computation (the mask applies only to cross-attention over ``context``)."""
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context=context, mask=mask if context is not None else None) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map: GroupNorm, 1×1 conv in, blocks, zero-init 1×1 conv out."""

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        context_dim: int | None = None,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        inner_dim = n_heads * d_head
        self.in_channels = in_channels
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim, n_heads, d_head, dropout=dropout, context_dim=context_dim, checkpoint=checkpoint
            )
            for _ in range(depth)
        )
        self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, kernel_size=1))

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Residual transformer update of ``x`` (B, C, H, W) conditioned on ``context`` (B, L, D)."""
        _, _, h, w = x.shape
        hidden = rearrange(self.proj_in(self.norm(x)), "b c h w -> b (h w) c")
        for block in self.transformer_blocks:
            hidden = block(hidden, context=context, mask=mask)
        hidden = rearrange(hidden, "b (h w) c -> b c h w", h=h, w=w)
        return self.proj_out(hidden) + x


class AttentionBlock(nn.Module):
    """openaimodel's spatial self-attention with the legacy QKV head layout (``QKVAttentionLegacy``)."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(
                    f"channels {channels} not divisible by num_head_channels {num_head_channels}"
                )
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {self.num_heads}")
        self.use_checkpoint = use_checkpoint
        self.norm = GroupNorm32(32, channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Residual self-attention over the spatial positions of ``x`` (B, C, *spatial)."""
        if self.use_checkpoint and torch.is_grad_enabled():
            return _checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        """The block's computation."""
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(self._legacy_attention(self.qkv(self.norm(x))))
        return (x + h).reshape(b, c, *spatial)

    def _legacy_attention(self, qkv: Tensor) -> Tensor:
        """(B, 3·C, T) -> (B, C, T): heads split as reshape(B·heads, 3·ch, T) then q, k, v = split(ch)."""
        bs, width, length = qkv.shape
        ch = width // (3 * self.num_heads)
        q, k, v = qkv.reshape(bs * self.num_heads, ch * 3, length).split(ch, dim=1)
        # legacy: softmax((q·s)ᵀ(k·s)) with s = ch^-1/4, i.e. the standard 1/sqrt(ch) scale
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2).reshape(bs, -1, length)
