"""The CompVis latent-diffusion UNet (``ldm/modules/diffusionmodules/openaimodel.py``, 2-D only).

Time-conditioned ResNet blocks, optional class embedding, and attention at chosen downsampling rates:
either plain self-attention (``AttentionBlock``) or ``SpatialTransformer`` cross-attention to a context
sequence (Rombach et al. 2022, Sec. 3.3). Module and parameter names, construction order and the
head-count logic follow CompVis exactly, so published LDM UNet weights load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ldmkit.errors import UserError
from ldmkit.models.attention import AttentionBlock, GroupNorm32, SpatialTransformer, zero_module
from ldmkit.models.unet_blocks import (
    Downsample,
    ResBlock,
    TimestepBlock,
    TimestepEmbedSequential,
    Upsample,
    timestep_embedding,
)

__all__ = [
    "timestep_embedding",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "ResBlock",
    "Downsample",
    "Upsample",
    "UNetModel",
    "UNetBuilder",
    "attention_heads",
]


def attention_heads(
    ch: int, num_heads: int, num_head_channels: int, *, legacy: bool, spatial: bool
) -> tuple[int, int]:
    """CompVis' (heads, head width) at width ``ch``: ``num_heads`` heads, or heads ``num_head_channels`` wide;
    ``legacy`` takes ``ch // heads`` for a SpatialTransformer and ``num_head_channels`` for an AttentionBlock."""
    if num_head_channels == -1:
        heads, dim_head = num_heads, ch // num_heads
    else:
        heads, dim_head = ch // num_head_channels, num_head_channels
    if legacy:
        dim_head = ch // heads if spatial else num_head_channels
    return heads, dim_head


