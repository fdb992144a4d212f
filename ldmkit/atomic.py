"""Crash-safe writes: each file goes to a temporary name in its own folder, is fsynced, then renamed over the
target, so a crash (SIGKILL, power loss) at any moment leaves either the previous version or the new one."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_name(path: Path) -> Path:
    """A hidden temporary sibling of ``path`` that keeps its suffix (PIL picks the format from it)."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def leftovers(path: str | Path) -> list[Path]:
    """Temporaries of ``path`` left behind by killed writers (any process): hidden, never read, safe to remove
    when no other process is writing ``path``."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.stem)}.tmp-*{glob.escape(path.suffix)}"))


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's) contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_paths(*paths: str | Path) -> Iterator[list[Path]]:
    """Yield temporary paths for ``paths``; when the block succeeds, rename all of them over their targets
    (the slow writes happen before any rename); when it fails, remove them and keep the old files."""
    targets = [Path(p) for p in paths]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
    temps = [temp_name(t) for t in targets]
    try:
        yield temps
        for tmp in temps:
            _fsync(tmp)
        for tmp, target in zip(temps, targets, strict=True):
            os.replace(tmp, target)
        for folder in {t.parent for t in targets}:
            _fsync(folder)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path for ``path``; on success it replaces ``path`` in one rename."""
    with atomic_paths(path) as (tmp,):
        yield tmp


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))
