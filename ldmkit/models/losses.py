"""First-stage training loss (paper Sec. 3.1, App. G): reconstruction + LPIPS + regulariser + PatchGAN.

All terms are per-pixel means. CompVis sums the KL-model's reconstruction error over pixels instead; dividing
that whole loss by the number of pixels N gives this one, so ``kl_weight`` keeps its CompVis meaning
(the KL is divided by N here) and the adaptive GAN weight, being a gradient-norm ratio, is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def hinge_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Hinge discriminator loss: ½(E[relu(1 − D(x))] + E[relu(1 + D(x̂))])."""
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def vanilla_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Non-saturating (softplus) discriminator loss: ½(E[softplus(−D(x))] + E[softplus(D(x̂))])."""
    return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())


D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


def adaptive_weight(rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """λ = ‖∇_L rec_loss‖ / (‖∇_L gan_loss‖ + 1e-4) at the decoder's last layer L, clamped to [0, 1e4], detached."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


class AutoencoderLoss(nn.Module):
    """L1/L2 + ``perceptual_weight``·LPIPS + regulariser + adaptive-weighted PatchGAN after ``disc_start``.

    The regulariser is the posterior's: KL (weight ``kl_weight``) for KL models, codebook + commitment
    (weight ``codebook_weight``) for VQ models. ``discriminator=None`` trains without the GAN.
    """

    def __init__(
        self,
        rec: str = "l1",
        perceptual: nn.Module | None = None,
        perceptual_weight: float = 1.0,
        kl_weight: float = 1e-6,
        codebook_weight: float = 1.0,
        discriminator: nn.Module | None = None,
        disc_start: int = 0,
        disc_weight: float = 1.0,
        disc_factor: float = 1.0,
        disc_loss: str = "hinge",
    ) -> None:
        super().__init__()
        if rec not in ("l1", "l2"):
            raise ValueError(f"loss.rec must be l1 or l2, got {rec!r}")
        if disc_loss not in D_LOSSES:
            raise ValueError(f"loss.disc_loss must be one of {sorted(D_LOSSES)}, got {disc_loss!r}")
        self.rec, self.perceptual, self.perceptual_weight = rec, perceptual, float(perceptual_weight)
        self.kl_weight, self.codebook_weight = float(kl_weight), float(codebook_weight)
        self.discriminator, self.disc_start = discriminator, int(disc_start)
        self.disc_weight, self.disc_factor, self.disc_loss = float(disc_weight), float(disc_factor), disc_loss

    def gan_active(self, step: int) -> bool:
        """Whether the adversarial terms are on at this training step (off before ``disc_start``)."""
        return self.discriminator is not None and step >= self.disc_start and self.disc_factor > 0

    def reconstruction(self, x: Tensor, rec: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-pixel L1/L2 (+ weighted LPIPS broadcast over pixels), mean."""
        err = (x - rec).abs() if self.rec == "l1" else (x - rec).pow(2)
        logs = {"rec": err.mean().detach()}
        if self.perceptual is not None and self.perceptual_weight > 0:
            p = self.perceptual(x.contiguous(), rec.contiguous())
            err = err + self.perceptual_weight * p
            logs["lpips"] = p.mean().detach()
        return err.mean(), logs

    def generator_loss(
        self, x: Tensor, rec: Tensor, posterior, step: int, last_layer: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The autoencoder's loss at ``step`` and its logged parts."""
        nll, logs = self.reconstruction(x, rec)
        reg = posterior.reg_loss()
        weight = self.kl_weight / x[0].numel() if posterior.reg_name == "kl" else self.codebook_weight
        loss = nll + weight * reg
        logs.update(posterior.logs())
        if self.gan_active(step):
            g_loss = -self.discriminator(rec.contiguous()).mean()
            if last_layer is not None and torch.is_grad_enabled():
                lam = adaptive_weight(nll, g_loss, last_layer) * self.disc_weight
            else:
                lam = torch.tensor(0.0, device=x.device)
            loss = loss + lam * self.disc_factor * g_loss
            logs.update({"g_loss": g_loss.detach(), "d_weight": lam})
        logs["loss"] = loss.detach()
        return loss, logs

    def discriminator_loss(self, x: Tensor, rec: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The discriminator's loss on real x and (detached) reconstructions; zero before ``disc_start``."""
        real = self.discriminator(x.contiguous().detach())
        fake = self.discriminator(rec.contiguous().detach())
        factor = self.disc_factor if self.gan_active(step) else 0.0
        loss = factor * D_LOSSES[self.disc_loss](real, fake)
        return loss, {"d_loss": loss.detach(), "logits_real": real.mean().detach(), "logits_fake": fake.mean().detach()}


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Peak signal-to-noise ratio (dB) per image for images in [-1, 1]."""
    mse = ((x - y) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)
