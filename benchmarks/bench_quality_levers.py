"""Quality levers on ``shapes`` at 32 px (issue: samples that show what was asked): each row trains with the real CLI
and one set of overrides, then scores what it made. Prints JSON.

``--stage ae``: first stages (the demo's size, ``first_stage.ch_mult=[1,2,2]``, LPIPS off): wall time, validation
PSNR / SSIM from meta.json and the classical scorer on their reconstructions of 288 validation images.
``--stage ldm``: text LDMs on the latents of ``--latents`` (encoded with ``--ae``): wall time and eval-fid's
colour / shape / count accuracy on ``--samples`` samples of validation captions (DDIM 25, ``--guidance``).
A row is ``NAME=OVERRIDE,OVERRIDE,...``; ``--seeds 0,1,2`` repeats each row per seed (``seed=N``) and reports medians.
``--stage vocab``: the text LDM's train step with open_clip's full token embedding vs a vocabulary fitted to the
training captions (seconds per step; no training).
``--stage sample``: one trained LDM (``--ckpt``) evaluated as ``--stage ldm`` with each row's eval-fid overrides.
``--stage decoder``: the LDM of ``--ckpt`` decoding with its first stage's decoder fine-tuned per row
(``NAME=STEPS,NOISE,GAN``: decoder_finetune.py), then evaluated as ``--stage ldm``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench_cond_accuracy import reference_rows
from common import ldmkit, meta

AE_BASE = ["first_stage.ch_mult=[1,2,2]", "loss.perceptual=null", "report.images=256"]
AE_ROWS = {  # the defaults before issue 20, then one lever at a time, then today's defaults
    "l1_const_5e-4": ["loss.rec=l1", "lr_schedule=null", "optim.lr=5e-4"],
    "l1_const_1e-3": ["loss.rec=l1", "lr_schedule=null"],
    "l2_const_1e-3": ["lr_schedule=null"],
    "l2_const_2e-3": ["lr_schedule=null", "optim.lr=2e-3"],
    "l2_const_betas_0.9_0.99": ["lr_schedule=null", "optim.betas=[0.9,0.99]"],
    "l2_cosine_1e-3 (default)": [],
}
LDM_BASE = ["cond=text"]  # train-ldm's defaults: batch 32, lr 1e-3, constant rate, eps, logit-normal t
UNIFORM = "objective.timesteps=uniform"  # rounds 1 and 2 drew t uniformly (the default then)
LDM_ROWS = {  # round 1 (batch 16, 1000 / 2000 steps), then rounds 2 to 4 at the demo's budget
    "b16_constant_1000": [UNIFORM, "loader.batch_size=16", "trainer.max_steps=1000"],
    "b16_cosine_1000": [UNIFORM, "loader.batch_size=16", "lr_schedule=cosine", "trainer.max_steps=1000"],
    "b16_v_1000": [UNIFORM, "loader.batch_size=16", "objective.prediction=v", "trainer.max_steps=1000"],
    "b16_min_snr_5_1000": [UNIFORM, "loader.batch_size=16", "objective.min_snr_gamma=5", "trainer.max_steps=1000"],
    "b16_2000 (the first demo)": [UNIFORM, "loader.batch_size=16", "trainer.max_steps=2000"],
    "b16_2000_lr2e-3": [UNIFORM, "loader.batch_size=16", "trainer.max_steps=2000", "optim.lr=2e-3"],
    "b32_1000": [UNIFORM, "trainer.max_steps=1000"],
    "b64_750": [UNIFORM, "loader.batch_size=64", "trainer.max_steps=750"],
    "b32_1500_uniform (the demo before)": [UNIFORM, "trainer.max_steps=1500"],
    "b32_1500_lr5e-4": [UNIFORM, "trainer.max_steps=1500", "optim.lr=5e-4"],
    "b32_1370_unet_122": [UNIFORM, "trainer.max_steps=1370", "unet.channel_mult=[1,2,2]",
                          "unet.attention_resolutions=[1,2,4]"],
    "b32_1090_2_resblocks": [UNIFORM, "trainer.max_steps=1090", "unet.num_res_blocks=2"],
    "b32_1390_text_4_layers": [UNIFORM, "trainer.max_steps=1390", "cond.layers=4"],
    "b32_1500_lr2e-3_warmup": [UNIFORM, "trainer.max_steps=1500", "optim.lr=2e-3", "lr_schedule=warmup",
                               "lr_schedule.total_iters=200"],
    "b32_1500_ema_warmup4": [UNIFORM, "trainer.max_steps=1500", "ema.warmup=4"],
    "b32_1500_ema_warmup30": [UNIFORM, "trainer.max_steps=1500", "ema.warmup=30"],
    "b32_1500_logit_normal (defaults, the demo)": ["trainer.max_steps=1500"],
    "b32_1500_logit_normal_mean-0.5": ["trainer.max_steps=1500", "objective.timestep_mean=-0.5"],
    "b32_1500_pooled_text": ["trainer.max_steps=1500", "cond.pooled=true"],  # round 4
    "b32_1500_logit_normal_std0.6": ["trainer.max_steps=1500", "objective.timestep_std=0.6"],
}

SAMPLE_ROWS = {  # round 5: stochastic samplers on the defaults' model (DDIM 25, eta 0 is the --stage ldm row)
    "ddim_25_eta1": ["sampler.eta=1.0"],
    "ddim_50_eta1": ["sampler.eta=1.0", "sampler.steps=50"],
    "ddim_100_eta1": ["sampler.eta=1.0", "sampler.steps=100"],
    "ddim_50_eta0.5": ["sampler.eta=0.5", "sampler.steps=50"],
    "ddim_50_eta0": ["sampler.steps=50"],
    "euler_ancestral_25": ["sampler=euler_a", "sampler.steps=25"],
}
DECODER_ROWS = {  # round 5: decoder-only fine-tunes (steps, latent noise in scaled units, PatchGAN 0/1)
    "gan": ["500", "0", "1"],
    "gan_latent_noise_0.2": ["500", "0.2", "1"],
    "l2_latent_noise_0.2": ["500", "0.2", "0"],
}


def parse_rows(specs: list[str] | None, default: dict[str, list[str]]) -> dict[str, list[str]]:
    """``NAME=a,b`` specs (overrides split at commas outside brackets) or the stage's default rows."""
    if not specs:
        return default
    rows = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        parts, depth, cur = [], 0, ""
        for ch in rest:
            depth += ch == "[" or -(ch == "]")
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        rows[name] = [p for p in (*parts, cur) if p]
    return rows


