"""Fields derived from an item's image for the paper's image-to-image tasks (``dataset.sr_factor``,
``dataset.masks``), shared by every image reader of :mod:`ldmkit.data.paper_datasets`.

- ``sr_factor`` (null = off): adds ``lowres``, float32 (3, R / f, R / f) in [-1, 1], the image downsampled by f
  with antialiased bicubic (the degradation of the paper's LDM-SR on ImageNet, Sec. 4.3.2, and of the built-in
  dataset: :func:`ldmkit.data.shapes.downsample`). f must divide the resolution.
- ``masks`` (null = off): ``lama`` adds ``mask``, float32 (1, R, R) in {0, 1}, 1 = region to fill (Sec. 4.5
  follows LaMa's mask generation). It is LaMa's ``random_thick_256`` generator: with odds 1 : 0.3 either
  1-5 thick random strokes (each 1-5 segments, width 5-104 px, length 10-209 px, angles as LaMa draws them)
  or 1-3 boxes (sides 30-150 px, 10 px from the border); sizes are LaMa's 256 px values scaled by R / 256, and
  a mask covering more than half the image (or nothing) is drawn again, as LaMa's ``max_tamper_area: 0.5``.
  The mask of an item depends only on (``seed``, the item's index): the same item always gets the same mask.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from ldmkit.data.shapes import downsample
from ldmkit.errors import UserError

MASKS: tuple[str, ...] = ("lama",)
LAMA_SIDE = 256  # LaMa's sizes below are in pixels of a 256 x 256 image
STROKES = {"min_times": 1, "max_times": 5, "max_width": 100, "max_angle": 4, "max_len": 200}
BOXES = {"margin": 10, "min_size": 30, "max_size": 150, "min_times": 1, "max_times": 3}
STROKE_ODDS, BOX_ODDS = 1.0, 0.3
MAX_AREA = 0.5
_MASK_STREAM = 0x4D41534B  # entropy word of the mask stream ("MASK"), apart from any other seeded stream
_TRIES = 20


def key_entropy(key: str) -> int:
    """A 64-bit number from a sample key (streams have keys, not indices)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def _strokes(rng: np.random.Generator, res: int, scale: float) -> np.ndarray:
    """LaMa's irregular mask: polylines of thick strokes with round ends."""
    img = Image.new("L", (res, res), 0)
    draw = ImageDraw.Draw(img)
    max_len = max(1, round(STROKES["max_len"] * scale))
    max_width = max(1, round(STROKES["max_width"] * scale))
    for i in range(int(rng.integers(STROKES["min_times"], STROKES["max_times"] + 1))):
        x, y = int(rng.integers(res)), int(rng.integers(res))
        for _ in range(1 + int(rng.integers(5))):
            angle = 0.01 + int(rng.integers(STROKES["max_angle"]))
            if i % 2 == 0:
                angle = 2 * math.pi - angle
            length = 10 * scale + int(rng.integers(max_len))
            width = max(1, round(5 * scale) + int(rng.integers(max_width)))
            x1 = int(np.clip(x + length * math.sin(angle), 0, res))
            y1 = int(np.clip(y + length * math.cos(angle), 0, res))
            draw.line([(x, y), (x1, y1)], fill=1, width=width)
            for cx, cy in ((x, y), (x1, y1)):  # round caps, as cv2.line draws thick lines
                r = width / 2
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
            x, y = x1, y1
    return np.asarray(img, dtype=np.float32)


def _boxes(rng: np.random.Generator, res: int, scale: float) -> np.ndarray:
    """LaMa's rectangle mask: a few axis-aligned boxes away from the border."""
    out = np.zeros((res, res), np.float32)
    margin = round(BOXES["margin"] * scale)
    lo = max(1, round(BOXES["min_size"] * scale))
    hi = max(lo + 1, min(round(BOXES["max_size"] * scale), res - 2 * margin))
    for _ in range(int(rng.integers(BOXES["min_times"], BOXES["max_times"] + 1))):
        w, h = int(rng.integers(lo, hi)), int(rng.integers(lo, hi))
        x0 = int(rng.integers(margin, max(margin, res - margin - w) + 1))
        y0 = int(rng.integers(margin, max(margin, res - margin - h) + 1))
        out[y0 : y0 + h, x0 : x0 + w] = 1.0
    return out


def lama_mask(rng: np.random.Generator, resolution: int) -> np.ndarray:
    """float32 (R, R) in {0, 1}: strokes or boxes (odds 1 : 0.3), redrawn while empty or over half the image."""
    scale = resolution / LAMA_SIDE
    mask = np.zeros((resolution, resolution), np.float32)
    for _ in range(_TRIES):
        boxes = rng.random() < BOX_ODDS / (STROKE_ODDS + BOX_ODDS)
        mask = (_boxes if boxes else _strokes)(rng, resolution, scale)
        if 0.0 < mask.mean() <= MAX_AREA:
            break
    return mask


class Derived:
    """Adds ``lowres`` and/or ``mask`` to items (see the module doc); validates the options as ``dataset.*``."""

    def __init__(self, resolution: int, sr_factor: int | None = None, masks: str | None = None,
                 seed: int = 0) -> None:
        self.resolution, self.seed = int(resolution), int(seed)
        if sr_factor is not None:
            if isinstance(sr_factor, bool) or not isinstance(sr_factor, int) or sr_factor < 1 \
                    or self.resolution % sr_factor:
                raise UserError(f"dataset.sr_factor={sr_factor!r}: must be null or a whole number >= 1 dividing "
                                f"dataset.resolution={self.resolution}")
        if masks is not None and masks not in MASKS:
            raise UserError(f"dataset.masks={masks!r} is not a mask generator; valid choices: "
                            f"{', '.join(MASKS)}, null")
        self.sr_factor, self.masks = sr_factor, masks

    @property
    def active(self) -> bool:
        """Whether any field is added."""
        return self.sr_factor is not None or self.masks is not None

    def mask(self, entropy: int) -> torch.Tensor:
        """The (1, R, R) mask of the item with this index (or :func:`key_entropy` of its key)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(entropy), _MASK_STREAM]))
        return torch.from_numpy(lama_mask(rng, self.resolution))[None]

    def add(self, item: dict, entropy: int) -> dict:
        """``item`` with the derived fields added (in place, also returned)."""
        if self.sr_factor is not None:
            item["lowres"] = downsample(item["image"], self.sr_factor)
        if self.masks is not None:
            item["mask"] = self.mask(entropy)
        return item

    def add_keyed(self, item: dict) -> dict:
        """For streams: the mask is seeded by the item's ``key``."""
        return self.add(item, key_entropy(str(item.get("key", ""))))
