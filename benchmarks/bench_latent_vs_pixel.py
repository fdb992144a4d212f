"""Training from pre-encoded latent shards vs encoding images on the fly (issue: data at scale), and data-loader
throughput of webdataset image shards. Prints JSON.

The source is img2dataset-style shards of ``--source-px`` JPEGs (shapes scenes). ``train-ldm`` runs twice per
input with different step counts; steps/s = extra steps / extra wall time, so start-up cancels out. Both runs
use the same f=4 first stage, UNet and batch; only ``dataset=latents`` vs ``dataset=wds`` differs.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import ldmkit


def write_jpeg_shards(out: Path, n: int, px: int, per_shard: int) -> str:
    """``n`` shapes scenes as ``px``-pixel JPEGs with captions in img2dataset layout; returns the brace URL."""
    import webdataset as wds
    from PIL import Image

    from ldmkit.data.shapes import ShapesDataset

    ds = ShapesDataset(size=n, resolution=px, seed=7)
    shards = (n + per_shard - 1) // per_shard
    for k in range(shards):
        with wds.TarWriter(str(out / f"{k:05d}.tar")) as sink:
            for i in range(k * per_shard, min(n, (k + 1) * per_shard)):
                item = ds[i]
                rgb = ((item["image"].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
                buf = io.BytesIO()
                Image.fromarray(rgb).save(buf, "JPEG", quality=90)
                sink.write({"__key__": f"{i:09d}", "jpg": buf.getvalue(), "txt": item["caption"],
                            "json": json.dumps({"i": i})})
    return f"{out}/{{00000..{shards - 1:05d}}}.tar"


def steps_per_second(args: list[str], steps: tuple[int, int], out: Path) -> float:
    """train-ldm steps/s from two runs of different length (the difference cancels start-up)."""
    short = ldmkit("train-ldm", *args, f"trainer.max_steps={steps[0]}", f"out={out}_a")
    long = ldmkit("train-ldm", *args, f"trainer.max_steps={steps[1]}", f"out={out}_b")
    return round((steps[1] - steps[0]) / max(long - short, 1e-6), 3)


def loader_throughput(urls: str, px: int, workers: int, batch: int) -> float:
    """Images/s decoded, resized and cropped from the shards by a DataLoader with ``workers`` processes."""
    from torch.utils.data import DataLoader

    from ldmkit.data.wds import wds_dataset

    loader = DataLoader(wds_dataset(urls, resolution=px, shuffle=0), batch_size=batch, num_workers=workers)
    start, count = time.perf_counter(), 0
    for b in loader:
        count += len(b["image"])
    return round(count / (time.perf_counter() - start), 1)


def main() -> None:
    """Build shards, time both training inputs and the loader, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--source-px", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=64, help="training resolution (f=4: 16x16 latents)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", default="10,60", help="short,long train-ldm runs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="median of this many measurements per figure")
    parser.add_argument("--ae-overrides", default="", help="first-stage overrides, e.g. the CompVis kl-f4 size: "
                        "'first_stage.ch=128 first_stage.num_res_blocks=2'")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="latent_vs_pixel_"))
    (out / "jpg").mkdir(parents=True, exist_ok=True)
    urls = write_jpeg_shards(out / "jpg", args.images, args.source_px, per_shard=256)
    images = ["dataset=wds", f"dataset.urls={urls}", f"dataset.resolution={args.resolution}"]
    ldmkit("train-ae", *images, *args.ae_overrides.split(), "trainer.max_steps=1", "loss.perceptual=null", "loss.discriminator=null",
           "report.images=8", "report.grid=2", f"out={out}/ae")
    encode_s = ldmkit("encode-dataset", f"ae={out}/ae", *images, f"out={out}/lat")
    steps = tuple(int(s) for s in args.steps.split(","))
    common = [f"ae={out}/ae", "cond=text", f"loader.batch_size={args.batch}"]
    reps = range(args.repeats)
    lat = [steps_per_second([*common, "dataset=latents", f"dataset.path={out}/lat"], steps, out / f"ldm_lat{r}")
           for r in reps]
    img = [steps_per_second([*common, *images], steps, out / f"ldm_img{r}") for r in reps]
    from_latents, from_images = statistics.median(lat), statistics.median(img)
    loaders = {w: statistics.median(loader_throughput(urls, args.source_px, w, 64) for _ in reps)
               for w in (args.workers, 0)}
    result = {
        "images": args.images, "source_px": args.source_px, "resolution": args.resolution, "batch": args.batch,
        "repeats": args.repeats, "ae_overrides": args.ae_overrides, "encode_dataset_seconds": encode_s,
        "train_steps_per_s": {"latent_shards": from_latents, "images_on_the_fly": from_images,
                              "ratio": round(from_latents / from_images, 2), "goal": 3.0,
                              "runs": {"latent_shards": lat, "images_on_the_fly": img}},
        "loader_images_per_s": {f"{w}_workers": v for w, v in loaders.items()},
        "out": str(out),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
