"""MS-COCO in its published layout (``dataset=coco dataset.path=/data/coco``): text-to-image and layout-to-image.

Files (relative to ``path`` unless absolute; ``{split}`` becomes ``train`` or ``val``): ``images`` =
``images/{split}2017/`` (the image files), ``captions`` = ``annotations/captions_{split}2017.json`` and
``instances`` = ``annotations/instances_{split}2017.json`` (the official COCO JSON). Either annotation file may
be null (no captions: caption ""; no instances: no boxes), not both. The images are those of the instances file
(else the captions file) whose file is in the images folder, sorted by file name; listed images without a file
are left out with a warning.

Items: ``image`` float32 (3, R, R) in [-1, 1]; ``caption``: the image's first caption in the captions file
(``caption_choice: random`` draws one of them per read on the train split, from torch's RNG); ``boxes``
float32 (max_objects, 4) xyxy fractions of the output crop: every instance box through the same resize and
crop as the image, clamped to the crop, dropped when outside it, largest first, zero rows after the last;
``box_labels`` int64 (max_objects,): the contiguous category index 0..79 (categories sorted by COCO id), -1 for
padding (the names are ``dataset.class_names``); ``key`` the file name. Crowd (``iscrowd``) boxes are kept.
An image whose decoded size differs from the annotations' (e.g. EXIF-rotated) is skipped and counted.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from ldmkit.data.paper_datasets import PaperDataset, check_max_objects, image_names, pad_objects, resolve
from ldmkit.errors import UserError

log = logging.getLogger(__name__)
CAPTION_CHOICES: tuple[str, ...] = ("first", "random")


def load_json(path: Path, option: str, kind: str) -> dict:
    """A COCO annotation file: a JSON object with an ``images`` list (and ``annotations``)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{option}: {path} is not readable JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise UserError(f"{option}: {path} is not a COCO {kind} file (needs 'images' and 'annotations' lists)")
    if kind == "instances" and not isinstance(data.get("categories"), list):
        raise UserError(f"{option}: {path} is not a COCO instances file (no 'categories' list)")
    return data


def _field(entry: dict, key: str, path: Path, what: str):
    """A required field of a JSON entry."""
    if not isinstance(entry, dict) or key not in entry:
        raise UserError(f"{path}: an entry of '{what}' has no '{key}' (not the COCO format)")
    return entry[key]


