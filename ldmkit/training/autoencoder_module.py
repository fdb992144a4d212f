"""LightningModule for the first stage: autoencoder and PatchGAN discriminator, two optimisers (manual optimisation)."""

from __future__ import annotations

from functools import partial

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from ldmkit.training.optim import OptimizerFactory, ScheduleFactory


class AutoencoderModule(pl.LightningModule):
    """Each training step updates the autoencoder, then (once the adversarial terms are on) the discriminator.

    Lightning's ``global_step`` counts the autoencoder's updates only (the generator step, as CompVis reports it):
    the discriminator steps through the strategy directly, past Lightning's step counter, so ``trainer.max_steps``,
    checkpoints, logs and the progress all count training steps.
    """

    def __init__(self, ae: nn.Module, loss: nn.Module, optimizer: OptimizerFactory | None = None,
                 lr_schedule: ScheduleFactory | None = None, *, lr: float = 5e-4, betas: tuple = (0.5, 0.9)) -> None:
        """``optimizer(params)`` builds each of the two optimisers (train-ae passes the ``optim=`` partial; None:
        fused Adam with ``lr`` and ``betas``, as train-ae's default); ``lr_schedule(optimizer)`` their schedules."""
        super().__init__()
        self.ae, self.loss = ae, loss
        self.optimizer = optimizer or partial(torch.optim.Adam, lr=lr, betas=tuple(betas), fused=True)
        self.lr_schedule = lr_schedule
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
        self._step_schedule(0)
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
        self._step_schedule(1)
        return logs

    def _step_schedule(self, index: int) -> None:
        """Step the rate schedule of optimiser ``index`` (0 autoencoder, 1 discriminator), if there is one: each
        follows its own optimiser's updates (the discriminator's start at ``loss.disc_start``)."""
        if self.lr_schedule is not None:
            schedules = self.lr_schedulers()
            (schedules if isinstance(schedules, list) else [schedules])[index].step()

    def configure_optimizers(self) -> list[torch.optim.Optimizer] | tuple[list, list]:
        """The optimiser of the autoencoder and, if present, of the discriminator (the same ``optim`` settings);
        with a schedule, one per optimiser (stepped in :meth:`training_step`)."""
        params = [self.ae.parameters()]
        if self.loss.discriminator is not None:
            params.append(self.loss.discriminator.parameters())
        opts = [self.optimizer(p) for p in params]
        if self.lr_schedule is None:
            return opts
        return opts, [self.lr_schedule(opt) for opt in opts]
