"""Writing latent shards at scale: the work is cut into units (one output shard each), every unit is encoded
into a hidden temporary tar and renamed when complete, so a killed run re-run with the same arguments encodes
only the units not yet listed in ``manifest.json`` and ends with every sample exactly once.

Units: a map-style dataset (shapes, folder) is cut into index ranges of ``shard_size`` samples; a stream of
webdataset shards (``dataset=wds``) maps each source shard to one latent shard (img2dataset writes balanced
shards, so the output is balanced too). Units are independent: ``workers`` processes share them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import IterableDataset, default_collate

from ldmkit import modeldir
from ldmkit.atomic import atomic_path
from ldmkit.data.latent_shards import encode_fields, iterate_shards
from ldmkit.errors import UserError

STREAM_OVERRIDES = {"shuffle_shards": False, "shuffle": 0, "resampled": False, "epoch_size": None,
                    "nodesplitter": None, "workersplitter": None, "size": None}  # one plain pass per source shard


@dataclass(frozen=True)
class Unit:
    """One output shard: an index range of a map-style dataset, or one source shard of a stream."""

    index: int
    start: int | None = None
    stop: int | None = None
    url: str | None = None

    @property
    def name(self) -> str:
        """The output shard's file name."""
        return f"{self.index:06d}.tar"


def plan(dataset_cfg: DictConfig, dataset: Any, shard_size: int) -> list[Unit]:
    """The units of work for a dataset: index ranges, or one per source shard for webdataset streams."""
    if shard_size < 1:
        raise UserError(f"shard_size={shard_size}: need at least 1 sample per shard")
    if not isinstance(dataset, IterableDataset):
        n = len(dataset)
        return [Unit(k, start, min(n, start + shard_size)) for k, start in enumerate(range(0, n, shard_size))]
    if "urls" not in dataset_cfg:
        raise UserError("encode-dataset streams only webdataset shards (dataset=wds) or map-style datasets")
    from ldmkit.data.wds import resolve_urls

    return [Unit(k, url=url) for k, url in enumerate(resolve_urls(dataset_cfg.urls))]


def _items(dataset_cfg: dict, unit: Unit) -> tuple[Iterator[tuple[str, dict]], Any]:
    """(key, item) pairs of one unit (broken samples skipped and counted) and the dataset holding the count."""
    if unit.url is not None:
        dataset = instantiate(OmegaConf.create(dataset_cfg), urls=[unit.url], **STREAM_OVERRIDES)
        return ((f"{unit.index:06d}_{j:06d}", item) for j, item in enumerate(dataset)), dataset
    dataset = instantiate(OmegaConf.create(dataset_cfg))
    load = getattr(dataset, "try_load", dataset.__getitem__)
    pairs = ((f"{i:09d}", load(i)) for i in range(unit.start, unit.stop))
    return ((key, item) for key, item in pairs if item is not None), dataset


_LOADED: dict[str, Any] = {}


def _once(key: str, build: Any) -> Any:
    """``build()`` the first time ``key`` is asked for in this process, the same object after that."""
    if key not in _LOADED:
        _LOADED[key] = build()
    return _LOADED[key]


def conditioner(cond_cfg: dict | None, device: torch.device | None = None) -> Any:
    """The conditioner whose outputs are cached (None when nothing is), built once per process."""
    if not cond_cfg:
        return None
    cond = _once(f"cond|{cond_cfg}", lambda: instantiate(OmegaConf.create(cond_cfg)).eval())
    return cond.to(device) if device is not None else cond


def load_models(ae_dir: str, cond_cfg: dict | None, device: torch.device) -> tuple[Any, Any]:
    """The first stage of ``ae_dir`` and the caching conditioner on ``device``, loaded once per process."""
    return _once(f"ae|{ae_dir}|{device}", lambda: modeldir.load(ae_dir).to(device)), conditioner(cond_cfg, device)


def cache_fields(cond: Any, batch: dict) -> dict[str, torch.Tensor]:
    """The conditioner's cacheable outputs for a batch (e.g. frozen CLIP text states), on the CPU."""
    if cond is None:
        return {}
    with torch.no_grad():
        return {k: v.cpu() for k, v in cond.cached_fields(cond.values(batch)).items()}


