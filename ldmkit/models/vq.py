"""The VQ-regularised first stage (Rombach et al. 2022, Sec. 3.1; van den Oord et al. 2017) in the CompVis layout.

``VQModel`` built with the arguments of CompVis' ``VQModelInterface(embed_dim, n_embed, ddconfig)`` has the
same state-dict keys and shapes, in order (``loss.*`` keys excepted). As in the paper, ``encode`` returns the
latents *before* quantisation (the diffusion model works on them) and ``decode`` quantises first.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from ldmkit.models.ae_base import AutoencoderBase
from ldmkit.models.autoencoder import PointPosterior


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantisation with straight-through gradients (CompVis ``VectorQuantizer2``, legacy loss)."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25) -> None:
        super().__init__()
        if n_embed < 2:
            raise ValueError(f"n_embed must be >= 2, got {n_embed}")
        self.n_embed, self.embed_dim, self.beta = int(n_embed), int(embed_dim), float(beta)
        self.embedding = nn.Embedding(self.n_embed, self.embed_dim)
        self.embedding.weight.data.uniform_(-1.0 / self.n_embed, 1.0 / self.n_embed)

    def indices(self, z: Tensor) -> Tensor:
        """Index of the nearest code for every latent vector of z (B, C, h, w) -> (B, h, w)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.embed_dim)
        codes = self.embedding.weight
        dist = flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * flat @ codes.t()
        return dist.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, indices: Tensor) -> Tensor:
        """Codebook vectors for indices (B, h, w) -> (B, C, h, w)."""
        return self.embedding(indices).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Quantised z (straight-through), codebook + β·commitment loss, indices and code perplexity."""
        idx = self.indices(z)
        z_q = self.lookup(idx)
        loss = torch.mean((z_q.detach() - z) ** 2) + self.beta * torch.mean((z_q - z.detach()) ** 2)
        z_q = z + (z_q - z).detach()
        probs = torch.bincount(idx.flatten(), minlength=self.n_embed).float() / idx.numel()
        perplexity = torch.exp(-torch.sum(probs * torch.log(probs + 1e-10)))
        return z_q, loss, idx, perplexity


class VQModel(AutoencoderBase):
    """CompVis ``VQModelInterface``: encoder -> quant_conv -> (latent) ; quantize -> post_quant_conv -> decoder."""

    def __init__(self, *, n_embed: int, beta: float = 0.25, **ddconfig: Any) -> None:
        """A codebook of ``n_embed`` codes with commitment weight ``beta``, and CompVis' ``embed_dim`` and
        ``ddconfig`` (keyword-only; see ``AutoencoderBase``)."""
        super().__init__(double_z=False, quantizer=partial(VectorQuantizer, n_embed, beta=beta), **ddconfig)

    def encode(self, x: Tensor) -> PointPosterior:
        """Pre-quantisation latents of images in [-1, 1] (what the diffusion model sees)."""
        return PointPosterior(self.quant_conv(self.encoder(x)))

    def decode_quantized(self, z_q: Tensor) -> Tensor:
        """Images from already-quantised latents."""
        return super().decode(z_q)

    def decode(self, z: Tensor) -> Tensor:
        """Images from pre-quantisation latents: quantise to the nearest codes first, then decode."""
        return self.decode_quantized(self.quantize.lookup(self.quantize.indices(z)))

    def forward(self, x: Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None):
        """Reconstruction through the quantiser (straight-through) and the posterior with codebook stats."""
        h = self.encode(x).mean
        z_q, loss, idx, perplexity = self.quantize(h)
        return self.decode_quantized(z_q), PointPosterior(h, loss, idx, perplexity)
