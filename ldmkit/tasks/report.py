"""``ldmkit report DIR``: the f-study table and plots from the result.json files under DIR."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ldmkit.console import console
from ldmkit.evaluation.report import write_report


def run(cfg: DictConfig) -> None:
    """Write DIR/report.md and the plots."""
    path = write_report(Path(str(cfg.dir)))
    console.print(path.read_text())
    console.print(f"-> {path}")
