"""CompVis ``LatentDiffusion`` checkpoints -> ldmkit LDM parts: UNet, EMA, conditioner, schedule, objective.

The first stage is handled by ``ldmkit.compat.compvis``; this module maps the rest of the YAML
(``unet_config``, ``cond_stage_config``, ``conditioning_key``, the schedule keys, ``parameterization``)
to ldmkit config nodes and the ``model.diffusion_model.`` / ``model_ema.`` / ``cond_stage_model.``
weights to ldmkit state dicts, with strict checks that name the first bad key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ldmkit.compat.compvis import _target, subdict
from ldmkit.errors import UserError

LDM_TARGET = "ldm.models.diffusion.ddpm.LatentDiffusion"
UNET_TARGET = "ldm.modules.diffusionmodules.openaimodel.UNetModel"
UNET_PREFIX, EMA_PREFIX, COND_PREFIX = "model.diffusion_model.", "model_ema.", "cond_stage_model."

# UNetModel params ldmkit builds, and params that must keep the value ldmkit supports.
UNET_KEYS = ("in_channels", "out_channels", "model_channels", "attention_resolutions", "num_res_blocks",
             "channel_mult", "dropout", "num_heads", "num_head_channels", "use_spatial_transformer",
             "transformer_depth", "context_dim", "num_classes", "use_checkpoint", "use_scale_shift_norm",
             "conv_resample", "legacy", "resblock_updown")
UNET_FIXED = {"dims": 2, "use_new_attention_order": False, "n_embed": None,
              "num_heads_upsample": -1, "use_linear_in_transformer": False, "disable_self_attentions": None,
              "num_attention_blocks": None, "adm_in_channels": None}
UNCONDITIONAL = ("__is_unconditional__", None)


@dataclass(frozen=True)
class LDMSpec:
    """The non-first-stage parts of a CompVis LatentDiffusion, as ldmkit config nodes."""

    unet: dict[str, Any]
    cond: dict[str, Any]
    diffusion: dict[str, Any]
    prediction: str
    latent_shape: list[int]


def _unet_node(node: Any, where: str) -> dict[str, Any]:
    """``unet_config`` -> the ldmkit ``unet:`` node (unsupported options named)."""
    target, params = _target(node, where)
    if target != UNET_TARGET:
        raise UserError(f"{where}.target={target} is not supported (only {UNET_TARGET})")
    for key, value in UNET_FIXED.items():
        if params.get(key, value) != value:
            raise UserError(f"{where}.params.{key}={params[key]!r} is not supported (only {value!r})")
    out = {"_target_": "ldmkit.models.unet.UNetModel"}
    for key in UNET_KEYS:
        if key in params:
            value = params[key]
            out[key] = list(value) if isinstance(value, list | tuple) else value
    return out


def conditioning_key(params: dict[str, Any]) -> str | None:
    """How the condition reaches the UNet, as CompVis decides it: ``conditioning_key``, else ``concat`` when
    ``concat_mode`` (its default) and ``crossattn`` otherwise; None for unconditional models."""
    if params.get("cond_stage_config") in UNCONDITIONAL:
        return None
    key = params.get("conditioning_key")
    return key if key is not None else ("concat" if params.get("concat_mode", True) else "crossattn")


def _first_stage_f(params: dict[str, Any]) -> int:
    """The LDM's first-stage downsampling factor f = 2^(levels - 1)."""
    ddconfig = ((params.get("first_stage_config") or {}).get("params") or {}).get("ddconfig") or {}
    return 2 ** (len(ddconfig.get("ch_mult", (1, 2, 4, 8))) - 1)


def _class_node(params: dict, state: Mapping[str, Tensor], where: str) -> dict[str, Any]:
    """ClassEmbedder -> ClassConditioner (CompVis counts the guidance null class in n_classes)."""
    weight = state.get(f"{COND_PREFIX}embedding.weight")
    n_classes = int(params.get("n_classes", 1000))
    if weight is None or weight.shape[0] != n_classes:
        raise UserError(f"{where}: ClassEmbedder needs {COND_PREFIX}embedding.weight with {n_classes} rows")
    # cin256-v2 trains the guidance "null" as an extra last class (n_classes 1001 = ImageNet's 1000 + null);
    # cin256 and cin-ldm-vq-f8 (n_classes 1000) have none: every row is a class, sampled without guidance.
    null = n_classes == 1001
    return {"_target_": "ldmkit.models.conditioners.ClassConditioner", "num_classes": n_classes - int(null),
            "embed_dim": int(params.get("embed_dim", weight.shape[1])), "key": "class_label", "drop_prob": 0.0,
            "null_class": null}


def _bert_node(params: dict, cond_key: str) -> dict[str, Any]:
    """BERTEmbedder -> BertConditioner (captions), or BertLayoutConditioner for layout tokens (coordinates_bbox)."""
    layout = cond_key == "coordinates_bbox"
    node = {"_target_": "ldmkit.models.layout_tokens.BertLayoutConditioner" if layout
            else "ldmkit.models.bert.BertConditioner",
            "n_embed": int(params["n_embed"]), "n_layer": int(params["n_layer"]),
            "vocab_size": int(params.get("vocab_size", 30522)), "max_seq_len": int(params.get("max_seq_len", 77)),
            "embedding_dropout": float(params.get("embedding_dropout", 0.0)), "key": cond_key}
    return {**node, "classes": None} if layout else {**node, "vocab": None}


