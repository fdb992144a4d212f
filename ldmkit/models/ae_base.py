"""The frame both CompVis first stages share: encoder -> quant_conv -> latent; post_quant_conv -> decoder.

``AutoencoderKL`` and ``VQModel`` differ only in what sits at the bottleneck (a Gaussian posterior over
``2·embed_dim`` moments, or a codebook); the encoder, decoder and 1x1 convolutions around them, their names and
their construction order (which fixes both the state-dict order and the seeded initialisation) live here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from ldmkit.models.ae_blocks import Decoder, Encoder


class AutoencoderBase(nn.Module):
    """Encoder, decoder, optional ``quantize`` and ``quant_conv`` / ``post_quant_conv``, in CompVis' order."""

    def __init__(
        self,
        *,
        embed_dim: int,
        z_channels: int,
        ch: int = 32,
        ch_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 1,
        attn_resolutions: Sequence[int] = (),
        resolution: int = 32,
        in_channels: int = 3,
        out_ch: int = 3,
        dropout: float = 0.0,
        attn_type: str = "vanilla",
        double_z: bool,
        quantizer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        """``double_z``: the encoder emits mean and log-variance; ``quantizer(embed_dim)`` builds ``quantize``."""
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        if not ch_mult:
            raise ValueError("ch_mult must have at least one level")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        common = dict(
            ch=ch,
            ch_mult=ch_mult,
            num_res_blocks=num_res_blocks,
            attn_resolutions=tuple(int(r) for r in attn_resolutions),
            resolution=resolution,
            z_channels=z_channels,
            dropout=dropout,
            attn_type=attn_type,
        )
        self.encoder = Encoder(in_channels=in_channels, double_z=double_z, **common)
        self.decoder = Decoder(out_ch=out_ch, **common)
        if quantizer is not None:
            self.quantize = quantizer(embed_dim)
        moments = 2 if double_z else 1
        self.quant_conv = nn.Conv2d(moments * z_channels, moments * embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, kernel_size=1)
        self.embed_dim, self.z_channels, self._num_levels = embed_dim, z_channels, len(ch_mult)

    @property
    def downsample_factor(self) -> int:
        """f: the spatial downsampling factor of the latent, 2**(len(ch_mult) - 1)."""
        return 2 ** (self._num_levels - 1)

    @property
    def latent_channels(self) -> int:
        """Channels of the latent (= embed_dim)."""
        return self.embed_dim

    def decode(self, z: Tensor) -> Tensor:
        """Images (B, out_ch, h·f, w·f), about [-1, 1], from (unscaled) latents (B, embed_dim, h, w)."""
        return self.decoder(self.post_quant_conv(z))

    def last_layer(self) -> nn.Parameter:
        """The decoder's final conv weight (for the adaptive GAN weight)."""
        return self.decoder.conv_out.weight
