"""UNet throughput: ldmkit's CompVis-layout UNet vs diffusers' UNet2DConditionModel (peer), same run.

Prints one JSON object: train steps/s and inference forwards/s (batch 32, 8x8x3 latents, 24 context
tokens of width 128), median of several repeats, and ldmkit/peer ratios.
"""

from __future__ import annotations

import json
import statistics
import time

import torch

from ldmkit.models.unet import UNetModel

BATCH, TOKENS, CTX = 32, 24, 128


def rate(fn, repeats: int = 5, iters: int = 5) -> float:
    """Median calls per second over ``repeats`` timings of ``iters`` calls (after one warm-up)."""
    fn()
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        rates.append(iters / (time.perf_counter() - t))
    return statistics.median(rates)


def measure(model: torch.nn.Module, forward) -> dict:
    """Train steps/s (AdamW) and no-grad forwards/s for ``forward(model, x, t, ctx)``."""
    torch.manual_seed(0)
    x, t = torch.randn(BATCH, 3, 8, 8), torch.randint(0, 1000, (BATCH,))
    ctx = torch.randn(BATCH, TOKENS, CTX)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)

    def train_step() -> None:
        loss = (forward(model, x, t, ctx) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer() -> None:
        with torch.no_grad():
            forward(model, x, t, ctx)

    return {
        "params": sum(p.numel() for p in model.parameters()),
        "train_steps_per_s": rate(train_step),
        "forwards_per_s": rate(infer),
    }


def main() -> None:
    """Measure both UNets and print JSON."""
    torch.set_num_threads(torch.get_num_threads())
    ours = UNetModel(in_channels=3, out_channels=3, model_channels=64, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(1, 2), num_head_channels=32, use_spatial_transformer=True,
                     context_dim=CTX)
    result = {"batch": BATCH, "latent": [3, 8, 8], "ldmkit": measure(ours, lambda m, x, t, c: m(x, t, context=c))}
    try:
        from diffusers import UNet2DConditionModel
    except ImportError:
        result["peer"] = None
        result["note"] = "diffusers not installed (make bench installs it)"
    else:
        peer = UNet2DConditionModel(
            sample_size=8, in_channels=3, out_channels=3, block_out_channels=(64, 128), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=CTX, attention_head_dim=32, norm_num_groups=32,
        )
        result["peer"] = {"name": "diffusers.UNet2DConditionModel",
                          **measure(peer, lambda m, x, t, c: m(x, t, encoder_hidden_states=c).sample)}
        for key in ("train_steps_per_s", "forwards_per_s"):
            result[f"ratio_{key}"] = result["ldmkit"][key] / result["peer"][key]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
