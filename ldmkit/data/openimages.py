"""OpenImages V6/V7 boxes in the published layout (``dataset=openimages dataset.path=/data/openimages``):
layout-to-image as CompVis' ``layout2img-openimages256``.

Files (relative to ``path`` unless absolute; ``{subset}`` is ``train_subset`` / ``val_subset``, i.e. ``train`` /
``validation``): ``images`` = ``images/{subset}/<ImageID>.jpg``; ``boxes`` = ``{subset}-annotations-bbox.csv``
(header ``ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,
IsInside``; columns are found by name, the Is* flags may be absent); ``classes`` =
``class-descriptions-boxable.csv`` (``/m/xxx,Name`` rows, header optional). When a file is not found, its
``oidv6-`` / ``oidv7-`` prefixed name in the same folder is used (V6 names the train boxes
``oidv6-train-annotations-bbox.csv``, V7 the classes ``oidv7-class-descriptions-boxable.csv``).

Class numbers follow taming-transformers: label ids sorted as strings, ``/m/01s55n`` last
(:func:`ldmkit.models.layout_tokens.load_class_names` gives ``dataset.class_names`` in that order). The items are
the images in the images folder that have at least one box, sorted by ImageID.

Items: ``image`` float32 (3, R, R) in [-1, 1]; ``boxes`` float32 (max_objects, 4) xyxy fractions of the output
crop (through the image's resize and crop, clamped, dropped when outside it, largest first, zero rows after the
last); ``box_labels`` int64 (max_objects,), -1 padding; ``box_flags`` bool (max_objects, 4) = (group-of,
occluded, depiction, inside), False for padding and for unknown (-1) values; ``caption`` ""; ``key`` the ImageID.
"""

from __future__ import annotations

import csv
from array import array
from pathlib import Path

import numpy as np

from ldmkit.data.paper_datasets import PaperDataset, check_max_objects, image_names, pad_objects, resolve
from ldmkit.errors import UserError
from ldmkit.models.layout_tokens import LAST_CATEGORY_ID, load_class_names

REQUIRED = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")
FLAG_COLUMNS = ("IsGroupOf", "IsOccluded", "IsDepiction", "IsInside")
PREFIXES = ("oidv6-", "oidv7-")


def find_file(root: Path, name: str, option: str, what: str) -> Path:
    """``name`` (relative to ``root``), or the same name with an ``oidv6-``/``oidv7-`` prefix."""
    p = Path(name).expanduser()
    p = p if p.is_absolute() else root / p
    for candidate in (p, *(p.with_name(prefix + p.name) for prefix in PREFIXES)):
        if candidate.is_file():
            return candidate
    raise UserError(f"{option}={name}: no such file {p} (nor with an oidv6-/oidv7- prefix): {what}")


