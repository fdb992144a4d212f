"""``ldmkit eval-fid``: FID / IS / KID / precision-recall of an LDM's samples (conditions drawn from the reference
set), of an image folder, or of a first stage's reconstructions (rFID), against a dataset or an image folder.

Everything streams: samples are generated, scored and dropped batch by batch (only Inception features are
kept), and reference features are cached under a content hash (see :mod:`ldmkit.evaluation.features`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import islice, tee
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.table import Table
from torch.utils.data import default_collate

from ldmkit import modeldir
from ldmkit.console import console
from ldmkit.data.access import EachOnce, first_item
from ldmkit.devices import device
from ldmkit.diffusion.guidance import guidance_scale
from ldmkit.errors import UserError
from ldmkit.evaluation.features import (
    EXTRACTOR,
    FeatureSet,
    InceptionFeatures,
    bound_heap_growth,
    check_metrics,
    compute_metrics,
    content_hash,
    load_cached,
    save_cached,
)
from ldmkit.evaluation.fid import find_inception_weights
from ldmkit.images import save_grid, save_png, to_uint8
from ldmkit.models.conditioners import NoConditioner, cycled_values
from ldmkit.progress import duration, track
from ldmkit.speed import Speed, for_sampling
from ldmkit.tasks.common import run_dir
from ldmkit.tasks.generation import check_guidance, generate_stream, source_dataset_cfg, stored_conditions


def folder_dataset(path: str, option: str):
    """All images of a folder (no val split), centre-cropped to the shorter side of its first image."""
    from PIL import Image

    from ldmkit.data.folder import ImageFolderDataset, scan_images

    root = Path(path).expanduser()
    files = scan_images(root) if root.is_dir() else []
    if not files:
        raise UserError(f"{option}={path}: not a folder with images")
    try:
        with Image.open(root / files[0]) as im:
            resolution = min(im.size)
    except OSError as exc:
        raise UserError(f"{option}={path}: cannot read {files[0]} ({exc})") from None
    return ImageFolderDataset(root, resolution=resolution, crop="center", split="train", val_fraction=0.0)


def reference_dataset(cfg: DictConfig, model_dir: Path | None):
    """The reference set: reference=DIR, else dataset=..., else the model's own dataset (the ``split`` split)."""
    if cfg.reference:
        return folder_dataset(cfg.reference, "reference")
    if cfg.get("dataset") is not None:
        return instantiate(cfg.dataset, split=cfg.split)
    if model_dir is None:
        raise UserError("images=DIR needs something to compare with: reference=DIR or dataset=...")
    return instantiate(source_dataset_cfg(model_dir), split=cfg.split)


def batches(items: Iterator[dict], batch_size: int) -> Iterator[dict]:
    """Collated batches of the items."""
    while chunk := list(islice(items, batch_size)):
        yield default_collate(chunk)


def _tracked(items: Iterator[dict], label: str, n: int) -> Iterator[dict]:
    """Batches reported as progress over (at most) ``n`` images."""
    return track(items, label, total=n, unit="img", size=lambda b: len(b["image"]))


def cycled(dataset, n: int) -> Iterator[dict]:
    """``n`` readable items of the dataset, starting again from the first when it runs out."""
    given = 0
    while given < n:
        before = given
        for item in islice(EachOnce(dataset), n - given):
            given += 1
            yield item
        if given == before:
            raise UserError("the reference set has no readable images")


def reference_features(cfg: DictConfig, dataset, n: int, extractor, weights: Path | None) -> tuple[dict | None, dict]:
    """Features of the first ``n`` reference images, from the content-hashed cache when it has them."""
    images = (to_uint8(b["image"]) for b in _tracked(batches(islice(EachOnce(dataset), n), cfg.batch_size),
                                                     "eval-fid reference: hashing", n))
    salt = f"{EXTRACTOR}|{modeldir.file_hash(weights) if weights else 'none'}|{n}"
    digest, count = content_hash(images, salt)
    info = {"reference": count, "reference_hash": digest}
    if count < 2:
        raise UserError(f"the reference set has {count} readable image(s), need at least 2")
    if extractor is None:
        return None, info
    path = Path(str(cfg.cache_dir)).expanduser() / f"reference-{digest}.safetensors"
    cached = load_cached(path)
    if cached is not None:
        return cached, {**info, "reference_cache": "hit"}
    features = FeatureSet(extractor)
    for batch in _tracked(batches(islice(EachOnce(dataset), n), cfg.batch_size), "eval-fid reference: features", n):
        features.add(to_uint8(batch["image"]))
    save_cached(path, features.tensors())
    return features.tensors(), {**info, "reference_cache": "miss", "reference_cache_file": str(path)}


