"""A latent diffusion model: UNet + conditioner + noise schedule + first stage (paper Sec. 3.2-3.3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ldmkit.diffusion.cond import Cond, resize_to
from ldmkit.diffusion.guidance import guided_eps
from ldmkit.diffusion.objectives import check_prediction, to_eps
from ldmkit.diffusion.samplers import check_strength, randn_like, sample_ddim
from ldmkit.diffusion.schedule import NoiseSchedule
from ldmkit.models.conditioners import Conditioner, NoConditioner, num_values
from ldmkit.models.first_stage import FirstStage


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
        self.sample_dtype: torch.dtype | None = None  # UNet autocast dtype when no grad is needed (speed.autocast)

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
        extra = {} if cond.vector is None else {"vector": cond.vector}
        if self.sample_dtype is None or torch.is_grad_enabled():
            return self.unet(x, t, context=cond.context, context_mask=cond.mask, **extra)
        with torch.autocast(device_type=x.device.type, dtype=self.sample_dtype):
            out = self.unet(x, t, context=cond.context, context_mask=cond.mask, **extra)
        return out.float()

    def eps(self, x: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        """The noise prediction implied by the UNet's output (what every sampler consumes); ``t`` may be
        fractional (the σ-space samplers' log-σ interpolation), the UNet embeds it as a float."""
        return to_eps(self.prediction, self.schedule, self.net(x, t, cond), x, t)

    def condition(self, values: Any) -> Cond:
        """Encode conditioning values (captions, labels, maps, ...) to a ``Cond``."""
        return self.cond(values)

    def size_multiple(self) -> int:
        """Image sides must be multiples of this: f × 2^(UNet levels − 1) (convolutional sampling, Sec. 4.3.2)."""
        levels = len(getattr(self.unet, "channel_mult", (1,)))
        return self.first_stage.downsample_factor * 2 ** (levels - 1)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> their latents z0, scaled as in training (the first stage's posterior mean):
        the start of img2img."""
        device = next(self.unet.parameters()).device
        return self.first_stage.encode(images.to(device, torch.float32))

    def latent_size(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """The latent (h, w) for an image of ``height`` × ``width`` pixels (default: the training size)."""
        f, multiple = self.first_stage.downsample_factor, self.size_multiple()
        h, w = height or self.latent_shape[1] * f, width or self.latent_shape[2] * f
        if h % multiple or w % multiple or h < multiple or w < multiple:
            raise ValueError(f"image size {h}x{w} must be a positive multiple of {multiple} (f={f} × 2^(UNet levels - 1))")
        return h // f, w // f

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
        size: tuple[int, int] | None = None,
        uncond_values: Any = None,
        init: Tensor | None = None,
        strength: float = 1.0,
    ) -> Tensor:
        """Draw images in [-1, 1] for ``values`` (one per sample; ``None`` = unconditional, ``n`` samples).

        ``size`` is the latent (h, w) (default: the training size; larger = convolutional sampling) and
        ``uncond_values`` replace the null condition of classifier-free guidance (a negative prompt). img2img
        (SDEdit): ``init`` holds one latent z0 per sample (``encode``), which the sampler noises to the step
        ``strength`` of the way into its schedule and denoises from there (0: z0 itself, 1: plain sampling)."""
        unconditional = isinstance(self.cond, NoConditioner)
        if values is None:
            if n is None:
                raise ValueError("give conditioning values or n")
            values = self.cond.null(n)
        n = num_values(values)
        device = next(self.unet.parameters()).device
        cond = self.condition(values)
        if unconditional or guidance == 1.0:
            uncond = None
        else:
            uncond = self.condition(self.cond.null(n) if uncond_values is None else uncond_values)
        shape = (n, self.latent_shape[0], *(size or self.latent_shape[1:]))
        noise = randn_like(torch.empty(shape, device=device), generator)
        sampler = sampler or sample_ddim
        z = sampler(
            guided_eps(self.eps, guidance),
            noise,
            self.schedule,
            extra_args={"cond": cond, "uncond": uncond},
            callback=callback,
            generator=generator,
            **self._img2img(init, strength, shape),
        )
        if return_latents:
            return z
        return self.cond.composite(self.first_stage.decode(z).clamp(-1, 1), values)

    def _img2img(self, init: Tensor | None, strength: float, shape: tuple[int, ...]) -> dict[str, Any]:
        """The sampler's img2img arguments (none without ``init``), with ``init`` checked against the batch."""
        if init is None:
            if strength != 1.0:
                raise ValueError(f"strength={strength} is img2img's: give the init latents too (init=)")
            return {}
        if tuple(init.shape) != tuple(shape):
            raise ValueError(f"init latents of shape {tuple(init.shape)}, the batch needs {tuple(shape)}")
        return {"init": init.to(next(self.unet.parameters()).device, torch.float32),
                "strength": check_strength(strength)}
