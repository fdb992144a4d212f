"""``ldmkit info DIR``: what a first-stage / LDM model dir, a latent-shard dir, a run dir or an f-study dir holds.

Read-only: weights are counted from the safetensors headers (no model is built), checkpoints are read with
``torch.load(weights_only=True, mmap=True)``; nothing is written anywhere.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ldmkit import modeldir
from ldmkit.errors import UserError

EXPECTS = ("ldmkit info expects a model dir (meta.json), a latent-shard dir (manifest.json), a run dir (.hydra/, "
           "logs/ or checkpoints/) or an f-study dir (result.json)")
RUN_MARKERS = (".hydra", "logs", "checkpoints")
KINDS = {"first_stage": "first-stage model dir", "ldm": "LDM model dir", "latents": "latent-shard dir",
         "run": "run dir", "f_study": "f-study dir"}
CACHED = re.compile(r"_clip_[0-9a-f]+(_mask)?$")  # text-encoder states cached by encode-dataset cond=clip


def run(cfg: DictConfig) -> None:
    """Print the facts about ``dir=`` as a table, or as JSON with ``json=true``."""
    facts = describe(Path(str(cfg.dir)).expanduser())
    if cfg.json:
        sys.stdout.write(json.dumps(facts, indent=2, default=str) + "\n")
        return
    from rich.console import Console

    Console().print(render(facts))


def describe(path: Path) -> dict[str, Any]:
    """Every fact about ``path``, by kind; a dir of no known kind is a one-line UserError."""
    if not path.exists():
        raise UserError(f"{path}: no such directory; {EXPECTS}")
    if not path.is_dir():
        raise UserError(f"{path} is not a directory; {EXPECTS}")
    facts: dict[str, Any]
    if (path / "meta.json").is_file():
        facts = model_facts(path)
    elif (path / "manifest.json").is_file():
        facts = latents_facts(path)
    elif (path / "report.md").is_file() or _results(path):
        facts = f_study_facts(path)
    elif any((path / m).is_dir() for m in RUN_MARKERS):
        facts = {"kind": "run", "path": str(path.resolve())}
    else:
        raise UserError(f"{path} is not a model, latent-shard, run or f-study dir (no meta.json, manifest.json, "
                        "result.json, .hydra/, logs/ or checkpoints/ in it)")
    if any((path / m).is_dir() for m in RUN_MARKERS):
        facts["run"] = run_facts(path)
    return facts


def model_facts(path: Path) -> dict[str, Any]:
    """A model dir: the first-stage or LDM facts after the common ones."""
    meta = modeldir.read_json(path / "meta.json")
    kind = meta.get("kind")
    if kind not in ("first_stage", "ldm"):
        raise UserError(f"{path}/meta.json: unknown model kind {kind!r}; {EXPECTS}")
    weights = path / "model.safetensors"
    common = {"kind": kind, "path": str(path.resolve()), "f": meta.get("f"), "latent_shape": meta.get("latent_shape"),
              "scale_factor": meta.get("scale_factor"), "params": param_count(weights), "steps": meta.get("steps"),
              "hash": meta.get("hash"),
              "hash_ok": modeldir.file_hash(weights) == meta.get("hash") if weights.is_file() else None}
    specific = first_stage_facts(path, meta) if kind == "first_stage" else ldm_facts(path, meta)
    return {**common, **specific, "files": files(path)}


def first_stage_facts(path: Path, meta: dict) -> dict[str, Any]:
    """Autoencoder type, latent channels, resolution and reconstruction metrics from meta.json."""
    facts = {key: meta.get(key) for key in ("type", "latent_channels", "resolution")}
    facts["metrics"] = meta.get("metrics", {})
    facts.update({key: meta[key] for key in ("source", "scale_source", "skipped_samples") if key in meta})
    return facts


def ldm_facts(path: Path, meta: dict) -> dict[str, Any]:
    """Prediction, conditioner, EMA, throughput, the first stage it depends on, snapshots and eval metrics."""
    fs = meta.get("first_stage") or {}
    bundled = path / "first_stage"
    bundled_meta = modeldir.read_json(bundled / "meta.json") if (bundled / "meta.json").is_file() else {}
    bundled_weights = bundled / "model.safetensors"
    first_stage = {
        "path": fs.get("path"), "hash": fs.get("hash"), "path_exists": bool(fs.get("path")) and Path(fs["path"]).is_dir(),
        "type": bundled_meta.get("type"), "bundled": (bundled / "meta.json").is_file(),
        "bundled_matches": bundled_weights.is_file() and modeldir.file_hash(bundled_weights) == fs.get("hash"),
    }
    snapshots = [{"dir": str(d.relative_to(path)), "steps": _meta_steps(d)}
                 for d in sorted((path / "snapshots").glob("step_*")) if d.is_dir()]
    facts = {"task": meta.get("task"), "inputs": meta.get("inputs"), "prediction": meta.get("prediction"),
             "cond": meta.get("cond"), "cond_key": meta.get("cond_key"), "trainable_params": meta.get("params"), "ema": (path / "ema.safetensors").is_file(),
             "lr": meta.get("lr"), "train_samples_per_s": meta.get("train_samples_per_s"),
             "first_stage": first_stage, "snapshots": snapshots, "metrics": eval_metrics(path)}
    facts.update({key: meta[key] for key in ("source", "skipped_samples") if key in meta})
    return facts


def latents_facts(path: Path) -> dict[str, Any]:
    """A latent-shard dir from its manifest.json."""
    manifest = modeldir.read_json(path / "manifest.json")
    fs = manifest.get("first_stage") or {}
    fields = [str(f) for f in manifest.get("fields", [])]
    shards = [str(s) for s in manifest.get("shards", [])]
    return {
        "kind": "latents", "path": str(path.resolve()), "status": manifest.get("status", "complete"),
        "shards": len(shards), "planned_shards": (manifest.get("plan") or {}).get("units", len(shards)),
        "missing_shards": [s for s in shards if not (path / s).is_file()], "count": manifest.get("count"),
        "latent_shape": manifest.get("latent_shape"), "f": manifest.get("f"),
        "scale_factor": manifest.get("scale_factor"),
        "first_stage": {"path": fs.get("path"), "hash": fs.get("hash"),
                        "path_exists": bool(fs.get("path")) and Path(fs["path"]).is_dir()},
        "fields": [f for f in fields if f not in ("latent_mean", "latent_std") and not CACHED.search(f)],
        "cached_fields": [f for f in fields if CACHED.search(f)],
        "skipped_samples": manifest.get("skipped_samples", 0),
        "bytes": sum((path / s).stat().st_size for s in shards if (path / s).is_file()),
        "dataset": (manifest.get("dataset") or {}).get("_target_"),
    }


def run_facts(path: Path) -> dict[str, Any]:
    """The command and overrides (.hydra/), the last checkpoint, the last logged values and metrics.json."""
    import yaml

    facts: dict[str, Any] = {}
    hydra_dir = path / ".hydra"
    if (hydra_dir / "hydra.yaml").is_file():
        hydra = (yaml.safe_load((hydra_dir / "hydra.yaml").read_text()) or {}).get("hydra", {})
        facts["command"] = (hydra.get("job") or {}).get("name")
    if (hydra_dir / "overrides.yaml").is_file():
        facts["overrides"] = [str(o) for o in yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) or []]
    facts["checkpoint"] = last_checkpoint(path / "checkpoints")
    facts["last_logged"] = last_logged(path / "logs" / "metrics.csv")
    if (path / "metrics.json").is_file() and not (path / "meta.json").is_file():  # a model dir shows it itself
        facts["metrics"] = modeldir.read_json(path / "metrics.json")
    return {k: v for k, v in facts.items() if v is not None}


def f_study_facts(path: Path) -> dict[str, Any]:
    """The f-study jobs (each result.json) with their key numbers, and whether report.md exists."""
    jobs = []
    for result_path in _results(path):
        r = modeldir.read_json(result_path)
        final = (r.get("checkpoints") or [{}])[-1]
        jobs.append({"dir": str(result_path.parent.relative_to(path)) or ".", "f": r.get("f"),
                     "latent_shape": r.get("latent_shape"), "params": r.get("params"),
                     "ldm_steps": r.get("ldm_steps"), "train_samples_per_s": r.get("train_samples_per_s"),
                     **{k: v for k, v in final.items() if k in ("fid", "kid_mean", "shape_acc", "color_acc")}})
    return {"kind": "f_study", "path": str(path.resolve()), "report": (path / "report.md").is_file(),
            "jobs": sorted(jobs, key=lambda j: (j["f"] is None, j["f"] or 0))}


def param_count(path: Path) -> int | None:
    """Number of values in a safetensors file, from its header only (no tensor is read)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="np") as f:
            return sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())  # not a dict
    except Exception as exc:  # SafetensorError on a damaged file
        raise UserError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]})") from None


