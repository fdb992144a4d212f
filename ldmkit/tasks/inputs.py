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
from ldmkit.models.conditioners import Conditioner, MultiConditioner, num_values, repeat_values

# Each input a conditioner may declare, and the sample options that give it.
INPUTS: dict[str, tuple[str, ...]] = {"prompt": ("prompt", "prompts_file"), "label": ("label",),
                                      "layout": ("layout",), "semantic": ("semantic",), "image": ("image",),
                                      "mask": ("mask",)}
INPUT_OPTIONS = tuple(o for options in INPUTS.values() for o in options)


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


def read_label_map(path: Any, option: str = "semantic") -> Tensor:
    """A single-channel label PNG (mode L / P / I) -> int64 (H, W): its values (the model checks their range)."""
    im = _open_image(path, option)
    if im.mode not in ("L", "P", "I", "I;16"):
        raise UserError(f"{option}={path}: a label map needs one channel (mode L or P: one label per pixel), "
                        f"got mode {im.mode}")
    return torch.from_numpy(np.asarray(im).astype(np.int64))


def _prompts(cfg: DictConfig) -> list[str] | None:
    """prompt= (one or a list) and/or prompts_file= (one prompt per line, blank lines skipped)."""
    prompts = [str(p) for p in as_list(cfg.prompt) or []]
    if cfg.get("prompts_file"):
        file = Path(str(cfg.prompts_file))
        if not file.is_file():
            raise UserError(f"prompts_file={file}: no such file")
        try:
            text = file.read_text(encoding="utf-8-sig")  # a Windows editor's BOM is no prompt text
        except UnicodeDecodeError as exc:
            raise UserError(f"prompts_file={file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        lines = [line.strip() for line in text.split("\n") if line.strip()]  # each line verbatim, '\r' dropped
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


def read_layouts(path: Any) -> list:
    """A JSON/YAML layout file: one layout (a list of boxes) or several (a list of such lists)."""
    file = Path(str(path))
    if not file.is_file():
        raise UserError(f"layout={file}: no such file")
    try:
        data = OmegaConf.to_container(OmegaConf.load(file)) if file.suffix in (".yaml", ".yml") \
            else json.loads(file.read_text(encoding="utf-8"))
    except Exception as exc:  # any parse error is the user's file
        raise UserError(f"layout={file}: cannot parse it ({str(exc).splitlines()[0]})") from None
    return data if isinstance(data, list) and data and all(isinstance(x, list) for x in data) else [data]


def read_input(name: str, cfg: DictConfig) -> tuple[list, list]:
    """One input's parsed values and their descriptions (what samples.jsonl records), one per request."""
    if name == "prompt":
        prompts = _prompts(cfg) or []
        return prompts, prompts
    if name == "label":
        labels = as_list(cfg.label)
        return labels, labels
    files = [str(f) for f in as_list(cfg.get(name)) or []]
    if name == "layout":
        layouts = [layout for f in files for layout in read_layouts(f)]
        return layouts, layouts
    reader = {"semantic": read_label_map, "image": read_rgb, "mask": read_mask}[name]
    return [reader(f, name) for f in files], files


def given_inputs(cfg: DictConfig) -> set[str]:
    """The inputs the user gave (through any of their options)."""
    return {name for name, options in INPUTS.items() if any(cfg.get(o) not in (None, "", []) for o in options)}


def input_options(names: Any) -> str:
    """The sample options of some inputs, as a user types them: ``prompt=/prompts_file=``."""
    return "/".join(f"{o}=" for name in names for o in INPUTS[name])


def _parts(cond: Conditioner) -> dict[str | None, Conditioner]:
    """The conditioners that read inputs: a multi-conditioner's parts, or the conditioner itself."""
    return dict(cond.parts.items()) if isinstance(cond, MultiConditioner) else {None: cond}


def _described(part: Conditioner, parsed: dict[str, tuple[list, list]], values: Any) -> list[dict]:
    """Per request, what each input was (the label's id and class name when the model knows its names)."""
    count = num_values(values)
    rows = [{name: d[i if len(d) > 1 else 0] for name, (_, d) in parsed.items()} for i in range(count)]
    if "label" in parsed and isinstance(values, Tensor):
        names = part.label_names() if hasattr(part, "label_names") else None
        for row, i in zip(rows, values.tolist(), strict=True):
            row.update({"label": int(i), **({"class": names[i]} if names else {})})
    return rows


def _part_requests(part: Conditioner, parsed: dict[str, tuple[list, list]], cfg: DictConfig) -> Requests | None:
    """One conditioner's requests from the parsed inputs it declares (None when none of them was given)."""
    mine = {name: parsed[name] for name in part.inputs if name in parsed}
    if not mine:
        return None
    missing = [name for name in part.inputs if name not in mine]
    if missing:
        raise UserError(f"this model needs {' and '.join(input_options([n]) for n in part.inputs)} together; "
                        f"missing {input_options(missing)}")
    inputs = {name: values for name, (values, _) in mine.items()}
    try:
        values = part.from_inputs(inputs)
        size = part.output_size(inputs)
    except ValueError as exc:
        given = ", ".join(f"{o}={cfg.get(o)}" for n in mine for o in INPUTS[n] if cfg.get(o) not in (None, "", []))
        raise UserError(f"{given}: {exc}") from None
    return Requests(values, _described(part, mine, values), size)


def _broadcast(reqs: Requests, count: int) -> Requests:
    """A single request repeated to ``count`` (so one semantic map can pair with several prompts)."""
    if len(reqs) == count:
        return reqs
    return Requests(repeat_values(reqs.values, count), reqs.described * count, reqs.size)


def user_requests(cond: Conditioner, cfg: DictConfig) -> Requests | None:
    """The requests the sample options describe for this model, or None when none were given."""
    given = given_inputs(cfg)
    extra = sorted(given - set(cond.inputs), key=list(INPUTS).index)
    if extra:
        what = input_options(cond.inputs) or "no inputs (it is unconditional)"
        raise UserError(f"this model ({type(cond).__name__}) takes {what}; drop {input_options(extra)}")
    if not given:
        return None
    parsed = {name: read_input(name, cfg) for name in given}
    parts = {name: (part, _part_requests(part, parsed, cfg)) for name, part in _parts(cond).items()}
    missing = [part.inputs[0] for part, r in parts.values() if r is None]
    if missing:
        raise UserError(f"this model also needs {', '.join(input_options([m]) for m in missing)} "
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


def use_local_files(cond: Conditioner, files: Any) -> None:
    """``cond.vocab`` / ``cond.classes`` go to the conditioners that read them (checked now; one line if none does)."""
    for option, setter, kind in (("vocab", "set_vocab", "BERT text"), ("classes", "set_classes", "CompVis layout")):
        value = (files or {}).get(option)
        if value is None:
            continue
        parts = [p for p in _parts(cond).values() if hasattr(p, setter) and (option != "vocab" or "prompt" in p.inputs)]
        if not parts:
            raise UserError(f"cond.{option}= is for {kind} models; this one is {type(cond).__name__}")
        for part in parts:
            getattr(part, setter)(str(Path(str(value)).expanduser().resolve()))


def negative_values(cond: Conditioner, negative: str | None, n: int) -> Any:
    """The unconditional input for guidance with a negative prompt in place of the empty caption."""
    if negative is None:
        return None
    parts = _parts(cond)
    texts = [name for name, p in parts.items() if "prompt" in p.inputs]
    if not texts:
        raise UserError(f"negative_prompt= needs a text-conditioned model; this one is {type(cond).__name__}")
    if None in parts:
        return [str(negative)] * n
    return {name: ([str(negative)] * n if name in texts else p.null(n)) for name, p in parts.items()}


def read_init_images(files: list[str], size: tuple[int, int]) -> Tensor:
    """``init_image=`` files -> (k, 3, H, W) in [-1, 1] at the output ``size`` (H, W): each scaled to cover it and
    center-cropped (its aspect ratio kept; Lanczos, as diffusers' img2img resizes)."""
    from PIL import Image, ImageOps

    h, w = size
    images = [ImageOps.fit(_open_image(f, "init_image").convert("RGB"), (w, h), Image.Resampling.LANCZOS)
              for f in files]
    return torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
                        for im in images])


def init_image_requests(reqs: Requests | None, files: list[str], cond: Conditioner) -> Requests:
    """The requests paired with their ``init_image=`` files: one file for every request, or one file per request
    (a single request is repeated for each file; with no requests, an unconditional model, one per file)."""
    if reqs is None:
        return Requests(cond.null(len(files)), [{"init_image": f} for f in files])
    if len(files) not in (1, len(reqs)) and len(reqs) != 1:
        raise UserError(f"init_image= names {len(files)} images for {len(reqs)} requests: give one image for all, "
                        "or one per request")
    count = max(len(reqs), len(files))
    reqs = _broadcast(reqs, count)
    files = files * count if len(files) == 1 else files
    return Requests(reqs.values, [{**d, "init_image": f} for d, f in zip(reqs.described, files, strict=True)],
                    reqs.size)


def repeat_requests(reqs: Requests, n: int) -> tuple[Any, list[dict]]:
    """Each request's values and description ``n`` times in a row."""
    return repeat_values(reqs.values, n), [d for d in reqs.described for _ in range(n)]