@dataclass(frozen=True)
class UNetBuilder:
    """The UNet's model-wide settings, and its blocks built from them (CompVis' names and construction order)."""

    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    emb_channels: int
    dropout: float
    num_heads: int
    num_head_channels: int
    use_spatial_transformer: bool  # SpatialTransformer cross-attention (else AttentionBlock self-attention)
    transformer_depth: int
    context_dim: int | None
    use_checkpoint: bool
    use_scale_shift_norm: bool
    conv_resample: bool
    legacy: bool
    resblock_updown: bool

    def __post_init__(self) -> None:
        """Refuse settings CompVis would build into a broken or half-used UNet."""
        if self.use_spatial_transformer and self.context_dim is None:
            raise UserError("use_spatial_transformer=True needs context_dim (the conditioning width)")
        if self.context_dim is not None and not self.use_spatial_transformer:
            raise UserError("context_dim is set but use_spatial_transformer=False (the context would be unused)")
        if self.num_heads == -1 and self.num_head_channels == -1:
            raise UserError("either num_heads or num_head_channels has to be set")
        if self.num_res_blocks < 1 or not self.channel_mult:
            raise UserError("need num_res_blocks >= 1 and at least one channel_mult level")
        widths = [self.model_channels, *(self.model_channels * m for m in self.channel_mult)]
        if any(w % 32 for w in widths):
            raise UserError(f"unet.model_channels={self.model_channels} with channel_mult={list(self.channel_mult)} "
                            f"gives {widths[1:]} channels: the GroupNorm(32) layers need multiples of 32")

    def resblock(self, ch: int, out_ch: int, up: bool = False, down: bool = False) -> ResBlock:
        """A ResBlock with the model-wide settings."""
        return ResBlock(
            ch,
            self.emb_channels,
            self.dropout,
            out_channels=out_ch,
            use_checkpoint=self.use_checkpoint,
            use_scale_shift_norm=self.use_scale_shift_norm,
            up=up,
            down=down,
        )

    def attention(self, ch: int) -> nn.Module:
        """The attention layer at width ``ch``, with CompVis' (legacy) head-count logic."""
        spatial = self.use_spatial_transformer
        heads, dim_head = attention_heads(
            ch, self.num_heads, self.num_head_channels, legacy=self.legacy, spatial=spatial
        )
        if spatial:
            return SpatialTransformer(
                ch, heads, dim_head, depth=self.transformer_depth, context_dim=self.context_dim,
                checkpoint=self.use_checkpoint,
            )
        # CompVis passes num_heads_upsample (= the original num_heads) in the decoder. heads only differs from
        # num_heads when num_head_channels != -1, and then AttentionBlock ignores it: same result.
        return AttentionBlock(
            ch, num_heads=heads, num_head_channels=dim_head, use_checkpoint=self.use_checkpoint
        )

    def resample(self, ch: int, down: bool) -> nn.Module:
        """Halve (``down``) or double the resolution: a resampling ResBlock, or a (conv) Down/Upsample."""
        if self.resblock_updown:
            return self.resblock(ch, ch, up=not down, down=down)
        return (Downsample if down else Upsample)(ch, self.conv_resample, out_channels=ch)

    def level_blocks(self, ch: int, out_ch: int, ds: int) -> list[nn.Module]:
        """A ResBlock to ``out_ch``, then attention if ``ds`` (the downsampling so far) is an attention rate."""
        layers: list[nn.Module] = [self.resblock(ch, out_ch)]
        if ds in self.attention_resolutions:
            layers.append(self.attention(out_ch))
        return layers

    def input_blocks(self, in_channels: int) -> tuple[nn.ModuleList, list[int]]:
        """The encoder half and the width of each of its outputs (the skip connections, in order)."""
        blocks = [TimestepEmbedSequential(nn.Conv2d(in_channels, self.model_channels, 3, padding=1))]
        chans = [self.model_channels]
        ch = self.model_channels
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                layers = self.level_blocks(ch, mult * self.model_channels, 2**level)
                blocks.append(TimestepEmbedSequential(*layers))
                ch = mult * self.model_channels
                chans.append(ch)
            if level != len(self.channel_mult) - 1:
                blocks.append(TimestepEmbedSequential(self.resample(ch, down=True)))
                chans.append(ch)
        return nn.ModuleList(blocks), chans

    def middle_block(self, ch: int) -> TimestepEmbedSequential:
        """ResBlock, attention, ResBlock at the lowest resolution."""
        return TimestepEmbedSequential(self.resblock(ch, ch), self.attention(ch), self.resblock(ch, ch))

    def output_blocks(self, skip_chans: list[int]) -> nn.ModuleList:
        """The decoder half: each block takes the previous output concatenated with one skip (last first)."""
        skips, blocks = list(skip_chans), []
        ch = self.model_channels * self.channel_mult[-1]
        for level, mult in list(enumerate(self.channel_mult))[::-1]:
            for i in range(self.num_res_blocks + 1):
                layers = self.level_blocks(ch + skips.pop(), self.model_channels * mult, 2**level)
                ch = self.model_channels * mult
                if level and i == self.num_res_blocks:
                    layers.append(self.resample(ch, down=False))
                blocks.append(TimestepEmbedSequential(*layers))
        return nn.ModuleList(blocks)


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
        adm_in_channels: int | None = None,
        use_checkpoint: bool = False,
        use_scale_shift_norm: bool = False,
        conv_resample: bool = True,
        legacy: bool = True,
        resblock_updown: bool = False,
    ) -> None:
        super().__init__()
        builder = UNetBuilder(  # checks the arguments
            model_channels=model_channels, channel_mult=tuple(int(m) for m in channel_mult),
            num_res_blocks=num_res_blocks, attention_resolutions=tuple(int(r) for r in attention_resolutions),
            emb_channels=model_channels * 4, dropout=dropout,
            num_heads=num_heads, num_head_channels=num_head_channels,
            use_spatial_transformer=use_spatial_transformer, transformer_depth=transformer_depth,
            context_dim=context_dim, use_checkpoint=use_checkpoint, use_scale_shift_norm=use_scale_shift_norm,
            conv_resample=conv_resample, legacy=legacy, resblock_updown=resblock_updown,
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.attention_resolutions = list(builder.attention_resolutions)
        self.num_res_blocks = num_res_blocks
        self.channel_mult = list(builder.channel_mult)
        self.num_classes = num_classes
        self.adm_in_channels = adm_in_channels
        self.context_dim = context_dim
        self.use_checkpoint = use_checkpoint
        time_embed_dim = builder.emb_channels
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
        )
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)
        if adm_in_channels is not None:  # SDXL's global vector input (generative-models' "sequential" label_emb)
            self.vector_emb = nn.Sequential(
                nn.Linear(adm_in_channels, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
            )
        self.input_blocks, skip_chans = builder.input_blocks(in_channels)
        self.middle_block = builder.middle_block(skip_chans[-1])
        self.output_blocks = builder.output_blocks(skip_chans)
        self.out = nn.Sequential(
            GroupNorm32(32, model_channels * self.channel_mult[0]), nn.SiLU(),
            zero_module(nn.Conv2d(model_channels, out_channels, 3, padding=1)),
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
        vector: Tensor | None = None,
    ) -> Tensor:
        """Predict from ``x`` (B, C, H, W) at ``timesteps`` (B,), with optional context (B, L, D), labels y and a
        global vector (B, adm_in_channels) added to the time embedding."""
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("class labels y must be given if and only if the model has num_classes")
        if (vector is not None) != (self.adm_in_channels is not None):
            raise ValueError("a conditioning vector must be given if and only if the model has adm_in_channels")
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
        if vector is not None:
            emb = emb + self.vector_emb(vector.to(emb.dtype))
        hs = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb, context, context_mask)
            hs.append(h)
        h = self.middle_block(h, emb, context, context_mask)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb, context, context_mask)
        return self.out(h)
