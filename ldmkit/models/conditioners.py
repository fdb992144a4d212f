"""Conditioners (the paper's tau_theta): batch fields -> a ``Cond`` (cross-attention tokens and/or channels
concatenated to the latent).

Every conditioner has a ``key`` (the dataset field it reads), a ``drop_prob`` (conditioning dropout for
classifier-free guidance) and a *null* value meaning "no condition".
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from ldmkit.diffusion.cond import Cond, merge


def keep_mask(n: int, drop_prob: float, generator: torch.Generator | None = None) -> Tensor:
    """(n,) bool for conditioning dropout: True = keep the sample's condition, False (prob. ``drop_prob``) = null."""
    return torch.rand(n, generator=generator) >= drop_prob


def num_values(values: Any) -> int:
    """How many samples conditioning values describe (tensors, lists, or dicts of these)."""
    return num_values(next(iter(values.values()))) if isinstance(values, dict) else len(values)


def take(values: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of conditioning values (a tensor, a list, or a dict of these, as for inpainting)."""
    if isinstance(values, dict):
        return {k: take(v, start, stop) for k, v in values.items()}
    return values[start:stop]


def shapes_class_names(num_classes: int) -> list[str] | None:
    """The built-in dataset's class names when a model has exactly its classes (else None: ids only)."""
    from ldmkit.data.shapes import NUM_CLASSES, class_name

    return [class_name(i) for i in range(NUM_CLASSES)] if num_classes == NUM_CLASSES else None


def label_id(label: Any, num_classes: int, names: list[str] | None, where: str = "label") -> int:
    """A class id or (case-insensitive) class name -> class id in 0..num_classes-1; ValueError naming the choices."""
    text = str(label).strip()
    if isinstance(label, int) or text.isdigit():
        if not 0 <= int(text) < num_classes:
            raise ValueError(f"{where}={label} is out of range 0..{num_classes - 1}")
        return int(text)
    lookup = {name.lower(): i for i, name in enumerate(names or [])}
    if text.lower() in lookup:
        return lookup[text.lower()]
    close = difflib.get_close_matches(text.lower(), list(lookup), n=3)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else \
        (f"or a name like {names[0]!r}" if names else "this model knows no class names")
    raise ValueError(f"{where}={label!r} is not a class; use 0..{num_classes - 1} ({hint})")


def stack_same_size(tensors: list[Tensor], what: str) -> Tensor:
    """Per-request tensors that must share one size, stacked; ValueError listing the sizes otherwise."""
    if len({tuple(t.shape) for t in tensors}) > 1:
        raise ValueError(f"the {what} differ in size ({', '.join(str(tuple(t.shape[-2:])) for t in tensors)})")
    return torch.stack(tensors)


def pick(values: Any, indices: list[int]) -> Any:
    """The samples at ``indices`` of conditioning values (a tensor, a list, or a dict of these)."""
    if isinstance(values, dict):
        return {k: pick(v, indices) for k, v in values.items()}
    if isinstance(values, Tensor):
        return values[indices]
    return [values[i] for i in indices]


def repeat_values(values: Any, n: int) -> Any:
    """Each sample of ``values`` repeated ``n`` times in a row (n samples per request)."""
    return pick(values, [i for i in range(num_values(values)) for _ in range(n)])


def cycled_values(values: Any, start: int, count: int) -> Any:
    """``count`` samples of ``values`` from ``start`` on, starting again from the first when they run out."""
    size = num_values(values)
    return pick(values, [(start + i) % size for i in range(count)])


class Conditioner(nn.Module, ABC):
    """Base class: ``forward(values) -> Cond``; ``values(batch)`` picks the inputs from a training batch.

    Each conditioner declares what ``ldmkit sample`` may hand it (``inputs``) and turns those parsed inputs into
    its values (``from_inputs``). The parsed forms, one list entry per request: ``prompt`` str; ``label`` int or
    class name; ``layout`` a list of ``{"box": [x0, y0, x1, y1] (image fractions), "label": int | name, ...}``;
    ``semantic`` int64 (H, W) label map (the PNG's values); ``image`` float (3, H, W) in [-1, 1]; ``mask`` float
    (1, H, W) in {0, 1} (1 = fill). ``task`` names what the model does (meta.json, ``ldmkit info``).
    """

    key: str | None = None
    drop_prob: float = 0.0
    concat_channels: int = 0  # channels this conditioner adds to the UNet input
    vector_dim: int = 0  # width of the global vector it adds to the UNet's time embedding (unet.adm_in_channels)
    inputs: tuple[str, ...] = ()  # the ``ldmkit sample`` inputs it reads (see the class docstring)
    task: str = "unconditional"  # what the model does: unconditional, class, text, layout, semantic, ...

    def from_inputs(self, inputs: dict[str, list]) -> Any:
        """Conditioning values (one per request) from parsed sample inputs; ValueError (one line) on bad ones."""
        raise ValueError(f"{type(self).__name__} takes no sample inputs")

    def output_size(self, inputs: dict[str, list]) -> tuple[int, int] | None:
        """The image size (H, W) in pixels the inputs imply (maps, images to fill or upscale), or None."""
        return None

    def composite(self, images: Tensor, values: Any) -> Tensor:
        """The sampled images as the task returns them (inpainting keeps the given image outside the mask)."""
        return images

    @abstractmethod
    def null(self, n: int) -> Any:
        """``n`` null values (the unconditional input)."""

    def values(self, batch: dict) -> Any:
        """This conditioner's input from a training batch (the field ``key``)."""
        return batch[self.key]

    def attach(self, first_stage: nn.Module) -> None:
        """Called once by ``LatentDiffusion`` with its (frozen) first stage; conditioners that encode images
        with it (inpainting) keep a reference that is *not* a registered sub-module."""

    def cached_fields(self, values: Any) -> dict[str, Tensor]:
        """Per-sample tensors ``encode-dataset`` may store so training skips this conditioner's frozen work
        (the batched values' encodings keyed by field name); nothing for trained conditioners."""
        return {}

    def learned_null(self) -> bool:
        """Whether training dropped conditions (drop_prob > 0), i.e. the null condition was learned."""
        return float(self.drop_prob) > 0

    def drop(self, values: Any, generator: torch.Generator | None = None) -> Any:
        """Replace each value by the null value with probability ``drop_prob`` (training-time dropout); tensor
        nulls broadcast over the sample's other dimensions (a 1x1 null map fills a whole map)."""
        n = len(values)
        if self.drop_prob <= 0 or n == 0:
            return values
        keep = keep_mask(n, self.drop_prob, generator)
        null = self.null(n)
        if isinstance(values, Tensor):
            keep = keep.to(values.device).view(-1, *([1] * (values.dim() - 1)))
            return torch.where(keep, values, null.to(values.device))
        return [v if k else u for v, k, u in zip(values, keep.tolist(), null, strict=True)]


class NoConditioner(Conditioner):
    """Unconditional model: no context."""

    def null(self, n: int) -> list[None]:
        """Nothing to drop."""
        return [None] * n

    def values(self, batch: dict) -> None:
        """Reads nothing."""
        return None

    def forward(self, values: Any = None) -> Cond:
        """No context, no mask."""
        return Cond()


class ClassConditioner(Conditioner):
    """Class label -> learned embedding (one token); index ``num_classes`` is the null class."""

    inputs = ("label",)
    task = "class"

    def __init__(self, num_classes: int, embed_dim: int, key: str = "class_label", drop_prob: float = 0.1,
                 null_class: bool = True):
        super().__init__()
        self.key, self.drop_prob, self.num_classes, self.null_class = key, drop_prob, num_classes, bool(null_class)
        self.embedding = nn.Embedding(num_classes + int(self.null_class), embed_dim)

    def null(self, n: int) -> Tensor:
        """The null class index, ``n`` times (ValueError for a model trained without one, e.g. CompVis cin256)."""
        if not self.null_class:
            raise ValueError(f"this class model has no null class (all {self.num_classes} embeddings are classes): "
                             "it samples without guidance only (guidance=1)")
        return torch.full((n,), self.num_classes, dtype=torch.long)

    def forward(self, values: Tensor) -> Cond:
        """(B,) class ids -> (B, 1, D) context."""
        values = torch.as_tensor(values, device=self.embedding.weight.device).long().reshape(-1)
        top = self.num_classes - 1 + int(self.null_class)
        if values.min() < 0 or values.max() > top:
            null = f", or {self.num_classes} for the null class" if self.null_class else ""
            raise ValueError(f"class ids must be in 0..{self.num_classes - 1}{null} (got {values.tolist()})")
        return Cond(self.embedding(values)[:, None])

    def label_names(self) -> list[str] | None:
        """Class names ``label=`` may use (the built-in dataset's, when the model has its classes)."""
        return shapes_class_names(self.num_classes)

    def from_inputs(self, inputs: dict[str, list]) -> Tensor:
        """Labels (ids or names) -> (B,) class ids."""
        names = self.label_names()
        return torch.tensor([label_id(v, self.num_classes, names) for v in inputs["label"]], dtype=torch.long)


class CaptionConditioner(Conditioner, ABC):
    """Base of the text conditioners: captions in (``prompt=``), the empty caption as the null condition."""

    inputs = ("prompt",)
    task = "text"

    def null(self, n: int) -> list[str]:
        """The empty caption, ``n`` times."""
        return [""] * n

    def from_inputs(self, inputs: dict[str, list]) -> list[str]:
        """Prompts as captions."""
        return [str(p) for p in inputs["prompt"]]


class TextConditioner(CaptionConditioner):
    """Caption -> open_clip BPE tokens -> bidirectional transformer trained from scratch (BERT-like tau_theta)."""

    def __init__(
        self,
        key: str = "caption",
        context_length: int = 24,
        width: int = 128,
        layers: int = 2,
        heads: int = 4,
        drop_prob: float = 0.1,
        pooled: bool = False,
    ) -> None:
        super().__init__()
        from open_clip.tokenizer import SimpleTokenizer
        from open_clip.transformer import TextTransformer

        self.key, self.drop_prob, self.pooled = key, drop_prob, bool(pooled)
        self.vector_dim = width if self.pooled else 0
        self.tokenizer = SimpleTokenizer(context_length=context_length)
        self.transformer = TextTransformer(
            context_length=context_length,
            vocab_size=self.tokenizer.vocab_size,
            width=width,
            heads=heads,
            layers=layers,
            output_dim=None,
            no_causal_mask=True,
            use_pad_mask=True,
            output_tokens=True,
            eos_id=self.tokenizer.eot_token_id,
        )

    def tokenize(self, captions: list[str]) -> Tensor:
        """Captions -> (B, context_length) token ids (0 = padding, long captions are truncated)."""
        return self.tokenizer(list(captions))

    def forward(self, values: list[str]) -> Cond:
        """Captions -> per-token states (B, L, width), the non-padding mask (B, L) and, with ``pooled``, the
        end-of-text state (B, width) as a global vector (Imagen's and SDXL's pooled text embedding)."""
        tokens = self.tokenize(values).to(self.transformer.token_embedding.weight.device)
        pooled, states = self.transformer(tokens)
        return Cond(states, tokens != 0, vector=pooled if self.pooled else None)


class MultiConditioner(Conditioner):
    """Several conditioners at once (e.g. concat + cross-attention); values are a dict name -> values.

    Each part keeps its own dropout rate; cross-attention parts must share one context width.
    """

    def __init__(self, parts: dict[str, Conditioner]) -> None:
        super().__init__()
        if not parts:
            raise ValueError("MultiConditioner needs at least one part")
        self.parts = nn.ModuleDict(parts)
        self.concat_channels = sum(p.concat_channels for p in parts.values())
        self.vector_dim = sum(p.vector_dim for p in parts.values())
        self.inputs = tuple(dict.fromkeys(i for p in parts.values() for i in p.inputs))
        self.task = "+".join(p.task for p in parts.values())

    @property
    def key(self) -> str:
        """The fields read, comma-separated (for messages and meta.json)."""
        return ",".join(str(p.key) for p in self.parts.values() if p.key is not None)

    def values(self, batch: dict) -> dict[str, Any]:
        """Every part's input from the batch."""
        return {name: part.values(batch) for name, part in self.parts.items()}

    def null(self, n: int) -> dict[str, Any]:
        """Every part's null values."""
        return {name: part.null(n) for name, part in self.parts.items()}

    def attach(self, first_stage: nn.Module) -> None:
        """Hand the first stage to every part."""
        for part in self.parts.values():
            part.attach(first_stage)

    def cached_fields(self, values: dict[str, Any]) -> dict[str, Tensor]:
        """Every part's cacheable fields."""
        return {k: v for name, part in self.parts.items() for k, v in part.cached_fields(values[name]).items()}

    def learned_null(self) -> bool:
        """Whether any part learned its null condition."""
        return any(part.learned_null() for part in self.parts.values())

    def drop(self, values: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """Each part drops its own values with its own rate."""
        return {name: part.drop(values[name], generator) for name, part in self.parts.items()}

    def composite(self, images: Tensor, values: dict[str, Any]) -> Tensor:
        """Every part's composite, in turn."""
        for name, part in self.parts.items():
            images = part.composite(images, values[name])
        return images

    def forward(self, values: dict[str, Any]) -> Cond:
        """The parts' outputs merged: tokens joined along L, channels along C."""
        return merge([part(values[name]) for name, part in self.parts.items()])
