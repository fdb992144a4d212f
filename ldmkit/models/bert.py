"""CompVis latent-diffusion's ``BERTEmbedder`` as ``BertConditioner``: BERT WordPiece tokens -> a transformer
encoder trained with the LDM (the text-to-image tau_theta of Rombach et al. 2022, Sec. 4.3.1).

The transformer is ``TransformerWrapper`` + ``Encoder`` of CompVis ``ldm/modules/x_transformer.py`` (a trimmed
lucidrains x-transformers) with the settings ``BERTEmbedder`` uses: learned absolute positions, pre-norm
LayerNorm, alternating self-attention (no mask: padding is attended to) and GELU feed-forward layers, a final
LayerNorm. Module and parameter names follow CompVis exactly so that released weights load with
``strict=True`` (``to_logits`` is unused for embeddings but is part of those checkpoints).

Text is tokenised like HF ``BertTokenizerFast("bert-base-uncased")`` with ``truncation=True``,
``padding="max_length"``, using the Rust ``tokenizers`` package; its vocab (``vocab.txt``) is never
downloaded: it comes from ``cond.vocab`` or the Hugging Face cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ldmkit.diffusion.cond import Cond
from ldmkit.errors import UserError
from ldmkit.models.conditioners import CaptionConditioner

__all__ = [
    "BERT_REPO",
    "MISSING_VOCAB",
    "find_vocab",
    "load_wordpiece",
    "AbsolutePositionalEmbedding",
    "Attention",
    "FeedForward",
    "Encoder",
    "TransformerWrapper",
    "BertConditioner",
]

BERT_REPO = "bert-base-uncased"  # the Hugging Face repo whose vocab.txt CompVis' BERTTokenizer loads
MISSING_VOCAB = (
    "text needs BERT's WordPiece vocab (bert-base-uncased vocab.txt, 30,522 tokens): pass cond.vocab=PATH, "
    "or put it in the Hugging Face cache (huggingface-cli download bert-base-uncased vocab.txt)"
)
_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def find_vocab(cache_dir: str | Path | None = None) -> str | None:
    """Path of bert-base-uncased's ``vocab.txt`` in the Hugging Face cache (``cache_dir``, default HF's own),
    or None when it is not cached; never downloads."""
    from huggingface_hub import try_to_load_from_cache

    cache = None if cache_dir is None else str(cache_dir)
    path = try_to_load_from_cache(BERT_REPO, "vocab.txt", cache_dir=cache)
    return path if isinstance(path, str) else None


def load_wordpiece(path: str | Path, max_len: int, vocab_size: int, what: str | None = None) -> Any:
    """A BERT uncased WordPiece tokenizer (``tokenizers.BertWordPieceTokenizer``) for the vocab at ``path``
    that writes ``[CLS] text [SEP]`` truncated to ``max_len`` and padded with ``[PAD]`` to that length.

    UserError (one line, naming ``what``, default ``cond.vocab=PATH``) when the file is missing, is not a BERT
    vocab, or has more tokens than ``vocab_size`` (its ids would overflow the model's embedding)."""
    from tokenizers import BertWordPieceTokenizer

    what = what or f"cond.vocab={path}"
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{what}: no such file")
    try:
        tokenizer = BertWordPieceTokenizer(str(file), lowercase=True)
    except Exception as exc:  # the Rust reader's and the post-processor's errors
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{what}: not a BERT WordPiece vocab ({reason})") from None
    vocab = tokenizer.get_vocab()
    missing = [t for t in _SPECIAL if t not in vocab]
    if missing:
        raise UserError(f"{what}: not a BERT WordPiece vocab (no {', '.join(missing)})")
    size = max(vocab.values()) + 1
    if size > vocab_size:
        raise UserError(f"{what}: {size:,} tokens, more than the model's vocab_size {vocab_size:,} "
                        "(their ids would overflow its token embedding)")
    tokenizer.enable_truncation(max_length=max_len)
    tokenizer.enable_padding(length=max_len, pad_id=vocab["[PAD]"], pad_token="[PAD]")
    return tokenizer


class AbsolutePositionalEmbedding(nn.Module):
    """Learned absolute position embedding (``emb``: max_seq_len x dim)."""

    def __init__(self, dim: int, max_seq_len: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, n: int, device: torch.device) -> Tensor:
        """Embeddings of positions 0..n-1, (1, n, dim)."""
        return self.emb(torch.arange(n, device=device))[None]


class Attention(nn.Module):
    """x-transformers self-attention: bias-free q/k/v projections, softmax(q k^T / sqrt(dim_head)) v over all
    positions (no mask), ``to_out`` Linear with bias."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64) -> None:
        super().__init__()
        inner_dim = heads * dim_head
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_k = nn.Linear(dim, inner_dim, bias=False)
        self.to_v = nn.Linear(dim, inner_dim, bias=False)
        self.to_out = nn.Linear(inner_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Self-attention over (B, N, dim)."""
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads)
                   for t in (self.to_q(x), self.to_k(x), self.to_v(x)))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class FeedForward(nn.Module):
    """x-transformers feed-forward: ``net.0`` (Linear dim -> mult*dim, GELU), Dropout, Linear back."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.Sequential(nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU()), nn.Dropout(dropout),
                                 nn.Linear(inner_dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        """Apply to the last dimension."""
        return self.net(x)


class Encoder(nn.Module):
    """``depth`` (attention, feed-forward) pairs, each ``layers.i`` = [LayerNorm, block] applied as
    x + block(norm(x)) (pre-norm residual)."""

    def __init__(self, dim: int, depth: int, heads: int = 8, dim_head: int = 64) -> None:
        super().__init__()
        self.dim = dim
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), Attention(dim, heads, dim_head)]))
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), FeedForward(dim)]))

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, dim) -> (B, N, dim), before the final norm."""
        for norm, block in self.layers:
            x = x + block(norm(x))
        return x


