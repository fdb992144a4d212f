"""ImageNet (ILSVRC-2012) in its published layout (``dataset=imagenet dataset.path=/data/imagenet``).

Train: ``train/<wnid>/*.JPEG`` (any image extension, any case). Classes are the wnid folders of ``train/`` that
hold images, sorted by name: with all 1000 this is the standard order (``n01440764`` = 0 ... ``n15075141`` =
999); with fewer, the ids are the positions in the sorted list of the wnids present (so a subset's ids differ
from the full set's). Images directly in ``train/`` belong to no class and are ignored.

Val, in either layout:

- ``val/<wnid>/*.JPEG``, the same layout as train (e.g. after the usual ``valprep.sh``);
- a flat ``val/*.JPEG`` folder plus a label file: ``dataset.val_labels``, or when that is null the first found of
  ``val_labels.txt`` (in ``path``, then ``path/val``): ``<file name> <wnid>`` per line; and Kaggle's
  ``LOC_val_solution.csv`` (in ``path``, ``path/val``, or three levels up when ``path`` is Kaggle's
  ``ILSVRC/Data/CLS-LOC``): a ``ImageId,PredictionString`` header and rows whose first prediction token is
  the wnid. The devkit's ``ILSVRC2012_validation_ground_truth.txt`` is *not* read: it numbers classes by
  ILSVRC2012_ID, whose wnids are only in the devkit's ``meta.mat`` (a MATLAB file).

Val class ids are those of ``train/`` when it exists (so both splits agree), else the sorted wnids of the val
labels. A val image without a label, or with a wnid that is not a train class, is an error.

Items: ``image`` float32 (3, R, R) in [-1, 1], ``class_label`` int64, ``class_name`` (the wnid), ``caption``
"" and ``key`` (the path relative to ``path``), plus ``lowres`` / ``mask`` with ``sr_factor`` / ``masks``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from ldmkit.data.folder import class_of, scan_images
from ldmkit.data.paper_datasets import PaperDataset, image_names
from ldmkit.errors import UserError

LABEL_FILES: tuple[str, ...] = ("val_labels.txt", "LOC_val_solution.csv")
DEVKIT_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
KAGGLE_TAIL: tuple[str, ...] = ("ILSVRC", "Data", "CLS-LOC")


def _stem(name: str) -> str:
    """A file name without its directory and image extension (labels may name files with or without it)."""
    name = name.replace("\\", "/").rpartition("/")[2]
    head, dot, ext = name.rpartition(".")
    return head if dot and ext.lower() in ("jpeg", "jpg", "png", "webp", "bmp") else name


def read_val_labels(path: Path) -> dict[str, str]:
    """File stem -> wnid from ``LOC_val_solution.csv`` (by its suffix) or a ``<file name> <wnid>`` text file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"ImageNet val labels {path}: cannot read ({e})") from None
    labels: dict[str, str] = {}
    if path.suffix.lower() == ".csv":
        rows = csv.reader(text.splitlines())
        header = next(rows, [])
        if [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise UserError(f"ImageNet val labels {path}: not Kaggle's LOC_val_solution.csv "
                            f"(expected the header ImageId,PredictionString, got {','.join(header)!r})")
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            tokens = row[1].split() if len(row) >= 2 else []
            if not tokens:
                raise UserError(f"ImageNet val labels {path}: line {line} has no PredictionString")
            labels[_stem(row[0].strip())] = tokens[0]
        return labels
    for line, raw in enumerate(text.splitlines(), start=1):
        parts = raw.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise UserError(f"ImageNet val labels {path}: line {line} is not '<file name> <wnid>': {raw.strip()!r}")
        labels[_stem(parts[0])] = parts[1]
    return labels


class ImageNetDataset(PaperDataset):
    """ILSVRC-2012 train/val folders with class ids in sorted-wnid order; see the module doc."""

    def __init__(self, path: str | Path, resolution: int = 256, crop: str = "center", flip: bool = False,
                 split: str = "train", size: int | None = None, seed: int = 0, val_labels: str | None = None,
                 sr_factor: int | None = None, masks: str | None = None) -> None:
        super().__init__(path, resolution, crop, flip, split, size, seed, sr_factor, masks,
                         "ILSVRC-2012 layout: train/<wnid>/*.JPEG and val/")
        train_dir = self.root / "train"
        train = self._class_files(train_dir) if train_dir.is_dir() else None
        if split == "train":
            if train is None:
                raise UserError(f"dataset.path={path}: no train/ folder (ILSVRC-2012 layout: train/<wnid>/*.JPEG)")
            if not train:
                raise UserError(f"dataset.path={path}: train/ has no <wnid>/ sub-folders with images")
            pairs = train
        else:
            pairs = self._val_pairs(val_labels)
        names = sorted({w for _, w in (train or pairs)})
        self.classes: list[str] = names
        index = {w: i for i, w in enumerate(names)}
        unknown = next((w for _, w in pairs if w not in index), None)
        if unknown is not None:
            raise UserError(f"dataset.path={path}: val class {unknown} is not one of the {len(names)} wnid folders "
                            "of train/")
        pairs = sorted(pairs)
        self._finish([rel for rel, _ in pairs], size)
        self.labels = np.array([index[w] for _, w in pairs[: len(self.files)]], np.int64)

    @staticmethod
    def _class_files(folder: Path) -> list[tuple[str, str]]:
        """(path relative to ``path``, wnid) of the images in ``folder``'s first-level sub-folders."""
        return [(f"{folder.name}/{rel}", class_of(rel)) for rel in scan_images(folder) if class_of(rel)]

    def _label_file(self, val_labels: str | None) -> Path:
        """The val label file: the option, else the first known file found."""
        if val_labels is not None:
            p = Path(str(val_labels)).expanduser()
            p = p if p.is_absolute() else self.root / p
            if not p.is_file():
                raise UserError(f"dataset.val_labels={val_labels}: no such file")
            return p
        places = [self.root, self.root / "val"]
        if self.root.resolve().parts[-3:] == KAGGLE_TAIL:
            places.append(self.root.resolve().parents[2])
        for name in LABEL_FILES:
            for place in places:
                if (place / name).is_file():
                    return place / name
        devkit = [p for p in (*places, self.root / "ILSVRC2012_devkit_t12" / "data") if (p / DEVKIT_TRUTH).is_file()]
        hint = (f" ({DEVKIT_TRUTH} needs the devkit's meta.mat, which is not read: write val_labels.txt)"
                if devkit else "")
        raise UserError(f"dataset.path={self.root}: val/ is flat and has no label file: put val_labels.txt "
                        f"('<file name> <wnid>' lines) or Kaggle's LOC_val_solution.csv in it{hint}")

    def _val_pairs(self, val_labels: str | None) -> list[tuple[str, str]]:
        """(relative path, wnid) of the val images, from class folders or a flat folder + label file."""
        val_dir = self.root / "val"
        if not val_dir.is_dir():
            raise UserError(f"dataset.path={self.root}: no val/ folder (val/<wnid>/*.JPEG, or val/*.JPEG with labels)")
        if val_labels is None:
            foldered = self._class_files(val_dir)
            if foldered:
                return foldered
        files = sorted(image_names(val_dir))
        if not files:
            raise UserError(f"dataset.path={self.root}: val/ holds no images")
        label_file = self._label_file(val_labels)
        labels = read_val_labels(label_file)
        missing = [f for f in files if _stem(f) not in labels]
        if missing:
            raise UserError(f"dataset.path={self.root}: {len(missing)} of {len(files)} val images have no label in "
                            f"{label_file} (e.g. {missing[0]})")
        return [(f"val/{f}", labels[_stem(f)]) for f in files]

    def item(self, index: int) -> dict:
        """One image with its class."""
        rel = self.files[index]
        img = self.open_image(self.root / rel)
        label = int(self.labels[index])
        return {"image": self.transform.place(*img.size).image(img), "class_label": torch.tensor(label),
                "class_name": self.classes[label], "caption": "", "key": rel}
