"""Image-text webdataset shards (img2dataset layout) as a streaming dataset (``dataset=wds``).

``dataset.urls`` is anything webdataset reads: a brace pattern (``/data/laion/{00000..00099}.tar``), a
list, ``::``-joined lists, ``pipe:`` commands or http(s)/s3/gs URLs (passed through untouched), or a local
folder (= every ``*.tar`` in it). Local shards must exist: a pattern matching no file is a one-line error.

A sample's image is its ``jpg``, ``jpeg``, ``png`` or ``webp`` member (first found, in that order). Items:
``image`` float32 (3, R, R) in [-1, 1], ``caption`` (the ``txt`` member, stripped; "" if none), ``json``
(the raw text of the ``json`` member; "" if none, so every item has the same fields for batching) and
``key`` (``__key__``).

Bad samples (undecodable or missing image, unreadable tar member or shard) are skipped and counted in
``dataset.skips`` (a :class:`~ldmkit.data.skips.SkipCounter` shared with DataLoader workers), without the
0.5 s sleep of ``webdataset.warn_and_continue``.

Scaling: shards are split over DDP ranks (``nodesplitter``) and DataLoader workers (``workersplitter``),
then shuffled per epoch (``detshuffle`` with ``seed``), then samples go through a ``shuffle``-sized buffer.
``resampled=True`` draws shards with replacement forever; with ``epoch_size`` every rank then yields exactly
``epoch_size`` samples per epoch (lock-step DDP, no uneven-shard deadlock). ``epoch_size`` and ``size``
count samples per rank, shared evenly by its DataLoader workers (unlike ``with_epoch``, which counts per
worker); without ``resampled``, ``epoch_size`` loops over the rank's shards to fill the epoch.

``split="val"`` reads ``val_urls`` (the training ``urls`` when it is null) in one deterministic pass:
no resampling or shuffling, centre crop, no flip; use ``size`` to take the first samples for reports.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from urllib.parse import urlparse

import webdataset as wds
from PIL import Image
from torch.utils.data import get_worker_info
from webdataset.filters import detshuffle
from webdataset.shardlists import ResampledShards, expand_urls

from ldmkit.data.skips import SkipCounter, counting_handler
from ldmkit.data.transforms import ImageTransform, decode_image
from ldmkit.errors import UserError

IMAGE_MEMBERS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
NODE_SPLITTERS: dict[str, Callable] = {"split_by_node": wds.split_by_node, "single_node_only": wds.single_node_only}
WORKER_SPLITTERS: dict[str, Callable] = {"split_by_worker": wds.split_by_worker}
SPLITS: tuple[str, ...] = ("train", "val")


def local_path(url: str) -> str | None:
    """The filesystem path of a local shard URL (plain path or ``file:``), or None for pipe:/remote URLs."""
    if url.startswith("pipe:"):
        return None
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return parsed.path
    if len(parsed.scheme) > 1:  # http, https, s3, gs, ... (a one-letter scheme is a Windows drive)
        return None
    return os.path.expanduser(url)


def resolve_urls(urls: str | Sequence[str], option: str = "dataset.urls") -> list[str]:
    """Expand braces and ``::``; a local folder means its ``*.tar``; local shards must exist (UserError)."""
    pattern = urls if isinstance(urls, str) else ", ".join(str(u) for u in urls)
    items = [u for spec in ([urls] if isinstance(urls, str) else urls) for u in expand_urls(str(spec))]
    paths = [local_path(u) for u in items]
    if len(items) == 1 and paths[0] is not None and os.path.isdir(paths[0]):
        items = paths = sorted(glob.glob(os.path.join(glob.escape(paths[0]), "*.tar")))
        if not items:
            raise UserError(f"{option}={pattern}: the folder holds no *.tar shards")
    if not items:
        raise UserError(f"{option}={pattern!r}: no shard URLs given")
    missing = [p for p in paths if p is not None and not os.path.isfile(p)]
    if missing:
        what = "no file matches" if len(missing) == len(items) else f"{len(missing)} of {len(items)} shards missing"
        raise UserError(f"{option}={pattern}: {what} (e.g. {missing[0]})")
    return [p if p is not None else u for u, p in zip(items, paths, strict=True)]


def _pick(table: dict[str, Callable], name: str | None, option: str) -> Callable | None:
    """A splitter function by name (None/"none" = no splitting); UserError naming the valid choices."""
    if name is None or str(name).lower() in ("none", ""):
        return None
    if name not in table:
        raise UserError(f"{option}={name} is not a splitter; valid choices: {', '.join(table)}, null")
    return table[name]


def _text(data: bytes | str | None) -> str:
    """A text member as str ("" when absent)."""
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", "replace")


class ToItem:
    """Raw webdataset sample -> item dict (image, caption, json, key); ``ValueError`` if unusable."""

    def __init__(self, transform: ImageTransform) -> None:
        """Use ``transform`` for the decoded image."""
        self.transform = transform

    def image(self, sample: dict) -> Image.Image:
        """The decoded image member of a sample."""
        where = f"{sample.get('__url__')} {sample.get('__key__')}"
        member = next((m for m in IMAGE_MEMBERS if m in sample), None)
        if member is None:
            members = ", ".join(sorted(k for k in sample if not k.startswith("__"))) or "nothing"
            raise ValueError(f"{where}: no image member (looked for {', '.join(IMAGE_MEMBERS)}; has {members})")
        try:
            return decode_image(sample[member])
        except ValueError as e:
            raise ValueError(f"{where}.{member}: {e}") from None

    def __call__(self, sample: dict) -> dict:
        """The item of one raw sample."""
        return {
            "image": self.transform(self.image(sample)),
            "caption": _text(sample.get("txt")).strip(),
            "json": _text(sample.get("json")),
            "key": sample["__key__"],
        }


def worker_share(total: int) -> int:
    """This DataLoader worker's part of ``total`` samples (all of it outside workers; remainder to the first)."""
    from webdataset.utils import pytorch_worker_info

    _, _, worker, workers = pytorch_worker_info()
    base, extra = divmod(total, workers)
    return base + (1 if worker < extra else 0)


