"""The built-in procedural dataset "shapes": 1-3 coloured geometric shapes on a dark background.

Every sample is generated from a seeded scene description (:class:`Scene`), so it is deterministic per
``(seed, split, index)`` and carries every kind of conditioning a latent-diffusion paper uses, all derived
from the same scene: an image, a caption, a class label (the largest object), bounding boxes with per-box
labels, and a semantic map. Geometry: ``cx``/``cy`` are image fractions (x right, y down) and ``radius`` is
the half-extent of the object's axis-aligned bounding box as a fraction of the image side. Circles fill
that box's inscribed circle, squares the whole box, triangles point up with their base on the box bottom.

Two more fields serve the image-to-image tasks of the paper (Sec. 4.3.2 super-resolution, Sec. 4.5
inpainting): ``lowres``, the image downsampled by ``sr_factor`` (antialiased bicubic, the SR3/LDM-SR
degradation), and ``mask``, a seeded rectangle (1 = region to fill) covering 10-50 % of the image, drawn
from its own random stream so the scenes are the same with or without it.

Fields of a sample (``ShapesDataset[i]``):

- ``image``: float32 (3, H, W) in [-1, 1]
- ``caption``: str
- ``class_label``: int64 scalar, the largest object's class (0..NUM_CLASSES-1)
- ``boxes``: float32 (MAX_OBJECTS, 4) xyxy in image fractions, rows past the last object are 0
- ``box_labels``: int64 (MAX_OBJECTS,), padded with -1
- ``semantic``: int64 (H, W), 0 = background, else object class + 1
- ``lowres``: float32 (3, H / sr_factor, W / sr_factor) in [-1, 1]
- ``mask``: float32 (1, H, W) in {0, 1}, 1 = region to fill
- ``scene``: str, the scene as JSON (:meth:`Scene.to_json`)
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 100, 235),
    "yellow": (240, 215, 40),
    "purple": (160, 70, 215),
    "orange": (245, 140, 30),
}
KINDS: tuple[str, ...] = ("circle", "square", "triangle")
NUM_CLASSES: int = len(KINDS) * len(COLORS)
MAX_OBJECTS = 3
SIZES: dict[str, tuple[float, float]] = {"small": (0.12, 0.17), "large": (0.22, 0.28)}
# Dark, muted background tones: every one is far (L2 > 100) from every object colour, and so is any blend.
BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (20, 20, 24),
    (45, 45, 50),
    (70, 70, 74),
    (90, 90, 92),
    (30, 38, 58),
    (58, 46, 38),
    (36, 54, 46),
    (54, 38, 56),
)
SPLITS: dict[str, int] = {"train": 0, "val": 1}
SUPERSAMPLE = 4
_PLACEMENT_TRIES = 64
_MIN_GAP = 0.02
MASK_COVERAGE: tuple[float, float] = (0.1, 0.5)  # inpainting masks cover this fraction of the image
_MASK_STREAM = 1  # extra entropy word: the mask's random stream, independent of the scene's


def object_class(kind: str, color: str) -> int:
    """Class index of a (kind, colour) pair: ``KINDS.index(kind) * len(COLORS) + colour index``."""
    return KINDS.index(kind) * len(COLORS) + list(COLORS).index(color)


def class_name(c: int) -> str:
    """Human-readable name of a class index, e.g. ``"red circle"``."""
    if not 0 <= c < NUM_CLASSES:
        raise ValueError(f"class index {c} out of range [0, {NUM_CLASSES})")
    kind, color = divmod(c, len(COLORS))
    return f"{list(COLORS)[color]} {KINDS[kind]}"


@dataclass(frozen=True)
class ShapeObject:
    """One shape: kind, colour, size word, centre (image fractions) and half-extent (fraction of side)."""

    kind: str
    color: str
    size: str
    cx: float
    cy: float
    radius: float

    def box(self) -> tuple[float, float, float, float]:
        """Bounding box ``(x0, y0, x1, y1)`` in image fractions."""
        return (self.cx - self.radius, self.cy - self.radius, self.cx + self.radius, self.cy + self.radius)

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Boolean mask of the points ``(x, y)`` (image fractions, broadcastable) inside the shape."""
        dx, dy, r = x - self.cx, y - self.cy, self.radius
        if self.kind == "circle":
            return dx * dx + dy * dy <= r * r
        if self.kind == "square":
            return (np.abs(dx) <= r) & (np.abs(dy) <= r)
        if self.kind == "triangle":  # apex (cx, cy - r), base corners (cx +- r, cy + r)
            return (np.abs(dx) <= (dy + r) / 2) & (dy <= r)
        raise ValueError(f"unknown shape kind {self.kind!r}; expected one of {', '.join(KINDS)}")


