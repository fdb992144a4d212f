"""Sampler quality against cost on ``shapes`` (issue: benchmarks/sampler_quality): for one ``cond=class`` or
``cond=text`` LDM, sample the same single-object conditions with the same seed using every sampler at
10/20/50/100/200 steps, and record per row the model evaluations (NFE, counted by wrapping the denoiser the
sampler receives), wall seconds, the classical scorer's colour and shape accuracy, and KID against as many
real validation images (torch-fidelity Inception; a random-init Inception when the real weights are absent).

Goal: dpmpp_2m at 20 steps within 5 % of ddim at 200 steps (shape accuracy, and KID when computed).
Combinations a sampler refuses (the CompVis ddim/plms step rule) are listed as skipped. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from common import meta

SAMPLERS = "ddpm,ddim,plms,euler,euler_a,heun,dpmpp_2m"
KINDS = {"ClassConditioner": "class", "TextConditioner": "text"}
GOAL_TOLERANCE = 0.05


class CountingSampler:
    """A sampler whose denoiser counts its calls; ``nfe`` is calls per sampler run (one run per batch)."""

    def __init__(self, sampler: Callable[..., torch.Tensor]) -> None:
        self.sampler, self.calls, self.runs = sampler, 0, 0

    def __call__(self, model: Callable[..., torch.Tensor], x: torch.Tensor, schedule: Any, **kwargs: Any) -> torch.Tensor:
        """Run the real sampler on a denoiser that counts each evaluation."""
        def counted(*args: Any, **kw: Any) -> torch.Tensor:
            self.calls += 1
            return model(*args, **kw)

        self.runs += 1
        return self.sampler(counted, x, schedule, **kwargs)

    @property
    def nfe(self) -> float | None:
        """Model evaluations per batch."""
        return self.calls / self.runs if self.runs else None


def model_kind(ldm_dir: Path) -> str:
    """``class`` or ``text`` from the model's meta.json; anything else is refused."""
    cond = meta(ldm_dir).get("cond")
    if cond not in KINDS:
        raise SystemExit(f"{ldm_dir}: needs an LDM trained with cond=class or cond=text, got cond={cond!r}")
    return KINDS[cond]


def conditions(kind: str, per_class: int) -> Any:
    """Every single-object condition of ``kind``, each repeated ``per_class`` times."""
    from ldmkit.evaluation.cond_accuracy import single_object_values

    single = single_object_values(kind)
    return single.repeat_interleave(per_class) if kind == "class" else [v for v in single for _ in range(per_class)]


def reference_images(ldm_dir: Path, n: int) -> torch.Tensor:
    """The first ``n`` validation images of the model's source dataset as uint8."""
    from hydra.utils import instantiate

    from ldmkit.images import to_uint8
    from ldmkit.tasks.generation import source_dataset_cfg

    dataset = instantiate(source_dataset_cfg(ldm_dir), split="val", size=n)
    return to_uint8(torch.stack([dataset[i]["image"] for i in range(n)]))


def inception_weights(out: Path) -> tuple[Path, bool]:
    """The real Inception weights if present, else a random-init stand-in written once; (path, is_random)."""
    from common import write_random_inception

    from ldmkit.evaluation.fid import find_inception_weights

    weights, _ = find_inception_weights(None)
    if weights is not None:
        return weights, False
    path = out / "inception-random.pth"
    return (path if path.is_file() else write_random_inception(path)), True


def measure(ldm: Any, name: str, steps: int, values: Any, args: argparse.Namespace,
            kid: tuple[torch.Tensor, Path] | None) -> dict:
    """One table row: generate ``values`` with sampler ``name`` at ``steps``, count NFE, time, score."""
    from ldmkit.diffusion.samplers import get_sampler
    from ldmkit.evaluation.cond_accuracy import images_accuracy
    from ldmkit.evaluation.fid import fid_kid
    from ldmkit.images import to_uint8
    from ldmkit.tasks.generation import generate

    sampler = CountingSampler(partial(get_sampler(name), steps=steps))
    n = len(values)
    start = time.perf_counter()
    images = generate(ldm, values, n, sampler, args.guidance, seed=args.seed, batch_size=args.batch)
    seconds = round(time.perf_counter() - start, 1)
    acc = images_accuracy(images, values)
    row = {"sampler": name, "steps": steps, "nfe": sampler.nfe, "seconds": seconds,
           "color_acc": acc.get("color_acc"), "shape_acc": acc.get("shape_acc"), "kid": None}
    if kid is not None:
        reference, weights = kid
        scores = fid_kid(to_uint8(images), reference, weights, args.kid_subset_size, args.batch)
        row.update(kid=scores["kid_mean"], kid_std=scores["kid_std"], fid=scores["fid"])
    return row


