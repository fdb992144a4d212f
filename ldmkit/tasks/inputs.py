"""What ``ldmkit sample`` conditions on: prompts (or a prompts file), labels, layouts (JSON/YAML), semantic
maps, low-res images (super-resolution) and image + mask (inpainting), read and checked per conditioner.

Each option may name several requests (a list of prompts, labels, files); every request gets ``n`` samples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from ldmkit.errors import UserError
from ldmkit.models.clip_conditioner import ClipConditioner
from ldmkit.models.concat_conditioners import InpaintConditioner, SemanticConditioner, SRConditioner
from ldmkit.models.conditioners import (
    ClassConditioner,
    Conditioner,
    MultiConditioner,
    TextConditioner,
    repeat_values,
)
from ldmkit.models.layout_conditioner import LayoutConditioner

INPUT_OPTIONS = ("prompt", "prompts_file", "label", "layout", "semantic", "image", "mask")


@dataclass
class Requests:
    """Conditioning values, one per request, with a JSON-able description each and the image size
    (H, W) the inputs imply (semantic maps, inpainting images, low-res images), if any."""

    values: Any
    described: list[dict]
    size: tuple[int, int] | None = None

    def __len__(self) -> int:
        """Number of requests."""
        return len(self.described)


def as_list(value: Any) -> list | None:
    """None, a scalar, or a (Hydra) list -> None or a plain list."""
    if value is None:
        return None
    return list(value) if isinstance(value, list | tuple | ListConfig) else [value]


def _open_image(path: Any, option: str):
    """A PIL image from ``path`` (loaded), or a one-line error naming the option."""
    from PIL import Image, UnidentifiedImageError

    file = Path(str(path))
    if not file.is_file():
        raise UserError(f"{option}={file}: no such file")
    try:
        with Image.open(file) as im:
            im.load()
            return im
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise UserError(f"{option}={file}: not a readable image ({exc})") from None


def read_rgb(path: Any, option: str) -> Tensor:
    """An image file -> float (3, H, W) in [-1, 1] (grayscale / RGBA / palette become RGB)."""
    arr = np.asarray(_open_image(path, option).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0


def read_mask(path: Any, option: str = "mask") -> Tensor:
    """A mask image -> float (1, H, W) in {0, 1}: 1 (white) = the region to fill."""
    arr = np.asarray(_open_image(path, option).convert("L"))
    return torch.from_numpy((arr > 127).astype(np.float32))[None]


def read_label_map(path: Any, num_classes: int, option: str = "semantic") -> Tensor:
    """A single-channel label PNG (mode L / P / I) -> int64 (H, W) in 0..num_classes (0 = background)."""
    im = _open_image(path, option)
    if im.mode not in ("L", "P", "I", "I;16"):
        raise UserError(f"{option}={path}: a label map needs one channel (mode L or P: 0 = background, "
                        f"class c = c + 1), got mode {im.mode}")
    labels = torch.from_numpy(np.asarray(im).astype(np.int64))
    if labels.max() > num_classes:
        raise UserError(f"{option}={path}: labels go up to {int(labels.max())} but this model knows "
                        f"0..{num_classes} (0 = background)")
    return labels


def _prompts(cfg: DictConfig) -> list[str] | None:
    """prompt= (one or a list) and/or prompts_file= (one prompt per line, blank lines skipped)."""
    prompts = [str(p) for p in as_list(cfg.prompt) or []]
    if cfg.get("prompts_file"):
        file = Path(str(cfg.prompts_file))
        if not file.is_file():
            raise UserError(f"prompts_file={file}: no such file")
        lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise UserError(f"prompts_file={file}: no prompts in it (one per line)")
        prompts += lines
    return prompts or None


def check_input_files(cfg: DictConfig) -> None:
    """Every file the input options name exists and a prompts file holds prompts (before any model loads)."""
    for option in ("prompts_file", "layout", "semantic", "image", "mask"):
        for value in as_list(cfg.get(option)) or []:
            if not Path(str(value)).is_file():
                raise UserError(f"{option}={value}: no such file")
    _prompts(cfg)


def parse_label(label: Any, num_classes: int, option: str = "label") -> int:
    """A class id or a class name of the shapes dataset ('red circle') -> class id."""
    from ldmkit.data.shapes import NUM_CLASSES, class_name

    names = {class_name(i): i for i in range(min(num_classes, NUM_CLASSES))}
    if isinstance(label, int) or str(label).isdigit():
        if not 0 <= int(label) < num_classes:
            raise UserError(f"{option}={label} is out of range 0..{num_classes - 1}")
        return int(label)
    if label not in names:
        example = next(iter(names), "0")
        raise UserError(f"{option}={label!r} is not a class; use 0..{num_classes - 1} or a name like {example!r}")
    return names[label]


def _layout_rows(boxes: Any, cond: LayoutConditioner, where: str) -> Tensor:
    """One layout (a list of {box: [x0, y0, x1, y1], label}) -> (max_objects, 5) padded with label -1."""
    if not isinstance(boxes, list) or not all(isinstance(b, dict) for b in boxes):
        raise UserError(f"{where}: a layout is a list of {{box: [x0, y0, x1, y1], label: ...}} entries")
    if len(boxes) > cond.max_objects:
        raise UserError(f"{where}: {len(boxes)} boxes, but this model takes at most {cond.max_objects}")
    rows = torch.zeros(cond.max_objects, 5)
    rows[:, 4] = -1
    for i, entry in enumerate(boxes):
        box = entry.get("box")
        if not isinstance(box, list) or len(box) != 4 or "label" not in entry:
            raise UserError(f"{where}: box {i} needs box: [x0, y0, x1, y1] and label:")
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise UserError(f"{where}: box {i} {box} must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 "
                            "(image fractions)")
        rows[i] = torch.tensor([x0, y0, x1, y1, parse_label(entry["label"], cond.num_classes, f"{where}: label")])
    return rows


def read_layouts(path: Any, cond: LayoutConditioner) -> tuple[Tensor, list]:
    """A JSON/YAML layout file: one layout (a list of boxes) or several (a list of such lists)."""
    file = Path(str(path))
    if not file.is_file():
        raise UserError(f"layout={file}: no such file")
    try:
        data = OmegaConf.to_container(OmegaConf.load(file)) if file.suffix in (".yaml", ".yml") \
            else json.loads(file.read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise UserError(f"layout={file}: cannot parse it ({str(exc).splitlines()[0]})") from None
    layouts = data if isinstance(data, list) and data and all(isinstance(x, list) for x in data) else [data]
    rows = [_layout_rows(b, cond, f"layout={file}") for b in layouts]
    return torch.stack(rows), layouts


def options_of(cond: Conditioner) -> tuple[str, ...]:
    """The sample options a (non-multi) conditioner reads."""
    table = (
        (TextConditioner | ClipConditioner, ("prompt", "prompts_file")),
        (ClassConditioner, ("label",)),
        (LayoutConditioner, ("layout",)),
        (SemanticConditioner, ("semantic",)),
        (SRConditioner, ("image",)),
        (InpaintConditioner, ("image", "mask")),
    )
    return next((options for kinds, options in table if isinstance(cond, kinds)), ())


def _part_requests(cond: Conditioner, cfg: DictConfig, sr_factor: int) -> Requests | None:
    """The requests one (non-multi) conditioner reads from the sample options, or None if none given."""
    if isinstance(cond, TextConditioner | ClipConditioner):
        prompts = _prompts(cfg)
        return None if prompts is None else Requests(prompts, [{"prompt": p} for p in prompts])
    if isinstance(cond, ClassConditioner):
        labels = as_list(cfg.label)
        if labels is None:
            return None
        from ldmkit.data.shapes import NUM_CLASSES, class_name

        ids = [parse_label(lb, cond.num_classes) for lb in labels]
        described = [{"label": i, **({"class": class_name(i)} if i < NUM_CLASSES else {})} for i in ids]
        return Requests(torch.tensor(ids, dtype=torch.long), described)
    if isinstance(cond, LayoutConditioner):
        if cfg.layout is None:
            return None
        values, layouts = read_layouts(cfg.layout, cond)
        return Requests(values, [{"layout": lay} for lay in layouts])
    if isinstance(cond, SemanticConditioner):
        files = as_list(cfg.semantic)
        if files is None:
            return None
        maps = [read_label_map(f, cond.num_classes) for f in files]
        return Requests(_same_size(maps, "semantic"), [{"semantic": str(f)} for f in files],
                        tuple(maps[0].shape[-2:]))
    if isinstance(cond, SRConditioner):
        files = as_list(cfg.image)
        if files is None:
            return None
        images = _same_size([read_rgb(f, "image") for f in files], "image")
        h, w = images.shape[-2:]
        return Requests(images, [{"image": str(f)} for f in files], (h * sr_factor, w * sr_factor))
    if isinstance(cond, InpaintConditioner):
        return _inpaint_requests(cfg)
    raise UserError(f"ldmkit sample has no inputs for {type(cond).__name__}")


def _same_size(tensors: list[Tensor], option: str) -> Tensor:
    """Stack per-request tensors that must share one size."""
    if len({tuple(t.shape) for t in tensors}) > 1:
        raise UserError(f"{option}=: the files differ in size ({', '.join(str(tuple(t.shape[-2:])) for t in tensors)})")
    return torch.stack(tensors)


def _inpaint_requests(cfg: DictConfig) -> Requests | None:
    """image= and mask= (one each, or lists of equal length) of the same size."""
    images, masks = as_list(cfg.image), as_list(cfg.mask)
    if images is None and masks is None:
        return None
    if images is None or masks is None:
        raise UserError("inpainting needs both image=PATH and mask=PATH (white = region to fill)")
    if len(masks) == 1 < len(images):
        masks = masks * len(images)
    if len(images) != len(masks):
        raise UserError(f"{len(images)} images but {len(masks)} masks: give one mask, or one per image")
    pairs = [(read_rgb(i, "image"), read_mask(m)) for i, m in zip(images, masks, strict=True)]
    for (img, mask), name in zip(pairs, masks, strict=True):
        if img.shape[-2:] != mask.shape[-2:]:
            raise UserError(f"mask={name} is {tuple(mask.shape[-2:])} but its image is {tuple(img.shape[-2:])}")
    image = _same_size([p[0] for p in pairs], "image")
    described = [{"image": str(i), "mask": str(m)} for i, m in zip(images, masks, strict=True)]
    return Requests({"image": image, "mask": torch.stack([p[1] for p in pairs])}, described,
                    tuple(image.shape[-2:]))


def _parts(cond: Conditioner) -> dict[str | None, Conditioner]:
    """The conditioners that read inputs: a multi-conditioner's parts, or the conditioner itself."""
    return dict(cond.parts.items()) if isinstance(cond, MultiConditioner) else {None: cond}