class ShardDataset(wds.WebDataset):
    """``webdataset.WebDataset`` with an optional per-rank sample ``limit`` shared evenly by its workers, whose
    streams can be started at a given epoch and position (exact resume: see :meth:`start_at`)."""

    limit: int | None = None
    skips: SkipCounter
    resume: tuple[int, int, int, int] | None = None

    def start_at(self, epoch: int, batches: int, batch_size: int, num_workers: int) -> None:
        """Make the next pass the one of ``epoch`` (its shard and sample orders) without the ``batches`` already
        read (DataLoader workers hand out batches round-robin)."""
        self.resume = (epoch, batches, batch_size, num_workers)

    def _start_pass(self) -> int:
        """Pick the worker identity this pass plays (webdataset's stages read it from WORKER/NUM_WORKERS) and, when
        resuming, set every seeded stage's pass counter to the epoch; return the samples to skip."""
        info = get_worker_info()
        role, workers = (info.id, info.num_workers) if info else (0, 1)
        skip = 0
        if self.resume is not None:
            epoch, batches, batch_size, _ = self.resume
            self.resume = None
            for stage in self.pipeline:
                if isinstance(stage, SeededShuffle):
                    stage.passes = epoch
                elif isinstance(stage, ResampledShards | detshuffle):
                    stage.epoch = epoch - 1  # they count up before use
            # the loader takes batch j from worker j % workers: let that worker replay the stream the unbroken
            # run read batch (batches + j) from, minus what that stream had already given
            role = (role + batches) % workers
            skip = len(range(role, batches, workers)) * batch_size
        if info is not None:
            os.environ["WORKER"], os.environ["NUM_WORKERS"] = str(role), str(workers)
        return skip

    def __iter__(self) -> Iterator[dict]:
        """Samples of one epoch, stopping after this worker's share of ``limit``."""
        skip = self._start_pass()
        return islice(super().__iter__(), skip, None if self.limit is None else worker_share(self.limit))