class CocoDataset(PaperDataset):
    """COCO images with captions and instance boxes; see the module doc."""

    def __init__(self, path: str | Path, resolution: int = 256, crop: str = "center", flip: bool = False,
                 split: str = "train", size: int | None = None, seed: int = 0,
                 images: str = "images/{split}2017", captions: str | None = "annotations/captions_{split}2017.json",
                 instances: str | None = "annotations/instances_{split}2017.json", max_objects: int = 30,
                 caption_choice: str = "first", sr_factor: int | None = None, masks: str | None = None) -> None:
        super().__init__(path, resolution, crop, flip, split, size, seed, sr_factor, masks,
                         "COCO layout: images/{train,val}2017/ + annotations/")
        self.max_objects = check_max_objects(max_objects)
        if caption_choice not in CAPTION_CHOICES:
            raise UserError(f"dataset.caption_choice={caption_choice!r}; valid choices: {', '.join(CAPTION_CHOICES)}")
        self.random_caption = caption_choice == "random" and split == "train"
        if captions is None and instances is None:
            raise UserError("dataset.captions and dataset.instances are both null: give at least one COCO JSON")

        def named(value: str | None) -> str | None:
            return None if value is None else str(value).replace("{split}", split)

        self.image_dir = resolve(self.root, named(images), "dataset.images", "the COCO image folder")
        cap = None if captions is None else load_json(
            resolve(self.root, named(captions), "dataset.captions", "COCO captions JSON"), "dataset.captions",
            "captions")
        inst = None if instances is None else load_json(
            resolve(self.root, named(instances), "dataset.instances", "COCO instances JSON"), "dataset.instances",
            "instances")
        source = inst if inst is not None else cap
        path_of = self.root / "annotations"
        listed = {int(_field(e, "id", path_of, "images")): e for e in source["images"]}
        present = image_names(self.image_dir)
        keep = sorted((str(e["file_name"]), i) for i, e in listed.items() if str(e.get("file_name")) in present)
        if len(keep) < len(listed):
            log.warning("COCO %s: %d of %d listed images are not in %s (left out)", split, len(listed) - len(keep),
                        len(listed), self.image_dir)
        if not keep:
            raise UserError(f"dataset.images={named(images)}: none of the {len(listed)} images of the annotations "
                            f"are in {self.image_dir}")
        keep = keep[: int(size)] if size is not None else keep
        self._finish([name for name, _ in keep], size)
        row = {image_id: n for n, (_, image_id) in enumerate(keep)}
        self._sizes = [(int(_field(listed[i], "width", path_of, "images")), int(_field(listed[i], "height", path_of,
                                                                                     "images"))) for _, i in keep]
        self.captions: list[list[str]] = [[] for _ in keep]
        if cap is not None:
            for a in cap["annotations"]:
                n = row.get(_field(a, "image_id", path_of, "annotations"))
                if n is not None:
                    self.captions[n].append(str(_field(a, "caption", path_of, "annotations")).strip())
        self.class_names: list[str] = []
        self._read_boxes(inst, row, path_of)

    def _read_boxes(self, inst: dict | None, row: dict, where: Path) -> None:
        """Instance boxes as arrays grouped by item: xyxy fractions of the original image + category index."""
        boxes, labels, owner = [], [], []
        if inst is not None:
            cats = sorted(int(_field(c, "id", where, "categories")) for c in inst["categories"])
            names = {int(c["id"]): str(c.get("name", c["id"])) for c in inst["categories"]}
            self.class_names = [names[c] for c in cats]
            index = {c: i for i, c in enumerate(cats)}
            for a in inst["annotations"]:
                image_id = _field(a, "image_id", where, "annotations")
                n = row.get(image_id)
                if n is None:
                    continue
                x, y, w, h = (float(v) for v in _field(a, "bbox", where, "annotations"))
                cat = int(_field(a, "category_id", where, "annotations"))
                if cat not in index:
                    raise UserError(f"{where}: an annotation has category_id {cat}, which is not in 'categories'")
                iw, ih = self._sizes[n]
                boxes.append((x / iw, y / ih, (x + w) / iw, (y + h) / ih))
                labels.append(index[cat])
                owner.append(n)
        order = np.argsort(np.asarray(owner, np.int64), kind="stable")
        self._boxes = np.asarray(boxes, np.float32).reshape(-1, 4)[order]
        self._labels = np.asarray(labels, np.int64)[order]
        self._start = np.searchsorted(np.asarray(owner, np.int64)[order], np.arange(len(self.files) + 1))

    def caption(self, index: int) -> str:
        """The item's caption: the first, or a random one on the train split with ``caption_choice: random``."""
        options = self.captions[index]
        if not options:
            return ""
        return options[int(torch.randint(len(options), ()))] if self.random_caption else options[0]

    def item(self, index: int) -> dict:
        """One image with its caption and boxes."""
        name = self.files[index]
        img = self.open_image(self.image_dir / name)
        if img.size != self._sizes[index]:  # e.g. an EXIF rotation the boxes do not follow
            raise ValueError(f"image is {img.size[0]}x{img.size[1]} but the annotations say "
                             f"{self._sizes[index][0]}x{self._sizes[index][1]}")
        where = self.transform.place(*img.size)
        lo, hi = self._start[index], self._start[index + 1]
        boxes, inside = where.boxes(self._boxes[lo:hi])
        objects = pad_objects(boxes[inside], self._labels[lo:hi][inside], self.max_objects)
        return {"image": where.image(img), "caption": self.caption(index), **objects, "key": name}