def files(path: Path) -> dict[str, int]:
    """The dir's top-level files and their sizes in bytes."""
    return {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}


def last_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The newest ``.ckpt`` and its global step (weights-only unpickling, memory-mapped)."""
    from ldmkit.safeload import torch_load

    ckpts = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if not ckpts:
        return None
    facts: dict[str, Any] = {"file": ckpts[-1].name, "count": len(ckpts), "bytes": ckpts[-1].stat().st_size}
    try:
        ckpt = torch_load(ckpts[-1], mmap=True)
        facts["step"] = int(ckpt["global_step"]) if isinstance(ckpt, dict) and "global_step" in ckpt else None
    except UserError as exc:  # a damaged checkpoint is a fact about the run, not an error of info
        facts["error"] = str(exc)
    return facts


def last_logged(path: Path) -> dict[str, Any] | None:
    """The last value of every column of ``logs/metrics.csv`` and the step it was logged at, counted as checkpoints
    and ``trainer.max_steps`` count (training steps done: Lightning's 0-based step column + 1)."""
    if not path.is_file():
        return None
    last: dict[str, Any] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            last.update({k: _number(v) for k, v in row.items() if k and v not in (None, "")})
    step = last.pop("step", None)
    done = int(step) + 1 if isinstance(step, int | float) else None
    return {"step": done, **{k: v for k, v in sorted(last.items()) if k != "epoch"}} if last else None


def eval_metrics(path: Path) -> dict[str, Any]:
    """eval-fid results for this model dir: ``metrics.json`` in it, or under ``eval/`` next to it naming it."""
    found = {}
    here = str(path.resolve())
    for candidate in [path / "metrics.json", *sorted(path.glob("eval/*/metrics.json")),
                      *sorted(path.parent.glob("eval/*/metrics.json"))]:
        if candidate.is_file():
            metrics = modeldir.read_json(candidate)
            if candidate.parent == path or metrics.get("ckpt") == here:
                keep = {k: v for k, v in metrics.items() if isinstance(v, int | float | str) and k != "ckpt"}
                found[str(candidate.relative_to(path.parent))] = keep
    return found


def _meta_steps(path: Path) -> int | None:
    """A snapshot's training steps from its meta.json."""
    return modeldir.read_json(path / "meta.json").get("steps") if (path / "meta.json").is_file() else None


def _results(path: Path) -> list[Path]:
    """f-study result.json files in ``path`` or one level down (the jobs of a multirun)."""
    return sorted([*path.glob("result.json"), *path.glob("*/result.json")])


def _number(text: str) -> Any:
    """A CSV cell as int / float when it is one."""
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def render(facts: dict[str, Any]):
    """The facts as one rich table (a section per nested group), then a table per list of records (jobs,
    snapshots)."""
    from rich.console import Group
    from rich.table import Table

    table = Table(title=f"{KINDS[facts['kind']]} {facts['path']}", show_header=False)
    table.add_column("fact", style="bold")
    table.add_column("value", overflow="fold")
    groups = {k: v for k, v in facts.items() if isinstance(v, dict) and v}
    records = {k: v for k, v in facts.items() if isinstance(v, list) and v and all(isinstance(i, dict) for i in v)}
    for key, value in facts.items():
        if key not in groups and key not in records and key != "path":
            table.add_row(key, _fmt(key, value))
    for group, value in groups.items():
        table.add_section()
        for key, item in _flatten(value):
            table.add_row(f"{group}.{key}", _fmt("bytes" if group == "files" else key, item))
    tables = [table]
    for name, rows in records.items():
        columns = list(dict.fromkeys(k for row in rows for k in row))
        sub = Table(*columns, title=name)
        for row in rows:
            sub.add_row(*(_fmt(c, row.get(c)) for c in columns))
        tables.append(sub)
    return Group(*tables)


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as dotted keys."""
    rows = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _fmt(key: str, value: Any) -> str:
    """A table cell: thousands separators, sizes in KB/MB, shapes as C×H×W."""
    if value is None or value == {}:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and key.endswith("bytes"):
        return next(f"{value / 1024**i:.1f} {unit}" for i, unit in enumerate(("B", "KB", "MB", "GB", "TB"))
                    if value < 1024 ** (i + 1) or unit == "TB")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and key.endswith("shape"):
        return "×".join(map(str, value))
    if isinstance(value, list):
        return ", ".join(map(str, value)) if value else "–"
    return str(value)
