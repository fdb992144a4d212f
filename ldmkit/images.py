"""Images as files: tensors in [-1, 1] to uint8 and to PNG (one image or a grid), written atomically."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ldmkit.atomic import atomic_path


def to_uint8(images: Tensor) -> Tensor:
    """Images in [-1, 1] (B, C, H, W) -> uint8 in [0, 255]."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_png(image: Tensor, path: Path) -> None:
    """Save one image in [-1, 1] (C, H, W) as PNG, atomically (the temporary name keeps the suffix)."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(image).permute(1, 2, 0).cpu().numpy()).save(tmp)


def save_grid(images: Tensor, path: Path, nrow: int = 8) -> None:
    """Save a grid of images in [-1, 1] (B, C, H, W) as one PNG."""
    from torchvision.utils import make_grid

    save_png(make_grid(images.float().cpu(), nrow=nrow, padding=2, pad_value=1.0), path)
