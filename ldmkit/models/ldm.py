"""A latent diffusion model: UNet + conditioner + noise schedule + first stage (paper Sec. 3.2-3.3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ldmkit.diffusion.guidance import cfg_denoiser
from ldmkit.diffusion.samplers import randn_like, sample_ddim
from ldmkit.diffusion.schedule import NoiseSchedule
from ldmkit.models.conditioners import Conditioner, NoConditioner
from ldmkit.models.first_stage import FirstStage


class LatentDiffusion(nn.Module):
    """eps-prediction diffusion in a first stage's latent space, with classifier-free guidance at sampling."""

    def __init__(
        self,
        unet: nn.Module,
        cond: Conditioner,
        schedule: NoiseSchedule,
        first_stage: FirstStage,
        latent_shape: Sequence[int],
    ) -> None:
        super().__init__()
        self.unet = unet
        self.cond = cond
        self.schedule = schedule
        self.first_stage = first_stage.requires_grad_(False)
        self.latent_shape = tuple(int(s) for s in latent_shape)

    def trainable(self) -> nn.ModuleDict:
        """The trained parts (UNet + conditioner) as one module: what model/ema.safetensors hold."""
        return nn.ModuleDict({"unet": self.unet, "cond": self.cond})

    def train(self, mode: bool = True) -> LatentDiffusion:
        """Train mode for UNet and conditioner; the frozen first stage stays in eval mode."""
        super().train(mode)
        self.first_stage.eval()
        return self

    def eps(self, x: Tensor, t: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """The UNet's noise prediction for latents ``x`` at timesteps ``t``."""
        return self.unet(x, t, context=context, context_mask=mask)

    def condition(self, values: Any) -> tuple[Tensor | None, Tensor | None]:
        """Encode conditioning values (captions, labels, ...) to (context, mask)."""
        return self.cond(values)

    @torch.no_grad()
    def sample(
        self,
        values: Any = None,
        n: int | None = None,
        sampler: Callable[..., Tensor] | None = None,
        guidance: float = 1.0,
        generator: torch.Generator | None = None,
        callback: Callable[[dict], None] | None = None,
        return_latents: bool = False,
    ) -> Tensor:
        """Draw images in [-1, 1] for ``values`` (one per sample; ``None`` = unconditional, ``n`` samples)."""
        unconditional = isinstance(self.cond, NoConditioner)
        if values is None:
            if n is None:
                raise ValueError("give conditioning values or n")
            values = self.cond.null(n)
        n = len(values)
        device = next(self.unet.parameters()).device
        cond = self.condition(values)
        uncond = None if unconditional or guidance == 1.0 else self.condition(self.cond.null(n))
        noise = randn_like(torch.empty((n, *self.latent_shape), device=device), generator)
        sampler = sampler or sample_ddim
        z = sampler(
            cfg_denoiser(self.eps, guidance),
            noise,
            self.schedule,
            extra_args={"cond": cond, "uncond": uncond},
            callback=callback,
            generator=generator,
        )
        if return_latents:
            return z
        return self.first_stage.decode(z).clamp(-1, 1)
