"""Which pages the docs tests read, in reading order, and their fenced code blocks."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERATED = "docs/config/"  # the config reference, written from conf/ (tests/cli/test_help.py keeps it in sync)
# reading order: a page may use what an earlier one wrote; pages not listed run after these, sorted
ORDER = [
    "README.md",
    "docs/index.md",
    "docs/commands/train-ae.md",
    "docs/commands/info.md",
    "docs/commands/encode-dataset.md",
    "docs/commands/train-ldm.md",
    "docs/commands/sample.md",
    "docs/commands/eval-fid.md",
    "docs/commands/import-compvis.md",
    "docs/commands/f-study.md",
    "docs/f-study.md",
    "docs/commands/report.md",
    "docs/groups/dataset.md",
    "docs/groups/first_stage.md",
    "docs/groups/f.md",
    "docs/groups/cond.md",
    "docs/groups/sampler.md",
    "docs/groups/unet.md",
    "docs/groups/trainer.md",
    "docs/groups/logger.md",
    "docs/import-compvis.md",
    "docs/reliability.md",
]


def pages() -> list[str]:
    """Every page with code, in reading order (README first)."""
    found = {"README.md", *(p.relative_to(REPO).as_posix() for p in (REPO / "docs").rglob("*.md"))}
    return [p for p in ORDER if p in found] + sorted(found - set(ORDER))


FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)


def blocks(text: str) -> list[tuple[str, str, int]]:
    """(info string, body, line number) of every fenced code block."""
    return [(m[1].lower(), m[2], text[:m.start()].count("\n") + 1) for m in FENCE.finditer(text)]
