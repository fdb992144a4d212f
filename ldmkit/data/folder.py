"""A folder of image files as a map-style dataset (``dataset=folder dataset.path=/data/ffhq``).

Scanning: every ``*.jpg|jpeg|png|webp|bmp`` file under ``path`` (any case, any depth), sorted by relative
path; hidden files and folders (names starting with ".", e.g. macOS ``._x.jpg``) are ignored.

Classes: the first-level sub-folders that hold images, sorted by name; an image's ``class_label`` is the
index of its first-level folder. Images directly in ``path`` belong to the class named "" (which sorts
first, so it is class 0). With no sub-folders at all there are no classes and items carry neither
``class_label`` nor ``class_name``.

Captions: the text of a sibling ``<stem>.txt`` (stripped), or "" when there is none.

Split: a file is in "val" when a hash of ``seed`` and its relative path falls below ``val_fraction``, so the
split is deterministic, stable when files are added, and disjoint. With ``val_fraction > 0`` and at least two
files, each split gets at least one file. "val" always uses a centre crop and no flip.

Items (``dataset[i]``): ``image`` float32 (3, R, R) in [-1, 1], ``caption`` str, ``class_label`` int64
scalar and ``class_name`` str (if classes), ``key`` the relative path (POSIX).

Broken files (empty, truncated, not an image, over ``transforms.MAX_PIXELS``) are skipped: item ``i``
then returns the next readable file (wrapping), and the file is counted once in ``dataset.skips`` (a
:class:`~ldmkit.data.skips.SkipCounter` shared with DataLoader workers). Only when no file of the split
can be read is it an error.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ldmkit.data.skips import SkipCounter, SkipsBrokenItems
from ldmkit.data.transforms import IMAGE_EXTENSIONS, ImageTransform, decode_image
from ldmkit.errors import UserError

SPLITS: tuple[str, ...] = ("train", "val")


def scan_images(root: Path) -> list[str]:
    """Sorted POSIX paths, relative to ``root``, of the image files below it (hidden entries ignored)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            if not name.startswith(".") and name.rpartition(".")[2].lower() in IMAGE_EXTENSIONS:
                found.append((rel_dir / name).as_posix())
    return sorted(found)


def class_of(rel: str) -> str:
    """The class name of a relative path: its first-level folder, or "" for a file directly in the root."""
    head, sep, _ = rel.partition("/")
    return head if sep else ""


def split_score(rel: str, seed: int) -> float:
    """A uniform number in [0, 1) from a hash of ``seed`` and a relative path."""
    digest = hashlib.blake2b(f"{seed}\0{rel}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def split_files(files: list[str], split: str, val_fraction: float, seed: int) -> list[str]:
    """The files of ``split`` (order kept); both splits non-empty when ``val_fraction`` > 0 and 2+ files."""
    scores = {f: split_score(f, seed) for f in files}
    val = {f for f in files if scores[f] < val_fraction}
    if val_fraction > 0 and len(files) >= 2:
        if not val:
            val = {min(files, key=scores.__getitem__)}
        elif len(val) == len(files):
            val.discard(max(files, key=scores.__getitem__))
    return [f for f in files if (f in val) == (split == "val")]


def _check_options(split: str, val_fraction: float, size: int | None) -> None:
    """Validate the split options (as user-facing ``dataset.*`` errors)."""
    if split not in SPLITS:
        raise UserError(f"dataset.split={split!r} is not a split; valid choices: {', '.join(SPLITS)}")
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"dataset.val_fraction={val_fraction} must be in [0, 1)")
    if size is not None and size < 0:
        raise UserError(f"dataset.size={size} must be >= 0 (or null for all images)")


class ImageFolderDataset(SkipsBrokenItems, Dataset):
    """Images (with optional class sub-folders and ``.txt`` captions) under a folder; see the module doc."""

    noun = "image files"

    def __init__(
        self,
        path: str | Path,
        resolution: int = 256,
        crop: str = "center",
        flip: bool = False,
        split: str = "train",
        val_fraction: float = 0.05,
        size: int | None = None,
        seed: int = 0,
    ) -> None:
        """Scan ``path`` and select the files of ``split``; ``size`` keeps only the first ``size`` of them."""
        _check_options(split, val_fraction, size)
        self.root = Path(path).expanduser()
        try:
            self.transform = ImageTransform(resolution, crop if split == "train" else "center",
                                            flip and split == "train")
        except ValueError as e:
            raise UserError(f"dataset: {e}") from None
        self.resolution, self.split = self.transform.resolution, split
        pattern = ", ".join(f"*.{e}" for e in IMAGE_EXTENSIONS)
        if not self.root.is_dir():
            raise UserError(f"dataset.path={path}: no such folder (looking for {pattern} images in it)")
        everything = scan_images(self.root)
        if not everything:
            raise UserError(f"dataset.path={path}: no image files found ({pattern}, any case, recursively)")
        names = sorted({class_of(f) for f in everything})
        self.classes: list[str] = names if any(names) else []
        self._class_index = {name: i for i, name in enumerate(self.classes)}
        self.files = split_files(everything, split, float(val_fraction), int(seed))
        if size is not None:
            self.files = self.files[: int(size)]
        if not self.files and size != 0:
            raise UserError(f"dataset.path={path}: the {split} split is empty ({len(everything)} images, "
                            f"dataset.val_fraction={val_fraction})")
        self.skips = SkipCounter(items=len(self.files))

    def __len__(self) -> int:
        """Number of files in this split (broken ones included: they are replaced when read)."""
        return len(self.files)

    def caption(self, rel: str) -> str:
        """The stripped text of the image's sibling ``<stem>.txt``, or "" if there is none."""
        txt = (self.root / rel).with_suffix(".txt")
        return txt.read_text(encoding="utf-8", errors="replace").strip() if txt.is_file() else ""

    def load(self, index: int) -> dict:
        """Item ``index`` without skipping; ``ValueError``/``OSError`` when its file cannot be used."""
        rel = self.files[index]
        item = {"image": self.transform(decode_image((self.root / rel).read_bytes())), "caption": self.caption(rel)}
        if self.classes:
            name = class_of(rel)
            item["class_label"] = torch.tensor(self._class_index[name], dtype=torch.int64)
            item["class_name"] = name
        item["key"] = rel
        return item

