"""Conditional accuracy of an LDM trained on ``shapes``: sample for given conditions and check with the
classical scorer that the images show what was asked (colour, shape, object count)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ldmkit.evaluation.shapes_scorer import (
    accuracy,
    fractions,
    hits,
    request_from_caption,
    request_from_class,
)


def requests_for(values: Any) -> list[dict]:
    """Scorer requests for conditioning values: class ids (a tensor) or captions (strings)."""
    if isinstance(values, Tensor):
        return [request_from_class(int(v)) for v in values.reshape(-1)]
    if isinstance(values, list | tuple) and all(isinstance(v, str) for v in values):
        return [request_from_caption(v) for v in values]
    raise ValueError(f"conditional accuracy needs class labels or captions, got {type(values).__name__}")


def single_object_values(cond_kind: str) -> Any:
    """One condition per ``shapes`` class: the class ids, or the captions "a red circle", "an orange square" …"""
    from ldmkit.data.shapes import NUM_CLASSES, class_name

    if cond_kind == "class":
        return torch.arange(NUM_CLASSES)
    return [("an " if class_name(c)[0] in "aeiou" else "a ") + class_name(c) for c in range(NUM_CLASSES)]


def images_accuracy(images: Tensor, values: Any) -> dict[str, float]:
    """Colour / shape / count accuracy of images generated for ``values`` (one image per value)."""
    return accuracy(images, requests_for(values))


class AccuracyTally:
    """Conditional accuracy accumulated batch by batch (eval-fid streams its samples through it)."""

    def __init__(self) -> None:
        self.outcomes: dict[str, list[bool]] = {"color_acc": [], "shape_acc": [], "count_acc": []}
        self.n = 0

    def add(self, images: Tensor, values: Any) -> None:
        """Score one batch of images generated for ``values``."""
        for key, found in hits(images, requests_for(values)).items():
            self.outcomes[key].extend(found)
        self.n += len(images)

    def result(self) -> dict[str, float]:
        """Accuracy per key so far (``n`` = images scored)."""
        return fractions(self.outcomes, self.n)
