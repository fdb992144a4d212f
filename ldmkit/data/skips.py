"""Counting skipped (broken) samples across DataLoader worker processes.

A :class:`SkipCounter` keeps its state in shared memory (``RawValue``/``RawArray`` + a lock), created in
the process that builds the dataset. DataLoader workers inherit it (fork) or receive it while they are
being started (spawn/forkserver pickle it then), so every worker adds to the same count and the main
process sees the total. It holds the count, the last ``examples`` reasons (a ring buffer of fixed-width
UTF-8 slots) and, optionally, a bitmap of item indices so a map-style dataset counts each bad file once
however many times (or in however many workers) it is met. Counts are per process tree, i.e. per DDP rank.

Pickled outside process start-up (``copy.deepcopy``, ``pickle.dumps``) a counter becomes a detached
snapshot: same numbers, new shared memory.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
from multiprocessing import context as mp_context
from multiprocessing.sharedctypes import RawArray, RawValue

log = logging.getLogger(__name__)

# The lock comes from the "spawn" context: such a lock is inherited by forked workers and can also be
# passed to spawn/forkserver workers (a fork-context lock cannot), whatever the DataLoader uses.
_LOCKS = multiprocessing.get_context("spawn")
REASON_BYTES = 240  # width of one stored reason, UTF-8 bytes (longer reasons are cut)


def _fit(reason: str, width: int) -> bytes:
    """UTF-8 bytes of ``reason`` cut to ``width`` without splitting a character."""
    return reason.encode("utf-8")[:width].decode("utf-8", "ignore").encode("utf-8")


class SkipCounter:
    """Process-shared count of skipped samples, with the last few reasons and optional per-item dedup."""

    def __init__(self, examples: int = 8, items: int = 0, log_first: int = 5) -> None:
        """Keep up to ``examples`` recent reasons; ``items`` > 0 enables dedup by index in ``range(items)``;
        the first ``log_first`` skips are also logged as warnings."""
        if examples < 1 or items < 0:
            raise ValueError(f"need examples >= 1 and items >= 0, got {examples} and {items}")
        self.examples, self.items, self.log_first = int(examples), int(items), int(log_first)
        self._lock = _LOCKS.Lock()  # guards the three shared buffers below
        self._count = RawValue("q", 0)
        self._reasons = RawArray("c", self.examples * REASON_BYTES)
        self._seen = RawArray("B", (self.items + 7) // 8 or 1)

    def __getstate__(self) -> dict:
        """Share the memory while a worker process is being started; otherwise pickle a snapshot."""
        state = {k: getattr(self, k) for k in ("examples", "items", "log_first")}
        if mp_context.get_spawning_popen() is not None:
            return {**state, "shared": (self._lock, self._count, self._reasons, self._seen)}
        with self._lock:
            return {**state, "count": self._count.value, "reasons": bytes(self._reasons),
                    "seen": bytes(self._seen)}

    def __setstate__(self, state: dict) -> None:
        """Rebuild from :meth:`__getstate__` (shared memory, or a snapshot copied into new memory)."""
        self.examples, self.items, self.log_first = state["examples"], state["items"], state["log_first"]
        if "shared" in state:
            self._lock, self._count, self._reasons, self._seen = state["shared"]
            return
        self._lock = _LOCKS.Lock()
        self._count = RawValue("q", state["count"])
        self._reasons = RawArray("c", len(state["reasons"]))
        self._reasons[:] = state["reasons"]
        self._seen = RawArray("B", len(state["seen"]))
        self._seen[:] = state["seen"]

    def _check_item(self, item: int) -> tuple[int, int]:
        """Byte index and bit mask of an item in the dedup bitmap."""
        if not 0 <= item < self.items:
            raise IndexError(f"item {item} outside the counter's range [0, {self.items})")
        return item // 8, 1 << (item % 8)

    def is_skipped(self, item: int) -> bool:
        """Whether ``item`` has already been recorded as skipped (needs ``items`` > 0)."""
        byte, bit = self._check_item(item)
        return bool(self._seen[byte] & bit)

    def skip(self, reason: str, item: int | None = None) -> bool:
        """Record one skipped sample; with ``item``, only the first time that item is reported (returns
        whether it was counted)."""
        with self._lock:
            if item is not None:
                byte, bit = self._check_item(item)
                if self._seen[byte] & bit:
                    return False
                self._seen[byte] |= bit
            n = self._count.value
            slot = (n % self.examples) * REASON_BYTES
            self._reasons[slot : slot + REASON_BYTES] = _fit(reason, REASON_BYTES).ljust(REASON_BYTES, b"\0")
            self._count.value = n + 1
        if n < self.log_first:
            log.warning("skipped a bad sample (%d so far): %s", n + 1, reason)
        return True

    @property
    def count(self) -> int:
        """Number of samples skipped so far, over all processes sharing this counter."""
        return int(self._count.value)

    def reasons(self) -> list[str]:
        """The last (up to ``examples``) reasons, oldest first."""
        with self._lock:
            n, raw = self._count.value, bytes(self._reasons)
        first = max(0, n - self.examples)
        out = []
        for i in range(first, n):
            slot = (i % self.examples) * REASON_BYTES
            out.append(raw[slot : slot + REASON_BYTES].rstrip(b"\0").decode("utf-8", "replace"))
        return out

    def summary(self) -> dict:
        """``{"skipped": count, "examples": [last reasons, oldest first]}``."""
        reasons = self.reasons()
        return {"skipped": self.count, "examples": reasons}

    def __repr__(self) -> str:
        """Short description with the current count."""
        return f"SkipCounter(count={self.count})"


def describe(exn: BaseException) -> str:
    """A one-line reason for an exception; webdataset's ``DecodingError`` (no message) reports its cause."""
    from webdataset.autodecode import DecodingError

    key = getattr(exn, "key", None)
    if key is not None and getattr(exn, "k", None):
        key = f"{key}.{exn.k}"
    where = " ".join(str(x) for x in (getattr(exn, "url", None), key) if x)
    shown = exn
    if exn.__cause__ is not None and (isinstance(exn, DecodingError) or not str(exn)):
        shown = exn.__cause__
    lines = str(shown).splitlines()
    text = f"{type(shown).__name__}: {lines[0]}" if lines else type(shown).__name__
    return f"{where}: {text}" if where else text


