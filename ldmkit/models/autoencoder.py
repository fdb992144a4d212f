"""The KL-regularised first stage (Rombach et al. 2022, Sec. 3.1) in the CompVis ``AutoencoderKL`` layout.

``AutoencoderKL`` built with the same arguments as CompVis' ``AutoencoderKL(embed_dim, ddconfig)`` has the
same state-dict keys and shapes (in the same order; ``loss.*`` keys excepted), so published first-stage
weights load with ``strict=True``. Images are in [-1, 1]; the decoder has no output non-linearity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ldmkit.models.ae_blocks import (
    AttnBlock,
    Decoder,
    Downsample,
    Encoder,
    Normalize,
    ResnetBlock,
    Upsample,
    nonlinearity,
)

__all__ = [
    "AutoencoderKL",
    "DiagonalGaussian",
    "PointPosterior",
    "Encoder",
    "Decoder",
    "ResnetBlock",
    "AttnBlock",
    "Downsample",
    "Upsample",
    "Normalize",
    "nonlinearity",
]


class DiagonalGaussian:
    """Diagonal Gaussian posterior q(z | x) from ``parameters = concat(mean, logvar)`` along dim 1."""

    reg_name = "kl"

    def __init__(self, parameters: Tensor) -> None:
        if parameters.dim() < 2 or parameters.shape[1] % 2:
            raise ValueError(
                f"parameters must have an even channel dim 1, got shape {tuple(parameters.shape)}"
            )
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """A reparameterised draw ``mean + std * eps`` (differentiable in mean and logvar)."""
        eps = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        """The mode (= mean)."""
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per sample, summed over all non-batch dims: shape (B,)."""
        dims = tuple(range(1, self.mean.dim()))
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)

    def reg_loss(self) -> Tensor:
        """The regulariser: KL per sample, batch mean."""
        return self.kl().mean()

    def logs(self) -> dict[str, Tensor]:
        """Values worth logging during training."""
        return {"kl": self.kl().mean().detach()}


class PointPosterior:
    """A deterministic "posterior" (VQ pre-quantisation latents, the identity stage): std 0, sample = mean.

    VQ models fill ``reg`` (codebook + commitment loss), ``indices`` and ``perplexity`` during ``forward``.
    """

    reg_name = "codebook"

    def __init__(
        self,
        mean: Tensor,
        reg: Tensor | None = None,
        indices: Tensor | None = None,
        perplexity: Tensor | None = None,
    ) -> None:
        self.mean, self.reg, self.indices, self.perplexity = mean, reg, indices, perplexity
        self.std = torch.zeros_like(mean)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """The latent itself (nothing to sample)."""
        return self.mean

    def mode(self) -> Tensor:
        """The latent itself."""
        return self.mean

    def reg_loss(self) -> Tensor:
        """The codebook + commitment loss (0 when there is no quantiser)."""
        return self.reg if self.reg is not None else self.mean.new_zeros(())

    def logs(self) -> dict[str, Tensor]:
        """Codebook loss, perplexity and the fraction of codes used in this batch (VQ only)."""
        if self.indices is None:
            return {}
        return {
            "codebook": self.reg.detach(),
            "perplexity": self.perplexity.detach(),
            "codes_used": torch.tensor(float(self.indices.unique().numel())),
        }


class AutoencoderKL(nn.Module):
    """CompVis ``AutoencoderKL``: encoder -> quant_conv -> Gaussian posterior; post_quant_conv -> decoder."""

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
    ) -> None:
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        attn_resolutions = tuple(int(r) for r in attn_resolutions)
        if not ch_mult:
            raise ValueError("ch_mult must have at least one level")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        common = dict(
            ch=ch,
            ch_mult=ch_mult,
            num_res_blocks=num_res_blocks,
            attn_resolutions=attn_resolutions,
            resolution=resolution,
            z_channels=z_channels,
            dropout=dropout,
            attn_type=attn_type,
        )
        self.encoder = Encoder(in_channels=in_channels, double_z=True, **common)
        self.decoder = Decoder(out_ch=out_ch, **common)
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, kernel_size=1)
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

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """Posterior q(z | x) for images x in [-1, 1] of shape (B, in_channels, H, W)."""
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: Tensor) -> Tensor:
        """Images (B, out_ch, h·f, w·f), about [-1, 1], from (unscaled) latents (B, embed_dim, h, w)."""
        return self.decoder(self.post_quant_conv(z))

    def forward(
        self, x: Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[Tensor, DiagonalGaussian]:
        """Reconstruction (from a posterior sample, or the mode) and the posterior."""
        posterior = self.encode(x)
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def last_layer(self) -> nn.Parameter:
        """The decoder's final conv weight (for the adaptive GAN weight)."""
        return self.decoder.conv_out.weight