def seed_resampling(dataset: wds.WebDataset, seed: int) -> None:
    """webdataset draws resampled shards from os.urandom unless told otherwise: seed them (worker, pass, seed)."""
    for stage in dataset.pipeline:
        if isinstance(stage, ResampledShards):
            stage.deterministic, stage.seed = True, seed


class SizedShardDataset(ShardDataset):
    """A :class:`ShardDataset` with a fixed epoch (``limit`` samples per rank), so it has a length."""

    def __len__(self) -> int:
        """Samples per epoch on this rank."""
        return int(self.limit or 0)


def _check(split: str, shuffle: int, epoch_size: int | None, size: int | None) -> None:
    """Validate the plain options (as user-facing ``dataset.*`` errors)."""
    if split not in SPLITS:
        raise UserError(f"dataset.split={split!r} is not a split; valid choices: {', '.join(SPLITS)}")
    for name, value in (("shuffle", shuffle), ("epoch_size", epoch_size), ("size", size)):
        if value is not None and value < 0:
            raise UserError(f"dataset.{name}={value} must be >= 0")


class SeededShuffle:
    """webdataset's buffer shuffle with an rng seeded by (seed, rank, worker, pass): runs are reproducible, every
    worker draws differently, and each pass over the data in a process gets a new order."""

    def __init__(self, bufsize: int, seed: int) -> None:
        self.bufsize, self.seed, self.passes = bufsize, seed, 0

    def __call__(self, data: Iterator) -> Iterator:
        """Shuffle one pass of the stream."""
        import random

        from webdataset.filters import _shuffle
        from webdataset.utils import pytorch_worker_info

        rank, _, worker, _ = pytorch_worker_info()
        rng = random.Random(f"{self.seed}/{rank}/{worker}/{self.passes}")
        self.passes += 1
        yield from _shuffle(data, self.bufsize, rng=rng)


def wds_dataset(
    urls: str | list[str],
    resolution: int = 256,
    crop: str = "random",
    flip: bool = False,
    shuffle_shards: bool = True,
    shuffle: int = 1000,
    resampled: bool = False,
    epoch_size: int | None = None,
    nodesplitter: str | None = "split_by_node",
    workersplitter: str | None = "split_by_worker",
    seed: int = 0,
    split: str = "train",
    val_urls: str | list[str] | None = None,
    size: int | None = None,
) -> ShardDataset:
    """A webdataset pipeline of image items from shards (see the module doc); bad samples are counted in
    ``.skips``."""
    _check(split, shuffle, epoch_size, size)
    train = split == "train"
    try:
        transform = ImageTransform(resolution, crop if train else "center", flip and train)
    except ValueError as e:
        raise UserError(f"dataset: {e}") from None
    if train or val_urls is None:
        shards = resolve_urls(urls)
    else:
        shards = resolve_urls(val_urls, "dataset.val_urls")
    resampled = resampled and train
    skips = SkipCounter()
    handler = counting_handler(skips)
    limit = size if size is not None else epoch_size if train else None
    cls = SizedShardDataset if size is None and limit is not None else ShardDataset
    dataset = cls(
        shards,
        handler=handler,
        resampled=resampled,
        shardshuffle=len(shards) if shuffle_shards and train and not resampled else False,
        detshuffle=True,
        seed=seed,
        nodesplitter=_pick(NODE_SPLITTERS, nodesplitter, "dataset.nodesplitter"),
        workersplitter=_pick(WORKER_SPLITTERS, workersplitter, "dataset.workersplitter"),
        empty_check=False,
    )
    seed_resampling(dataset, seed)
    if train and epoch_size is not None and not resampled and size is None:
        dataset.repetitions = sys.maxsize  # loop over this rank's shards until the epoch is full
    if train and shuffle:
        dataset = dataset.compose(SeededShuffle(shuffle, seed))
    dataset = dataset.map(ToItem(transform), handler=handler)
    dataset.limit, dataset.skips = limit, skips
    return dataset
