"""Wall time of ``make demo`` (train-ae, encode-dataset, train-ldm, sample, eval-fid on the built-in data; goal
<= 10 minutes on this machine), each command timed separately from make's own trace. Prints JSON."""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    """Run the demo into a scratch dir with timestamps per command; print the times and the models' speeds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="where the demo writes (default: a temporary dir)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="ldmkit-demo-"))
    # make echoes each command before running it: a timestamp per echoed line splits the wall time by command
    start = time.perf_counter()
    proc = subprocess.Popen(["make", "-s", "--no-print-directory", "demo", f"DEMO={out}", "SHELL=/bin/bash",
                             ".SHELLFLAGS=-xc"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marks: list[tuple[str, float]] = []
    for line in proc.stderr:
        if line.startswith("+ ") and "ldmkit " in line:
            command = line.split("ldmkit ", 1)[1].split()[0]
            marks.append((command, time.perf_counter() - start))
    if proc.wait():
        raise SystemExit(f"make demo failed with exit code {proc.returncode}")
    total = time.perf_counter() - start
    ends = [m[1] for m in marks[1:]] + [total]
    steps = {name: round(end - begin, 1) for (name, begin), end in zip(marks, ends, strict=True)}
    ae, ldm = (json.loads((out / d / "meta.json").read_text()) for d in ("ae", "ldm"))
    print(json.dumps({"date": datetime.date.today().isoformat(), "wall_s": round(total, 1),
                      "goal_s": 600, "met": total <= 600, "commands_s": steps,
                      "ae_steps": ae.get("steps"), "ldm_steps": ldm.get("steps"),
                      "ldm_train_samples_per_s": ldm.get("train_samples_per_s"), "out": str(out)}, indent=2))


if __name__ == "__main__":
    main()
