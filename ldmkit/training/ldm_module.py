"""LightningModule for the diffusion model: eps-prediction loss in latent space, conditioning dropout, EMA."""

from __future__ import annotations

from functools import partial

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from ldmkit.diffusion.objectives import min_snr_weight, sample_timesteps, target
from ldmkit.models.conditioners import NoConditioner
from ldmkit.models.ldm import LatentDiffusion
from ldmkit.training.optim import OptimizerFactory, ScheduleFactory


def ema_multi_avg_fn(decay: float, warmup: float = 10.0):
    """EMA update (for ``AveragedModel(multi_avg_fn=...)``) with the warm-up d = min(decay, (1+n)/(warmup+n))
    (CompVis: warmup 10)."""

    @torch.no_grad()
    def avg(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        """In place: averaged <- d * averaged + (1 - d) * current, over all tensors at once (foreach)."""
        n = float(num_averaged)
        d = min(decay, (1 + n) / (warmup + n))
        torch._foreach_lerp_(averaged, current, 1 - d)

    return avg


def compvis_ema(module: torch.nn.Module, decay: float, warmup: float = 10.0) -> AveragedModel:
    """An EMA of ``module`` updated as CompVis' LitEma: it starts from the weights at construction and its k-th update
    (k = 1, 2, ...) uses d = min(decay, (1+k)/(warmup+k)) (AveragedModel's first update would copy instead)."""
    ema = AveragedModel(module, multi_avg_fn=ema_multi_avg_fn(decay, warmup), use_buffers=True)
    ema.n_averaged.fill_(1)  # the count the averaging function sees is then LitEma's num_updates
    ema.requires_grad_(False)
    return ema


class LDMModule(pl.LightningModule):
    """Trains ``ldm.unet`` + ``ldm.cond`` on batches of images (encoded on the fly) or latent posteriors."""

    def __init__(
        self,
        ldm: LatentDiffusion,
        optimizer: OptimizerFactory | None = None,
        lr_schedule: ScheduleFactory | None = None,
        ema_decay: float = 0.999,
        ema_warmup: float = 10.0,
        min_snr_gamma: float | None = None,
        timesteps: tuple[str, float, float] = ("uniform", 0.0, 1.0),
        *,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
    ) -> None:
        """``optimizer(params)`` builds the optimiser (train-ldm passes the ``optim=`` partial; None: fused AdamW
        with ``lr`` and ``weight_decay``, as optim=adamw); ``lr_schedule(optimizer)`` its per-step schedule;
        ``timesteps`` = (kind, mean, std) of the training timesteps (see :func:`sample_timesteps`)."""
        super().__init__()
        self.ldm = ldm
        self.optimizer = optimizer or partial(torch.optim.AdamW, lr=lr, weight_decay=weight_decay, fused=True)
        self.lr_schedule, self.min_snr_gamma, self.timesteps = lr_schedule, min_snr_gamma, timesteps
        self.ema = compvis_ema(ldm.trainable(), ema_decay, ema_warmup)

    def latents(self, batch: dict) -> Tensor:
        """A fresh z per step: scale * (mean + std * eps) from shards, or a posterior draw of the images."""
        fs = self.ldm.first_stage
        if "latent_mean" in batch:
            mean, std = batch["latent_mean"], batch["latent_std"]
            return fs.scale_factor * (mean + std * torch.randn_like(mean))
        with torch.no_grad():
            return fs.encode(batch["image"], sample=True)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """The simple loss ||target - net(z_t, t, tau(y))||^2 (paper Eq. 2 for ε), optionally min-SNR weighted."""
        z = self.latents(batch)
        schedule, prediction = self.ldm.schedule, self.ldm.prediction
        t = sample_timesteps(z.shape[0], schedule.num_timesteps, *self.timesteps, device=z.device)
        noise = torch.randn_like(z)
        z_t = schedule.q_sample(z, t, noise)
        cond = self.ldm.cond
        values = None if isinstance(cond, NoConditioner) else cond.drop(cond.values(batch))
        output = self.ldm.net(z_t, t, self.ldm.condition(values))
        per_sample = F.mse_loss(output, target(prediction, schedule, z, noise, t), reduction="none").flatten(1).mean(1)
        if self.min_snr_gamma:
            per_sample = per_sample * min_snr_weight(prediction, schedule, t, self.min_snr_gamma)
        loss = per_sample.mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=z.shape[0])
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimiser step, then the EMA update: both are done before any batch-end hook (checkpoints)."""
        super().optimizer_step(*args, **kwargs)
        self.ema.update_parameters(self.ldm.trainable())

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        """The optimiser over UNet + conditioner and, with a schedule, its rate stepped after every optimiser step."""
        params = [p for p in self.ldm.trainable().parameters() if p.requires_grad]  # frozen towers (clip) stay out
        optimizer = self.optimizer(params)
        if self.lr_schedule is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.lr_schedule(optimizer), "interval": "step"}}
