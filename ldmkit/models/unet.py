"""The CompVis latent-diffusion UNet (``ldm/modules/diffusionmodules/openaimodel.py``, 2-D only).

Time-conditioned ResNet blocks, optional class embedding, and attention at chosen downsampling rates:
either plain self-attention (``AttentionBlock``) or ``SpatialTransformer`` cross-attention to a context
sequence (Rombach et al. 2022, Sec. 3.3). Module and parameter names, construction order and the
head-count logic follow CompVis exactly, so published LDM UNet weights load with ``strict=True``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from ldmkit.models.attention import AttentionBlock, GroupNorm32, SpatialTransformer, zero_module

__all__ = [
    "timestep_embedding",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "ResBlock",
    "Downsample",
    "Upsample",
    "UNetModel",
]


def timestep_embedding(timesteps: Tensor, dim: int, max_period: int = 10000) -> Tensor:
    """Sinusoidal embedding (B,) -> (B, dim): ``[cos(t·f), sin(t·f)]``, f_i = max_period^(-i/half)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimestepBlock(nn.Module, ABC):
    """A module whose forward takes the timestep embedding as a second argument."""

    @abstractmethod
    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """Apply the module to ``x`` given embeddings ``emb``."""


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that routes the time embedding to ResBlocks and the context to SpatialTransformers."""

    def forward(  # type: ignore[override]
        self, x: Tensor, emb: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None
    ) -> Tensor:
        """Run the layers in order."""
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, mask=context_mask)
            else:
                x = layer(x)
        return x


class ResBlock(TimestepBlock):
    """Residual block with time-embedding injection (additive, or scale-shift after the second norm); with
    ``up``/``down`` it also resamples (BigGAN-style, CompVis ``resblock_updown``): both paths, before the first conv."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_checkpoint: bool = False,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.updown = up or down
        resample = (Upsample(channels, use_conv=False) if up else Downsample(channels, use_conv=False)) \
            if self.updown else nn.Identity()
        self.h_upd, self.x_upd = resample, resample  # parameter-free: one module serves both paths
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, self.out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels),
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(32, self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """Apply the block to ``x`` (B, C, H, W) with time embedding ``emb`` (B, emb_channels)."""
        if self.use_checkpoint and torch.is_grad_enabled():
            return _checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """The block's computation."""
        if self.updown:
            h = self.in_layers[2](self.h_upd(self.in_layers[:2](x)))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """Halve the resolution: stride-2 3×3 conv (``op``), or 2×2 average pooling without ``conv_resample``."""

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, self.out_channels, 3, stride=2, padding=1)
        else:
            if self.out_channels != channels:
                raise ValueError("average-pool downsampling cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        """Downsample ``x`` by 2."""
        return self.op(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour ×2, then a 3×3 ``conv`` if ``use_conv``."""

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, self.out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """Upsample ``x`` by 2."""
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class UNetModel(nn.Module):
    """The CompVis ``UNetModel`` (eps-prediction UNet with time, class and cross-attention conditioning)."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        model_channels: int,
        attention_resolutions: Sequence[int],
        num_res_blocks: int,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        dropout: float = 0.0,
        num_heads: int = -1,
        num_head_channels: int = -1,
        use_spatial_transformer: bool = False,
        transformer_depth: int = 1,
        context_dim: int | None = None,
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        use_scale_shift_norm: bool = False,
        conv_resample: bool = True,
        legacy: bool = True,
        resblock_updown: bool = False,
    ) -> None:
        super().__init__()
        if use_spatial_transformer and context_dim is None:
            raise ValueError("use_spatial_transformer=True needs context_dim (the conditioning width)")
        if context_dim is not None and not use_spatial_transformer:
            raise ValueError(
                "context_dim is set but use_spatial_transformer=False (the context would be unused)"
            )
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("either num_heads or num_head_channels has to be set")
        if num_res_blocks < 1 or not channel_mult:
            raise ValueError("need num_res_blocks >= 1 and at least one channel_mult level")
        attention_resolutions = [int(r) for r in attention_resolutions]
        channel_mult = [int(m) for m in channel_mult]
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.attention_resolutions = attention_resolutions
        self.num_res_blocks = num_res_blocks
        self.channel_mult = channel_mult
        self.num_classes = num_classes
        self.context_dim = context_dim
        self.use_checkpoint = use_checkpoint

        def attention(ch: int) -> nn.Module:
            """The attention layer at width ``ch``, with CompVis' (legacy) head-count logic."""
            nonlocal num_heads
            if num_head_channels == -1:
                dim_head = ch // num_heads
            else:
                num_heads = ch // num_head_channels
                dim_head = num_head_channels
            if legacy:
                dim_head = ch // num_heads if use_spatial_transformer else num_head_channels
            if use_spatial_transformer:
                return SpatialTransformer(
                    ch,
                    num_heads,
                    dim_head,
                    depth=transformer_depth,
                    context_dim=context_dim,
                    checkpoint=use_checkpoint,
                )
            # CompVis passes num_heads_upsample (= the original num_heads) in the decoder. num_heads is only
            # overwritten when num_head_channels != -1, and then AttentionBlock ignores it: same result.
            return AttentionBlock(
                ch, num_heads=num_heads, num_head_channels=dim_head, use_checkpoint=use_checkpoint
            )

        def resblock(ch: int, out_ch: int, up: bool = False, down: bool = False) -> ResBlock:
            """A ResBlock with the model-wide settings."""
            return ResBlock(
                ch,
                time_embed_dim,
                dropout,
                out_channels=out_ch,
                use_checkpoint=use_checkpoint,
                use_scale_shift_norm=use_scale_shift_norm,
                up=up,
                down=down,
            )

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
        )
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))]
        )
        input_block_chans = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [resblock(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                input_block_chans.append(ch)
            if level != len(channel_mult) - 1:
                down: nn.Module = resblock(ch, ch, down=True) if resblock_updown \
                    else Downsample(ch, conv_resample, out_channels=ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                input_block_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(resblock(ch, ch), attention(ch), resblock(ch, ch))

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = input_block_chans.pop()
                layers = [resblock(ch + ich, model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attention(ch))
                if level and i == num_res_blocks:
                    layers.append(resblock(ch, ch, up=True) if resblock_updown
                                  else Upsample(ch, conv_resample, out_channels=ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(32, ch), nn.SiLU(), zero_module(nn.Conv2d(model_channels, out_channels, 3, padding=1))
        )

    @property
    def downsample_factor(self) -> int:
        """Total spatial downsampling (input sizes must be divisible by it)."""
        return 2 ** (len(self.channel_mult) - 1)

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor | int | float,
        context: Tensor | None = None,
        y: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        """Predict from ``x`` (B, C, H, W) at ``timesteps`` (B,), with optional context (B, L, D) and labels y."""
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("class labels y must be given if and only if the model has num_classes")
        f = self.downsample_factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} must be divisible by {f} (the UNet's downsampling)"
            )
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        t_emb = timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype)
        emb = self.time_embed(t_emb)
        if y is not None:
            emb = emb + self.label_emb(y)
        hs = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb, context, context_mask)
            hs.append(h)
        h = self.middle_block(h, emb, context, context_mask)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb, context, context_mask)
        return self.out(h)
