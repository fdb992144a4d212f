"""Self-describing model dirs: ``config.yaml`` + ``model.safetensors`` (+ ``ema.safetensors``) + ``meta.json``."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from ldmkit import atomic
from ldmkit.errors import UserError

FORMAT = 1
PRODUCERS = {"first_stage": "train-ae", "ldm": "train-ldm", "latents": "encode-dataset"}
MARKERS = {"first_stage": "meta.json", "ldm": "meta.json", "latents": "manifest.json"}


def file_hash(path: Path) -> str:
    """Short sha256 of a file's bytes (identifies a first stage's weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def read_json(path: Path) -> dict:
    """Read a JSON file, turning a missing or broken file into a one-line UserError."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from None


def _dumps(data: dict) -> str:
    """Pretty JSON text as ldmkit writes it."""
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def write_json(path: Path, data: dict) -> None:
    """Write pretty JSON atomically (temporary name, fsync, rename over ``path``)."""
    atomic.write_text(path, _dumps(data))


def resolve(spec: str | None, kind: str, option: str) -> Path:
    """Turn ``ae=``/``ckpt=``/``dataset.path=`` into a dir of the given kind; ``latest`` = newest default run."""
    producer, marker = PRODUCERS[kind], MARKERS[kind]
    names = {"first_stage": "a first-stage (autoencoder) dir", "ldm": "an LDM dir", "latents": "a latent-shard dir"}
    if spec in (None, "", "latest"):
        root = Path("runs") / producer
        found = sorted(root.glob(f"**/{marker}"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
        found = [p for p in found if kind == "latents" or read_json(p).get("kind") == kind]
        if not found:
            raise UserError(f"{option}=latest: nothing under {root}/ yet; run `ldmkit {producer}` or pass {option}=DIR")
        return found[-1].parent
    path = Path(spec).expanduser()
    wanted = f"pass the out= dir of `ldmkit {producer}`"
    if not path.is_dir():
        raise UserError(f"{option}={spec}: {'not a' if path.exists() else 'no such'} directory; {wanted}")
    if not (path / marker).is_file():
        if kind != "latents" and (path / MARKERS["latents"]).is_file():
            raise UserError(f"{option}={spec} is {names['latents']} (from `ldmkit encode-dataset`), but {option}= "
                            f"needs {names[kind]}; {wanted}")
        raise UserError(f"{option}={spec}: not {names[kind]} (no {marker}); {wanted}")
    if kind != "latents":
        actual = read_json(path / marker).get("kind")
        if actual != kind:
            made = f" (from `ldmkit {PRODUCERS[actual]}`)" if actual in PRODUCERS else ""
            raise UserError(f"{option}={spec} is {names.get(actual, f'a {actual!r} dir')}{made}, but {option}= "
                            f"needs {names[kind]}; {wanted}")
        check_complete(path, kind)
    return path


def check_complete(path: Path, kind: str) -> None:
    """A model dir must hold its config and weights (an LDM also its first_stage/ copy): else one line."""
    needed = ["config.yaml", "model.safetensors", *(["first_stage/meta.json"] if kind == "ldm" else [])]
    for name in needed:
        if not (path / name).is_file():
            raise UserError(f"{path}/{name} is missing: the model dir is incomplete (re-create it or restore the file)")


def save(out: Path, cfg: Any, weights: dict[str, dict], meta: dict) -> dict:
    """Write config.yaml, each ``<name>.safetensors`` and meta.json (with the weights' hash) into ``out``: all
    to temporary names first, renamed once every file is complete (meta.json, the dir's marker, last)."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = ["config.yaml", *(f"{name}.safetensors" for name in weights), "meta.json"]
    with atomic.atomic_paths(*(out / name for name in names)) as temps:
        tmp = dict(zip(names, temps, strict=True))
        OmegaConf.save(cfg, tmp["config.yaml"], resolve=True)
        for name, state in weights.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp[f"{name}.safetensors"]))
        meta = {"format": FORMAT, **meta, "hash": file_hash(tmp["model.safetensors"])}
        tmp["meta.json"].write_text(_dumps(meta))
    for stale in {"ema.safetensors"} - set(names):  # an older save's EMA would be loaded in place of these weights
        (out / stale).unlink(missing_ok=True)
    return meta


def copy(src: Path, dst: Path) -> None:
    """Copy a model dir's defining files (config, weights, meta) to ``dst``: to temporary names, then renamed."""
    if dst.exists() and Path(src).resolve() == Path(dst).resolve():
        return  # already there (train-ldm trained its first stage into <out>/first_stage)
    dst.mkdir(parents=True, exist_ok=True)
    names = [n for n in ("config.yaml", "model.safetensors", "ema.safetensors", "meta.json") if (src / n).is_file()]
    with atomic.atomic_paths(*(dst / name for name in names)) as temps:
        for name, tmp in zip(names, temps, strict=True):
            shutil.copy2(src / name, tmp)


