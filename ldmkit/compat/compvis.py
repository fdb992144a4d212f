"""CompVis latent-diffusion checkpoints (Lightning ``.ckpt`` or ``.safetensors``) + OmegaConf YAML -> ldmkit.

The steps are separate functions so other modules (the LDM's UNet, the conditioner) can be added later:
``read_checkpoint`` / ``read_state_dict`` (never runs pickled code), ``subdict`` (one module's keys by prefix),
``first_stage_spec`` (YAML -> an ldmkit ``first_stage:`` config node), ``check_state_dict`` / ``load_strict``
(strict key and shape comparison with a one-line error naming the first bad key).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ldmkit.errors import UserError
from ldmkit.models.ae_blocks import ATTN_TYPES
from ldmkit.safeload import torch_load

CKPT_SUFFIXES = (".ckpt", ".pt", ".pth")
TRAINING_ONLY_PREFIXES = ("loss.",)  # the discriminator and LPIPS of the training loss


@dataclass(frozen=True)
class FirstStageKind:
    """How one CompVis first-stage class maps to an ldmkit model."""

    type: str  # "kl" | "vq" (meta.json ``type``)
    target: str  # the ldmkit class (``_target_``)
    params: tuple[str, ...]  # top-level CompVis params kept as kwargs (besides ddconfig)
    double_z: bool  # what ddconfig.double_z must be for this class


_VQ = FirstStageKind("vq", "ldmkit.models.vq.VQModel", ("embed_dim", "n_embed"), False)
FIRST_STAGES: dict[str, FirstStageKind] = {
    "ldm.models.autoencoder.AutoencoderKL": FirstStageKind(
        "kl", "ldmkit.models.autoencoder.AutoencoderKL", ("embed_dim",), True
    ),
    "ldm.models.autoencoder.VQModel": _VQ,
    "ldm.models.autoencoder.VQModelInterface": _VQ,
}

# Whole-model targets that hold a first stage: target -> (config key in params, state-dict prefix).
CONTAINERS: dict[str, tuple[str, str]] = {
    "ldm.models.diffusion.ddpm.LatentDiffusion": ("first_stage_config", "first_stage_model."),
}

# ddconfig keys that become ldmkit kwargs, with the CompVis default (None: required).
DDCONFIG_KEYS: dict[str, Any] = {
    "z_channels": None,
    "ch": None,
    "ch_mult": (1, 2, 4, 8),
    "num_res_blocks": None,
    "attn_resolutions": None,
    "resolution": None,
    "in_channels": None,
    "out_ch": None,
    "dropout": 0.0,
    "attn_type": "vanilla",
}

# Options that change the layout: the only value ldmkit supports (the CompVis default).
SUPPORTED_ONLY: dict[str, dict[str, Any]] = {
    "ddconfig": {"resamp_with_conv": True, "use_linear_attn": False},
    "params": {"remap": None, "use_ema": False},
}


@dataclass(frozen=True)
class FirstStageSpec:
    """A first stage described by a CompVis YAML, as ldmkit needs it."""

    source_target: str  # the CompVis class, e.g. ``ldm.models.autoencoder.AutoencoderKL``
    type: str  # "kl" | "vq"
    config: dict[str, Any]  # the ldmkit ``first_stage:`` node: ``_target_`` + kwargs
    prefix: str  # where its keys sit in the checkpoint ("" or "first_stage_model.")
    scale_factor: float | None  # the latent scale the YAML fixes (None: not fixed there)
    scale_source: str | None  # where scale_factor came from ("yaml" | "ldm_default")


def _safetensors_load(path: Path) -> dict[str, Tensor]:
    """All tensors of a ``.safetensors`` file (on the CPU)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]})") from None


