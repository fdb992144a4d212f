"""Paper Table 8 at small scale: every first-stage preset trained for the same step budget on ``shapes``,
then PSNR / SSIM / rFID of validation reconstructions. Prints JSON.

Runs the real CLI (``ldmkit train-ae``) per preset. LPIPS is off (no VGG16 weights offline) unless
``--lpips PATH`` is given; rFID uses the torch hub Inception weights when present, else a random-init
Inception written here (then rFID only ranks the rows of this table).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import ldmkit, meta

PRESETS = ["kl_f4", "vq_f4", "kl_f8", "vq_f8", "kl_f16", "vq_f16", "kl_f32"]


def run_preset(name: str, steps: int, out: Path, inception: Path, lpips: str | None) -> dict:
    """Train one preset with ``ldmkit train-ae`` and return its meta.json metrics and wall time."""
    resolution = 64 if name.endswith("f32") else 32  # f=32 needs at least 64 px
    perceptual = [f"loss.perceptual.weights={lpips}"] if lpips else ["loss.perceptual=null"]
    seconds = ldmkit(
        "train-ae", f"first_stage={name}",
        f"trainer.max_steps={steps}", f"dataset.resolution={resolution}", "optim.lr=1e-3",
        f"loss.disc_start={steps // 2}", "report.images=500", f"report.inception_weights={inception}",
        "report.on_missing_weights=error", f"out={out / name}", *perceptual,
    )
    info = meta(out / name)
    m = info["metrics"]
    return {
        "preset": name, "f": info["f"], "latent_shape": info["latent_shape"], "resolution": resolution,
        "steps": info["steps"], "psnr": m["val_psnr"], "ssim": m["val_ssim"], "rfid": m.get("val_rfid"),
        "l1": m["val_l1"], "seconds": seconds,
    }


def main() -> None:
    """Train every preset at the same budget and print the table as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--lpips", default=None, help="VGG16 state dict for LPIPS (default: LPIPS off)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from common import write_random_inception

    from ldmkit.evaluation.fid import find_inception_weights

    out = Path(args.out or tempfile.mkdtemp(prefix="ae_table_"))
    inception, _ = find_inception_weights(None)
    stand_in = inception is None
    if stand_in:
        inception = write_random_inception(out / "inception-random.pth")
    rows = [run_preset(p, args.steps, out, inception, args.lpips) for p in args.presets.split(",")]
    print(json.dumps({"steps": args.steps, "lpips": bool(args.lpips), "rfid_inception_random": stand_in,
                      "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
