"""Run every benchmark script in this folder and print their JSON results as one object."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def main() -> None:
    """Each ``bench_*.py`` prints one JSON object; collect them by name."""
    results = {}
    for script in sorted(Path(__file__).parent.glob("bench_*.py")):
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout
        results[script.stem] = json.loads(out)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
