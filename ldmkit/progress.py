"""Progress of long loops: a rich bar (count, rate, elapsed, ETA) on a terminal, plain log lines off one (CI logs).

``LDMKIT_PROGRESS=rich|plain|off`` forces a mode; ``LDMKIT_PROGRESS_INTERVAL`` spaces the plain lines (seconds,
default 10; 0 = a line on every update). A plain line has no ``\\r`` and no escape codes and reads like
``encode-dataset: 3200/10000 (32%) 41.2 sample/s, elapsed 0:01:18, ETA 0:02:45``; a loop that ends normally
always gets a final line.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from ldmkit.console import console
from ldmkit.errors import UserError

MODES = ("rich", "plain", "off")
MODE_ENV = "LDMKIT_PROGRESS"
INTERVAL_ENV = "LDMKIT_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0

T = TypeVar("T")


def progress_mode(console: Console) -> str:
    """``rich`` on a terminal, ``plain`` off one, unless ``LDMKIT_PROGRESS`` forces a mode."""
    forced = os.environ.get(MODE_ENV, "").strip().lower()
    if forced and forced not in MODES:
        raise UserError(f"{MODE_ENV}={forced}: choose {', '.join(MODES)} (or unset it: rich on a terminal, else plain)")
    return forced or ("rich" if console.is_terminal else "plain")


def plain_interval() -> float:
    """Seconds between two plain lines of one loop (``LDMKIT_PROGRESS_INTERVAL``, default 10)."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # NaN too
        raise UserError(f"{INTERVAL_ENV}={raw}: must be a number of seconds >= 0")
    return seconds


def duration(seconds: float | None) -> str:
    """``H:MM:SS`` (``?`` when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    whole = int(max(0.0, seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def rate_text(rate: float | None, unit: str) -> str:
    """``41.2 it/s``, or ``25.3 s/it`` below one item per second (``? it/s`` when unknown)."""
    if not rate:
        return f"? {unit}/s"
    return f"{rate:.1f} {unit}/s" if rate >= 1 else f"{1 / rate:.1f} s/{unit}"


def rate_and_eta(completed: float, total: float | None, base: float, elapsed: float) -> tuple[float | None, float | None]:
    """Items per second since the loop started (``base`` items were done before) and the seconds left."""
    done = completed - base
    rate = done / elapsed if done > 0 and elapsed > 0 else None
    if total is not None and completed >= total:
        return rate, 0.0
    return rate, (total - completed) / rate if rate and total is not None else None


def plain_line(description: str, completed: int, total: int | None, unit: str, elapsed: float, base: int = 0,
               info: str = "") -> str:
    """One log line: description, count (and percent), rate, extra info, elapsed and (with a total) ETA."""
    rate, eta = rate_and_eta(completed, total, base, elapsed)
    if total is None:
        count = str(completed)
    else:
        count = f"{completed}/{total} ({100 * completed // total if total else 100}%)"
    parts = [f"{description}: {count} {rate_text(rate, unit)}", *([info] if info else []),
             f"elapsed {duration(elapsed)}", *([f"ETA {duration(eta)}"] if total is not None else [])]
    return ", ".join(parts)


def default_console() -> Console:
    """ldmkit's stderr console (every command reports progress there)."""
    return console


class RateColumn(ProgressColumn):
    """Items per second since the task started (the plain lines' rate)."""

    def render(self, task: Task) -> Text:
        """The task's rate in its unit."""
        rate, _ = rate_and_eta(task.completed, task.total, task.fields.get("base", 0), task.elapsed or 0.0)
        return Text(rate_text(rate, task.fields.get("unit", "it")), style="progress.data.speed")


class EtaColumn(ProgressColumn):
    """Time left at the task's rate (the plain lines' ETA)."""

    def render(self, task: Task) -> Text:
        """``ETA H:MM:SS``."""
        _, eta = rate_and_eta(task.completed, task.total, task.fields.get("base", 0), task.elapsed or 0.0)
        return Text(f"ETA {duration(eta)}", style="progress.remaining")