@dataclass(frozen=True)
class Scene:
    """A full scene description: objects in drawing order, background colours, gradient and caption."""

    objects: tuple[ShapeObject, ...]
    background: tuple[tuple[int, int, int], tuple[int, int, int]]
    gradient: str
    caption: str

    def to_json(self) -> str:
        """Serialise to a compact JSON string (exact round trip through :meth:`from_json`)."""
        d = {
            "objects": [{f.name: getattr(o, f.name) for f in fields(ShapeObject)} for o in self.objects],
            "background": self.background,
            "gradient": self.gradient,
            "caption": self.caption,
        }
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str) -> Scene:
        """Parse a scene written by :meth:`to_json`."""
        d = json.loads(s)
        return cls(
            objects=tuple(ShapeObject(**o) for o in d["objects"]),
            background=(tuple(d["background"][0]), tuple(d["background"][1])),
            gradient=d["gradient"],
            caption=d["caption"],
        )

    def boxes(self) -> np.ndarray:
        """float32 (MAX_OBJECTS, 4) xyxy boxes in [0, 1]; rows past the last object are 0."""
        out = np.zeros((MAX_OBJECTS, 4), np.float32)
        for i, o in enumerate(self.objects[:MAX_OBJECTS]):
            out[i] = o.box()
        return out

    def box_labels(self) -> np.ndarray:
        """int64 (MAX_OBJECTS,) object class per box, padded with -1."""
        out = np.full(MAX_OBJECTS, -1, np.int64)
        for i, o in enumerate(self.objects[:MAX_OBJECTS]):
            out[i] = object_class(o.kind, o.color)
        return out

    def class_label(self) -> int:
        """Object class of the largest object (largest radius, i.e. bounding box; ties: the first)."""
        if not self.objects:
            raise ValueError("scene has no objects, so no class label")
        largest = max(self.objects, key=lambda o: o.radius)  # max() keeps the first of equal keys
        return object_class(largest.kind, largest.color)


def relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where ``a`` is relative to ``b``, along the axis with the larger centre offset."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _place(rng: np.random.Generator, radius: float, placed: list[ShapeObject]) -> tuple[float, float]:
    """Pick a centre keeping the object inside the image, with bounding boxes apart from ``placed`` if possible."""
    cand = radius + rng.random((_PLACEMENT_TRIES, 2)) * (1.0 - 2.0 * radius)
    if not placed:
        return float(cand[0, 0]), float(cand[0, 1])
    centres = np.array([(o.cx, o.cy) for o in placed])
    radii = np.array([o.radius for o in placed])
    # Chebyshev gap between bounding boxes (negative = overlap), worst over the already placed objects.
    gap = (np.abs(cand[:, None, :] - centres[None]).max(-1) - (radius + radii[None])).min(-1)
    ok = np.flatnonzero(gap >= _MIN_GAP)
    i = int(ok[0]) if ok.size else int(np.argmax(gap))
    return float(cand[i, 0]), float(cand[i, 1])


def _phrase(o: ShapeObject, with_size: bool) -> str:
    """Object phrase "a [size ]<color> <kind>"."""
    words = f"{o.size + ' ' if with_size else ''}{o.color} {o.kind}"
    return ("an " if words[0] in "aeiou" else "a ") + words


