"""Layout -> token ids for CompVis' layout-to-image LDM (``models/ldm/layout2img-openimages256``).

That model's conditioner is a BERT-like transformer over integer tokens (``max_seq_len`` 92, ``vocab_size``
8192) built by taming-transformers' ``ObjectsBoundingBoxConditionalBuilder`` from OpenImages boxes:

- the unit square is cut into an ``ns x ns`` grid, ``ns = int(sqrt(no_tokens))``; a point (x, y) is the token
  ``round(y * (ns - 1)) * ns + round(x * (ns - 1))`` (Python's ``round``: halves go to the even neighbour);
- each object is the triple (representation, token of its top-left corner, token of its bottom-right corner),
  representation = ``category_no + no_object_classes * modifier`` with modifier bits 1 group-of,
  2 occluded, 4 depiction, 8 inside;
- the triples are padded to ``no_max_objects`` with ``(none, none, none)``, ``none = no_tokens - 1``;
- with ``encode_crop`` the boxes stay in whole-image coordinates and the token pair of the crop that was cut
  out of the image follows; generating a whole image means the full crop (0, 0)-(1, 1).

Category numbers come from OpenImages' class ids sorted as strings, with ``/m/01s55n`` moved last. The
layout2img config doesn't record how many classes the model has: an object without flags is its category
number whatever the count, but flags multiply it, so they need the right ``no_object_classes``.
"""

from __future__ import annotations

import csv
import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ldmkit.errors import UserError
from ldmkit.models.bert import BertConditioner

Box = tuple[float, float, float, float]

GROUP_OF, OCCLUDED, DEPICTION, INSIDE = 1, 2, 4, 8
FLAG_KEYS = {"group": GROUP_OF, "occluded": OCCLUDED, "depiction": DEPICTION, "inside": INSIDE}
LAYOUT_KEYS = ("box", "label", *FLAG_KEYS)
FULL_CROP: Box = (0.0, 0.0, 1.0, 1.0)
LAST_CATEGORY_ID = "/m/01s55n"  # Suitcase: taming numbers it after all the other ids


@dataclass(frozen=True)
class BoxObject:
    """One object of a layout: category number, (x0, y0, x1, y1) image fractions and OpenImages' flags."""

    category_no: int
    box: Box
    group_of: bool = False
    occluded: bool = False
    depiction: bool = False
    inside: bool = False

    @property
    def flags(self) -> int:
        """The modifier bits: 1 group-of, 2 occluded, 4 depiction, 8 inside."""
        return (GROUP_OF * self.group_of | OCCLUDED * self.occluded | DEPICTION * self.depiction
                | INSIDE * self.inside)


def flag_names(flags: int) -> list[str]:
    """The layout keys (group, occluded, depiction, inside) whose bits are set in ``flags``."""
    return [name for name, bit in FLAG_KEYS.items() if flags & bit]


def _clamp(v: float) -> float:
    """A coordinate clamped to [0, 1]."""
    return max(0.0, min(1.0, float(v)))


