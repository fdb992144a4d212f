"""Helpers the benchmark scripts share: run the real ``ldmkit`` CLI, time it, read model dirs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' offline weight stand-ins
from stand_ins import write_random_inception  # noqa: E402, F401 - re-exported for the benchmark scripts


def ldmkit(*args: str) -> float:
    """Run ``ldmkit ARGS`` (the console script of this interpreter); return its wall time in seconds."""
    start = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).with_name("ldmkit")), *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"ldmkit {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return round(time.perf_counter() - start, 1)


def meta(model_dir: Path) -> dict:
    """A model dir's meta.json."""
    return json.loads((Path(model_dir) / "meta.json").read_text())