def rich_columns() -> list[ProgressColumn]:
    """Description, bar, count, percent, rate, info, elapsed, ETA."""
    return [TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TaskProgressColumn(), RateColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(), EtaColumn()]


@dataclass
class PlainTask:
    """A loop reported as plain lines: its state and when it last printed."""

    description: str
    total: int | None
    unit: str
    completed: int
    start: float
    interval: float
    base: int = 0
    info: str = ""
    last: float = 0.0
    printed: tuple | None = None


class Tracker:
    """Progress of a loop (or a few nested ones): a rich bar, throttled plain lines or nothing (see the module doc).

    Use as a context manager; ``add`` a task per loop, ``update`` it as items finish."""

    def __init__(self, console: Console | None = None, transient: bool = False, mode: str | None = None,
                 interval: float | None = None, stream: IO[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        console = console or default_console()
        self.console, self.clock = console, clock
        self.mode = mode or progress_mode(console)
        self.interval = plain_interval() if interval is None else interval
        self.stream = stream or console.file
        self.bar = (Progress(*rich_columns(), console=console, transient=transient, get_time=clock)
                    if self.mode == "rich" else None)
        self.plain: dict[int, PlainTask] = {}
        self.count = 0

    def __enter__(self) -> Tracker:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif exc_type is None:  # an interrupted loop gets no final line: its error is the last word
            for task in self.plain.values():
                self._emit(task, changed_only=True)

    def add(self, description: str, total: int | None = None, unit: str = "it", completed: int = 0,
            plain: bool = True, interval: float | None = None) -> int:
        """A new task (``plain=False``: shown on the rich bar only); ``interval`` overrides the plain spacing."""
        if self.bar is not None:
            return self.bar.add_task(description, total=total, completed=completed, unit=unit, base=completed, info="")
        self.count += 1
        if self.mode == "plain" and plain:
            now = self.clock()
            self.plain[self.count] = PlainTask(description, total, unit, completed, now,
                                               self.interval if interval is None else interval, completed, last=now)
        return self.count

    def update(self, task: int, advance: int = 0, completed: int | None = None, total: int | None = None,
               description: str | None = None, info: str | None = None, skipped: int = 0) -> None:
        """Move a task on; ``skipped`` of the items advanced took no time (left out of the rate)."""
        if self.bar is not None:
            base = next(t for t in self.bar.tasks if t.id == task).fields["base"] + skipped
            self.bar.update(task, advance=advance or None, completed=completed, total=total, description=description,
                            base=base, **({"info": info} if info is not None else {}))
            return
        state = self.plain.get(task)
        if state is None:
            return
        renamed = description is not None and description != state.description
        state.completed = (state.completed if completed is None else completed) + advance
        state.base += skipped
        state.total = state.total if total is None else total
        state.description = state.description if description is None else description
        state.info = state.info if info is None else info
        if renamed or self.clock() - state.last >= state.interval:
            self._emit(state, changed_only=True)

    def reset(self, task: int, total: int | None = None) -> None:
        """Start a task again from zero (a new inner loop; ``total`` None keeps the total)."""
        if self.bar is not None:
            self.bar.reset(task, total=total, base=0)
        elif task in self.plain:
            state = self.plain[task]
            state.completed, state.base, state.start = 0, 0, self.clock()
            state.total = state.total if total is None else total

    def _emit(self, task: PlainTask, changed_only: bool = False) -> None:
        """Write the task's line (``changed_only``: unless the last line said the same)."""
        now = self.clock()
        key = (task.description, task.completed, task.total, task.info)
        if changed_only and key == task.printed:
            return
        line = plain_line(task.description, task.completed, task.total, task.unit, now - task.start, task.base,
                          task.info)
        self.stream.write(line + "\n")
        self.stream.flush()
        task.last, task.printed = now, key


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "it",
          size: Callable[[T], int] | None = None, console: Console | None = None) -> Iterator[T]:
    """Yield ``items`` while reporting them as one loop (each counts ``size(item)``, default 1)."""
    with Tracker(console) as tracker:
        task = tracker.add(description, total, unit)
        for item in items:
            yield item
            tracker.update(task, advance=size(item) if size else 1)
