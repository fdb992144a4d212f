"""The first stage as consumers see it: scaled encode / decode around an autoencoder (paper Sec. 3.1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ldmkit.models.autoencoder import DiagonalGaussian, PointPosterior


@torch.no_grad()
def latent_scale(ae: nn.Module, images: Tensor) -> float:
    """KL: 1 / std of posterior samples z on one batch (CompVis ``scale_by_std``); VQ and identity: 1.0."""
    posterior = ae.encode(images)
    if not isinstance(posterior, DiagonalGaussian):
        return 1.0
    z = posterior.sample(generator=torch.Generator(images.device).manual_seed(0))
    return float(1.0 / z.flatten().std())


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


class IdentityStage(nn.Module):
    """No first stage (f = 1, the paper's pixel-space LDM-1): the "latent" is the image itself."""

    def __init__(self, *, in_channels: int = 3, resolution: int = 32) -> None:
        super().__init__()
        self.in_channels, self.resolution = int(in_channels), int(resolution)

    downsample_factor = 1

    @property
    def latent_channels(self) -> int:
        """Channels of the latent (= image channels)."""
        return self.in_channels

    def encode(self, x: Tensor) -> PointPosterior:
        """The image as its own latent."""
        return PointPosterior(x)

    def decode(self, z: Tensor) -> Tensor:
        """The latent as the image."""
        return z

    def forward(self, x: Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None):
        """Perfect reconstruction."""
        return x, PointPosterior(x)