def _sample_stream(cfg: DictConfig, ldm, dataset, n: int, ckpt: Path) -> Iterator[tuple[torch.Tensor, Any]]:
    """(images in [-1, 1], their conditioning values) batch by batch, conditions drawn from the reference set when
    its items carry the conditioner's fields, else from the model dir's validation conditions."""
    spans = [(a, min(cfg.batch_size, n - a)) for a in range(0, n, cfg.batch_size)]
    if isinstance(ldm.cond, NoConditioner):
        chunks: Iterator = ((None, None, count) for _, count in spans)
    elif _carries_fields(ldm.cond, dataset):
        chunks = ((ldm.cond.values(b), None, len(b["image"])) for b in batches(cycled(dataset, n), cfg.batch_size))
    else:
        bank = stored_conditions(ldm, ckpt, n)
        chunks = ((cycled_values(bank, a, count), None, count) for a, count in spans)  # a batch at a time
    feed, seen = tee(chunks)
    stream = generate_stream(ldm, feed, n, instantiate(cfg.sampler), guidance_scale(cfg.guidance, ldm.cond), cfg.seed,
                             label="eval-fid sampling")
    for images, (values, _, _) in zip(stream, seen, strict=True):
        yield images, values


def _carries_fields(cond, dataset) -> bool:
    """Whether the reference items hold what the conditioner reads (a labelled dataset, not a bare folder)."""
    try:
        cond.values(default_collate([first_item(dataset, "reference")]))
    except KeyError:
        return False
    return True


def _accuracy_tally(dataset, values: Any):
    """A conditional-accuracy tally when the reference set is ``shapes`` and values are labels or captions."""
    from ldmkit.data.shapes import ShapesDataset
    from ldmkit.evaluation.cond_accuracy import AccuracyTally, requests_for

    if not isinstance(dataset, ShapesDataset) or values is None:
        return None
    try:
        requests_for(values)
    except ValueError:
        return None
    return AccuracyTally()


def _evaluate_ldm(cfg: DictConfig, n: int, generated: FeatureSet, out: Path, speed: Speed) -> dict:
    """Sample ``n`` images from ckpt= with reference conditions into ``generated``; conditional accuracy."""
    ckpt = modeldir.resolve(cfg.ckpt, "ldm", "ckpt")
    ldm = for_sampling(modeldir.load(ckpt, use_ema=cfg.use_ema).to(device()), speed)
    dataset = reference_dataset(cfg, ckpt)
    tally, first, seconds = None, True, 0.0
    stream = _sample_stream(cfg, ldm, dataset, n, ckpt)
    while True:
        start = time.perf_counter()
        images, values = next(stream, (None, None))
        seconds += time.perf_counter() - start
        if images is None:
            break
        if first:
            tally, first = _accuracy_tally(dataset, values), False
            if len(images) < n:
                console.print(f"eval-fid: {n} samples will take about {duration(seconds * n / len(images))} "
                              f"(the first {len(images)} took {duration(seconds)})")
            save_grid(images[:64], out / "samples_grid.png")
        _keep(cfg, images, generated.count, out)
        generated.add(to_uint8(images))
        if tally is not None:
            tally.add(images, values)
    info = {"ckpt": str(ckpt.resolve()), "steps": modeldir.read_json(ckpt / "meta.json").get("steps"),
            "guidance": guidance_scale(cfg.guidance, ldm.cond), "sampler": dict(cfg.sampler),
            "sampling_samples_per_s": round(generated.count / max(seconds, 1e-9), 3)}
    if tally is not None:
        info.update({k: v for k, v in tally.result().items() if k != "n"})
    return {"dataset": dataset, **info}