class CountingHandler:
    """A webdataset ``handler=`` that records each exception in a :class:`SkipCounter` and continues."""

    def __init__(self, counter: SkipCounter) -> None:
        """Record into ``counter``."""
        self.counter = counter

    def __call__(self, exn: Exception) -> bool:
        """Count ``exn`` and tell webdataset to go on with the next sample (no sleep, unlike warn_and_continue)."""
        self.counter.skip(describe(exn))
        return True


def counting_handler(counter: SkipCounter) -> Callable[[Exception], bool]:
    """A webdataset ``handler=``: record the exception in ``counter`` and continue, without sleeping
    (a picklable object, so spawn-started DataLoader workers can receive it)."""
    return CountingHandler(counter)


class SkipsBrokenItems:
    """Map-style datasets over ``files`` whose broken items are skipped: item ``i`` is the next readable one
    (wrapping) and each broken file is counted once in ``skips``; needs ``files``, ``skips``, ``root``, ``split``
    and ``load(index)`` (raising ``ValueError``/``OSError`` for an unusable file)."""

    noun = "items"  # what the files are called in the all-broken error

    def try_load(self, index: int) -> dict | None:
        """Item ``index``, or None if its file is broken (counted once in ``skips``)."""
        if self.skips.is_skipped(index):
            return None
        try:
            return self.load(index)
        except (ValueError, OSError) as e:
            self.skips.skip(f"{self.files[index]}: {e}", item=index)
            return None

    def __getitem__(self, index: int) -> dict:
        """Item ``index``, or the next readable one (wrapping) if its file is broken (counted once)."""
        from ldmkit.errors import UserError

        n = len(self.files)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} {self.noun}")
        for step in range(n):
            item = self.try_load((index + step) % n)
            if item is not None:
                return item
        raise UserError(f"dataset.path={self.root}: none of the {n} {self.noun} of the {self.split} split "
                        f"can be read (e.g. {self.skips.reasons()[-1]})")
