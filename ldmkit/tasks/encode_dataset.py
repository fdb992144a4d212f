"""``ldmkit encode-dataset``: first-stage posteriors of a dataset -> webdataset latent shards + manifest.

Resumable and parallel: see :mod:`ldmkit.data.latent_writer`. ``verify=DIR`` checks an existing output.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from ldmkit import modeldir
from ldmkit.atomic import leftovers
from ldmkit.console import console
from ldmkit.data.access import first_item
from ldmkit.data.latent_writer import (
    Unit,
    conditioner,
    encode_unit,
    encode_unit_star,
    load_models,
    plan,
    verify,
)
from ldmkit.devices import device
from ldmkit.errors import UserError
from ldmkit.progress import Tracker
from ldmkit.tasks.common import run_dir


def _plan_record(cfg: DictConfig, units: list[Unit], ae_meta: dict) -> dict:
    """What must match for a re-run to continue an earlier one."""
    return {"shard_size": int(cfg.shard_size), "units": len(units), "first_stage_hash": ae_meta["hash"],
            "dataset": OmegaConf.to_container(cfg.dataset, resolve=True), "cond": _cond_cfg(cfg)}


def _cond_cfg(cfg: DictConfig) -> dict | None:
    """The conditioner whose outputs are cached (cond=clip), or None (cond=none, the default)."""
    cond = OmegaConf.to_container(cfg.cond, resolve=True)
    return None if cond["_target_"].endswith(".NoConditioner") else cond


def _cached_field_names(cfg: DictConfig, sample: dict) -> list[str]:
    """Fields the conditioner adds to every sample (one-line error when the dataset lacks its input)."""
    from torch.utils.data import default_collate

    cond_cfg = _cond_cfg(cfg)
    if cond_cfg is None:
        return []
    cond = conditioner(cond_cfg)  # the same object encode_unit uses in this process
    try:
        values = cond.values(default_collate([sample]))
    except KeyError as exc:
        raise UserError(f"cond reads the dataset field {exc.args[0]!r}; the dataset has {sorted(sample)}") from None
    names = sorted(cond.cached_fields(values))
    if not names:
        raise UserError(f"cond={type(cond).__name__} has nothing to cache (only frozen encoders such as "
                        "cond=clip do): drop the cond= option")
    return names


def _resume_state(out: Path, record: dict) -> dict:
    """Finished units of an earlier run with the same arguments (empty for a fresh dir)."""
    if not (out / "manifest.json").is_file():
        return {}
    manifest = modeldir.read_json(out / "manifest.json")
    earlier = manifest.get("plan")
    if earlier != record:
        diff = sorted(k for k in record if earlier is None or earlier.get(k) != record[k])
        raise UserError(f"out={out} holds an encoding made with other arguments ({', '.join(diff) or 'format'} "
                        "changed): pick another out= or delete it")
    return dict(manifest.get("units", {}))


def _write_manifest(out: Path, cfg: DictConfig, ae_dir: Path, ae_meta: dict, record: dict, done: dict,
                    fields: list[str]) -> dict:
    """manifest.json for the units done so far (status complete when all are)."""
    complete = len(done) == record["units"]
    manifest = {
        "format": modeldir.FORMAT,
        "status": "complete" if complete else "partial",
        "count": sum(u["count"] for u in done.values()),
        "shards": sorted(done),
        "units": {name: done[name] for name in sorted(done)},
        "skipped_samples": sum(u["skipped"] for u in done.values()),
        "fields": fields,
        "first_stage": {"path": str(ae_dir.resolve()), "hash": ae_meta["hash"]},
        "f": ae_meta["f"],
        "latent_shape": ae_meta["latent_shape"],
        "scale_factor": ae_meta["scale_factor"],
        "dataset": record["dataset"],
        "plan": record,
    }
    modeldir.write_json(out / "manifest.json", manifest)
    return manifest


def _remove_leftovers(out: Path, units: list[Unit]) -> None:
    """Delete the temporary shards and manifests a killed earlier run left behind (they are never read)."""
    for path in [out / "manifest.json", *(out / unit.name for unit in units)]:
        for leftover in leftovers(path):
            leftover.unlink(missing_ok=True)


def _run_units(cfg: DictConfig, ae_dir: Path, todo: list[Unit], out: Path,
               on_batch: Callable[[int], None] | None = None) -> Iterator[dict]:
    """Encode the units in this process (``on_batch(samples)`` after each batch) or in ``workers`` processes;
    yield each result as it finishes."""
    dataset_cfg = OmegaConf.to_container(cfg.dataset, resolve=True)
    workers = int(cfg.workers)
    if workers <= 1 or len(todo) <= 1:
        for unit in todo:
            yield encode_unit(str(ae_dir), dataset_cfg, unit, str(out), cfg.batch_size, _cond_cfg(cfg), on_batch)
        return
    import torch.multiprocessing as mp

    threads = max(1, (os.cpu_count() or 1) // workers)
    jobs = [(str(ae_dir), dataset_cfg, unit, str(out), cfg.batch_size, _cond_cfg(cfg), threads) for unit in todo]
    with mp.get_context("spawn").Pool(min(workers, len(todo))) as pool:
        yield from pool.imap_unordered(encode_unit_star, jobs)


def _unit_size(units: list[Unit]) -> tuple[Callable[[Unit], int], str]:
    """What a unit counts for in the progress and the unit's name: its samples (index ranges), else one shard
    (stream shards: their sizes are unknown)."""
    if all(u.url is None for u in units):
        return (lambda unit: unit.stop - unit.start), "sample"
    return (lambda unit: 1), "shard"


def run(cfg: DictConfig) -> None:
    """Encode every sample once (posterior mean and std as fp16) with every conditioning field."""
    if cfg.get("verify"):
        return _print_verify(Path(str(cfg.verify)))
    if cfg.workers < 1:
        raise UserError(f"workers={cfg.workers}: need at least 1")
    out = run_dir()
    ae_dir = modeldir.resolve(cfg.ae, "first_stage", "ae")
    ae_meta = modeldir.read_json(ae_dir / "meta.json")
    dataset = instantiate(cfg.dataset)
    sample = first_item(dataset)
    fields = sorted(set(sample) - {"image"} | {"latent_mean", "latent_std"} | set(_cached_field_names(cfg, sample)))
    units = plan(cfg.dataset, dataset, int(cfg.shard_size))
    record = _plan_record(cfg, units, ae_meta)
    done = _resume_state(out, record)
    todo = [u for u in units if u.name not in done]
    _remove_leftovers(out, units)
    if done:
        console.print(f"continuing {out}: {len(done)} of {len(units)} shards already encoded")
    if todo:  # load (and check) the first stage before the progress bar: its errors are one clean line
        load_models(str(ae_dir), None, device())
    size, unit_name = _unit_size(units)
    sizes = {u.name: size(u) for u in units}
    completed = sum(sizes[name] for name in done)
    with Tracker(console) as tracker:
        task = tracker.add("encode-dataset", total=sum(sizes.values()), unit=unit_name, completed=completed)
        on_batch = (lambda count: tracker.update(task, advance=count)) if unit_name == "sample" else None
        for result in _run_units(cfg, ae_dir, todo, out, on_batch):
            done[result["name"]] = {k: result[k] for k in ("count", "skipped", "examples")}
            _write_manifest(out, cfg, ae_dir, ae_meta, record, done, fields)
            completed += sizes[result["name"]]
            tracker.update(task, completed=completed)
    manifest = _write_manifest(out, cfg, ae_dir, ae_meta, record, done, fields)
    skipped = f", {manifest['skipped_samples']} broken skipped" if manifest["skipped_samples"] else ""
    console.print(f"{manifest['count']} samples in {len(manifest['shards'])} shard(s){skipped} -> {out}")


def _print_verify(path: Path) -> None:
    """``verify=DIR``: check a latent-shard dir and print what was checked."""
    figures = verify(path)
    table = Table(title=f"encode-dataset verify {path}")
    table.add_column("check")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    console.print(table)