def sample_scene(rng: np.random.Generator, max_objects: int = MAX_OBJECTS) -> Scene:
    """Draw a random scene (1..max_objects objects, distinct colours, background, caption) from ``rng``."""
    if not 1 <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"max_objects must be in 1..{MAX_OBJECTS}, got {max_objects}")
    n = int(rng.integers(1, max_objects + 1))
    colors = [list(COLORS)[int(i)] for i in rng.permutation(len(COLORS))[:n]]  # distinct colours
    kinds = [KINDS[int(rng.integers(len(KINDS)))] for _ in range(n)]
    sizes = ["large" if rng.random() < 0.5 else "small" for _ in range(n)]
    radii = [SIZES[s][0] + (SIZES[s][1] - SIZES[s][0]) * rng.random() for s in sizes]
    # Draw larger objects first (underneath) so smaller ones on top stay visible.
    order = sorted(range(n), key=lambda i: -radii[i])
    objects: list[ShapeObject] = []
    for i in order:
        cx, cy = _place(rng, radii[i], objects)
        objects.append(ShapeObject(kinds[i], colors[i], sizes[i], cx, cy, radii[i]))
    u = rng.random()
    gradient = "none" if u < 0.5 else "horizontal" if u < 0.75 else "vertical"
    a = int(rng.integers(len(BACKGROUNDS)))
    b = a if gradient == "none" else (a + 1 + int(rng.integers(len(BACKGROUNDS) - 1))) % len(BACKGROUNDS)
    background = (BACKGROUNDS[a], BACKGROUNDS[b])
    mention = [objects[int(i)] for i in rng.permutation(n)]
    phrases = [_phrase(o, rng.random() < 0.5) for o in mention]
    caption = phrases[0]
    if n >= 2:
        caption += f" {relation(mention[0], mention[1])} {phrases[1]}"
    if n >= 3:
        caption += " and " + " and ".join(phrases[2:])
    return Scene(tuple(objects), background, gradient, caption)


def _check_resolution(resolution: int) -> int:
    """Validate an image side length."""
    resolution = operator.index(resolution)
    if resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution}")
    return resolution


def _pixel_span(lo: float, hi: float, resolution: int) -> tuple[int, int]:
    """Half-open range of pixel indices whose area intersects [lo, hi] (image fractions)."""
    return max(0, math.floor(lo * resolution)), min(resolution, math.ceil(hi * resolution))


def render(scene: Scene, resolution: int) -> np.ndarray:
    """Render the scene as uint8 (H, W, 3), anti-aliased by 4x4 supersampled coverage per object."""
    res = _check_resolution(resolution)
    c0, c1 = (np.asarray(c, np.float32) for c in scene.background)
    if scene.gradient == "none":
        img = np.broadcast_to(c0, (res, res, 3)).copy()
    else:
        t = (np.arange(res, dtype=np.float32) + 0.5) / res
        ramp = c0 + (c1 - c0) * t[:, None]  # (res, 3)
        img = np.empty((res, res, 3), np.float32)
        img[:] = ramp[None, :, :] if scene.gradient == "horizontal" else ramp[:, None, :]
    s = SUPERSAMPLE
    for o in scene.objects:
        x0, y0, x1, y1 = o.box()
        px0, px1 = _pixel_span(x0, x1, res)
        py0, py1 = _pixel_span(y0, y1, res)
        if px1 <= px0 or py1 <= py0:
            continue
        xs = (np.arange(px0 * s, px1 * s, dtype=np.float32) + 0.5) / (res * s)
        ys = (np.arange(py0 * s, py1 * s, dtype=np.float32) + 0.5) / (res * s)
        mask = o.contains(xs[None, :], ys[:, None])
        cover = mask.reshape(py1 - py0, s, px1 - px0, s).sum(axis=(1, 3), dtype=np.float32)
        alpha = cover[..., None] * (1.0 / (s * s))
        patch = img[py0:py1, px0:px1]
        patch += alpha * (np.asarray(COLORS[o.color], np.float32) - patch)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_semantic(scene: Scene, resolution: int) -> np.ndarray:
    """int64 (H, W) map: 0 = background, else object class + 1 of the topmost object at each pixel centre."""
    res = _check_resolution(resolution)
    out = np.zeros((res, res), np.int64)
    centres = (np.arange(res, dtype=np.float32) + 0.5) / res
    for o in scene.objects:
        x0, y0, x1, y1 = o.box()
        px0, px1 = _pixel_span(x0, x1, res)
        py0, py1 = _pixel_span(y0, y1, res)
        mask = o.contains(centres[None, px0:px1], centres[py0:py1, None])
        out[py0:py1, px0:px1][mask] = object_class(o.kind, o.color) + 1
    return out