def encode_unit(ae_dir: str, dataset_cfg: dict, unit: Unit, out: str, batch_size: int,
                cond_cfg: dict | None = None, on_batch: Callable[[int], None] | None = None) -> dict:
    """Encode one unit into ``out/<name>``: written under a hidden temporary name (``ldmkit.atomic``), fsynced and
    renamed when complete, so a killed writer never leaves a half shard under the final name. ``on_batch(n)``
    follows each batch of ``n`` samples written."""
    import webdataset as wds

    from ldmkit.devices import device

    dev = device()
    stage, cond = load_models(ae_dir, cond_cfg, dev)
    pairs, dataset = _items(dataset_cfg, unit)
    count = 0
    # An integer mtime keeps every member a plain ustar header: webdataset's default (time.time(), a float) adds a
    # pax header per member, which doubles the tar parsing train-ldm does per sample.
    with atomic_path(Path(out) / unit.name) as tmp, wds.TarWriter(str(tmp), mtime=int(time.time())) as sink:
        while chunk := list(islice(pairs, batch_size)):
            keys, items = zip(*chunk, strict=True)
            batch = default_collate(list(items))
            with torch.no_grad():
                post = stage.posterior(batch["image"].to(dev))
            mean, std = post.mean.half().cpu(), post.std.half().cpu()
            batch.update(cache_fields(cond, batch))
            for i, key in enumerate(keys):
                row = {k: v[i] for k, v in batch.items()}
                sink.write({"__key__": key, **encode_fields({"latent_mean": mean[i], "latent_std": std[i], **row})})
            count += len(keys)
            if on_batch is not None:
                on_batch(len(keys))
    skips = getattr(dataset, "skips", None)
    summary = skips.summary() if skips is not None else {"skipped": 0, "examples": []}
    return {"unit": asdict(unit), "name": unit.name, "count": count, "skipped": summary["skipped"],
            "examples": summary["examples"]}


def encode_unit_star(args: tuple) -> dict:
    """``encode_unit`` for ``Pool.imap_unordered`` (one tuple argument)."""
    torch.set_num_threads(args[-1])
    return encode_unit(*args[:-1])


def verify(path: Path, fields: list[str] | None = None) -> dict:
    """Check a latent-shard dir: every listed shard present and complete, counts, unique keys, fields and the
    first stage's hash; returns the figures, raises a one-line UserError naming the first problem."""
    from ldmkit.data.latent_shards import read_manifest

    manifest = read_manifest(path, "verify")
    if manifest.get("status", "complete") != "complete":
        done, total = len(manifest["shards"]), manifest.get("plan", {}).get("units", "?")
        raise UserError(f"{path}: incomplete encoding ({done} of {total} shards): re-run encode-dataset with "
                        "the same arguments to finish it")
    missing = [s for s in manifest["shards"] if not (Path(path) / s).is_file()]
    if missing:
        raise UserError(f"{path}: shard {missing[0]} is listed in manifest.json but missing")
    want = set(fields or manifest.get("fields", []))
    keys, per_shard = set(), {}
    for sample in iterate_shards(path):
        if sample["__key__"] in keys:
            raise UserError(f"{path}: sample key {sample['__key__']} appears twice")
        keys.add(sample["__key__"])
        lacking = want - set(sample)
        if lacking:
            raise UserError(f"{path}: sample {sample['__key__']} lacks {sorted(lacking)}")
        shard = sample["__url__"].rsplit("/", 1)[-1] if "__url__" in sample else "?"
        per_shard[shard] = per_shard.get(shard, 0) + 1
    if len(keys) != manifest["count"]:
        raise UserError(f"{path}: manifest.json says {manifest['count']} samples, the shards hold {len(keys)}")
    for name, unit in manifest.get("units", {}).items():
        if name in per_shard and per_shard[name] != unit["count"]:
            raise UserError(f"{path}: {name} holds {per_shard[name]} samples, manifest.json says {unit['count']}")
    fs = manifest["first_stage"]
    weights = Path(fs["path"]) / "model.safetensors"
    hash_ok = modeldir.file_hash(weights) == fs["hash"] if weights.is_file() else None
    if hash_ok is False:
        raise UserError(f"{path}: the first stage at {fs['path']} no longer matches hash {fs['hash']}")
    return {"samples": len(keys), "shards": len(manifest["shards"]), "first_stage_hash": fs["hash"],
            "first_stage_checked": hash_ok is True, "fields": sorted(want)}
