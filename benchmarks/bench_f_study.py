"""The f-study at its CPU default (issue: evaluation and the f-factor study): ``ldmkit f-study -m
f=1,2,4,8,16`` with a random-init Inception stand-in (no real weights offline: FID/KID rank the rows only),
then the paper's two trends are checked: LDM-4 trains >= 2.7x faster than LDM-1 (samples/s), and the best
quality at the last checkpoint lies at f in 4..16. Prints JSON. ``--from DIR`` reads a finished study instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import ldmkit


def summary(results: list[dict]) -> dict:
    """Per f: throughputs and last-checkpoint quality; the two trend checks."""
    rows = {}
    for r in results:
        last = r["checkpoints"][-1]
        rows[f"LDM-{r['f']}"] = {
            "latent": r["latent_shape"], "params": r["params"], "train_samples_per_s": r["train_samples_per_s"],
            "sampling_samples_per_s": last.get("sampling_samples_per_s"),
            **{k: last[k] for k in ("fid", "kid_mean", "shape_acc", "color_acc") if k in last},
        }
    by_f = {r["f"]: r for r in results}
    checks = {}
    if 1 in by_f and 4 in by_f:
        ratio = by_f[4]["train_samples_per_s"] / by_f[1]["train_samples_per_s"]
        checks["ldm4_vs_ldm1_train_throughput"] = {"ratio": round(ratio, 2), "goal": ">= 2.7", "met": ratio >= 2.7}
    for key, lower in (("fid", True), ("shape_acc", False)):
        scored = {f: r["checkpoints"][-1][key] for f, r in by_f.items() if key in r["checkpoints"][-1]}
        if scored:
            best = (min if lower else max)(scored, key=scored.__getitem__)
            checks[f"best_{key}_f"] = {"f": best, "goal": "4..16", "met": 4 <= best <= 16}
    return {"rows": rows, "checks": checks}


def main() -> None:
    """Run (or read) the study and print the summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--from", dest="source", default=None, help="a finished f-study dir to summarise")
    parser.add_argument("--f", default="1,2,4,8,16")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    seconds = None
    if args.source:
        out = Path(args.source)
    else:
        out = Path(args.out or tempfile.mkdtemp(prefix="f_study_"))
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from common import write_random_inception

        weights = write_random_inception(out / "inception-random.pth")
        start = time.perf_counter()
        ldmkit("f-study", "-m", f"f={args.f}", f"inception_weights={weights}", f"out={out}/study")
        seconds = round(time.perf_counter() - start)
        out = out / "study"
    from ldmkit.evaluation.report import collect

    print(json.dumps({"dir": str(out), "wall_seconds": seconds, **summary(collect(out))}, indent=2))


if __name__ == "__main__":
    main()
