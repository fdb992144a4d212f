"""Conditioners (the paper's tau_theta): batch field -> (context tokens, key mask) for cross-attention.

Every conditioner has a ``key`` (the dataset field it reads), a ``drop_prob`` (conditioning dropout for
classifier-free guidance) and a *null* value meaning "no condition".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

Context = tuple[Tensor | None, Tensor | None]


class Conditioner(nn.Module, ABC):
    """Base class: ``forward(values) -> (context (B, L, D) or None, mask (B, L) bool or None)``."""

    key: str | None = None
    drop_prob: float = 0.0

    @abstractmethod
    def null(self, n: int) -> Any:
        """``n`` null values (the unconditional input)."""

    def drop(self, values: Any, generator: torch.Generator | None = None) -> Any:
        """Replace each value by the null value with probability ``drop_prob`` (training-time dropout)."""
        n = len(values)
        if self.drop_prob <= 0 or n == 0:
            return values
        keep = torch.rand(n, generator=generator) >= self.drop_prob
        null = self.null(n)
        if isinstance(values, Tensor):
            return torch.where(keep.to(values.device), values, null.to(values.device))
        return [v if k else u for v, k, u in zip(values, keep.tolist(), null, strict=True)]


class NoConditioner(Conditioner):
    """Unconditional model: no context."""

    def null(self, n: int) -> list[None]:
        """Nothing to drop."""
        return [None] * n

    def forward(self, values: Any = None) -> Context:
        """No context, no mask."""
        return None, None


class ClassConditioner(Conditioner):
    """Class label -> learned embedding (one token); index ``num_classes`` is the null class."""

    def __init__(self, num_classes: int, embed_dim: int, key: str = "class_label", drop_prob: float = 0.1):
        super().__init__()
        self.key, self.drop_prob, self.num_classes = key, drop_prob, num_classes
        self.embedding = nn.Embedding(num_classes + 1, embed_dim)

    def null(self, n: int) -> Tensor:
        """The null class index, ``n`` times."""
        return torch.full((n,), self.num_classes, dtype=torch.long)

    def forward(self, values: Tensor) -> Context:
        """(B,) class ids -> (B, 1, D) context."""
        values = torch.as_tensor(values, device=self.embedding.weight.device).long().reshape(-1)
        if values.min() < 0 or values.max() > self.num_classes:
            raise ValueError(f"class ids must be in 0..{self.num_classes - 1} (got {values.tolist()})")
        return self.embedding(values)[:, None], None


class TextConditioner(Conditioner):
    """Caption -> open_clip BPE tokens -> bidirectional transformer trained from scratch (BERT-like tau_theta)."""

    def __init__(
        self,
        key: str = "caption",
        context_length: int = 24,
        width: int = 128,
        layers: int = 2,
        heads: int = 4,
        drop_prob: float = 0.1,
    ) -> None:
        super().__init__()
        from open_clip.tokenizer import SimpleTokenizer
        from open_clip.transformer import TextTransformer

        self.key, self.drop_prob = key, drop_prob
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

    def null(self, n: int) -> list[str]:
        """The empty caption, ``n`` times."""
        return [""] * n

    def tokenize(self, captions: list[str]) -> Tensor:
        """Captions -> (B, context_length) token ids (0 = padding, long captions are truncated)."""
        return self.tokenizer(list(captions))

    def forward(self, values: list[str]) -> Context:
        """Captions -> per-token states (B, L, width) and the non-padding mask (B, L)."""
        tokens = self.tokenize(values).to(self.transformer.token_embedding.weight.device)
        _, states = self.transformer(tokens)
        return states, tokens != 0
