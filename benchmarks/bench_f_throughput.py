"""Throughput against the downsampling factor f (the paper's Sec. 4.1 / Fig. 6 cost axis): for f = 1 ... 32 at the
same image size and the same UNet (only its in/out channels follow the latent channels of paper Table 13), the
UNet's training samples/s from pre-encoded latents, the first stage's encode cost (training on the fly), and
sampling samples/s for a DDIM run of ``--steps`` UNet evaluations plus one decode. First stages are the CPU
presets of ``conf/f`` with random weights (cost does not depend on the weights). Prints JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from collections.abc import Callable

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from ldmkit.models.unet import UNetModel
from ldmkit.runner import conf_dir


def rate(fn: Callable[[], None], repeats: int, iters: int) -> float:
    """Median calls per second over ``repeats`` timings of ``iters`` calls (after a warm-up call)."""
    fn()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        rates.append(iters / (time.perf_counter() - start))
    return statistics.median(rates)


def first_stage(f: int, resolution: int) -> torch.nn.Module:
    """The f's first-stage preset (conf/f/<f>.yaml over train-ae's default), random weights, eval mode."""
    with initialize_config_dir(conf_dir(), version_base="1.3"):
        cfg = compose("train_ae", overrides=[f"f='{f}'", f"dataset.resolution={resolution}"])
    torch.manual_seed(0)
    return instantiate(cfg.first_stage).eval()


def measure(f: int, args: argparse.Namespace) -> dict:
    """Figures for one f."""
    stage = first_stage(f, args.resolution)
    images = torch.randn(args.batch, 3, args.resolution, args.resolution)
    with torch.no_grad():
        z = stage.encode(images).mode() if f > 1 else images
    channels, side = z.shape[1], z.shape[-1]
    unet = UNetModel(in_channels=channels, out_channels=channels, model_channels=args.channels, channel_mult=(1, 2),
                     num_res_blocks=1, attention_resolutions=(2,), num_head_channels=32)
    opt = torch.optim.AdamW(unet.parameters(), 1e-4)
    t = torch.randint(0, 1000, (args.batch,))

    def train() -> None:
        loss = (unet(z, t) - z).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward() -> None:
        with torch.no_grad():
            unet(z, t)

    def encode() -> None:
        with torch.no_grad():
            stage.encode(images)

    def decode() -> None:
        with torch.no_grad():
            stage.decode(z)

    train_rate, fwd_rate = rate(train, args.repeats, 2), rate(forward, args.repeats, 4)
    enc_rate = rate(encode, args.repeats, 2) if f > 1 else float("inf")
    dec_rate = rate(decode, args.repeats, 2) if f > 1 else float("inf")
    sample_seconds = args.steps / fwd_rate + 1 / dec_rate
    return {
        "latent": [channels, side, side], "unet_params": sum(p.numel() for p in unet.parameters()),
        "train_samples_per_s_from_latents": train_rate * args.batch,
        "train_samples_per_s_encoding_on_the_fly": args.batch / (1 / train_rate + 1 / enc_rate),
        "sampling_samples_per_s": args.batch / sample_seconds,
        "unet_forwards_per_s": fwd_rate, "decode_share_of_sampling": (1 / dec_rate) / sample_seconds,
    }


def main() -> None:
    """Measure every f and print JSON with ratios against f=1 (pixel space)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--f", default="1,2,4,8,16,32")
    parser.add_argument("--resolution", type=int, default=64, help="image side (f=32 needs >= 64)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--channels", type=int, default=32, help="the UNet's model_channels (same for every f)")
    parser.add_argument("--steps", type=int, default=50, help="UNet evaluations per sample (DDIM steps)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = {f: measure(int(f), args) for f in args.f.split(",")}
    base = rows.get("1")
    for row in rows.values():
        for key in ("train_samples_per_s_from_latents", "sampling_samples_per_s"):
            if base:
                row[f"{key}_vs_f1"] = row[key] / base[key]
    print(json.dumps({"date": datetime.date.today().isoformat(), "threads": torch.get_num_threads(),
                      "resolution": args.resolution, "batch": args.batch, "unet_channels": args.channels,
                      "ddim_steps": args.steps, "f": rows}, indent=2))


if __name__ == "__main__":
    main()
