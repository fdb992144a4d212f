"""Run benchmark scripts of this folder (default: the standard suite) and print their JSON results as one
object; ``--only a,b`` picks scripts by name (``unet_throughput`` = bench_unet_throughput.py)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
# the suite `make bench` runs (long ones last); bench_cond_accuracy, bench_f_study and bench_quality_levers run on
# request (hours)
SUITE = ["unet_throughput", "f_throughput", "eval_memory", "latent_vs_pixel", "demo_time", "ae_table",
         "sampler_quality"]


def main() -> None:
    """Each ``bench_<name>.py`` prints one JSON object; collect them by name (also into ``--save``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SUITE), help="comma-separated script names")
    parser.add_argument("--save", default=None, help="also write the JSON here")
    args = parser.parse_args()
    results = {}
    for name in args.only.split(","):
        script = HERE / f"bench_{name.strip()}.py"
        if not script.exists():
            known = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
            raise SystemExit(f"no benchmark {name!r}; choose from {', '.join(known)}")
        print(f"running {script.name} ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout
        results[name] = json.loads(out)
        if args.save:
            Path(args.save).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