def within(x: float | None, y: float | None, higher_is_better: bool) -> bool | None:
    """Whether ``x`` is no more than 5 % (of |y|) worse than ``y``; None when either is missing."""
    if x is None or y is None:
        return None
    worse_by = (y - x) if higher_is_better else (x - y)
    return worse_by <= GOAL_TOLERANCE * abs(y)


def goal(rows: list[dict]) -> dict:
    """dpmpp_2m@20 against ddim@200 on shape accuracy (higher is better) and KID (lower is better)."""
    by = {(r["sampler"], r["steps"]): r for r in rows}
    fast, slow = by.get(("dpmpp_2m", 20), {}), by.get(("ddim", 200), {})
    shape_ok = within(fast.get("shape_acc"), slow.get("shape_acc"), higher_is_better=True)
    kid_ok = within(fast.get("kid"), slow.get("kid"), higher_is_better=False)
    checks = [c for c in (shape_ok, kid_ok) if c is not None]
    return {"dpmpp_2m@20 shape_acc": fast.get("shape_acc"), "ddim@200 shape_acc": slow.get("shape_acc"),
            "dpmpp_2m@20 kid": fast.get("kid"), "ddim@200 kid": slow.get("kid"),
            "shape_within_5pct": shape_ok, "kid_within_5pct": kid_ok,
            "within_5pct": all(checks) if shape_ok is not None else None}


def ldm_dir(args: argparse.Namespace, out: Path) -> tuple[Path, dict | None]:
    """The LDM to evaluate: ``--ldm``, or one trained with the CLI like bench_cond_accuracy (and its timings)."""
    if args.ldm:
        return Path(args.ldm), None
    from bench_cond_accuracy import train

    trained = train(out, args.ae_steps, args.ldm_steps, args.size, args.train_batch, [args.cond], args.ae)
    return out / args.cond, trained["seconds"]


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ldm", default=None, help="an existing LDM dir (cond=class or text); else train one")
    parser.add_argument("--samplers", default=SAMPLERS)
    parser.add_argument("--steps", default="10,20,50,100,200")
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=64, help="sampling and Inception batch size")
    parser.add_argument("--kid", action=argparse.BooleanOptionalAction, default=True,
                        help="KID against validation images (~7.5 images/s on CPU at 32 px)")
    parser.add_argument("--kid-subset-size", type=int, default=1000, help="clamped to the number of samples")
    parser.add_argument("--out", default=None, help="working dir (trained models, random Inception)")
    training = parser.add_argument_group("training when --ldm is not given (as bench_cond_accuracy)")
    training.add_argument("--cond", choices=("class", "text"), default="class")
    training.add_argument("--ae", default=None, help="an existing first-stage model dir (skips train-ae)")
    training.add_argument("--ae-steps", type=int, default=1500)
    training.add_argument("--ldm-steps", type=int, default=3000)
    training.add_argument("--size", type=int, default=20000, help="training images encoded")
    training.add_argument("--train-batch", type=int, default=32)
    return parser.parse_args()


def main() -> None:
    """Sample every sampler × steps on one LDM, score each, print the JSON table."""
    import ldmkit as api
    from ldmkit.diffusion.samplers import get_sampler
    from ldmkit.errors import UserError

    args = parse_args()
    names, step_counts = args.samplers.split(","), [int(s) for s in args.steps.split(",")]
    try:
        for name in names:
            get_sampler(name)
    except UserError as exc:
        raise SystemExit(str(exc)) from None
    out = Path(args.out or tempfile.mkdtemp(prefix="sampler_quality_"))
    out.mkdir(parents=True, exist_ok=True)
    model, train_seconds = ldm_dir(args, out)
    kind = model_kind(model)
    ldm = api.load(model)
    values = conditions(kind, args.per_class)
    n = len(values)
    kid, random_inception = None, None
    if args.kid:
        weights, random_inception = inception_weights(out)
        kid = (reference_images(model, n), weights)
    rows, skipped = [], []
    for name in names:
        for steps in step_counts:
            try:
                rows.append(measure(ldm, name, steps, values, args, kid))
            except UserError as exc:
                skipped.append({"sampler": name, "steps": steps, "reason": str(exc)})
    result = {"ldm": str(model), "kind": kind, "guidance": args.guidance, "seed": args.seed, "n": n,
              "kid_inception_random": random_inception, "rows": rows, "skipped": skipped, "goal": goal(rows)}
    if train_seconds is not None:
        result["train_seconds"] = train_seconds
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