class TransformerWrapper(nn.Module):
    """Token + position embeddings, the ``attn_layers`` encoder and a final LayerNorm; ``to_logits`` is kept
    for checkpoint compatibility only (embeddings are what conditioning uses)."""

    def __init__(
        self, num_tokens: int, max_seq_len: int, attn_layers: Encoder, emb_dropout: float = 0.0
    ) -> None:
        super().__init__()
        dim = attn_layers.dim
        self.max_seq_len = max_seq_len
        self.token_emb = nn.Embedding(num_tokens, dim)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        self.pos_emb = AbsolutePositionalEmbedding(dim, max_seq_len)
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.attn_layers = attn_layers
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, num_tokens)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, L) token ids -> (B, L, dim) embeddings (``return_embeddings=True`` in CompVis)."""
        x = self.token_emb(tokens) + self.pos_emb(tokens.shape[1], tokens.device)
        return self.norm(self.attn_layers(self.emb_dropout(x)))


class BertConditioner(CaptionConditioner):
    """Caption -> BERT WordPiece ids -> transformer encoder (CompVis ``BERTEmbedder``): (B, max_seq_len,
    n_embed) context, no mask (padding is attended to, as in CompVis). Token-id tensors (B, L) are taken as
    they are (the layout model's tokens, or captions tokenised elsewhere)."""

    inputs = ("prompt",)
    task = "text"

    def __init__(
        self,
        n_embed: int,
        n_layer: int,
        vocab_size: int = 30522,
        max_seq_len: int = 77,
        heads: int = 8,
        dim_head: int = 64,
        vocab: str | None = None,
        key: str = "caption",
        drop_prob: float = 0.0,
        embedding_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.key, self.drop_prob = key, drop_prob
        self.vocab_size, self.max_seq_len = vocab_size, max_seq_len
        self.vocab = vocab
        self._tokenizer: Any = None  # built on first use (a model fed token ids needs no vocab)
        encoder = Encoder(dim=n_embed, depth=n_layer, heads=heads, dim_head=dim_head)
        self.transformer = TransformerWrapper(vocab_size, max_seq_len, encoder, emb_dropout=embedding_dropout)

    def set_vocab(self, path: str | None) -> None:
        """Use the WordPiece vocab at ``path`` (None: the Hugging Face cache, on first use); checked now, and
        on UserError the current vocab stays."""
        tokenizer = None if path is None else load_wordpiece(path, self.max_seq_len, self.vocab_size)
        self.vocab, self._tokenizer = path, tokenizer

    def _wordpiece(self) -> Any:
        """The tokenizer, built from ``vocab`` or the Hugging Face cache on first use (else UserError)."""
        if self._tokenizer is None:
            if self.vocab is not None:
                path, what = self.vocab, None
            else:
                path = find_vocab()
                if path is None:
                    raise UserError(MISSING_VOCAB)
                what = f"the cached {BERT_REPO} vocab.txt ({path})"
            self._tokenizer = load_wordpiece(path, self.max_seq_len, self.vocab_size, what)
        return self._tokenizer

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """Captions -> (B, max_seq_len) ids: [CLS] WordPiece [SEP], truncated (keeping [SEP]), [PAD]ded."""
        texts = list(texts)
        bad = next((t for t in texts if not isinstance(t, str)), None)
        if bad is not None:
            raise ValueError(f"BertConditioner takes captions (str) or a (B, L) tensor of token ids "
                             f"(got a {type(bad).__name__} among the values)")
        tokenizer = self._wordpiece()
        ids = [tokenizer.encode(t).ids for t in texts]
        return torch.tensor(ids, dtype=torch.long).reshape(len(texts), self.max_seq_len)

    def check_ids(self, ids: Tensor) -> Tensor:
        """``ids`` if they are a (B, L) integer tensor with L <= max_seq_len and ids in 0..vocab_size-1, else
        ValueError (one line)."""
        ok = ids.dim() == 2 and 0 < ids.shape[1] <= self.max_seq_len and not ids.is_floating_point() \
            and not ids.is_complex() and ids.dtype != torch.bool
        if ok and ids.numel():
            ok = 0 <= int(ids.min()) and int(ids.max()) < self.vocab_size
        if not ok:
            got = f"shape {tuple(ids.shape)}, {str(ids.dtype).removeprefix('torch.')}"
            if ids.numel() and not ids.is_complex():
                got += f", values {ids.min().item():g}..{ids.max().item():g}"
            raise ValueError(f"BERT token ids must be a (B, L) integer tensor with 1 <= L <= "
                             f"{self.max_seq_len} and ids in 0..{self.vocab_size - 1} (got {got})")
        return ids.long()

    def drop(self, values: Sequence[str] | Tensor, generator: torch.Generator | None = None) -> Any:
        """Captions: each replaced by "" with probability ``drop_prob``; id tensors cannot be dropped
        (ValueError when drop_prob > 0)."""
        if isinstance(values, Tensor):
            if self.drop_prob > 0 and len(values):
                raise ValueError("BertConditioner drops captions, not token-id tensors: "
                                 "use drop_prob=0 with ids")
            return values
        return super().drop(list(values), generator)

    def forward(self, values: Sequence[str] | Tensor) -> Cond:
        """Captions or (B, L) token ids -> (B, L, n_embed) context (L = max_seq_len for captions), no mask."""
        tokens = self.check_ids(values) if isinstance(values, Tensor) else self.tokenize(values)
        return Cond(self.transformer(tokens.to(self.transformer.token_emb.weight.device)))