def inpaint_mask(rng: np.random.Generator, resolution: int) -> np.ndarray:
    """float32 (H, W) mask: one rectangle of 1s (the region to fill) covering ``MASK_COVERAGE`` of the image.

    The target area is uniform in ``MASK_COVERAGE``, the aspect ratio log-uniform in [1/2, 2], the position
    uniform; the integer sides are then clamped so the covered fraction stays in the range (from 4 px on).
    """
    res = _check_resolution(resolution)
    lo, hi = MASK_COVERAGE
    area = lo + (hi - lo) * rng.random()
    aspect = 2.0 ** (2.0 * rng.random() - 1.0)
    min_px, max_px = math.ceil(lo * res * res), math.floor(hi * res * res)
    h = min(res, max(1, round(res * math.sqrt(area * aspect))))
    w = round(area * res * res / h)
    w = max(1, min(res, max_px // h, max(w, -(-min_px // h))))
    y0, x0 = int(rng.integers(res - h + 1)), int(rng.integers(res - w + 1))
    out = np.zeros((res, res), np.float32)
    out[y0 : y0 + h, x0 : x0 + w] = 1.0
    return out


def downsample(image: Tensor, factor: int) -> Tensor:
    """(3, H, W) image in [-1, 1] -> (3, H / factor, W / factor): antialiased bicubic, clamped to [-1, 1]."""
    if factor == 1:
        return image.clone()
    h, w = image.shape[-2:]
    small = F.interpolate(image[None], size=(h // factor, w // factor), mode="bicubic", align_corners=False,
                          antialias=True)
    return small[0].clamp(-1.0, 1.0)


class ShapesDataset(Dataset):
    """Seeded, deterministic shapes dataset: sample i depends only on (seed, split, i)."""

    def __init__(
        self,
        size: int = 10000,
        resolution: int = 32,
        split: str = "train",
        seed: int = 0,
        max_objects: int = MAX_OBJECTS,
        sr_factor: int = 4,
    ) -> None:
        """Configure the dataset; ``split`` is "train" or "val" (disjoint random streams); ``lowres`` is the
        image downsampled by ``sr_factor`` (which must divide ``resolution``)."""
        if split not in SPLITS:
            raise ValueError(f"unknown shapes split {split!r}; valid choices: {', '.join(SPLITS)}")
        if not 1 <= max_objects <= MAX_OBJECTS:
            raise ValueError(f"max_objects must be in 1..{MAX_OBJECTS}, got {max_objects}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.size, self.resolution, self.split = int(size), _check_resolution(resolution), split
        sr_factor = operator.index(sr_factor)
        if sr_factor < 1 or self.resolution % sr_factor:
            raise ValueError(
                f"sr_factor must be a positive divisor of resolution={self.resolution}, got {sr_factor}"
            )
        self.seed, self.max_objects, self.sr_factor = int(seed), int(max_objects), sr_factor

    def __len__(self) -> int:
        """Number of samples."""
        return self.size

    def _index(self, index: int) -> int:
        """Validate a sample index."""
        i = operator.index(index)
        if not 0 <= i < self.size:
            raise IndexError(f"shapes index {i} out of range [0, {self.size})")
        return i

    def scene(self, index: int) -> Scene:
        """The scene of sample ``index`` (deterministic)."""
        i = self._index(index)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, SPLITS[self.split], i]))
        return sample_scene(rng, self.max_objects)

    def mask(self, index: int) -> np.ndarray:
        """The inpainting mask of sample ``index`` (deterministic; own stream, independent of the scene)."""
        i = self._index(index)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, SPLITS[self.split], i, _MASK_STREAM]))
        return inpaint_mask(rng, self.resolution)

    def __getitem__(self, index: int) -> dict[str, object]:
        """Image in [-1, 1] (3, H, W) plus caption, class label, boxes, box labels, semantic map, low-res
        image, inpainting mask and scene JSON (see the module docstring)."""
        scene = self.scene(index)
        img = torch.from_numpy(render(scene, self.resolution)).permute(2, 0, 1).float()
        img = (img / 127.5 - 1.0).contiguous()
        return {
            "image": img,
            "caption": scene.caption,
            "class_label": torch.tensor(scene.class_label(), dtype=torch.int64),
            "boxes": torch.from_numpy(scene.boxes()),
            "box_labels": torch.from_numpy(scene.box_labels()),
            "semantic": torch.from_numpy(render_semantic(scene, self.resolution)),
            "lowres": downsample(img, self.sr_factor),
            "mask": torch.from_numpy(self.mask(index))[None],
            "scene": scene.to_json(),
        }