def ae_row(out: Path, overrides: list[str], seed: int) -> dict:
    """Train one first stage; its wall time, PSNR, SSIM and the scorer on its reconstructions."""
    seconds = ldmkit("train-ae", *AE_BASE, *overrides, f"seed={seed}", f"out={out}")
    metrics = meta(out)["metrics"]
    scored = reference_rows(str(out), 288)["reconstructions"]
    return {"seconds": seconds, "psnr": round(metrics["val_psnr"], 2), "ssim": round(metrics["val_ssim"], 3),
            **{k: round(v, 3) for k, v in scored.items() if k != "n"}}


def ldm_row(out: Path, overrides: list[str], seed: int, ae: str, latents: str, guidance: float,
            samples: int) -> dict:
    """Train one text LDM and eval-fid it; its wall times and accuracies."""
    train = ldmkit("train-ldm", f"ae={ae}", "dataset=latents", f"dataset.path={latents}", *LDM_BASE, *overrides,
                   f"seed={seed}", f"out={out}")
    return {"seconds": train, **sample_row(out / "eval", out, [], guidance, samples)}


def sample_row(out: Path, ckpt: Path, overrides: list[str], guidance: float, samples: int) -> dict:
    """eval-fid of one LDM (DDIM 25 unless ``overrides`` say otherwise) into ``out``; its time and accuracies."""
    evaluate = ldmkit("eval-fid", f"ckpt={ckpt}", "--samples", str(samples), "sampler.steps=25", f"guidance={guidance}",
                      "on_missing_weights=skip", *overrides, f"out={out}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"eval_seconds": evaluate, **{k: round(v, 3) for k, v in metrics.items() if k.endswith("_acc")}}


def decoder_row(out: Path, ckpt: Path, spec: list[str], guidance: float, samples: int) -> dict:
    """Fine-tune the decoder of ``ckpt``'s first stage (``[steps, noise, gan]``), eval-fid the LDM decoding with it."""
    from decoder_finetune import ldm_with_decoder

    seconds = ldm_with_decoder(ckpt, out, int(spec[0]), float(spec[1]), bool(int(spec[2])))
    return {"finetune_seconds": seconds, **sample_row(out / "eval", out / "ldm", [], guidance, samples)}


def vocab_timing(rounds: int = 5, steps: int = 12) -> dict:
    """Seconds per text-LDM train step (UNet small, TextConditioner, fused AdamW, CompVis EMA, batch 32) with
    open_clip's 49,408-row token embedding vs one cut to the tokens of 2,000 training captions (a fitted
    vocabulary); alternating rounds, medians."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from ldmkit.data.shapes import sample_scene
    from ldmkit.models.conditioners import TextConditioner
    from ldmkit.models.unet import UNetModel
    from ldmkit.training.ldm_module import compvis_ema

    rng = np.random.default_rng(0)
    captions = [sample_scene(rng).caption for _ in range(2000)]
    unet_cfg = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "conf/unet/small.yaml"))
    unet_cfg.update(in_channels=3, out_channels=3, context_dim=128, adm_in_channels=None)
    unet_cfg.pop("_target_")

    def step_time(fitted: bool) -> float:
        torch.manual_seed(0)
        model = torch.nn.ModuleDict({"unet": UNetModel(**unet_cfg), "cond": TextConditioner()})
        tokens = model["cond"].tokenize(captions[:32])
        if fitted:  # ids renumbered 0..K-1 (0 = padding stays 0), the embedding cut to K rows
            used = torch.unique(model["cond"].tokenize(captions))
            tokens = torch.searchsorted(used, tokens)
            model["cond"].transformer.token_embedding = torch.nn.Embedding(len(used), 128)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        ema = compvis_ema(model, 0.999)
        x, t = torch.randn(32, 3, 8, 8), torch.randint(0, 1000, (32,))
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            _, context = model["cond"].transformer(tokens)
            loss = (model["unet"](x, t, context=context) - x).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update_parameters(model)
            times.append(time.perf_counter() - start)
        return statistics.median(times[2:])

    full, fitted = [], []
    for _ in range(rounds):
        full.append(step_time(False))
        fitted.append(step_time(True))
    return {"full_vocab_s_per_step": round(statistics.median(full), 4),
            "fitted_vocab_s_per_step": round(statistics.median(fitted), 4),
            "speedup": round(statistics.median(f / g for f, g in zip(full, fitted, strict=True)), 3)}


def median_row(runs: list[dict]) -> dict:
    """Per-key medians over the seeds' rows (and the rows themselves)."""
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float))]
    return {**{k: round(statistics.median(r[k] for r in runs), 3) for k in keys}, "runs": runs}


