"""Peak RSS of ``ldmkit eval-fid`` (issue: evaluation) at N samples vs 4N: samples are generated, scored and
dropped batch by batch, so memory should not grow with N (goal: within 10 %). Prints JSON.

A tiny class-conditional LDM is trained first (quality is irrelevant here); Inception is a random-init stand-in
(no real weights offline): the cost is the same as the real network's. Each eval-fid runs in a fresh wrapper
process whose only child is the CLI, so RUSAGE_CHILDREN's max RSS is that run's peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ldmkit

WRAPPER = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def peak_rss_mib(*args: str) -> float:
    """Peak RSS (MiB) of one ``ldmkit ARGS`` run."""
    exe = str(Path(sys.executable).with_name("ldmkit"))
    proc = subprocess.run([sys.executable, "-c", WRAPPER, exe, *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"ldmkit {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return round(int(proc.stdout.strip().splitlines()[-1]) / 1024, 1)


def main() -> None:
    """Train a tiny LDM, run eval-fid at each N, print peak RSS per N and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", default="500,2000")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="eval_memory_"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from common import write_random_inception

    weights = write_random_inception(out / "inception-random.pth")
    ldmkit("train-ae", "trainer.max_steps=2", "loss.perceptual=null", "loss.discriminator=null", "report.images=8",
           "report.grid=2", f"out={out}/ae")
    ldmkit("train-ldm", f"ae={out}/ae", "cond=class", "trainer.max_steps=10", f"out={out}/ldm")
    peaks = {}
    for n in (int(s) for s in args.samples.split(",")):
        runs = [peak_rss_mib("eval-fid", f"ckpt={out}/ldm", f"samples={n}", "sampler.steps=10",
                             f"inception_weights={weights}", f"cache_dir={out}/cache_{n}_{r}", f"out={out}/e{n}_{r}")
                for r in range(args.repeats)]
        peaks[n] = statistics.median(runs)
    small, large = peaks[min(peaks)], peaks[max(peaks)]
    print(json.dumps({"peak_rss_mib": {str(k): v for k, v in peaks.items()}, "ratio": round(large / small, 3),
                      "goal": "<= 1.10", "met": large / small <= 1.10, "out": str(out)}, indent=2))


if __name__ == "__main__":
    main()
