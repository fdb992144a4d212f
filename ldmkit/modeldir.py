"""Self-describing model dirs: ``config.yaml`` + ``model.safetensors`` (+ ``ema.safetensors``) + ``meta.json``."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

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


def write_json(path: Path, data: dict) -> None:
    """Write pretty JSON atomically: to a temporary name, then renamed over ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def resolve(spec: str | None, kind: str, option: str) -> Path:
    """Turn ``ae=``/``ckpt=``/``dataset.path=`` into a dir of the given kind; ``latest`` = newest default run."""
    producer, marker = PRODUCERS[kind], MARKERS[kind]
    if spec in (None, "", "latest"):
        root = Path("runs") / producer
        found = sorted(root.glob(f"**/{marker}"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
        found = [p for p in found if kind == "latents" or read_json(p).get("kind") == kind]
        if not found:
            raise UserError(f"{option}=latest: nothing under {root}/ yet; run `ldmkit {producer}` or pass {option}=DIR")
        return found[-1].parent
    path = Path(spec).expanduser()
    if not (path / marker).is_file():
        raise UserError(f"{option}={spec}: not a {kind.replace('_', '-')} dir (no {marker}); pass the out= dir of `ldmkit {producer}`")
    if kind != "latents":
        actual = read_json(path / marker).get("kind")
        if actual != kind:
            raise UserError(f"{option}={spec} holds a {actual} model, expected a {kind} model")
    return path


def save(out: Path, cfg: Any, weights: dict[str, dict], meta: dict) -> dict:
    """Write config.yaml, each ``<name>.safetensors`` and meta.json (with the weights' hash) into ``out``."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    for name, state in weights.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out / f"{name}.safetensors"))
    meta = {"format": FORMAT, **meta, "hash": file_hash(out / "model.safetensors")}
    write_json(out / "meta.json", meta)
    return meta


def copy(src: Path, dst: Path) -> None:
    """Copy a model dir's defining files (config, weights, meta) to ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "meta.json", "model.safetensors", "ema.safetensors"):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def load_weights(path: Path) -> dict:
    """Load a safetensors file (never pickle)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"{path} is missing: the model dir is incomplete")
    return load_file(str(path))


def load(path: str | Path, use_ema: bool = True):
    """Rebuild the model in a model dir: a ``FirstStage`` or a ``LatentDiffusion``, in eval mode."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ldmkit.models.first_stage import FirstStage
    from ldmkit.models.ldm import LatentDiffusion

    path = Path(path)
    meta = read_json(path / "meta.json")
    cfg = OmegaConf.load(path / "config.yaml")
    if meta.get("kind") == "first_stage":
        if file_hash(path / "model.safetensors") != meta["hash"]:
            raise UserError(f"{path}/model.safetensors does not match the hash in meta.json")
        ae = instantiate(cfg.first_stage)
        ae.load_state_dict(load_weights(path / "model.safetensors"))
        return FirstStage(ae, meta["scale_factor"]).eval()
    if meta.get("kind") == "ldm":
        first_stage = load(path / "first_stage")
        if read_json(path / "first_stage" / "meta.json")["hash"] != meta["first_stage"]["hash"]:
            raise UserError(f"{path}/first_stage does not match the first-stage hash recorded in meta.json")
        ldm = LatentDiffusion(
            unet=instantiate(cfg.unet),
            cond=instantiate(cfg.cond),
            schedule=instantiate(cfg.diffusion),
            first_stage=first_stage,
            latent_shape=tuple(meta["latent_shape"]),
            prediction=meta.get("prediction", "eps"),
        )
        weights = path / ("ema.safetensors" if use_ema and (path / "ema.safetensors").is_file() else "model.safetensors")
        ldm.trainable().load_state_dict(load_weights(weights))
        return ldm.eval()
    raise UserError(f"{path}/meta.json: unknown model kind {meta.get('kind')!r}")
