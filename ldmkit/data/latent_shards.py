"""Latent shards: webdataset tars of first-stage posteriors (mean, std; fp16) + every conditioning field.

Per sample: ``latent_mean.npy``, ``latent_std.npy`` and each source field as ``<field>.txt`` (strings),
``<field>.cls`` (integer scalars) or ``<field>.npy`` (arrays). ``manifest.json`` names the shards, the count
and the first stage (hash, f, latent shape, scale factor). Decoding never unpickles.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ldmkit.errors import UserError
from ldmkit.modeldir import read_json

LATENT_FIELDS = ("latent_mean", "latent_std")


def encode_fields(fields: dict) -> dict[str, bytes | str]:
    """One sample's fields -> webdataset entries keyed by ``<field>.<ext>`` (images are not stored)."""
    out: dict[str, bytes | str] = {}
    for key, value in fields.items():
        if key == "image":
            continue
        if isinstance(value, str):
            out[f"{key}.txt"] = value
        elif isinstance(value, int) or (isinstance(value, Tensor) and value.ndim == 0 and not value.is_floating_point()):
            out[f"{key}.cls"] = str(int(value))
        else:
            buf = io.BytesIO()
            np.save(buf, np.asarray(value.cpu() if isinstance(value, Tensor) else value), allow_pickle=False)
            out[f"{key}.npy"] = buf.getvalue()
    return out


def decode_fields(sample: dict) -> dict:
    """Inverse of ``encode_fields`` on raw tar bytes; unknown extensions are ignored (never unpickled)."""
    out: dict = {}
    for name, data in sample.items():
        if name.startswith("__"):
            continue
        key, _, ext = name.rpartition(".")
        if ext == "txt":
            out[key] = data.decode("utf-8")
        elif ext == "cls":
            out[key] = torch.tensor(int(data))
        elif ext == "npy":
            out[key] = torch.from_numpy(np.lib.format.read_array(io.BytesIO(data), allow_pickle=False).copy())
    return out


def to_training_sample(sample: dict) -> dict:
    """Decode and check that a sample carries the latent posterior; latents become float32."""
    out = decode_fields(sample)
    for key in LATENT_FIELDS:
        if key not in out:
            raise ValueError(f"sample {sample.get('__key__')} has no {key}")
        out[key] = out[key].float()
    return out


def read_manifest(path: str | Path, option: str = "dataset.path") -> dict:
    """The manifest of an encode-dataset output dir."""
    path = Path(path)
    if not (path / "manifest.json").is_file():
        raise UserError(f"{option}={path}: no manifest.json (pass the out= dir of `ldmkit encode-dataset`)")
    return read_json(path / "manifest.json")


def latent_shards(path: str, shuffle: int = 1000, seed: int = 0):
    """An endless, shuffled webdataset stream over the shards in ``path`` (DDP- and worker-aware)."""
    import webdataset as wds

    from ldmkit.data.skips import SkipCounter, counting_handler
    from ldmkit.data.wds import SeededShuffle, ShardDataset, seed_resampling

    manifest = read_manifest(path)
    urls = [str(Path(path) / name) for name in manifest["shards"]]
    skips = SkipCounter()
    handler = counting_handler(skips)  # broken samples are counted, without webdataset's 0.5 s sleep
    dataset = ShardDataset(
        urls,
        resampled=True,
        shardshuffle=False,
        nodesplitter=wds.split_by_node,
        workersplitter=wds.split_by_worker,
        handler=handler,
        empty_check=False,
        seed=seed,
    )
    seed_resampling(dataset, seed)
    if shuffle:
        dataset = dataset.compose(SeededShuffle(shuffle, seed))
    dataset = dataset.map(to_training_sample, handler=handler).with_epoch(manifest["count"])
    dataset.skips = skips
    return dataset


def iterate_shards(path: str | Path) -> Iterator[dict]:
    """Every sample of the shards once, in order (for checks and tools)."""
    import webdataset as wds

    manifest = read_manifest(path)
    urls = [str(Path(path) / name) for name in manifest["shards"]]
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        yield {"__key__": sample["__key__"], "__url__": sample.get("__url__", ""), **to_training_sample(sample)}