def _concat_node(target: str, params: dict, ldm: dict) -> dict[str, Any]:
    """The concat conditioners: Identity (a low-res image), the first stage itself (inpainting), SpatialRescaler."""
    key = ldm.get("cond_stage_key", "image")
    channels = int(ldm.get("channels", 4))
    extra = int((ldm["unet_config"].get("params") or {}).get("in_channels", channels)) - channels
    if target == "torch.nn.Identity":
        return {"_target_": "ldmkit.models.concat_conditioners.SRConditioner", "key": key, "channels": extra,
                "upscale": _first_stage_f(ldm)}
    if target == FIRST_STAGE:
        return {"_target_": "ldmkit.models.concat_conditioners.InpaintConditioner", "latent_channels": channels,
                "key": "image", "mask_key": "mask", "mask_resize": "nearest", "scaled": False}
    names = ("n_stages", "method", "multiplier", "in_channels", "out_channels", "bias")
    return {"_target_": "ldmkit.models.concat_conditioners.SpatialRescaler", "key": key,
            **{k: params[k] for k in names if k in params}}


CONCAT_TARGETS = ("torch.nn.Identity", "__is_first_stage__", "ldm.modules.encoders.modules.SpatialRescaler")
FIRST_STAGE = "__is_first_stage__"


def _cond_node(ldm: dict[str, Any], state: Mapping[str, Tensor], where: str) -> dict[str, Any]:
    """``cond_stage_config`` -> the ldmkit ``cond:`` node (the conditioners CompVis released models use)."""
    node, key = ldm.get("cond_stage_config"), conditioning_key(ldm)
    if node in UNCONDITIONAL:
        return {"_target_": "ldmkit.models.conditioners.NoConditioner"}
    target, params = (node, {}) if node == FIRST_STAGE else _target(node, where)
    if key == "crossattn" and target == "ldm.modules.encoders.modules.ClassEmbedder":
        return _class_node(params, state, where)
    if key == "crossattn" and target == "ldm.modules.encoders.modules.BERTEmbedder":
        return _bert_node(params, str(ldm.get("cond_stage_key", "caption")))
    if key == "concat" and target in CONCAT_TARGETS:
        return _concat_node(target, params, ldm)
    raise UserError(
        f"{where}{'' if target == FIRST_STAGE else '.target'}={target} (conditioning_key={key}) has no ldmkit "
        "equivalent: supported are unconditional models, ClassEmbedder and BERTEmbedder with crossattn, and "
        "Identity, __is_first_stage__ and SpatialRescaler with concat"
    )


def cond_state(state: Mapping[str, Tensor], cond: dict[str, Any], name: str) -> dict[str, Tensor]:
    """The conditioner's weights; a first-stage conditioner's copy must equal the first stage (it holds none)."""
    weights = subdict(state, COND_PREFIX)
    if cond["_target_"].endswith("InpaintConditioner"):
        first = subdict(state, "first_stage_model.")
        for key, value in weights.items():
            if key not in first or first[key].shape != value.shape or not torch.equal(first[key], value):
                raise UserError(f"{name}: '{COND_PREFIX}{key}' differs from 'first_stage_model.{key}' "
                                "(__is_first_stage__ conditions on the first stage itself)")
        return {}
    return weights


def ldm_spec(config: dict[str, Any], state: Mapping[str, Tensor], where: str = "config") -> LDMSpec:
    """The UNet, conditioner, schedule and objective of a CompVis LatentDiffusion YAML."""
    target, params = _target(config.get("model"), f"{where}: model")
    if target != LDM_TARGET:
        raise UserError(f"{where}: model.target={target} is not a LatentDiffusion ({LDM_TARGET})")
    base = f"{where}: model.params"
    unet = _unet_node(params.get("unet_config"), f"{base}.unet_config")
    cond = _cond_node(params, state, f"{base}.cond_stage_config")
    schedule = params.get("beta_schedule", "linear")
    diffusion = {"_target_": "ldmkit.diffusion.schedule.NoiseSchedule", "schedule": schedule,
                 "timesteps": int(params.get("timesteps", 1000)),
                 "linear_start": float(params.get("linear_start", 1e-4)),
                 "linear_end": float(params.get("linear_end", 2e-2)),
                 "cosine_s": float(params.get("cosine_s", 8e-3))}
    prediction = params.get("parameterization", "eps")
    if prediction not in ("eps", "v", "x0"):
        raise UserError(f"{base}.parameterization={prediction!r} is not supported (eps, v, x0)")
    size = int(params.get("image_size", 32))
    return LDMSpec(unet, cond, diffusion, prediction, [int(params.get("channels", 4)), size, size])


def ema_state(state: Mapping[str, Tensor], unet_keys: list[str]) -> dict[str, Tensor] | None:
    """The UNet EMA shadow (``model_ema.`` + dot-free ``diffusion_model.`` names) under ldmkit names; None if absent."""
    if not any(k.startswith(EMA_PREFIX) for k in state):
        return None
    ema = subdict(state, EMA_PREFIX)
    out = {}
    for key in unet_keys:
        flat = ("diffusion_model." + key).replace(".", "")
        if flat not in ema:
            raise UserError(f"EMA key '{EMA_PREFIX}{flat}' for UNet parameter '{key}' is missing")
        out[key] = ema[flat]
    return out


def check_schedule(state: Mapping[str, Tensor], schedule: torch.nn.Module, where: str) -> None:
    """The checkpoint's stored ``betas`` must equal the schedule rebuilt from the YAML."""
    betas = state.get("betas")
    if betas is not None and (betas.shape != schedule.betas.shape
                              or not torch.allclose(betas.double(), schedule.betas.double(), atol=1e-6)):
        raise UserError(f"{where}: the checkpoint's betas differ from the schedule its YAML describes")
