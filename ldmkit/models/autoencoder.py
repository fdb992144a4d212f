"""The KL-regularised first stage (Rombach et al. 2022, Sec. 3.1) in the CompVis ``AutoencoderKL`` layout.

``AutoencoderKL`` built with the same arguments as CompVis' ``AutoencoderKL(embed_dim, ddconfig)`` has the
same state-dict keys and shapes (in the same order; ``loss.*`` keys excepted), so published first-stage
weights load with ``strict=True``. Images are in [-1, 1]; the decoder has no output non-linearity.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ldmkit.models.ae_base import AutoencoderBase
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


class AutoencoderKL(AutoencoderBase):
    """CompVis ``AutoencoderKL``: encoder -> quant_conv -> Gaussian posterior; post_quant_conv -> decoder."""

    def __init__(self, **ddconfig: Any) -> None:
        """CompVis' ``embed_dim`` and ``ddconfig`` (keyword-only; see ``AutoencoderBase``); the encoder emits
        mean and log-variance."""
        super().__init__(double_z=True, **ddconfig)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """Posterior q(z | x) for images x in [-1, 1] of shape (B, in_channels, H, W)."""
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def forward(
        self, x: Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[Tensor, DiagonalGaussian]:
        """Reconstruction (from a posterior sample, or the mode) and the posterior."""
        posterior = self.encode(x)
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior
