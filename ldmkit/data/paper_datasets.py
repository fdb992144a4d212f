"""The paper's datasets read from their published layouts (``dataset=<name>``; Rombach et al. 2022, Sec. 4).

- ``imagenet``: :class:`ldmkit.data.imagenet.ImageNetDataset` -> ``class_label``, ``class_name`` (wnid),
  ``caption`` "".
- ``coco``: :class:`ldmkit.data.coco.CocoDataset` -> ``caption``, ``boxes``, ``box_labels``.
- ``openimages``: :class:`ldmkit.data.openimages.OpenImagesDataset` -> ``boxes``, ``box_labels``,
  ``box_flags``, ``caption`` "".
- ``laion``: :func:`laion_dataset` (img2dataset webdataset shards) -> ``caption``, ``json``.
- ``celebahq``, ``ffhq``, ``lsun_churches``, ``lsun_bedrooms``, ``places``: :class:`PaperImageFolder`
  (image folders) -> ``caption`` (a ``<stem>.txt`` sibling, else "").
- ``landscapes``: :class:`LandscapesDataset` (CompVis' sflckr layout) -> ``semantic``, ``caption`` "".

Every item also has ``image`` float32 (3, R, R) in [-1, 1] and ``key`` (the file's name or id). Every reader
takes ``path``, ``resolution`` (the paper's 256), ``crop`` (center | random), ``flip``, ``split`` (train | val;
val always centre-crops and never flips), ``size`` (first N of the split) and ``seed``, plus ``sr_factor`` /
``masks`` for the derived ``lowres`` / ``mask`` fields (:mod:`ldmkit.data.derived`). Images are resized like
:class:`~ldmkit.data.transforms.ImageTransform` (shorter side to R, antialiased bicubic, then an R x R crop,
same pixels); boxes and label maps go through the same resize and crop (:class:`Placement`). Broken files are
skipped and counted in ``dataset.skips`` like the image folder's; a missing folder or annotation file, or one
in the wrong format, is a one-line :class:`~ldmkit.errors.UserError`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ldmkit.data.derived import Derived
from ldmkit.data.folder import ImageFolderDataset, _check_options, scan_images, split_files
from ldmkit.data.skips import SkipCounter, SkipsBrokenItems, counting_handler
from ldmkit.data.transforms import (
    IMAGE_EXTENSIONS,
    check_crop,
    check_resolution,
    decode_image,
    to_rgb,
    to_tensor,
)
from ldmkit.errors import UserError


def resized_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(w, h) after resizing the shorter side to ``resolution`` (torchvision's rule: the longer side truncated)."""
    if min(width, height) == resolution:
        return width, height
    if width <= height:
        return resolution, int(resolution * height / width)
    return int(resolution * width / height), resolution


@dataclass(frozen=True)
class Placement:
    """Where the R x R output lies in the resized image: resized size, crop offset, horizontal flip."""

    width: int
    height: int
    left: int
    top: int
    resolution: int
    flip: bool = False

    def image(self, img: Image.Image) -> Tensor:
        """RGB image -> float32 (3, R, R) in [-1, 1] (antialiased bicubic resize, crop, maybe flip)."""
        img = to_rgb(img)
        if img.size != (self.width, self.height):
            img = TF.resize(img, [self.height, self.width], interpolation=InterpolationMode.BICUBIC, antialias=True)
        return to_tensor(self._crop(img))

    def labels(self, img: Image.Image) -> Tensor:
        """Single-channel label map -> int64 (R, R): nearest resize to the image's resized size, same crop/flip."""
        if img.mode not in ("L", "P", "I") and not img.mode.startswith("I;16"):
            raise ValueError(f"label map must be single-channel (mode L, P or I), got mode {img.mode}")
        if img.mode.startswith("I;16"):
            img = Image.fromarray(np.asarray(img).astype(np.int32), mode="I")
        if img.size != (self.width, self.height):
            img = TF.resize(img, [self.height, self.width], interpolation=InterpolationMode.NEAREST)
        return torch.from_numpy(np.asarray(self._crop(img)).astype(np.int64))

    def _crop(self, img: Image.Image) -> Image.Image:
        """The R x R crop, flipped when asked."""
        r = self.resolution
        img = TF.crop(img, self.top, self.left, r, r)
        return TF.horizontal_flip(img) if self.flip else img

    def boxes(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) xyxy fractions of the original image -> (fractions of the output, clamped to [0, 1]; which
        boxes keep a positive area, i.e. are not outside the crop)."""
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
        x = (b[:, [0, 2]] * self.width - self.left) / self.resolution
        y = (b[:, [1, 3]] * self.height - self.top) / self.resolution
        x, y = np.clip(x, 0.0, 1.0), np.clip(y, 0.0, 1.0)
        if self.flip:
            x = 1.0 - x[:, ::-1]
        out = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1).astype(np.float32)
        return out, (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])


class CropTransform:
    """Draws a :class:`Placement` per image: shorter side to R, centre or random crop, optional random flip.
    Randomness comes from torch's global RNG (seeded per DataLoader worker), as in ``ImageTransform``."""

    def __init__(self, resolution: int, crop: str = "center", flip: bool = False) -> None:
        self.resolution, self.crop, self.flip = check_resolution(resolution), check_crop(crop), bool(flip)

    def place(self, width: int, height: int) -> Placement:
        """The placement of an image of this size."""
        r = self.resolution
        w, h = resized_size(width, height, r)
        if self.crop == "center":  # torchvision's center_crop offsets
            top, left = int(round((h - r) / 2.0)), int(round((w - r) / 2.0))
        else:
            top, left = int(torch.randint(0, h - r + 1, ())), int(torch.randint(0, w - r + 1, ()))
        flip = self.flip and bool(torch.rand(()) < 0.5)
        return Placement(w, h, left, top, r, flip)


def pad_objects(boxes: np.ndarray, labels: np.ndarray, max_objects: int, flags: np.ndarray | None = None,
                ) -> dict[str, Tensor]:
    """The boxes that remain, largest first (stable), cut/padded to ``max_objects``: ``boxes`` float32 (M, 4)
    (rows past the last object 0), ``box_labels`` int64 (M,) padded with -1, and ``box_flags`` bool (M, 4)."""
    order = np.argsort(-((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])), kind="stable")[:max_objects]
    n = len(order)
    out_boxes = np.zeros((max_objects, 4), np.float32)
    out_labels = np.full(max_objects, -1, np.int64)
    out_boxes[:n], out_labels[:n] = boxes[order], labels[order]
    out = {"boxes": torch.from_numpy(out_boxes), "box_labels": torch.from_numpy(out_labels)}
    if flags is not None:
        out_flags = np.zeros((max_objects, 4), bool)
        out_flags[:n] = flags[order]
        out["box_flags"] = torch.from_numpy(out_flags)
    return out


def check_max_objects(max_objects: int) -> int:
    """``dataset.max_objects`` must be a whole number >= 1."""
    if isinstance(max_objects, bool) or not isinstance(max_objects, int) or max_objects < 1:
        raise UserError(f"dataset.max_objects={max_objects!r}: must be a whole number >= 1")
    return max_objects


def resolve(root: Path, name: str | None, option: str, what: str) -> Path:
    """A file or folder named by an option, relative to ``dataset.path`` unless absolute; must exist."""
    if name is None:
        raise UserError(f"{option}=null: {what} is needed")
    p = Path(str(name)).expanduser()
    p = p if p.is_absolute() else root / p
    if not p.exists():
        raise UserError(f"{option}={name}: {p} does not exist ({what})")
    return p


def image_names(folder: Path) -> set[str]:
    """The image file names directly in ``folder`` (one listing; hidden files ignored)."""
    exts = tuple(f".{e}" for e in IMAGE_EXTENSIONS)
    return {n for n in (e.name for e in _scandir(folder)) if not n.startswith(".") and n.lower().endswith(exts)}


def _scandir(folder: Path):
    """The folder's entries (files), or a UserError when it cannot be listed."""
    try:
        with os.scandir(folder) as it:
            return [e for e in it if e.is_file()]
    except OSError as e:
        raise UserError(f"{folder}: cannot list the folder ({e.strerror})") from None


class PaperDataset(SkipsBrokenItems, Dataset, ABC):
    """Base of the annotated readers: options, transform, derived fields, and the image folder's skipping of
    broken files (item ``i`` then returns the next readable one, the file is counted once in ``skips``).
    Subclasses set ``self.files`` (one key per item) with :meth:`_finish` and implement :meth:`item`."""

    files: list[str]

    def __init__(self, path: str | Path, resolution: int, crop: str, flip: bool, split: str, size: int | None,
                 seed: int, sr_factor: int | None, masks: str | None, what: str) -> None:
        _check_options(split, 0.0, size)
        self.root, self.split, self.seed = Path(str(path)).expanduser(), split, int(seed)
        train = split == "train"
        try:
            self.transform = CropTransform(resolution, crop if train else "center", flip and train)
        except ValueError as e:
            raise UserError(f"dataset: {e}") from None
        self.resolution = self.transform.resolution
        self.derived = Derived(self.resolution, sr_factor, masks, seed)
        if not self.root.is_dir():
            raise UserError(f"dataset.path={path}: no such folder ({what})")

    def _finish(self, files: list[str], size: int | None) -> None:
        """Keep the first ``size`` items and set up the skip counter; an empty split is an error."""
        total = len(files)
        self.files = files[: int(size)] if size is not None else files
        if not self.files and size != 0:
            raise UserError(f"dataset.path={self.root}: the {self.split} split is empty ({total} items found)")
        self.skips = SkipCounter(items=len(self.files))

    def __len__(self) -> int:
        """Items in this split."""
        return len(self.files)

    def open_image(self, path: Path) -> Image.Image:
        """A decoded image file (``ValueError``/``OSError`` when unusable)."""
        return decode_image(path.read_bytes())

    @abstractmethod
    def item(self, index: int) -> dict:
        """Item ``index`` before the derived fields."""

    def load(self, index: int) -> dict:
        """Item ``index`` without skipping; ``ValueError``/``OSError`` when its file cannot be used."""
        return self.derived.add(self.item(index), index)


