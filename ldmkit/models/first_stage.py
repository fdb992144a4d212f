"""The first stage as consumers see it: scaled encode / decode around an autoencoder (paper Sec. 3.1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FirstStage(nn.Module):
    """Wraps an autoencoder with its latent scale: ``encode(x) = scale * E(x)``, ``decode(z) = D(z / scale)``."""

    def __init__(self, ae: nn.Module, scale_factor: float = 1.0) -> None:
        super().__init__()
        self.ae = ae
        self.scale_factor = float(scale_factor)

    @property
    def downsample_factor(self) -> int:
        """f: the spatial downsampling of the latent."""
        return self.ae.downsample_factor

    @property
    def latent_channels(self) -> int:
        """Channels of the latent."""
        return self.ae.latent_channels

    def posterior(self, x: Tensor):
        """The (unscaled) posterior q(z | x) for images in [-1, 1]."""
        return self.ae.encode(x)

    def encode(self, x: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Scaled latent: the posterior mean, or a draw from the posterior when ``sample=True``."""
        post = self.posterior(x)
        z = post.sample(generator=generator) if sample else post.mode()
        return z * self.scale_factor

    def decode(self, z: Tensor) -> Tensor:
        """Images in (about) [-1, 1] from scaled latents."""
        return self.ae.decode(z / self.scale_factor)
