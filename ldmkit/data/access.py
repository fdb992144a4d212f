"""Uniform access to any dataset of the ``dataset`` group (map-style or streaming): first items, sizes, the
kind of input, and the count of skipped broken samples."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch.utils.data import Dataset, IterableDataset

from ldmkit.errors import UserError


def is_latent_shards(dataset_cfg: DictConfig) -> bool:
    """Whether the dataset config reads encode-dataset output (latents) rather than images."""
    return str(dataset_cfg.get("_target_", "")).endswith("latent_shards")


class EachOnce(IterableDataset):
    """Every readable item of a dataset exactly once, in order: broken files of a map-style dataset are
    counted and left out instead of replaced by a neighbour (what encode-dataset needs)."""

    def __init__(self, dataset: Dataset | IterableDataset) -> None:
        self.dataset = dataset
        self.skips = getattr(dataset, "skips", None)

    def __iter__(self):
        """Stream the items (a streaming dataset passes through unchanged)."""
        if isinstance(self.dataset, IterableDataset):
            yield from self.dataset
            return
        try_load = getattr(self.dataset, "try_load", None)
        for i in range(len(self.dataset)):
            item = self.dataset[i] if try_load is None else try_load(i)
            if item is not None:
                yield item


def first_items(dataset: Dataset | IterableDataset, n: int) -> list[dict]:
    """The first ``n`` items (fewer if the dataset is shorter); works for map-style and streaming datasets."""
    if isinstance(dataset, IterableDataset):
        return list(islice(iter(dataset), n))
    return [dataset[i] for i in range(min(n, len(dataset)))]


def first_item(dataset: Dataset | IterableDataset, option: str = "dataset") -> dict:
    """The first item, or a one-line error when the dataset yields nothing."""
    items = first_items(dataset, 1)
    if not items:
        raise UserError(f"{option}: the dataset is empty (no readable samples)")
    return items[0]


def length(dataset: Dataset | IterableDataset) -> int | None:
    """The number of items, or None for a stream of unknown length."""
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return None


def skips_summary(dataset: Any) -> dict | None:
    """The skipped-sample summary of a dataset that counts them (folder, wds), else None."""
    skips = getattr(dataset, "skips", None)
    return None if skips is None else skips.summary()


def write_skips(dataset: Any, out: Path) -> dict | None:
    """Write ``skipped.json`` (count summed over DDP ranks + this rank's examples) into the run dir from rank 0
    when the dataset counts skips; returns the summary (on every rank)."""
    import torch
    import torch.distributed as dist

    from ldmkit.modeldir import write_json

    summary = skips_summary(dataset)
    if summary is None:
        return None
    if dist.is_available() and dist.is_initialized():
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        total = torch.tensor([summary["skipped"]], dtype=torch.int64, device=device)
        dist.all_reduce(total)  # gloo / nccl: sums the ranks' counts
        summary["skipped"] = int(total)
        if dist.get_rank() != 0:
            return summary
    write_json(out / "skipped.json", summary)
    return summary