class PaperImageFolder(ImageFolderDataset):
    """An image folder as the paper's unconditional datasets ship (CelebA-HQ, FFHQ, LSUN exported to image files,
    Places): like ``dataset=folder``, but sub-folders are classes only with ``classes=True`` (FFHQ's ``00000/``
    ... are not), ``val_path`` may name a separate val folder (then ``path`` is all train, ``val_fraction``
    unused), and ``sr_factor`` / ``masks`` add the derived fields."""

    def __init__(self, path: str | Path, resolution: int = 256, crop: str = "center", flip: bool = False,
                 split: str = "train", val_fraction: float = 0.05, size: int | None = None, seed: int = 0,
                 classes: bool = False, val_path: str | Path | None = None, sr_factor: int | None = None,
                 masks: str | None = None) -> None:
        if val_path is None:
            super().__init__(path, resolution, crop, flip, split, val_fraction, size, seed)
        else:
            _check_options(split, 0.0, size)
            train = split == "train"
            try:
                super().__init__(path if train else val_path, resolution, crop if train else "center",
                                 flip and train, "train", 0.0, size, seed)
            except UserError as e:  # name the option that was wrong
                raise UserError(str(e) if train else str(e).replace("dataset.path=", "dataset.val_path=", 1)
                                .replace("the train split", "the val split")) from None
            self.split = split
        if not classes:
            self.classes, self._class_index = [], {}
        self.derived = Derived(self.resolution, sr_factor, masks, seed)

    def load(self, index: int) -> dict:
        """The image folder's item plus the derived fields."""
        return self.derived.add(super().load(index), index)


class LandscapesDataset(PaperDataset):
    """Flickr landscapes with COCO-stuff label maps (CompVis' sflckr layout): ``images/*.jpg`` and
    ``segmentations/<stem>.png`` single-channel maps (values 0..181, kept as they are: use ``cond=semantic
    cond.num_classes=181``). Split by a hash of each file name, as ``dataset=folder``. An image without its
    label map is skipped and counted. Items: ``image``, ``semantic`` int64 (R, R) (nearest resize, same crop and
    flip as the image), ``caption`` "", ``key`` (the image file name)."""

    def __init__(self, path: str | Path, resolution: int = 256, crop: str = "center", flip: bool = False,
                 split: str = "train", val_fraction: float = 0.05, size: int | None = None, seed: int = 0,
                 images: str = "images", segmentations: str = "segmentations", sr_factor: int | None = None,
                 masks: str | None = None) -> None:
        _check_options(split, val_fraction, size)
        super().__init__(path, resolution, crop, flip, split, size, seed, sr_factor, masks,
                         "flickr landscapes: images/*.jpg + segmentations/<stem>.png")
        self.images = resolve(self.root, images, "dataset.images", "the folder of landscape photos")
        self.segmentations = resolve(self.root, segmentations, "dataset.segmentations",
                                     "the folder of <stem>.png label maps")
        everything = scan_images(self.images)
        if not everything:
            raise UserError(f"dataset.images={images}: no image files in {self.images}")
        self._finish(split_files(everything, split, float(val_fraction), self.seed), size)

    def item(self, index: int) -> dict:
        """Image and its label map, placed identically."""
        rel = self.files[index]
        img = self.open_image(self.images / rel)
        seg_path = (self.segmentations / rel).with_suffix(".png")
        if not seg_path.is_file():
            raise ValueError(f"no label map {seg_path.relative_to(self.root)}")
        seg = self.open_image(seg_path)
        if seg.size != img.size:
            raise ValueError(f"label map is {seg.size[0]}x{seg.size[1]} but the image is {img.size[0]}x{img.size[1]}")
        where = self.transform.place(*img.size)
        return {"image": where.image(img), "semantic": where.labels(seg), "caption": "", "key": rel}


def laion_dataset(urls: str | list[str], resolution: int = 256, seed: int = 0, sr_factor: int | None = None,
                  masks: str | None = None, **options):
    """LAION-style img2dataset shards (``dataset=wds`` with the paper's 256 px) plus the derived fields; a
    stream has no indices, so masks are seeded by (``seed``, the sample's key)."""
    from ldmkit.data.wds import wds_dataset

    derived = Derived(check_resolution_user(resolution), sr_factor, masks, seed)
    dataset = wds_dataset(urls, resolution=resolution, seed=seed, **options)
    if derived.active:
        dataset = dataset.map(derived.add_keyed, handler=counting_handler(dataset.skips))
    return dataset


def check_resolution_user(resolution: int) -> int:
    """``dataset.resolution`` as a user-facing error."""
    try:
        return check_resolution(resolution)
    except ValueError as e:
        raise UserError(f"dataset: {e}") from None

