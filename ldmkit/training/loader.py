"""The training DataLoader: a seeded, DDP-aware epoch sampler that can start mid-epoch, so a resumed run reads
exactly the batches an unbroken run would have read."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler


def _rank_world() -> tuple[int, int]:
    """This process's DDP rank and the world size (0, 1 outside torch.distributed)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochSampler(Sampler[int]):
    """A fresh permutation per epoch from ``(seed, epoch)`` alone (no global RNG), split over DDP ranks (rank r takes
    every world-th index; the tail that does not divide evenly is dropped), optionally skipping the first samples
    of one epoch (``start``), which is how a resumed run continues mid-epoch."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seed, self.epoch = size, int(seed), 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at each epoch start."""
        self.epoch = epoch

    def start(self, epoch: int, skip: int) -> None:
        """Begin the next iteration at ``epoch``, leaving out its first ``skip`` samples of this rank."""
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        """Samples per epoch on this rank (the full epoch, also when resuming mid-epoch)."""
        return self.size // _rank_world()[1]

    def __iter__(self) -> Iterator[int]:
        """This rank's indices of the epoch's permutation, after the samples to skip."""
        rank, world = _rank_world()
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        mine = order[: len(self) * world][rank::world].tolist()
        skip, self.skip = self.skip, 0
        return iter(mine[skip:])


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, seed: int) -> DataLoader:
    """The training loader: full batches only; map-style data through an :class:`EpochSampler`; worker seeds drawn
    from a private generator, so creating the iterator never consumes the global RNG (resumable runs)."""
    iterable = isinstance(dataset, IterableDataset)
    if iterable and hasattr(dataset, "start_at"):
        dataset.start_at(0, 0, batch_size, num_workers)  # epoch 0 = pass 0, whatever read the stream before
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=None if iterable else EpochSampler(len(dataset), seed),
        drop_last=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(int(seed)),
    )


def start_mid_epoch(loader: DataLoader, epoch: int, batches: int) -> bool:
    """Make ``loader`` begin at ``epoch`` after ``batches`` finished batches; False when it cannot (a stream
    without a ``start_at`` method)."""
    if isinstance(loader.sampler, EpochSampler):
        loader.sampler.start(epoch, batches * loader.batch_size)
        return True
    start = getattr(loader.dataset, "start_at", None)  # a stream that can skip (per worker) what was read
    if start is None:
        return False
    start(epoch, batches, loader.batch_size, loader.num_workers)
    return True
