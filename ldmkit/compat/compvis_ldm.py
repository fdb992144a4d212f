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


def _cond_node(node: Any, conditioning_key: str | None, state: Mapping[str, Tensor], where: str) -> dict[str, Any]:
    """``cond_stage_config`` -> the ldmkit ``cond:`` node for the conditioners ldmkit has an equivalent of."""
    if node in UNCONDITIONAL or (isinstance(node, str) and node in UNCONDITIONAL):
        return {"_target_": "ldmkit.models.conditioners.NoConditioner"}
    target, params = _target(node, where)
    if target == "ldm.modules.encoders.modules.ClassEmbedder" and conditioning_key == "crossattn":
        weight = state.get(f"{COND_PREFIX}embedding.weight")
        n_classes = int(params.get("n_classes", 1000))
        if weight is None or weight.shape[0] != n_classes:
            raise UserError(f"{where}: ClassEmbedder needs {COND_PREFIX}embedding.weight with {n_classes} rows")
        # CompVis trains the guidance "null" as the last class (cin256-v2: n_classes 1001, class 1000).
        return {"_target_": "ldmkit.models.conditioners.ClassConditioner", "num_classes": n_classes - 1,
                "embed_dim": int(params.get("embed_dim", weight.shape[1])), "key": "class_label", "drop_prob": 0.0}
    raise UserError(
        f"{where}.target={target} (conditioning_key={conditioning_key}) has no ldmkit equivalent yet: "
        "supported are unconditional models and ClassEmbedder with crossattn"
    )


def ldm_spec(config: dict[str, Any], state: Mapping[str, Tensor], where: str = "config") -> LDMSpec:
    """The UNet, conditioner, schedule and objective of a CompVis LatentDiffusion YAML."""
    target, params = _target(config.get("model"), f"{where}: model")
    if target != LDM_TARGET:
        raise UserError(f"{where}: model.target={target} is not a LatentDiffusion ({LDM_TARGET})")
    base = f"{where}: model.params"
    unet = _unet_node(params.get("unet_config"), f"{base}.unet_config")
    cond = _cond_node(params.get("cond_stage_config"), params.get("conditioning_key"), state,
                      f"{base}.cond_stage_config")
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
