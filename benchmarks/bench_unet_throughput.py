"""UNet throughput: ldmkit's CompVis-layout UNet vs diffusers' UNet2DConditionModel (peer) built to the same
architecture, measured alternately in one process. Prints JSON.

Same architecture is checked, not assumed: equal parameter counts and equal forward FLOPs (torch's
FlopCounterMode counts every matmul, convolution and attention product). Note that diffusers'
``attention_head_dim`` is the number of heads (a historical misnomer in UNet2DConditionModel), so it is set to
channels / head width here. For each variant (ldmkit's speed switches, applied to both models where the switch
is a torch feature) the two models' train steps (AdamW) and no-grad forwards are timed in alternating rounds;
figures are medians over rounds, ratios are ldmkit / peer. The FLOP fraction is ldmkit's train FLOPs per
second over this machine's fp32 matmul FLOP/s, measured in the same process.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from ldmkit.models.unet import UNetModel
from ldmkit.speed import AUTOCAST, Speed, prepare

TOKENS, CTX = 24, 128
VARIANTS = {
    "fp32": Speed(),
    "channels_last": Speed(channels_last=True),
    "bf16": Speed(autocast="bf16"),
    "bf16_channels_last": Speed(autocast="bf16", channels_last=True),
    "compile": Speed(compile=True),
}


def channels_last_input(x: torch.Tensor, speed: Speed) -> torch.Tensor:
    """``x`` in the memory format the switches ask for."""
    return x.contiguous(memory_format=torch.channels_last) if speed.channels_last else x


def autocast(speed: Speed, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to ``speed.autocast`` on ``device`` (nothing when it is null)."""
    if speed.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST[speed.autocast])


