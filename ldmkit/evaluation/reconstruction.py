"""Reconstruction quality of a first stage (paper Table 8): PSNR, SSIM, L1 and rFID on held-out images."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ldmkit.models.losses import psnr


@torch.no_grad()
def reconstruct(first_stage, images: Tensor, batch_size: int = 64) -> Tensor:
    """Encode (posterior mode) and decode images in [-1, 1] batch by batch; result clamped to [-1, 1]."""
    device = next(iter(first_stage.parameters()), torch.empty(0)).device
    out = [
        first_stage.decode(first_stage.encode(chunk.to(device))).clamp(-1, 1).cpu()
        for chunk in images.split(batch_size)
    ]
    return torch.cat(out)


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Mean SSIM (Gaussian window 11, σ 1.5; Wang et al. 2004) of images in [-1, 1], via torchmetrics."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure((x + 1) / 2, (y + 1) / 2, data_range=1.0)


class ReconstructionTally:
    """PSNR / SSIM / L1 accumulated batch by batch: per-image means, so batching does not change the result."""

    def __init__(self) -> None:
        self.n, self.psnr, self.ssim, self.l1 = 0, 0.0, 0.0, 0.0

    def add(self, images: Tensor, rec: Tensor) -> None:
        """One batch of originals and reconstructions in [-1, 1]."""
        k = len(images)
        self.n += k
        self.psnr += float(psnr(images, rec).sum())
        self.ssim += float(ssim(images, rec)) * k
        self.l1 += float((images - rec).abs().mean()) * k

    def result(self) -> dict:
        """Means over all images."""
        n = max(self.n, 1)
        return {"images": self.n, "psnr": self.psnr / n, "ssim": self.ssim / n, "l1": self.l1 / n}


def reconstruction_metrics(
    images: Tensor, rec: Tensor, inception_weights: Path | None, batch_size: int = 64
) -> dict:
    """PSNR / SSIM / L1 between originals and reconstructions, plus rFID and KID when Inception weights exist."""
    from ldmkit.evaluation.fid import fid_kid
    from ldmkit.images import to_uint8

    tally = ReconstructionTally()
    tally.add(images, rec)
    metrics = tally.result()
    if inception_weights is not None:
        scores = fid_kid(to_uint8(rec), to_uint8(images), inception_weights, 1000, batch_size)
        metrics.update({"rfid": scores["fid"], "rkid": scores["kid_mean"]})
    return metrics
