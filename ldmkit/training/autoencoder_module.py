"""LightningModule for the first stage: autoencoder and PatchGAN discriminator, two optimisers (manual optimisation)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor, nn


class AutoencoderModule(pl.LightningModule):
    """Each training step updates the autoencoder, then (when the loss has one) the discriminator.

    Lightning's ``global_step`` counts every optimiser step, so one training step advances it by
    ``steps_per_batch`` (2 with a discriminator); ``ae_step`` is the number of training steps done.
    """

    def __init__(self, ae: nn.Module, loss: nn.Module, lr: float = 5e-4, betas: tuple = (0.5, 0.9)) -> None:
        super().__init__()
        self.ae, self.loss = ae, loss
        self.lr, self.betas = lr, tuple(betas)
        self.automatic_optimization = False
        self.strict_loading = False  # the frozen LPIPS network is left out of checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Drop the frozen LPIPS weights (fixed, ~60 MB) from Lightning checkpoints."""
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("loss.perceptual.")]:
            del state[key]

    @property
    def steps_per_batch(self) -> int:
        """Optimiser steps per training step: 2 with a discriminator, else 1."""
        return 2 if self.loss.discriminator is not None else 1

    @property
    def ae_step(self) -> int:
        """Training steps completed so far."""
        return self.global_step // self.steps_per_batch

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """One autoencoder update, then one discriminator update (a no-op before ``disc_start``)."""
        x = batch["image"]
        step = self.ae_step
        optimizers = self.optimizers()
        opt_ae, opt_d = optimizers if isinstance(optimizers, list | tuple) else (optimizers, None)
        rec, posterior = self.ae(x)
        loss, logs = self.loss.generator_loss(x, rec, posterior, step, self.ae.last_layer())
        opt_ae.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt_ae.step()
        if opt_d is not None:
            opt_d.zero_grad(set_to_none=True)
            if self.loss.gan_active(step):
                d_loss, d_logs = self.loss.discriminator_loss(x, rec, step)
                self.manual_backward(d_loss)
                logs.update(d_logs)
            opt_d.step()  # without gradients (before disc_start) Adam leaves the weights untouched
        logs["step"] = torch.tensor(float(step + 1))
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=True, batch_size=x.shape[0])
        return loss.detach()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam over the autoencoder and, if present, Adam over the discriminator (CompVis betas (0.5, 0.9))."""
        opts = [torch.optim.Adam(self.ae.parameters(), lr=self.lr, betas=self.betas, fused=True)]
        if self.loss.discriminator is not None:
            opts.append(torch.optim.Adam(self.loss.discriminator.parameters(), lr=self.lr, betas=self.betas,
                                         fused=True))
        return opts
