"""A frozen OpenCLIP text tower as the conditioner (like Stable Diffusion 2.x's ``FrozenOpenCLIPEmbedder``).

Only the text tower is built (no vision tower, no projection) and its weights come from a local file:
nothing is ever downloaded. The tower stays frozen (no gradients) and in eval mode, so it takes no part in
training; cross-attention reads its per-token states, from the last layer or the penultimate one (SD 2.x),
always followed by ``ln_final``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ldmkit.diffusion.cond import Cond
from ldmkit.errors import UserError
from ldmkit.models.conditioners import CaptionConditioner, keep_mask

LAYERS = ("last", "penultimate")
# state-dict prefixes of a whole CLIP (or CustomTextCLIP: "text.") that belong to the text tower we build
_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.")


def model_config(model: str) -> tuple[dict, str]:
    """An open_clip model config (with ``text_cfg``) from a built-in name or a local JSON / directory.

    Returns the config and a display name. Hub schemas (``hf-hub:``) are refused: they would download.
    """
    import open_clip

    if model.startswith(("hf-hub:", "local-dir:")):
        raise UserError(f"cond.model={model}: hub and local-dir schemas are not supported; give an open_clip "
                        "model name (e.g. ViT-H-14) or a path to its model-config JSON")
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "open_clip_config.json"
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise UserError(f"cond.model={model}: no such model-config JSON")
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cond.model={model}: not a readable JSON file ({exc})") from None
        cfg = cfg.get("model_cfg", cfg) if isinstance(cfg, dict) else cfg
        name = str(path)
    else:
        cfg = open_clip.get_model_config(model.replace("/", "-"))
        name = model
        if cfg is None:
            raise UserError(f"cond.model={model} is not an open_clip model name (e.g. ViT-B-32, ViT-H-14, "
                            "ViT-bigG-14) nor a path to a model-config JSON")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("text_cfg"), dict):
        raise UserError(f"cond.model={model}: the model config has no text_cfg")
    return cfg, name


def load_tower_weights(path: Path) -> dict[str, Tensor]:
    """A CLIP state dict from .safetensors (or a weights-only torch.load of .bin/.pt/.pth); no pickled code."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # any unpickling failure: say which file, in one line
            raise UserError(f"cond.weights={path}: cannot load it as a weights-only state dict "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise UserError(f"cond.weights={path}: not a state dict")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(k.startswith("text.") for k in state) and "token_embedding.weight" not in state:
        state = {k[len("text."):]: v for k, v in state.items() if k.startswith("text.")}  # CustomTextCLIP
    return {k: v for k, v in state.items() if k.startswith(_TEXT_KEYS)}


def weights_file(weights: str | None, name: str) -> Path:
    """The local weights file, or a one-line UserError saying how to pass it (never a hub download)."""
    how = f"pass a local .safetensors/.bin/.pt of the {name} CLIP model as cond.weights=PATH"
    if not weights:
        raise UserError(f"cond.weights is not set: {how} (nothing is downloaded)")
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        raise UserError(f"CLIP weights file {path} not found: {how} (hub tags are not downloaded)")
    return path


@dataclass(frozen=True)
class ClipTextTower:
    """An OpenCLIP text transformer (random weights until ``load``), its display name, longest context and
    tokenizer settings: what ``ClipConditioner`` wraps."""

    tower: nn.Module  # open_clip's TextTransformer, without projection
    name: str
    max_length: int
    tokenizer_kwargs: dict[str, Any]

    @classmethod
    def from_config(cls, cfg: dict, name: str) -> ClipTextTower:
        """The text tower of an open_clip model config (OpenCLIP's own transformer only); reads no file."""
        from open_clip.model import CLIPTextCfg, _build_text_tower

        text_cfg = dict(cfg["text_cfg"])
        if text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name"):
            raise UserError(f"cond.model={name}: Hugging Face text towers/tokenizers are not supported "
                            "(only OpenCLIP's own transformer with the CLIP BPE tokenizer)")
        if text_cfg.get("embed_cls"):
            raise UserError(f"cond.model={name}: text towers with a class token (CoCa) are not supported")
        max_length = int(text_cfg.get("context_length", 77))
        text_cfg.update(proj_type="none", output_tokens=False)  # token states only: no pooled projection
        quick_gelu = bool(cfg.get("quick_gelu", False))
        try:
            tower = _build_text_tower(0, CLIPTextCfg(**text_cfg), quick_gelu=quick_gelu)
        except TypeError as exc:
            raise UserError(f"cond.model={name}: unsupported text_cfg ({exc})") from None
        return cls(tower, name, max_length, dict(text_cfg.get("tokenizer_kwargs") or {}))

    def load(self, path: Path) -> None:
        """Fill the tower from a CLIP weights file (a misfit is one line naming the first wrong key)."""
        state = load_tower_weights(path)
        wanted = self.tower.state_dict()
        missing = sorted(set(wanted) - set(state))
        wrong = sorted(k for k in set(wanted) & set(state) if state[k].shape != wanted[k].shape)
        if missing or wrong:
            detail = (f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}" if missing
                      else f"shape of {wrong[0]} is {tuple(state[wrong[0]].shape)}, "
                           f"{self.name} needs {tuple(wanted[wrong[0]].shape)}")
            raise UserError(f"cond.weights={path} does not fit the {self.name} text tower ({detail})")
        self.tower.load_state_dict({k: state[k] for k in wanted})