@dataclass(frozen=True)
class BoxTokenBuilder:
    """taming's bounding-box conditional builder, deterministic: objects keep the caller's order (training
    shuffled them at random, so every order is in distribution) and too many objects is an error."""

    no_object_classes: int
    no_max_objects: int
    no_tokens: int
    encode_crop: bool
    use_group_parameter: bool = True
    use_additional_parameters: bool = True

    def __post_init__(self) -> None:
        if self.no_tokens < 4:
            raise ValueError(f"no_tokens={self.no_tokens}: must be >= 4 (a grid of at least 2 x 2)")
        if self.no_object_classes < 1 or self.no_max_objects < 0:
            raise ValueError(f"no_object_classes={self.no_object_classes}, no_max_objects="
                             f"{self.no_max_objects}: need at least one class and no negative object count")

    @classmethod
    def for_sequence(cls, max_seq_len: int, vocab_size: int, no_object_classes: int) -> BoxTokenBuilder:
        """The builder behind a BERT conditioner of ``max_seq_len`` tokens from a ``vocab_size`` vocabulary
        (a length of 3k + 2 means k objects plus the crop pair, 3k means k objects)."""
        if max_seq_len % 3 == 1:
            raise ValueError(f"max_seq_len={max_seq_len}: a box sequence is 3 tokens per object (+ 2 for the "
                             "crop), so its length can't be 1 more than a multiple of 3")
        return cls(no_object_classes, max_seq_len // 3, vocab_size, encode_crop=max_seq_len % 3 == 2)

    @property
    def no_sections(self) -> int:
        """Grid cells per side of the unit square."""
        return int(math.sqrt(self.no_tokens))

    @property
    def none(self) -> int:
        """The padding token (an empty object slot)."""
        return self.no_tokens - 1

    @property
    def embedding_dim(self) -> int:
        """The token sequence's length."""
        return self.no_max_objects * 3 + (2 if self.encode_crop else 0)

    @property
    def used_flags(self) -> int:
        """The modifier bits this builder encodes (group-of; occluded, depiction, inside)."""
        return ((GROUP_OF if self.use_group_parameter else 0)
                | ((OCCLUDED | DEPICTION | INSIDE) if self.use_additional_parameters else 0))

    def coordinate_token(self, x: float, y: float) -> int:
        """The grid token of a point in [0, 1]^2 (banker's rounding, as taming's ``int(round(...))``)."""
        ns = self.no_sections
        return int(round(y * (ns - 1))) * ns + int(round(x * (ns - 1)))

    def token_coordinates(self, token: int) -> tuple[float, float]:
        """The (x, y) grid point of a coordinate token."""
        ns = self.no_sections
        return (token % ns) / (ns - 1), (token // ns) / (ns - 1)

    def box_tokens(self, box: Box) -> tuple[int, int]:
        """The token pair of a box's corners clamped to [0, 1]; the far corner is x0 + (x1 - x0), as taming
        computes it from (x0, y0, w, h), so a corner at an exact half rounds the same way."""
        x0, y0, x1, y1 = (_clamp(v) for v in box)
        return self.coordinate_token(x0, y0), self.coordinate_token(x0 + (x1 - x0), y0 + (y1 - y0))

    def representation(self, obj: BoxObject, index: int = 0) -> int:
        """The first token of an object's triple: category + classes * modifier (flags this builder uses)."""
        if not 0 <= obj.category_no < self.no_object_classes:
            last = self.no_object_classes - 1
            raise ValueError(f"box {index}: class {obj.category_no} is outside 0..{last}")
        modifier = obj.flags & self.used_flags
        rep = obj.category_no + self.no_object_classes * modifier
        if rep >= self.none:
            flags = ",".join(flag_names(modifier))
            raise ValueError(f"box {index}: class {obj.category_no} with flags {flags} gives token {rep}, "
                             f"beyond the vocabulary's last object token {self.none - 1}: drop a flag")
        return rep

    def _crop(self) -> list[int]:
        """The full-image crop's token pair when the sequence encodes the crop, else nothing."""
        return list(self.box_tokens(FULL_CROP)) if self.encode_crop else []

    def build(self, objects: Sequence[BoxObject]) -> Tensor:
        """The (embedding_dim,) long token sequence of a layout, objects in the given order."""
        if len(objects) > self.no_max_objects:
            raise ValueError(f"{len(objects)} boxes: this model reads at most {self.no_max_objects}")
        tokens: list[int] = []
        for i, obj in enumerate(objects):
            tokens += [self.representation(obj, i), *self.box_tokens(obj.box)]
        tokens += [self.none] * (3 * (self.no_max_objects - len(objects))) + self._crop()
        return torch.tensor(tokens, dtype=torch.long)

    def null(self) -> Tensor:
        """The empty layout: every object slot padding (then the full crop's pair when encoded); a structural
        "no boxes", not an unconditional input the model is known to have been trained on."""
        return self.build([])

    def inverse(self, tokens: Tensor | Sequence[int]) -> list[tuple[int, int, Box]]:
        """(category_no, flags, (x0, y0, x1, y1)) of each non-empty slot of a token sequence, like taming's
        ``inverse_build`` (corners on the grid, flags only those this builder encodes)."""
        ids = [int(t) for t in (tokens.tolist() if isinstance(tokens, Tensor) else tokens)]
        if len(ids) != self.embedding_dim:
            raise ValueError(f"token sequence of length {len(ids)}: this builder makes {self.embedding_dim}")
        slots = ids[:3 * self.no_max_objects]
        out = []
        for rep, t0, t1 in zip(slots[0::3], slots[1::3], slots[2::3], strict=True):
            if rep == self.none:
                continue
            flags = (rep // self.no_object_classes) & self.used_flags
            box = (*self.token_coordinates(t0), *self.token_coordinates(t1))
            out.append((rep % self.no_object_classes, flags, box))
        return out


def _is_id_row(line: str) -> bool:
    """Whether a line looks like an OpenImages ``/m/...,Name`` row."""
    return line.startswith("/m/") and "," in line


def load_class_names(path: str | Path) -> list[str]:
    """Class names by category number from a local file: one name per line (line i = category i), or an
    OpenImages ``id,name`` CSV holding exactly the model's categories (an optional header line is skipped),
    numbered as taming does: ids sorted as strings, ``/m/01s55n`` last."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"class list {path}: no such file")
    lines = path.read_text(encoding="utf-8-sig").rstrip().splitlines()
    if not lines or not lines[0].strip():
        raise UserError(f"class list {path}: empty")
    header = len(lines) > 1 and not _is_id_row(lines[0]) and all(map(_is_id_row, lines[1:]))
    body = lines[1:] if header else lines
    if not any(map(_is_id_row, body)):
        for i, line in enumerate(lines):
            if not line.strip():
                raise UserError(f"class list {path}: line {i + 1} is blank (line n names category n - 1)")
        return [line.strip() for line in lines]
    bad = next((i for i, line in enumerate(body) if not _is_id_row(line)), None)
    if bad is not None:
        line_no = bad + 1 + len(lines) - len(body)
        raise UserError(f"class list {path}: line {line_no} is not an '/m/id,name' row like the others")
    names: dict[str, str] = {}
    for row in csv.reader(body):
        if row[0] in names:
            raise UserError(f"class list {path}: id {row[0]} appears twice")
        names[row[0]] = row[1].strip()
    ids = sorted(names)
    if LAST_CATEGORY_ID in names:
        ids.remove(LAST_CATEGORY_ID)
        ids.append(LAST_CATEGORY_ID)
    return [names[i] for i in ids]


def _flag(item: dict, key: str, index: int) -> bool:
    """A layout flag (absent = False); anything but a bool is an error."""
    value = item.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"box {index}: {key}={value!r} must be true or false")
    return value


def _box(value: Any, index: int) -> Box:
    """A layout box: four finite numbers x0 < x1, y0 < y1 (image fractions) overlapping the image."""
    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise ValueError(f"box {index}: box={value!r} must be four numbers [x0, y0, x1, y1] (fractions)")
    x0, y0, x1, y1 = (float(v) for v in value)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {index}: box={list(value)} needs x1 > x0 and y1 > y0")
    if x0 >= 1 or y0 >= 1 or x1 <= 0 or y1 <= 0:
        raise ValueError(f"box {index}: box={list(value)} lies outside the image (fractions 0..1)")
    return x0, y0, x1, y1


def _category(label: Any, class_names: list[str] | None, no_object_classes: int, index: int) -> int:
    """A layout label (class number, or a name matched case-insensitively) -> category number."""
    if isinstance(label, int) and not isinstance(label, bool):
        if not 0 <= label < no_object_classes:
            raise ValueError(f"box {index}: label {label} is outside the classes 0..{no_object_classes - 1}")
        return label
    if not isinstance(label, str):
        raise ValueError(f"box {index}: label={label!r} must be a class number or a class name")
    if class_names is None:
        raise ValueError(f"box {index}: label {label!r} is a name but no class list was given: "
                         "pass cond.classes=PATH or use class numbers")
    lowered = [name.lower() for name in class_names]
    hits = [i for i, name in enumerate(lowered) if name == label.strip().lower()]
    if len(hits) > 1:
        raise ValueError(f"box {index}: label {label!r} names classes {hits}: use the class number")
    if not hits:
        near = difflib.get_close_matches(label.strip().lower(), lowered, n=3, cutoff=0.6)
        hint = ("; close matches: " + ", ".join(class_names[lowered.index(n)] for n in near)) if near else ""
        raise ValueError(f"box {index}: unknown class {label!r}{hint}")
    return hits[0]


def objects_from_layout(layout: list[dict], class_names: list[str] | None,
                        no_object_classes: int) -> list[BoxObject]:
    """A user's layout (dicts with ``box`` [x0, y0, x1, y1] fractions, ``label`` number or name, optional
    bools ``group``, ``occluded``, ``depiction``, ``inside``) -> objects; errors name the box (from 0)."""
    if class_names is not None and len(class_names) != no_object_classes:
        raise ValueError(f"the class list names {len(class_names)} classes "
                         f"but the model has {no_object_classes}")
    if not isinstance(layout, (list, tuple)):
        raise ValueError(f"layout={layout!r} must be a list of boxes")
    objects = []
    for i, item in enumerate(layout):
        if not isinstance(item, dict) or "box" not in item or "label" not in item:
            raise ValueError(f"box {i}: {item!r} must be a mapping with 'box' and 'label'")
        unknown = [k for k in item if k not in LAYOUT_KEYS]
        if unknown:
            raise ValueError(f"box {i}: unknown key {unknown[0]!r} (known: {', '.join(LAYOUT_KEYS)})")
        objects.append(BoxObject(
            _category(item["label"], class_names, no_object_classes, i), _box(item["box"], i),
            group_of=_flag(item, "group", i), occluded=_flag(item, "occluded", i),
            depiction=_flag(item, "depiction", i), inside=_flag(item, "inside", i)))
    return objects


class BertLayoutConditioner(BertConditioner):
    """CompVis layout-to-image conditioner: a layout -> taming's box tokens (``BoxTokenBuilder``) -> the BERT-like
    transformer (``BERTEmbedder`` with ``use_tokenizer: false``, layout2img-openimages256).

    Class names come from a local list (``classes``: one name per line, or OpenImages'
    class-descriptions-boxable.csv); without one, labels are category numbers. ``num_classes`` is the model's
    class count (the list's length when a list is given), needed only for the group/occluded/depiction/inside
    flags, whose tokens are offset by it."""

    inputs = ("layout",)
    task = "layout"

    def __init__(self, n_embed: int, n_layer: int, vocab_size: int = 8192, max_seq_len: int = 92,
                 classes: str | None = None, num_classes: int | None = None, key: str = "coordinates_bbox",
                 **kwargs: Any) -> None:
        super().__init__(n_embed, n_layer, vocab_size, max_seq_len, key=key, **kwargs)
        self.classes, self.num_classes = classes, num_classes
        BoxTokenBuilder.for_sequence(max_seq_len, vocab_size, num_classes or 1)  # the geometry must fit

    def set_classes(self, path: str | None) -> None:
        """Use the class list at ``path`` (checked now)."""
        if path is not None:
            load_class_names(path)
        self.classes = path

    def builder(self, classes: int) -> BoxTokenBuilder:
        """The token builder for this model's sequence and ``classes`` object classes."""
        return BoxTokenBuilder.for_sequence(self.max_seq_len, self.vocab_size, classes)

    def null(self, n: int) -> Tensor:
        """``n`` empty layouts (all padding, plus the full-image crop pair)."""
        return self.builder(self.num_classes or 1).null().expand(n, -1).clone()

    def values(self, batch: dict) -> Tensor:
        """Token ids from a batch (or one sample): its ``key`` field when it has one, else built from the readers'
        ``boxes`` (xyxy fractions), ``box_labels`` (-1 = padding) and optional ``box_flags`` (group, occluded,
        depiction, inside), as taming's builder does for the training data."""
        if self.key in batch:
            return torch.as_tensor(batch[self.key])
        boxes, labels = torch.as_tensor(batch["boxes"]), torch.as_tensor(batch["box_labels"])
        flags = torch.as_tensor(batch["box_flags"]) if "box_flags" in batch and self.num_classes else \
            torch.zeros(*labels.shape, 4)  # flag tokens are offset by the class count: without it, no flags
        single = labels.dim() == 1
        if single:
            boxes, labels, flags = boxes[None], labels[None], flags[None]
        builder = self.builder(self.num_classes or 1)
        rows = [builder.build([BoxObject(int(c), tuple(float(v) for v in b), *(bool(x) for x in f))
                               for b, c, f in zip(bs, cs, fs, strict=True) if c >= 0])
                for bs, cs, fs in zip(boxes, labels, flags, strict=True)]
        tokens = torch.stack(rows)
        return tokens[0] if single else tokens

    def from_inputs(self, inputs: dict[str, list]) -> Tensor:
        """Layouts (lists of ``{box, label, flags}``) -> (B, max_seq_len) token ids."""
        names = load_class_names(self.classes) if self.classes is not None else None
        count = len(names) if names is not None else self.num_classes
        rows = []
        for layout in inputs["layout"]:
            objects = objects_from_layout(layout, names, count or self.vocab_size - 1)
            if count is None and any(o.flags for o in objects):
                raise ValueError("box flags (group, occluded, depiction, inside) need the model's class count: "
                                 "pass cond.classes=PATH (its class list)")
            rows.append(self.builder(count or 1).build(objects))
        return torch.stack(rows)