def main() -> None:
    """Run the stage's rows (per seed), print the JSON table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("ae", "ldm", "vocab", "sample", "decoder"), default="ae")
    parser.add_argument("--row", action="append", help="NAME=OVERRIDE,OVERRIDE (repeatable; default: the stage's rows)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--ae", help="--stage ldm: the first-stage model dir the latents come from")
    parser.add_argument("--latents", help="--stage ldm: an encode-dataset output of --ae")
    parser.add_argument("--ckpt", help="--stage sample / decoder: a trained text LDM model dir")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--samples", type=int, default=256, help="--stage ldm: eval-fid samples per model")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.stage == "ldm" and not (args.ae and args.latents):
        parser.error("--stage ldm needs --ae and --latents")
    if args.stage in ("sample", "decoder") and not args.ckpt:
        parser.error(f"--stage {args.stage} needs --ckpt")
    if args.stage == "vocab":
        print(json.dumps({"stage": "vocab", "date": time.strftime("%Y-%m-%d"), **vocab_timing()}, indent=2))
        return
    out = Path(args.out or tempfile.mkdtemp(prefix="quality_levers_"))
    rows = parse_rows(args.row, {"ae": AE_ROWS, "ldm": LDM_ROWS, "sample": SAMPLE_ROWS, "decoder": DECODER_ROWS}[args.stage])
    seeds = [int(s) for s in args.seeds.split(",")]
    result: dict = {"stage": args.stage, "date": time.strftime("%Y-%m-%d"), "seeds": seeds, "rows": {}}
    for i, (name, overrides) in enumerate(rows.items()):
        runs = []
        for seed in seeds:
            where = out / f"{i:02d}_s{seed}"
            if args.stage == "ae":
                runs.append(ae_row(where, overrides, seed))
            elif args.stage == "sample":
                runs.append(sample_row(where, Path(args.ckpt), overrides, args.guidance, args.samples))
            elif args.stage == "decoder":
                runs.append(decoder_row(where, Path(args.ckpt), overrides, args.guidance, args.samples))
            else:
                runs.append(ldm_row(where, overrides, seed, args.ae, args.latents, args.guidance, args.samples))
        result["rows"][name] = {"overrides": overrides, **median_row(runs)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
