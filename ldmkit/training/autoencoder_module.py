"""LightningModule for the first stage: autoencoder and PatchGAN discriminator, two optimisers (manual optimisation)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor, nn


class AutoencoderModule(pl.LightningModule):
    """Each training step updates the autoencoder, then (once the adversarial terms are on) the discriminator.

    Lightning's ``global_step`` counts the autoencoder's updates only (the generator step, as CompVis reports it):
    the discriminator steps through the strategy directly, past Lightning's step counter, so ``trainer.max_steps``,
    checkpoints, logs and the progress all count training steps.
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

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """One autoencoder update, then one discriminator update (none before ``disc_start``)."""
        x = batch["image"]
        step = self.global_step
        opt_ae = self.optimizers()
        opt_ae = opt_ae[0] if isinstance(opt_ae, list | tuple) else opt_ae
        rec, posterior = self.ae(x)
        loss, logs = self.loss.generator_loss(x, rec, posterior, step, self.ae.last_layer())
        opt_ae.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt_ae.step()  # the LightningOptimizer: advances global_step
        if self.loss.gan_active(step):
            logs.update(self._discriminator_update(x, rec, step))
        logs["step"] = torch.tensor(float(step + 1))
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=True, batch_size=x.shape[0])
        return loss.detach()

    def _discriminator_update(self, x: Tensor, rec: Tensor, step: int) -> dict[str, Tensor]:
        """One discriminator update through the strategy (precision, DDP) but not through Lightning's step counter;
        its logged parts."""
        opt_d = self.optimizers(use_pl_optimizer=False)[1]
        opt_d.zero_grad(set_to_none=True)
        d_loss, logs = self.loss.discriminator_loss(x, rec, step)
        self.manual_backward(d_loss)
        self.trainer.strategy.optimizer_step(opt_d, closure=lambda: None)
        return logs

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam over the autoencoder and, if present, Adam over the discriminator (CompVis betas (0.5, 0.9))."""
        opts = [torch.optim.Adam(self.ae.parameters(), lr=self.lr, betas=self.betas, fused=True)]
        if self.loss.discriminator is not None:
            opts.append(torch.optim.Adam(self.loss.discriminator.parameters(), lr=self.lr, betas=self.betas,
                                         fused=True))
        return opts