def category_ids(path: Path) -> list[str]:
    """The ``/m/...`` ids of a class-descriptions CSV in taming's order (sorted, ``/m/01s55n`` last)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        ids = sorted({row[0].strip() for row in csv.reader(f) if row and row[0].startswith("/m/")})
    if LAST_CATEGORY_ID in ids:
        ids.remove(LAST_CATEGORY_ID)
        ids.append(LAST_CATEGORY_ID)
    return ids


class OpenImagesDataset(PaperDataset):
    """OpenImages images with their boxes, class numbers and flags; see the module doc."""

    def __init__(self, path: str | Path, resolution: int = 256, crop: str = "center", flip: bool = False,
                 split: str = "train", size: int | None = None, seed: int = 0, train_subset: str = "train",
                 val_subset: str = "validation", images: str = "images/{subset}",
                 boxes: str = "{subset}-annotations-bbox.csv", classes: str = "class-descriptions-boxable.csv",
                 max_objects: int = 30, sr_factor: int | None = None, masks: str | None = None) -> None:
        super().__init__(path, resolution, crop, flip, split, size, seed, sr_factor, masks,
                         "OpenImages layout: images/<subset>/ + <subset>-annotations-bbox.csv")
        self.max_objects = check_max_objects(max_objects)
        subset = train_subset if split == "train" else val_subset
        self.image_dir = resolve(self.root, str(images).replace("{subset}", subset), "dataset.images",
                                 "the OpenImages image folder")
        class_file = find_file(self.root, str(classes), "dataset.classes", "OpenImages class descriptions")
        self.class_names: list[str] = load_class_names(class_file)
        ids = category_ids(class_file)
        if len(ids) != len(self.class_names):
            raise UserError(f"dataset.classes={classes}: {class_file} is not an '/m/id,Name' CSV")
        self._index = {c: i for i, c in enumerate(ids)}
        present = {n.rpartition(".")[0]: n for n in image_names(self.image_dir)}
        box_file = find_file(self.root, str(boxes).replace("{subset}", subset), "dataset.boxes",
                             "OpenImages box annotations")
        self._read(box_file, present)
        if not self.ids:
            raise UserError(f"dataset.boxes: none of the {len(present)} images in {self.image_dir} has a box in "
                            f"{box_file}")
        self._file = present
        self._finish(self.ids, size)

    def _read(self, box_file: Path, present: dict[str, str]) -> None:
        """The box rows of the present images as arrays grouped by image (sorted by ImageID)."""
        owner, label, coords, flags = array("q"), array("q"), array("f"), array("b")
        slot: dict[str, int] = {}
        with open(box_file, encoding="utf-8-sig", newline="") as f:
            rows = csv.reader(f)
            header = next(rows, [])
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise UserError(f"{box_file}: not an OpenImages box CSV (no {', '.join(missing)} column in the "
                                f"header {','.join(header[:6])!r}...)")
            at = [header.index(c) for c in REQUIRED]
            flag_at = [header.index(c) if c in header else None for c in FLAG_COLUMNS]
            for line, row in enumerate(rows, start=2):
                if not row or row[at[0]] not in present:
                    continue
                try:
                    image_id, name = row[at[0]], row[at[1]]
                    x0, x1, y0, y1 = (float(row[i]) for i in at[2:])
                    row_flags = [i is not None and row[i].strip() == "1" for i in flag_at]
                except (IndexError, ValueError) as e:
                    raise UserError(f"{box_file}: line {line} is not a box row ({e})") from None
                if name not in self._index:
                    raise UserError(f"{box_file}: line {line} has label {name}, which is not in the class list")
                owner.append(slot.setdefault(image_id, len(slot)))
                label.append(self._index[name])
                coords.extend((x0, y0, x1, y1))
                flags.extend(row_flags)
        # items sorted by ImageID; rows grouped by item, file order kept within an item
        self.ids = sorted(slot)
        rank = np.empty(len(slot), np.int64)
        rank[[slot[i] for i in self.ids]] = np.arange(len(self.ids))
        item_of = rank[np.frombuffer(owner, np.int64)] if len(owner) else np.zeros(0, np.int64)
        order = np.argsort(item_of, kind="stable")
        self._boxes = np.frombuffer(coords, np.float32).reshape(-1, 4)[order]
        self._labels = np.frombuffer(label, np.int64)[order]
        self._flags = np.frombuffer(flags, np.int8).reshape(-1, 4)[order].astype(bool)
        self._start = np.searchsorted(item_of[order], np.arange(len(self.ids) + 1))

    def item(self, index: int) -> dict:
        """One image with its boxes, labels and flags."""
        image_id = self.files[index]
        img = self.open_image(self.image_dir / self._file[image_id])
        where = self.transform.place(*img.size)
        lo, hi = self._start[index], self._start[index + 1]
        boxes, inside = where.boxes(self._boxes[lo:hi])
        objects = pad_objects(boxes[inside], self._labels[lo:hi][inside], self.max_objects,
                              self._flags[lo:hi][inside])
        return {"image": where.image(img), **objects, "caption": "", "key": image_id}
