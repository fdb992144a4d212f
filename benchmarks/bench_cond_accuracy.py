"""Conditional accuracy on ``shapes`` (issue: diffusion model and conditioning): train ``cond=class`` and
``cond=text`` LDMs for a fixed step budget with the real CLI, sample at guidance 3 and check with the classical
scorer (``ldmkit.evaluation.shapes_scorer``) how often a sample shows the requested colour and shape.

Two request sets per model: one condition per class ("single": label 0..17 or "a red circle"), and the
conditions of validation images ("val": labels, or whole captions with their object count). Reference rows
score the real validation images and their first-stage reconstructions (the ceiling a sample can reach).
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path

from common import ldmkit, meta
from torch.utils.data import default_collate

GOAL = {"color_acc": 0.90, "shape_acc": 0.75}


def train(out: Path, ae_steps: int, ldm_steps: int, size: int, batch: int, conds: list[str], ae: str | None) -> dict:
    """First stage (unless given), latent shards, one LDM per conditioner; wall seconds per stage."""
    seconds = {}
    if ae is None:
        ae = str(out / "ae")
        seconds["train_ae"] = ldmkit("train-ae", f"trainer.max_steps={ae_steps}", "optim.lr=1e-3",
                                     "loss.perceptual=null", "report.images=64", f"out={ae}")
    seconds["encode"] = ldmkit("encode-dataset", f"ae={ae}", f"dataset.size={size}", f"out={out / 'latents'}")
    for cond in conds:
        seconds[f"train_ldm_{cond}"] = ldmkit(
            "train-ldm", f"ae={ae}", "dataset=latents", f"dataset.path={out / 'latents'}", f"cond={cond}",
            f"trainer.max_steps={ldm_steps}", f"loader.batch_size={batch}", "optim.lr=1e-3", f"out={out / cond}")
    return {"ae": ae, "seconds": seconds}


def reference_rows(ae: str, n: int) -> dict:
    """Scorer accuracy on real validation images and on their reconstructions by the first stage."""
    import ldmkit as api
    from ldmkit.data.shapes import ShapesDataset
    from ldmkit.evaluation.reconstruction import reconstruct
    from ldmkit.evaluation.shapes_scorer import accuracy, requests_from_scene

    ds = ShapesDataset(size=n, split="val")
    items = default_collate([ds[i] for i in range(n)])
    requests = [requests_from_scene(s) for s in items["scene"]]
    recon = reconstruct(api.load(ae), items["image"])
    return {"dataset": accuracy(items["image"], requests), "reconstructions": accuracy(recon, requests)}


def model_rows(model_dir: Path, cond: str, per_class: int, n_val: int, guidance: float, steps: int) -> dict:
    """Sample the single-object and validation request sets at ``guidance`` and score them."""
    import ldmkit as api
    from ldmkit.diffusion.samplers import get_sampler
    from ldmkit.evaluation.cond_accuracy import images_accuracy, single_object_values
    from ldmkit.tasks.generation import generate, reference_values, source_dataset_cfg

    ldm = api.load(model_dir)
    sampler = partial(get_sampler("ddim"), steps=steps)
    single = single_object_values(cond)
    single = single.repeat_interleave(per_class) if cond == "class" else [v for v in single for _ in range(per_class)]
    val = reference_values(source_dataset_cfg(model_dir), ldm.cond, n_val)
    rows = {}
    for name, values in (("single", single), ("val", val)):
        start = time.perf_counter()
        images = generate(ldm, values, len(values), sampler, guidance, seed=0, batch_size=64)
        rows[name] = {**images_accuracy(images, values), "seconds": round(time.perf_counter() - start, 1)}
    rows["steps"] = meta(model_dir)["steps"]
    return rows


def main() -> None:
    """Train, sample, score; print the JSON table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ae", default=None, help="an existing first-stage model dir (skips train-ae)")
    parser.add_argument("--ae-steps", type=int, default=1500)
    parser.add_argument("--ldm-steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=20000, help="training images encoded")
    parser.add_argument("--conds", default="class,text")
    parser.add_argument("--per-class", type=int, default=16)
    parser.add_argument("--val", type=int, default=288)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--sampler-steps", type=int, default=50)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="cond_accuracy_"))
    conds = args.conds.split(",")
    trained = train(out, args.ae_steps, args.ldm_steps, args.size, args.batch, conds, args.ae)
    result = {
        "budget": {"ae_steps": args.ae_steps, "ldm_steps": args.ldm_steps, "batch": args.batch, "images": args.size,
                   "sampler": f"ddim {args.sampler_steps}", "guidance": args.guidance},
        "goal": GOAL,
        "seconds": trained["seconds"],
        "reference": reference_rows(trained["ae"], args.val),
        "models": {c: model_rows(out / c, c, args.per_class, args.val, args.guidance, args.sampler_steps) for c in conds},
        "out": str(out),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
