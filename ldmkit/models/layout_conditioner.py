"""Layout-to-image conditioning (paper Sec. 4.3.1): bounding boxes with class labels -> cross-attention tokens.

Each box becomes one token: a class embedding (index ``num_classes`` = padding / no box) plus an MLP of
Fourier features of its four coordinates; an optional small transformer lets the tokens see each other
(padded boxes are masked out of it). A learned start token is always prepended, so the key mask is never
empty: the null layout (no boxes, all labels -1) is the start token alone, which is what classifier-free
guidance uses as its unconditional input.

Values are packed in one float tensor (B, N, 5) = ``(x0, y0, x1, y1, label)`` with label -1 for padding, so
they slice, concatenate, move between devices and have a ``len`` like any other conditioning tensor.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ldmkit.diffusion.cond import Cond
from ldmkit.models.conditioners import Conditioner, keep_mask, label_id, shapes_class_names


def parse_box(entry: Any, i: int) -> tuple[float, float, float, float]:
    """One layout entry's ``box: [x0, y0, x1, y1]`` (image fractions, x0 < x1, y0 < y1); ValueError otherwise."""
    box = entry.get("box") if isinstance(entry, dict) else None
    if not isinstance(box, list | tuple) or len(box) != 4 or "label" not in entry:
        raise ValueError(f"box {i} needs box: [x0, y0, x1, y1] and label:")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ValueError(f"box {i} {list(box)} must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 (image fractions)")
    return x0, y0, x1, y1


def check_layout(layout: Any, max_objects: int) -> list[dict]:
    """A layout must be a list of at most ``max_objects`` ``{box, label}`` mappings; ValueError otherwise."""
    if not isinstance(layout, list) or not all(isinstance(b, dict) for b in layout):
        raise ValueError("a layout is a list of {box: [x0, y0, x1, y1], label: ...} entries")
    if len(layout) > max_objects:
        raise ValueError(f"{len(layout)} boxes, but this model takes at most {max_objects}")
    return layout


def fourier_features(x: Tensor, num_freqs: int) -> Tensor:
    """(..., C) values in [0, 1] -> (..., C * (1 + 2 * num_freqs)): x, sin(2^k pi x), cos(2^k pi x)."""
    freqs = (2.0 ** torch.arange(num_freqs, device=x.device, dtype=x.dtype)) * math.pi
    angles = x[..., None] * freqs  # (..., C, F)
    return torch.cat([x, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)


class LayoutConditioner(Conditioner):
    """Boxes (x0, y0, x1, y1 image fractions) + per-box classes -> (B, 1 + N, embed_dim) tokens and mask."""

    def __init__(
        self,
        num_classes: int = 18,
        embed_dim: int = 64,
        num_freqs: int = 8,
        layers: int = 1,
        heads: int = 4,
        key: str = "boxes",
        label_key: str = "box_labels",
        max_objects: int = 3,
        drop_prob: float = 0.1,
    ) -> None:
        super().__init__()
        if layers < 0:
            raise ValueError(f"layers={layers}: must be >= 0")
        self.key, self.label_key, self.drop_prob = key, label_key, drop_prob
        self.num_classes, self.num_freqs, self.max_objects = num_classes, num_freqs, max_objects
        self.embed_dim = embed_dim
        self.class_embedding = nn.Embedding(num_classes + 1, embed_dim)  # index num_classes: padding
        self.coord_mlp = nn.Sequential(
            nn.Linear(4 * (1 + 2 * num_freqs), embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )
        self.start = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.transformer = None
        if layers > 0:
            layer = nn.TransformerEncoderLayer(embed_dim, heads, dim_feedforward=4 * embed_dim, dropout=0.0,
                                               activation="gelu", batch_first=True, norm_first=True)
            self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)

    inputs = ("layout",)
    task = "layout"

    def from_inputs(self, inputs: dict[str, list]) -> Tensor:
        """Layouts (lists of ``{box, label}``) -> packed (B, max_objects, 5), padded with label -1."""
        names = shapes_class_names(self.num_classes)
        packed = self.null(len(inputs["layout"]))
        for b, layout in enumerate(inputs["layout"]):
            for i, entry in enumerate(check_layout(layout, self.max_objects)):
                label = label_id(entry["label"], self.num_classes, names, f"box {i} label")
                packed[b, i] = torch.tensor([*parse_box(entry, i), label])
        return packed

    def pack(self, values: Any) -> Tensor:
        """Normalise values to the packed (B, N, 5) float tensor: accepts it, a dict with ``key`` /
        ``label_key`` (or ``boxes`` / ``box_labels``), or a ``(boxes, labels)`` tuple."""
        if isinstance(values, dict):
            boxes = values.get(self.key, values.get("boxes"))
            labels = values.get(self.label_key, values.get("box_labels"))
            values = (boxes, labels)
        if isinstance(values, tuple):
            boxes, labels = (torch.as_tensor(v) for v in values)
            values = torch.cat([boxes.float(), labels.to(boxes.device).float()[..., None]], dim=-1)
        values = torch.as_tensor(values).float()
        if values.shape[-1] != 5:
            raise ValueError(f"layout values must be (..., N, 5) = x0, y0, x1, y1, label; got {tuple(values.shape)}")
        return values

    def values(self, batch: dict) -> Tensor:
        """The boxes and their labels from a batch (or one sample), packed: (B, N, 5) or (N, 5)."""
        return self.pack((batch[self.key], batch[self.label_key]))

    def null(self, n: int) -> Tensor:
        """``n`` empty layouts: zero boxes, label -1 everywhere."""
        null = torch.zeros(n, self.max_objects, 5)
        null[..., 4] = -1
        return null

    def drop(self, values: Any, generator: torch.Generator | None = None) -> Tensor:
        """Replace whole layouts (all their boxes) by the empty layout with probability ``drop_prob``."""
        values = self.pack(values)
        n = len(values)
        if self.drop_prob <= 0 or n == 0:
            return values
        keep = keep_mask(n, self.drop_prob, generator).to(values.device)
        null = torch.zeros_like(values)
        null[..., 4] = -1
        return torch.where(keep[:, None, None], values, null)

    def forward(self, values: Any) -> Cond:
        """Layouts (B, N, 5) -> context (B, 1 + N, embed_dim) and mask (B, 1 + N): start token + real boxes."""
        device = self.start.device
        values = self.pack(values).to(device)
        if values.ndim == 2:
            values = values[None]
        boxes, labels = values[..., :4], values[..., 4].round().long()
        if labels.numel() and (labels.min() < -1 or labels.max() >= self.num_classes):
            raise ValueError(f"box labels must be in 0..{self.num_classes - 1} or -1 for padding "
                             f"(got {sorted(set(labels.flatten().tolist()))})")
        present = labels >= 0
        ids = torch.where(present, labels, torch.full_like(labels, self.num_classes))
        coords = boxes * present[..., None]  # padded rows: zero coordinates whatever they held
        tokens = self.class_embedding(ids) + self.coord_mlp(fourier_features(coords, self.num_freqs))
        tokens = torch.cat([self.start.expand(len(values), -1, -1).to(tokens.dtype), tokens], dim=1)
        mask = torch.cat([torch.ones_like(present[:, :1]), present], dim=1)
        if self.transformer is not None:
            tokens = self.transformer(tokens, src_key_padding_mask=~mask)
        return Cond(self.norm(tokens), mask)