def _broadcast(reqs: Requests, count: int) -> Requests:
    """A single request repeated to ``count`` (so one semantic map can pair with several prompts)."""
    if len(reqs) == count:
        return reqs
    return Requests(repeat_values(reqs.values, count), reqs.described * count, reqs.size)


def given_inputs(cfg: DictConfig) -> set[str]:
    """The input options the user set."""
    return {o for o in INPUT_OPTIONS if cfg.get(o) not in (None, "", [])}


def user_requests(cond: Conditioner, cfg: DictConfig, sr_factor: int = 4) -> Requests | None:
    """The requests the sample options describe for this model, or None when none were given."""
    given = given_inputs(cfg)
    takes = [o for part in _parts(cond).values() for o in options_of(part)]
    extra = sorted(given - set(takes))
    if extra:
        what = "/".join(f"{o}=" for o in dict.fromkeys(takes)) or "no inputs (it is unconditional)"
        raise UserError(f"this model ({type(cond).__name__}) takes {what}; drop {', '.join(o + '=' for o in extra)}")
    if not given:
        return None
    parts = {name: (part, _part_requests(part, cfg, sr_factor)) for name, part in _parts(cond).items()}
    missing = [options_of(p)[0] for p, r in parts.values() if r is None]
    if missing:
        raise UserError(f"this model also needs {', '.join(m + '=' for m in missing)} "
                        f"(its conditioners: {', '.join(type(p).__name__ for p, _ in parts.values())})")
    count = max(len(r) for _, r in parts.values())
    if any(len(r) not in (1, count) for _, r in parts.values()):
        raise UserError(f"the inputs give different numbers of requests ({[len(r) for _, r in parts.values()]}): "
                        "give one of each, or equally many")
    reqs = {name: _broadcast(r, count) for name, (_, r) in parts.items()}
    if None in reqs:
        return reqs[None]
    described = [{k: v for r in reqs.values() for k, v in r.described[i].items()} for i in range(count)]
    size = next((r.size for r in reqs.values() if r.size is not None), None)
    return Requests({name: r.values for name, r in reqs.items()}, described, size)


def negative_values(cond: Conditioner, negative: str | None, n: int) -> Any:
    """The unconditional input for guidance with a negative prompt in place of the empty caption."""
    if negative is None:
        return None
    parts = _parts(cond)
    texts = [name for name, p in parts.items() if isinstance(p, TextConditioner | ClipConditioner)]
    if not texts:
        raise UserError(f"negative_prompt= needs a text-conditioned model; this one is {type(cond).__name__}")
    if None in parts:
        return [str(negative)] * n
    return {name: ([str(negative)] * n if name in texts else p.null(n)) for name, p in parts.items()}


def repeat_requests(reqs: Requests, n: int) -> tuple[Any, list[dict]]:
    """Each request's values and description ``n`` times in a row."""
    return repeat_values(reqs.values, n), [d for d in reqs.described for _ in range(n)]