def matmul_peak(n: int = 2048, seconds: float = 3.0) -> float:
    """This machine's fp32 matmul GFLOP/s (n x n by n x n, median of repeated timings)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    rates, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(rates) < 5:
        t = time.perf_counter()
        a @ b
        rates.append(2 * n**3 / (time.perf_counter() - t) / 1e9)
    return statistics.median(rates)


def build(channels: tuple[int, ...], head: int, latent: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """ldmkit's UNet and diffusers' UNet2DConditionModel with the same architecture (same seed)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    ours = UNetModel(in_channels=3, out_channels=3, model_channels=channels[0],
                     channel_mult=tuple(c // channels[0] for c in channels), num_res_blocks=1,
                     attention_resolutions=tuple(2**i for i in range(len(channels))), num_head_channels=head,
                     use_spatial_transformer=True, context_dim=CTX)
    peer = UNet2DConditionModel(
        sample_size=latent, in_channels=3, out_channels=3, block_out_channels=channels, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * len(channels),
        up_block_types=("CrossAttnUpBlock2D",) * len(channels),
        cross_attention_dim=CTX, attention_head_dim=tuple(c // head for c in channels), norm_num_groups=32,
    )
    return ours, peer


def forward_fn(name: str, model: torch.nn.Module) -> Callable:
    """``f(x, t, ctx) -> eps`` for either model."""
    if name == "ldmkit":
        return lambda x, t, c: model(x, t, context=c)
    return lambda x, t, c: model(x, t, encoder_hidden_states=c).sample


def flops(fn: Callable, x, t, ctx, train: bool) -> int:
    """Counted FLOPs of one forward (and backward when ``train``)."""
    with FlopCounterMode(display=False) as counter:
        out = fn(x, t, ctx)
        if train:
            out.float().pow(2).mean().backward()
    return counter.get_total_flops()


def steps(model: torch.nn.Module, fn: Callable, speed: Speed, x, t, ctx) -> dict[str, Callable[[], None]]:
    """A train step (AdamW) and a no-grad forward under ``speed``."""
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    x = channels_last_input(x, speed)

    def train() -> None:
        with autocast(speed, x.device):
            loss = (fn(x, t, ctx).float() - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer() -> None:
        with torch.no_grad(), autocast(speed, x.device):
            fn(x, t, ctx)

    return {"train": train, "infer": infer}


def profile(fn: Callable[[], None], top: int = 12) -> list[dict]:
    """Where one call's time goes: the ``top`` operators by self CPU time, with their share of the total."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            fn()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    return [{"op": e.key, "share": round(e.self_cpu_time_total / total, 3), "calls_per_step": e.count // 3}
            for e in rows[:top]]


def timed(fn: Callable[[], None], iters: int) -> float:
    """Calls per second over ``iters`` calls."""
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return iters / (time.perf_counter() - start)


def run_profile_target(args: argparse.Namespace) -> tuple:
    """ldmkit's UNet with its inputs and step functions at fp32 (what the profile looks at)."""
    channels = tuple(int(c) for c in args.channels.split(","))
    model, _ = build(channels, args.head, args.latent)
    x, t = torch.randn(args.batch, 3, args.latent, args.latent), torch.randint(0, 1000, (args.batch,))
    ctx = torch.randn(args.batch, TOKENS, CTX)
    return model, (x, t, ctx), steps(model, forward_fn("ldmkit", model), Speed(), x, t, ctx)


def run_variant(speed: Speed, args: argparse.Namespace) -> dict:
    """Both models under one variant, timed in alternating rounds."""
    channels = tuple(int(c) for c in args.channels.split(","))
    models = dict(zip(("ldmkit", "peer"), build(channels, args.head, args.latent), strict=True))
    torch.manual_seed(1)
    x, t = torch.randn(args.batch, 3, args.latent, args.latent), torch.randint(0, 1000, (args.batch,))
    ctx = torch.randn(args.batch, TOKENS, CTX)
    calls = {}
    for name, model in models.items():
        prepare(model, speed)  # the same torch switches on both models
        calls[name] = steps(model, forward_fn(name, model), speed, x, t, ctx)
        for fn in calls[name].values():  # warm-up (compilation happens here)
            fn()
            fn()
    rates: dict[str, dict[str, list[float]]] = {n: {"train": [], "infer": []} for n in models}
    for _ in range(args.repeats):
        for kind, iters in (("train", args.iters), ("infer", 2 * args.iters)):
            for name in models:
                rates[name][kind].append(timed(calls[name][kind], iters))
    out = {name: {"train_steps_per_s": statistics.median(r["train"]), "forwards_per_s": statistics.median(r["infer"])}
           for name, r in rates.items()}
    for kind, key in (("train", "train_steps_per_s"), ("infer", "forwards_per_s")):
        per_round = [a / b for a, b in zip(rates["ldmkit"][kind], rates["peer"][kind], strict=True)]
        out[f"ratio_{key}"] = statistics.median(per_round)
    return out


def main() -> None:
    """Check the architectures match, measure every variant and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--latent", type=int, default=8, help="latent side (3 channels)")
    parser.add_argument("--channels", default="64,128", help="width per level (one res block each)")
    parser.add_argument("--head", type=int, default=32, help="channels per attention head")
    parser.add_argument("--repeats", type=int, default=7, help="alternating rounds (medians over them)")
    parser.add_argument("--iters", type=int, default=4, help="train steps per round (forwards: twice as many)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    channels = tuple(int(c) for c in args.channels.split(","))
    ours, peer = build(channels, args.head, args.latent)
    x, t = torch.randn(args.batch, 3, args.latent, args.latent), torch.randint(0, 1000, (args.batch,))
    ctx = torch.randn(args.batch, TOKENS, CTX)
    arch = {name: {"params": sum(p.numel() for p in m.parameters()),
                   "forward_flops": flops(forward_fn(name, m), x, t, ctx, train=False),
                   "train_flops": flops(forward_fn(name, m), x, t, ctx, train=True)}
            for name, m in (("ldmkit", ours), ("peer", peer))}
    if arch["ldmkit"]["params"] != arch["peer"]["params"] or \
            arch["ldmkit"]["forward_flops"] != arch["peer"]["forward_flops"]:
        raise SystemExit(f"the two UNets differ: {arch}")
    peak = matmul_peak()
    result: dict = {
        "date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "batch": args.batch, "latent": [3, args.latent, args.latent], "channels": list(channels),
        "head_channels": args.head, "context": [TOKENS, CTX], "architecture": arch,
        "matmul_fp32_gflops": peak, "variants": {},
    }
    for name in args.variants.split(","):
        figures = run_variant(VARIANTS[name], args)
        achieved = arch["ldmkit"]["train_flops"] * figures["ldmkit"]["train_steps_per_s"] / 1e9
        figures["ldmkit"]["train_gflops"] = achieved
        figures["ldmkit"]["train_fraction_of_fp32_matmul"] = achieved / peak
        result["variants"][name] = figures
        print(json.dumps({name: figures}), flush=True, file=sys.stderr)
    _, _, ldmkit_calls = run_profile_target(args)
    result["profile_fp32_train_step"] = profile(ldmkit_calls["train"])
    result["matmul_fp32_gflops_after"] = matmul_peak()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