def open_text_tower(model: str, weights: str | None) -> tuple[ClipTextTower, Path]:
    """The text tower of ``model`` (a name or model-config path) and its weights file, checked, not read."""
    cfg, name = model_config(str(model))
    path = weights_file(weights, name)
    return ClipTextTower.from_config(cfg, name), path


class ClipConditioner(CaptionConditioner):
    """Captions -> OpenCLIP BPE tokens -> frozen OpenCLIP text transformer -> (B, L, width) states + mask."""

    def __init__(
        self,
        model: ClipTextTower | str = "ViT-H-14",
        weights: str | None = None,
        layer: str = "penultimate",
        context_length: int = 77,
        width: int | None = None,
        key: str = "caption",
        drop_prob: float = 0.1,
    ) -> None:
        """The conditioner around a built text tower (``from_files`` reads one). A model name or config path
        with ``weights`` is read here too, because the config.yaml of model dirs written before ``from_files``
        names the files."""
        super().__init__()
        from open_clip.tokenizer import SimpleTokenizer

        if layer not in LAYERS:
            raise UserError(f"cond.layer={layer}: expected one of {', '.join(LAYERS)}")
        if not isinstance(model, ClipTextTower):  # a model dir written before from_files
            model, path = open_text_tower(model, weights)
            model.load(path)
        elif weights is not None:
            raise TypeError("weights= is for a model name or config path, not for a built ClipTextTower")
        if not 2 <= context_length <= model.max_length:
            raise UserError(f"cond.context_length={context_length}: must be in 2..{model.max_length} "
                            f"for {model.name}")
        tower = model.tower
        if width is not None and int(width) != tower.width:
            raise UserError(f"cond.width={width} but the {model.name} text tower is {tower.width} wide: "
                            f"set cond.width={tower.width}")
        self.tower = tower.requires_grad_(False).eval()
        self.key, self.drop_prob, self.layer = key, drop_prob, layer
        self.context_length, self.width = context_length, int(tower.width)
        self.tokenizer = SimpleTokenizer(context_length=context_length, **model.tokenizer_kwargs)
        if self.tokenizer.vocab_size > tower.vocab_size:
            raise UserError(f"cond.model={model.name}: vocab_size {tower.vocab_size} is smaller than the "
                            f"CLIP tokenizer's {self.tokenizer.vocab_size}")
        self.causal = tower.attn_mask is not None

    @classmethod
    def from_files(
        cls, model: str = "ViT-H-14", weights: str | None = None, **settings: Any
    ) -> ClipConditioner:
        """Read an open_clip model config and a local CLIP weights file (the Hydra target of ``cond=clip``);
        the other settings (see ``__init__``) are checked before the weights, maybe gigabytes, are read."""
        text, path = open_text_tower(model, weights)
        cond = cls(text, **settings)
        text.load(path)
        return cond

    @property
    def context_dim(self) -> int:
        """Width of the token states (what ``unet.context_dim`` must be)."""
        return self.width

    def train(self, mode: bool = True) -> ClipConditioner:
        """The frozen tower stays in eval mode whatever the rest of the model does."""
        super().train(mode)
        self.tower.eval()
        return self

    def tokenize(self, captions: list[str]) -> Tensor:
        """Captions -> (B, context_length) CLIP BPE ids (SOT ... EOT, zero padding; long ones truncated)."""
        return self.tokenizer(list(captions))

    def real_tokens(self, tokens: Tensor) -> Tensor:
        """(B, L) bool: SOT through the first EOT (id 0 is also a real BPE token, so not ``tokens != 0``)."""
        eot = (tokens == self.tokenizer.eot_token_id).int().argmax(1)
        return torch.arange(tokens.shape[1], device=tokens.device)[None] <= eot[:, None]

    @torch.no_grad()
    def encode(self, tokens: Tensor) -> Tensor:
        """Token ids -> (B, L, width): embeddings + positions -> transformer (all blocks, or all but the last)
        -> ln_final."""
        tower = self.tower
        length = tokens.shape[1]
        x = tower.token_embedding(tokens) + tower.positional_embedding[:length]
        mask = tower.attn_mask[:length, :length] if self.causal else None
        blocks = tower.transformer.resblocks
        if not tower.transformer.batch_first:
            x = x.transpose(0, 1)
        for block in blocks[: len(blocks) - (self.layer == "penultimate")]:
            x = block(x, attn_mask=mask)
        if not tower.transformer.batch_first:
            x = x.transpose(0, 1)
        return tower.ln_final(x)

    @cached_property
    def fingerprint(self) -> str:
        """Short hash of what the states depend on: the tower's weights, the layer and the context length."""
        h = hashlib.sha256(f"{self.layer}/{self.context_length}".encode())
        for name, tensor in sorted(self.tower.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:10]

    @cached_property
    def null_cond(self) -> Cond:
        """The empty caption's states and mask, encoded once (dropout on cached states needs no tower pass)."""
        return self(self.null(1))

    @property
    def cache_field(self) -> str:
        """Name of the cached-states field in latent shards (the mask is ``<name>_mask``)."""
        return f"{self.key}_clip_{self.fingerprint}"

    def cached_fields(self, values: list[str]) -> dict[str, Tensor]:
        """The captions' states (fp16, as stored) and real-token masks, for ``encode-dataset`` to cache."""
        cond = self(values)
        return {self.cache_field: cond.context.half(), f"{self.cache_field}_mask": cond.mask}

    def values(self, batch: dict) -> Any:
        """Cached states of this very tower (same fingerprint) when the batch has them, else the captions."""
        field = self.cache_field
        if field in batch and f"{field}_mask" in batch:
            dtype = self.tower.token_embedding.weight.dtype
            return {"states": batch[field].to(dtype), "mask": batch[f"{field}_mask"].bool()}
        return batch[self.key]

    def drop(self, values: Any, generator: torch.Generator | None = None) -> Any:
        """Conditioning dropout on captions, or on cached states (dropped rows get the empty caption's)."""
        if not isinstance(values, dict):
            return super().drop(values, generator)
        states, mask = values["states"], values["mask"]
        if self.drop_prob <= 0 or len(states) == 0:
            return values
        keep = keep_mask(len(states), self.drop_prob, generator).to(states.device)
        null = self.null_cond
        return {"states": torch.where(keep[:, None, None], states, null.context.to(states)),
                "mask": torch.where(keep[:, None], mask, null.mask.to(mask.device))}

    def forward(self, values: list[str] | dict[str, Tensor]) -> Cond:
        """Captions (or their cached states) -> per-token states (B, L, width) and the real-token mask (B, L)."""
        if isinstance(values, dict):
            return Cond(values["states"], values["mask"])
        if isinstance(values, str):
            values = [values]
        tokens = self.tokenize(values).to(self.tower.token_embedding.weight.device)
        return Cond(self.encode(tokens), self.real_tokens(tokens))

    def extra_repr(self) -> str:
        """For printing the model."""
        return f"width={self.width}, layer={self.layer}, context_length={self.context_length}"
