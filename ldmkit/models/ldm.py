"""A latent diffusion model: UNet + conditioner + noise schedule + first stage (paper Sec. 3.2-3.3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldmkit.diffusion.guidance import cfg_denoiser
from ldmkit.diffusion.objectives import check_prediction, to_eps
from ldmkit.diffusion.samplers import randn_like, sample_ddim
from ldmkit.diffusion.schedule import NoiseSchedule
from ldmkit.models.conditioners import Cond, Conditioner, NoConditioner
from ldmkit.models.first_stage import FirstStage


def resize_to(c: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize conditioning channels to the latent's spatial size: area-average down, bilinear up."""
    if tuple(c.shape[-2:]) == tuple(size):
        return c
    if c.shape[-2] >= size[0] and c.shape[-1] >= size[1]:
        return F.interpolate(c, size=size, mode="area")
    return F.interpolate(c, size=size, mode="bilinear", align_corners=False)


class LatentDiffusion(nn.Module):
    """Diffusion in a first stage's latent space (ε, v or x0 prediction), classifier-free guidance at sampling."""

    def __init__(
        self,
        unet: nn.Module,
        cond: Conditioner,
        schedule: NoiseSchedule,
        first_stage: FirstStage,
        latent_shape: Sequence[int],
        prediction: str = "eps",
    ) -> None:
        super().__init__()
        self.prediction = check_prediction(prediction)
        self.unet = unet
        self.cond = cond
        self.schedule = schedule
        self.first_stage = first_stage.requires_grad_(False)
        cond.attach(self.first_stage)
        self.latent_shape = tuple(int(s) for s in latent_shape)

    def trainable(self) -> nn.ModuleDict:
        """The trained parts (UNet + conditioner) as one module: what model/ema.safetensors hold."""
        return nn.ModuleDict({"unet": self.unet, "cond": self.cond})

    def train(self, mode: bool = True) -> LatentDiffusion:
        """Train mode for UNet and conditioner; the frozen first stage stays in eval mode."""
        super().train(mode)
        self.first_stage.eval()
        return self

    def net(self, x: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        """The UNet's raw output (an ε, v or x0 prediction) for latents ``x`` at timesteps ``t``."""
        cond = cond or Cond()
        if cond.concat is not None:
            x = torch.cat([x, resize_to(cond.concat.to(x.dtype), x.shape[-2:])], dim=1)
        return self.unet(x, t, context=cond.context, context_mask=cond.mask)

    def eps(self, x: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        """The noise prediction implied by the UNet's output (what every sampler consumes)."""
        return to_eps(self.prediction, self.schedule, self.net(x, t, cond), x, t)

    def condition(self, values: Any) -> Cond:
        """Encode conditioning values (captions, labels, maps, ...) to a ``Cond``."""
        return self.cond(values)

    @torch.no_grad()
    def sample(
        self,
        values: Any = None,
        n: int | None = None,
        sampler: Callable[..., Tensor] | None = None,
        guidance: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
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
