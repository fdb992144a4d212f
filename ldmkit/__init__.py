"""ldmkit: latent diffusion models from the command line (Rombach et al. 2022), with a small Python API."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def load(path: str | Path, use_ema: bool = True):
    """The model in a model dir: a ``FirstStage`` (encode/decode) or a ``LatentDiffusion`` (unet, cond, sample)."""
    from ldmkit.modeldir import load as _load

    return _load(path, use_ema=use_ema)


__all__ = ["load", "__version__"]