def _evaluate_ae(cfg: DictConfig, n: int, generated: FeatureSet, out: Path) -> dict:
    """Reconstruct ``n`` reference images with ae= into ``generated``; PSNR / SSIM / L1."""
    from ldmkit.evaluation.reconstruction import ReconstructionTally

    ae_dir = modeldir.resolve(cfg.ae, "first_stage", "ae")
    stage = modeldir.load(ae_dir).to(device())
    dataset = reference_dataset(cfg, ae_dir)
    tally = ReconstructionTally()
    for batch in _tracked(batches(islice(EachOnce(dataset), n), cfg.batch_size), "eval-fid reconstructing", n):
        images = batch["image"]
        with torch.no_grad():
            rec = stage.decode(stage.encode(images.to(device()))).clamp(-1, 1).cpu()
        if tally.n == 0:
            k = min(8, len(images))
            save_grid(torch.cat([images[:k], rec[:k]]), out / "reconstructions.png", nrow=k)
        _keep(cfg, rec, generated.count, out)
        tally.add(images, rec)
        generated.add(to_uint8(rec))
    return {"dataset": dataset, "ae": str(ae_dir.resolve()), **tally.result()}


def _evaluate_folder(cfg: DictConfig, n: int, generated: FeatureSet) -> dict:
    """Read up to ``n`` images of images= into ``generated``."""
    folder = folder_dataset(cfg.images, "images")
    for batch in _tracked(batches(islice(EachOnce(folder), n), cfg.batch_size), "eval-fid images", n):
        generated.add(to_uint8(batch["image"]))
    return {"dataset": reference_dataset(cfg, None), "images": str(Path(cfg.images).resolve()),
            "skipped_unreadable": folder.skips.summary()["skipped"]}


def _keep(cfg: DictConfig, images: torch.Tensor, start: int, out: Path) -> None:
    """save_samples=true: write the batch as PNGs numbered from ``start``."""
    if cfg.save_samples:
        (out / "samples").mkdir(exist_ok=True)
        for i, image in enumerate(images):
            save_png(image, out / "samples" / f"{start + i:06d}.png")


def run(cfg: DictConfig) -> None:
    """Stream ``samples`` images through Inception, compare with as many reference images, write metrics.json."""
    bound_heap_growth()
    speed = Speed.from_config(cfg.speed)  # a bad switch is one line before anything runs
    out = run_dir()
    n = int(cfg.samples)
    if n < 2:
        raise UserError(f"--samples {n}: need at least 2")
    metrics_wanted = check_metrics(cfg.metrics)
    check_guidance(cfg.guidance)
    weights, reason = find_inception_weights(cfg.inception_weights)
    if weights is None and cfg.on_missing_weights != "skip":
        raise UserError(f"{reason} (or on_missing_weights=skip: the other metrics without Inception's)")
    extractor = InceptionFeatures(weights, device()) if weights is not None else None
    generated = FeatureSet(extractor)
    if cfg.ae:
        info = _evaluate_ae(cfg, n, generated, out)
    elif cfg.images:
        info = _evaluate_folder(cfg, n, generated)
    else:
        info = _evaluate_ldm(cfg, n, generated, out, speed)
    ref, ref_info = reference_features(cfg, info.pop("dataset"), n, extractor, weights)
    metrics = {"samples": generated.count, **ref_info, **info}
    if extractor is None:
        console.print(f"skipped Inception metrics: {reason}")
        metrics["skipped"] = reason
    else:
        scores = compute_metrics(generated.tensors(), ref, metrics_wanted, cfg.kid_subset_size, cfg.seed)
        if cfg.ae:  # reconstruction FID / KID (paper Table 8)
            names = {"fid": "rfid", "kid_mean": "rkid", "kid_std": "rkid_std"}
            scores = {names.get(k, k): v for k, v in scores.items()}
        metrics.update({**scores, "inception_weights": str(weights)})
    modeldir.write_json(out / "metrics.json", metrics)
    _print_table(metrics, out)


SHOWN = ("fid", "rfid", "isc_mean", "kid_mean", "rkid", "precision", "recall", "color_acc", "shape_acc",
         "count_acc", "psnr", "ssim", "l1", "samples", "reference", "reference_cache")


def _print_table(metrics: dict, out: Path) -> None:
    """A rich table of the metrics that were computed."""
    table = Table(title=f"eval-fid -> {out / 'metrics.json'}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in SHOWN:
        if key in metrics:
            value = metrics[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
