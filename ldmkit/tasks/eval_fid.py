"""``ldmkit eval-fid``: FID / KID of an LDM's samples (or an image folder) against the dataset; rFID of an AE."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.table import Table

from ldmkit import modeldir
from ldmkit.data.access import first_items
from ldmkit.diffusion.guidance import guidance_scale
from ldmkit.errors import UserError
from ldmkit.evaluation.fid import fid_kid, find_inception_weights
from ldmkit.evaluation.reconstruction import reconstruct, reconstruction_metrics
from ldmkit.tasks.common import console, device, run_dir, save_grid, save_png, to_uint8
from ldmkit.tasks.generation import generate, reference_conditions

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def load_folder(path: Path, n: int) -> tuple[torch.Tensor, int]:
    """Up to ``n`` RGB images of one size from a folder as uint8 (N, 3, H, W); unreadable files are skipped."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    if not path.is_dir():
        raise UserError(f"images={path} is not a folder")
    images, skipped = [], 0
    for file in sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            with Image.open(file) as im:
                images.append(torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1))
        except (OSError, UnidentifiedImageError):
            skipped += 1
        if len(images) == n:
            break
    if len(images) < 2:
        raise UserError(f"images={path}: found {len(images)} readable images, need at least 2")
    if len({tuple(im.shape) for im in images}) > 1:
        raise UserError(f"images={path}: images differ in size; resize them to one size first")
    return torch.stack(images), skipped


def run(cfg: DictConfig) -> None:
    """Generate (or read) ``samples`` images, compare with as many dataset images, write metrics.json."""
    out = run_dir()
    n = int(cfg.samples)
    if n < 2:
        raise UserError(f"--samples {n}: need at least 2")
    weights, reason = find_inception_weights(cfg.inception_weights)
    if weights is None and cfg.on_missing_weights != "skip":
        raise UserError(reason)
    if cfg.ae:
        return _eval_first_stage(cfg, n, weights, reason, out)
    if cfg.images:
        generated, skipped = load_folder(Path(cfg.images), n)
        source = {"images": str(Path(cfg.images).resolve()), "skipped_unreadable": skipped}
    else:
        ckpt = modeldir.resolve(cfg.ckpt, "ldm", "ckpt")
        ldm = modeldir.load(ckpt, use_ema=cfg.use_ema).to(device())
        values = reference_conditions(ldm, ckpt, n)
        guidance = guidance_scale(cfg.guidance, ldm.cond)
        images = generate(ldm, values, n, instantiate(cfg.sampler), guidance, cfg.seed, cfg.batch_size)
        (out / "samples").mkdir(exist_ok=True)
        for i, image in enumerate(images):
            save_png(image, out / "samples" / f"{i:06d}.png")
        generated = to_uint8(images)
        source = {"ckpt": str(ckpt.resolve()), "guidance": guidance, "sampler": dict(cfg.sampler)}
    reference = to_uint8(torch.stack([x["image"] for x in first_items(instantiate(cfg.dataset, size=n), n)]))
    metrics = {"samples": len(generated), "reference": len(reference), **source}
    if weights is None:
        console.print(f"skipped FID/KID: {reason}")
        metrics.update({"fid": None, "kid_mean": None, "kid_std": None, "skipped": reason})
    else:
        metrics.update(fid_kid(generated, reference, weights, cfg.kid_subset_size, cfg.batch_size))
        metrics["inception_weights"] = str(weights)
    modeldir.write_json(out / "metrics.json", metrics)
    _print_table(metrics)


def _eval_first_stage(cfg: DictConfig, n: int, weights: Path | None, reason: str, out: Path) -> None:
    """Reconstruction metrics of a first stage (ae=DIR) on ``n`` dataset images: PSNR, SSIM, L1, rFID."""
    ae_dir = modeldir.resolve(cfg.ae, "first_stage", "ae")
    stage = modeldir.load(ae_dir).to(device())
    images = torch.stack([x["image"] for x in first_items(instantiate(cfg.dataset, size=n), n)])
    rec = reconstruct(stage, images, cfg.batch_size)
    k = min(8, n)
    save_grid(torch.cat([images[:k], rec[:k]]), out / "reconstructions.png", nrow=k)
    metrics = {"ae": str(ae_dir.resolve()), **reconstruction_metrics(images, rec, weights, cfg.batch_size)}
    if weights is None:
        console.print(f"skipped rFID: {reason}")
        metrics.update({"rfid": None, "skipped": reason})
    else:
        metrics["inception_weights"] = str(weights)
    modeldir.write_json(out / "metrics.json", metrics)
    _print_table(metrics, ("rfid", "rkid", "psnr", "ssim", "l1", "images"))


def _print_table(metrics: dict, keys: tuple = ("fid", "kid_mean", "kid_std", "samples", "reference")) -> None:
    """A rich table of the numeric metrics."""
    table = Table(title="eval-fid")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in keys:
        value = metrics.get(key)
        table.add_row(key, "skipped" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value)))
    console.print(table)