def load_weights(path: Path) -> dict:
    """Load a safetensors file (never pickle)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"{path} is missing: the model dir {path.parent} is incomplete "
                        "(re-create it or restore the file)")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors' SafetensorError, OSError: a damaged file
        raise UserError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]})") from None


CONDITIONS = "conditions.safetensors"  # an LDM's validation conditions: what sample / eval-fid draw when given none


def save_values(path: Path, values: Any) -> bool:
    """Write conditioning values (a tensor, a list of strings, or a dict of these) as safetensors, the strings in
    its metadata; False (nothing written) for values of another form."""
    import torch
    from safetensors.torch import save_file

    parts = values if isinstance(values, dict) else {"": values}
    tensors = {k or "_": v.detach().contiguous().cpu() for k, v in parts.items() if isinstance(v, torch.Tensor)}
    strings = {k: list(v) for k, v in parts.items() if isinstance(v, list | tuple) and all(isinstance(x, str) for x in v)}
    if len(tensors) + len(strings) != len(parts):
        return False
    metadata = {"strings": json.dumps(strings), "root": "dict" if isinstance(values, dict) else "value"}
    with atomic.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return True


def load_values(path: Path) -> Any:
    """The conditioning values :func:`save_values` wrote."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        parts: dict[str, Any] = {k: f.get_tensor(k) for k in f.keys()}  # safe_open has no __iter__
    parts.update(json.loads(meta.get("strings", "{}")))
    if meta.get("root") == "dict":
        return parts
    return parts["_"] if "_" in parts else parts[""]


def first_stage_meta(ae: Any, kind: str, resolution: int, scale_factor: float, steps: int, **extra: Any) -> dict:
    """meta.json of a first-stage model dir (train-ae and import-compvis write this one shape)."""
    f, c = ae.downsample_factor, ae.latent_channels
    return {"kind": "first_stage", "type": kind, "f": f, "latent_channels": c, "resolution": int(resolution),
            "latent_shape": [c, resolution // f, resolution // f], "scale_factor": float(scale_factor),
            "steps": int(steps), **extra}


def build_ldm(cfg: Any, first_stage: Any, latent_shape: Any, prediction: str = "eps", cond: Any = None):
    """The ``LatentDiffusion`` of a model config's ``unet``/``cond``/``diffusion`` nodes around ``first_stage``
    (train-ldm, import-compvis and ``load`` all assemble LDMs here; ``cond`` may come pre-built)."""
    from hydra.utils import instantiate

    from ldmkit.models.ldm import LatentDiffusion

    return LatentDiffusion(unet=instantiate(cfg.unet), cond=instantiate(cfg.cond) if cond is None else cond,
                           schedule=instantiate(cfg.diffusion), first_stage=first_stage,
                           latent_shape=tuple(int(s) for s in latent_shape), prediction=prediction)


def ldm_meta(ldm: Any, first_stage_dir: Path, first_stage: dict, steps: int, **extra: Any) -> dict:
    """meta.json of an LDM model dir: what it predicts, its conditioner and task, latents and first stage."""
    return {"kind": "ldm", "prediction": ldm.prediction, "task": ldm.cond.task, "cond": type(ldm.cond).__name__,
            "cond_key": ldm.cond.key, "inputs": list(ldm.cond.inputs), "latent_shape": list(ldm.latent_shape),
            "f": first_stage["f"], "params": sum(p.numel() for p in ldm.trainable().parameters()),
            "scale_factor": first_stage["scale_factor"],
            "first_stage": {"path": str(Path(first_stage_dir).resolve()), "hash": first_stage["hash"]},
            "steps": int(steps), **extra}


def load(path: str | Path, use_ema: bool = True):
    """Rebuild the model in a model dir: a ``FirstStage`` or a ``LatentDiffusion``, in eval mode."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ldmkit.models.first_stage import FirstStage

    def load_state(module: Any, weights: Path) -> None:
        """Load weights into a module built from config.yaml; a mismatch is one line, not a traceback."""
        try:
            module.load_state_dict(load_weights(weights))
        except RuntimeError as exc:  # missing / unexpected keys or wrong shapes
            raise UserError(f"{weights} does not fit the model in {path}/config.yaml "
                            f"({str(exc).splitlines()[0]})") from None

    path = Path(path)
    meta = read_json(path / "meta.json")
    check_complete(path, str(meta.get("kind")))
    cfg = OmegaConf.load(path / "config.yaml")
    if meta.get("kind") == "first_stage":
        if file_hash(path / "model.safetensors") != meta.get("hash"):
            raise UserError(f"{path}/model.safetensors does not match the hash in meta.json (damaged or replaced)")
        ae = instantiate(cfg.first_stage)
        load_state(ae, path / "model.safetensors")
        return FirstStage(ae, meta["scale_factor"]).eval()
    if meta.get("kind") == "ldm":
        first_stage = load(path / "first_stage")
        if read_json(path / "first_stage" / "meta.json")["hash"] != meta["first_stage"]["hash"]:
            raise UserError(f"{path}/first_stage does not match the first-stage hash recorded in meta.json")
        ldm = build_ldm(cfg, first_stage, meta["latent_shape"], meta.get("prediction", "eps"))
        weights = path / ("ema.safetensors" if use_ema and (path / "ema.safetensors").is_file() else "model.safetensors")
        load_state(ldm.trainable(), weights)
        return ldm.eval()
    raise UserError(f"{path}/meta.json: unknown model kind {meta.get('kind')!r}")
