"""LightningModule for the first stage: reconstruction + KL (the GAN stage adds a second optimiser later)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor, nn


class AutoencoderModule(pl.LightningModule):
    """Trains an autoencoder with a loss module ``loss(x, rec, posterior) -> (loss, logs)``."""

    def __init__(self, ae: nn.Module, loss: nn.Module, lr: float = 5e-4, betas: tuple = (0.5, 0.9)) -> None:
        super().__init__()
        self.ae, self.loss = ae, loss
        self.lr, self.betas = lr, tuple(betas)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """One reconstruction step on ``batch['image']``."""
        x = batch["image"]
        rec, posterior = self.ae(x)
        loss, logs = self.loss(x, rec, posterior)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=True, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the autoencoder (CompVis uses betas (0.5, 0.9))."""
        return torch.optim.Adam(self.ae.parameters(), lr=self.lr, betas=self.betas, fused=True)
