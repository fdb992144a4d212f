"""The VQ-regularised first stage (Rombach et al. 2022, Sec. 3.1; van den Oord et al. 2017) in the CompVis layout.

``VQModel`` built with the arguments of CompVis' ``VQModelInterface(embed_dim, n_embed, ddconfig)`` has the
same state-dict keys and shapes, in order (``loss.*`` keys excepted). As in the paper, ``encode`` returns the
latents *before* quantisation (the diffusion model works on them) and ``decode`` quantises first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ldmkit.models.ae_blocks import Decoder, Encoder
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


class VQModel(nn.Module):
    """CompVis ``VQModelInterface``: encoder -> quant_conv -> (latent) ; quantize -> post_quant_conv -> decoder."""

    def __init__(
        self,
        *,
        embed_dim: int,
        n_embed: int,
        z_channels: int,
        ch: int = 32,
        ch_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 1,
        attn_resolutions: Sequence[int] = (),
        resolution: int = 32,
        in_channels: int = 3,
        out_ch: int = 3,
        dropout: float = 0.0,
        beta: float = 0.25,
        attn_type: str = "vanilla",
    ) -> None:
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        if not ch_mult:
            raise ValueError("ch_mult must have at least one level")
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
        self.encoder = Encoder(in_channels=in_channels, double_z=False, **common)
        self.decoder = Decoder(out_ch=out_ch, **common)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=beta)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, kernel_size=1)
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

    def encode(self, x: Tensor) -> PointPosterior:
        """Pre-quantisation latents of images in [-1, 1] (what the diffusion model sees)."""
        return PointPosterior(self.quant_conv(self.encoder(x)))

    def decode_quantized(self, z_q: Tensor) -> Tensor:
        """Images from already-quantised latents."""
        return self.decoder(self.post_quant_conv(z_q))

    def decode(self, z: Tensor) -> Tensor:
        """Images from pre-quantisation latents: quantise to the nearest codes first, then decode."""
        return self.decode_quantized(self.quantize.lookup(self.quantize.indices(z)))

    def forward(self, x: Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None):
        """Reconstruction through the quantiser (straight-through) and the posterior with codebook stats."""
        h = self.encode(x).mean
        z_q, loss, idx, perplexity = self.quantize(h)
        return self.decode_quantized(z_q), PointPosterior(h, loss, idx, perplexity)

    def last_layer(self) -> nn.Parameter:
        """The decoder's final conv weight (for the adaptive GAN weight)."""
        return self.decoder.conv_out.weight

