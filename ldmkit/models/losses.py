"""First-stage training losses (paper App. G). Reconstruction + KL now; LPIPS and the PatchGAN plug in here."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ldmkit.models.autoencoder import DiagonalGaussian


class AutoencoderLoss(nn.Module):
    """Per-sample summed reconstruction error (L1 or L2) + ``kl_weight`` * KL(q(z|x) || N(0, I)), batch mean."""

    def __init__(self, rec: str = "l1", kl_weight: float = 1e-6) -> None:
        super().__init__()
        if rec not in ("l1", "l2"):
            raise ValueError(f"loss.rec must be l1 or l2, got {rec!r}")
        self.rec, self.kl_weight = rec, kl_weight

    def forward(self, x: Tensor, rec: Tensor, posterior: DiagonalGaussian) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and the logged parts (per-pixel reconstruction error, KL per sample)."""
        err = (x - rec).abs() if self.rec == "l1" else (x - rec).pow(2)
        rec_loss = err.flatten(1).sum(1).mean()
        kl = posterior.kl().mean()
        loss = rec_loss + self.kl_weight * kl
        logs = {"rec": err.mean().detach(), "kl": kl.detach(), "loss": loss.detach()}
        return loss, logs


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Peak signal-to-noise ratio (dB) per image for images in [-1, 1]."""
    mse = ((x - y) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)