def _split_checkpoint(path: Path, obj: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A Lightning checkpoint (``state_dict`` + ``global_step`` …) or a plain state dict -> (tensors, info)."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        info = {k: obj[k] for k in ("global_step", "epoch") if isinstance(obj.get(k), int)}
        obj = obj["state_dict"]
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        info = {}
    else:
        raise UserError(f"{path} holds neither a Lightning checkpoint with a state_dict nor a plain state dict")
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}, info


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict of a ``.ckpt``/``.pt``/``.pth``/``.safetensors`` file and its info (``global_step``, ``epoch``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    if path.suffix == ".safetensors":
        return _safetensors_load(path), {}
    if path.suffix in CKPT_SUFFIXES:
        return _split_checkpoint(path, torch_load(path))
    raise UserError(f"{path}: unknown checkpoint type {path.suffix!r}; expected .ckpt, .pt, .pth or .safetensors")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The state dict of a checkpoint file (see ``read_checkpoint``)."""
    return read_checkpoint(path)[0]


def subdict(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries whose key starts with ``prefix``, with the prefix removed (order kept)."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def drop_training_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove training-only entries (``loss.*``: discriminator, LPIPS)."""
    return {k: v for k, v in state_dict.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A CompVis OmegaConf YAML as plain containers (one-line UserError when missing or invalid)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OmegaConfBaseException, YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not a valid YAML config ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a CompVis config (expected a mapping with model.target)")
    return data


def _target(node: Any, where: str) -> tuple[str, dict[str, Any]]:
    """``target`` and ``params`` of a CompVis ``{target, params}`` node."""
    if not isinstance(node, dict) or not isinstance(node.get("target"), str):
        raise UserError(f"{where}: no target (not a CompVis config?)")
    params = node.get("params") or {}
    if not isinstance(params, dict):
        raise UserError(f"{where}.params must be a mapping")
    return node["target"], params


def _check_supported(values: dict[str, Any], table: str, where: str) -> None:
    """Options ldmkit cannot build (another attention, no-conv resampling, index remapping) -> UserError."""
    for key, supported in SUPPORTED_ONLY[table].items():
        if values.get(key, supported) != supported:
            raise UserError(f"{where}.{key}={values[key]!r} is not supported (only {supported!r})")


def _ae_kwargs(kind: FirstStageKind, params: dict[str, Any], where: str) -> dict[str, Any]:
    """CompVis ``params`` (embed_dim, n_embed, ddconfig) -> ldmkit constructor kwargs."""
    ddconfig = params.get("ddconfig")
    if not isinstance(ddconfig, dict):
        raise UserError(f"{where}.params.ddconfig is missing")
    _check_supported(params, "params", f"{where}.params")
    _check_supported(ddconfig, "ddconfig", f"{where}.params.ddconfig")
    if ddconfig.get("attn_type", "vanilla") not in ATTN_TYPES:
        raise UserError(f"{where}.params.ddconfig.attn_type={ddconfig['attn_type']!r} is not supported "
                        f"(only {' or '.join(repr(t) for t in ATTN_TYPES)})")
    if bool(ddconfig.get("double_z", True)) != kind.double_z:
        raise UserError(f"{where}.params.ddconfig.double_z must be {kind.double_z} for a {kind.type.upper()} model")
    kwargs = {}
    for key in kind.params:
        if key not in params:
            raise UserError(f"{where}.params has no {key!r}")
        kwargs[key] = params[key]
    for key, default in DDCONFIG_KEYS.items():
        if key not in ddconfig and default is None:
            raise UserError(f"{where}.params.ddconfig has no {key!r}")
        value = ddconfig.get(key, default)
        kwargs[key] = list(value) if isinstance(value, list | tuple) else value
    return kwargs


def _ldm_scale(params: dict[str, Any]) -> tuple[float | None, str | None]:
    """The latent scale a LatentDiffusion YAML fixes (with ``scale_by_std`` it is only the initial value)."""
    if params.get("scale_by_std", False):
        return None, None
    if "scale_factor" in params:
        return float(params["scale_factor"]), "yaml"
    return 1.0, "ldm_default"


def first_stage_spec(config: dict[str, Any], where: str = "config") -> FirstStageSpec:
    """The first stage described by a CompVis YAML (a first-stage model or a LatentDiffusion holding one)."""
    target, params = _target(config.get("model"), f"{where}: model")
    prefix, scale, scale_source = "", None, None
    if target in CONTAINERS:
        key, prefix = CONTAINERS[target]
        scale, scale_source = _ldm_scale(params)
        target, params = _target(params.get(key), f"{where}: model.params.{key}")
        where = f"{where}: model.params.{key}"
    else:
        where = f"{where}: model"
    kind = FIRST_STAGES.get(target)
    if kind is None:
        known = ", ".join([*FIRST_STAGES, *CONTAINERS])
        raise UserError(f"{where}.target={target} is not supported (known: {known})")
    node = {"_target_": kind.target, **_ae_kwargs(kind, params, where)}
    return FirstStageSpec(target, kind.type, node, prefix, scale, scale_source)


def _mismatches(expected: Mapping[str, torch.Size], actual: Mapping[str, Tensor], prefix: str) -> list[str]:
    """Every key problem, checkpoint order first (unexpected / wrong shape), then missing keys in model order."""
    problems = []
    for key, value in actual.items():
        if key not in expected:
            problems.append(f"unexpected key '{prefix}{key}'")
        elif tuple(value.shape) != tuple(expected[key]):
            problems.append(f"key '{prefix}{key}' has shape {tuple(value.shape)}, the model expects "
                            f"{tuple(expected[key])}")
    problems += [f"missing key '{prefix}{key}'" for key in expected if key not in actual]
    return problems


def check_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], name: str, prefix: str = "") -> None:
    """Strict key/shape comparison; UserError naming the first bad key (as written in the file) and the count."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    problems = _mismatches(expected, state_dict, prefix)
    if problems:
        count = f"{len(problems)} mismatch" + ("es" if len(problems) > 1 else "")
        raise UserError(f"{name}: {problems[0]} (first of {count}; does the YAML match this checkpoint?)")


def load_strict(model: nn.Module, state_dict: Mapping[str, Tensor], name: str, prefix: str = "") -> nn.Module:
    """Check, then ``load_state_dict(strict=True)``; returns the model."""
    check_state_dict(model, state_dict, name, prefix)
    model.load_state_dict(dict(state_dict), strict=True)
    return model


def build_first_stage(spec: FirstStageSpec, state_dict: Mapping[str, Tensor], name: str) -> nn.Module:
    """Instantiate the ldmkit first stage of ``spec`` and load its weights from a full checkpoint state dict."""
    from hydra.utils import instantiate

    ae = instantiate(spec.config)
    weights = drop_training_keys(subdict(state_dict, spec.prefix))
    return load_strict(ae, weights, name, spec.prefix).eval()


def checkpoint_scale(state_dict: Mapping[str, Tensor]) -> float | None:
    """The ``scale_factor`` buffer a LatentDiffusion trained with ``scale_by_std`` stores (None: absent)."""
    value = state_dict.get("scale_factor")
    return float(value) if isinstance(value, Tensor) and value.numel() == 1 else None
