"""Bad input, clear answer (issue 8): every command exits 2 with ONE ``error:`` line that says what is wrong
and what would be right, never a traceback, and never touches its inputs; ``--debug`` shows the details."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ldmkit_inprocess_streams, run_cli

TEST = "test_bad_input_is_one_clear_line"

# (id, command line with {placeholders}, substrings the one error line must hold)
ROWS = [
    # 1. unknown config keys and group options: the valid ones are listed
    ("unet-width-not-a-multiple-of-32", ["train-ldm", "ae={ae}", "unet.model_channels=16"],
     ["unet.model_channels=16", "multiples of 32"]),
    ("unknown-key", ["train-ldm", "foo=1"], ["foo is not an option", "options at the top level are: seed", "+foo=1"]),
    ("unknown-nested-key", ["train-ldm", "trainer.max_stepz=3"],
     ["did you mean trainer.max_steps?", "options under trainer are: accelerator", "+trainer.max_stepz=3"]),
    ("key-at-another-level", ["sample", "steps=3"], ["did you mean sampler.steps?"]),
    ("key-of-another-dataset", ["train-ldm", "dataset=latents", "dataset.resolution=36"],
     ["dataset.resolution is not an option", "options under dataset are: path, shuffle, seed"]),
    ("unknown-f", ["train-ae", "f=3"], ["f=3 is not an option", "Available options in 'f': 1, 2, 4, 8, 16, 32"]),
    ("unknown-sampler", ["sample", "sampler=nope"],
     ["Available options in 'sampler': ddim, ddpm, dpmpp_2m, euler, euler_a, heun, plms"]),
    ("unknown-dataset", ["train-ldm", "dataset=nope"], ["Available options in 'dataset': celebahq, coco, ffhq, folder, imagenet, laion, landscapes, latents"]),
    ("unknown-first-stage", ["train-ae", "first_stage=kl_f99"],
     ["first_stage=kl_f99 is not an option (did you mean", "Available options in 'first_stage': compvis_kl_f16"]),
    ("train-ldm-first-stage-mismatch", ["train-ldm", "ae={ae}", "first_stage=kl_f8"],
     ["is not the first_stage you chose (first_stage.embed_dim=3, the choice has 4)", "drop one of ae= / first_stage="]),
    ("unparsable-override", ["sample", "prompt=[a"], ["cannot parse the override 'prompt=[a'"]),
    ("mandatory-option", ["encode-dataset", "ae={ae}", "dataset=folder"], ["dataset.path is required"]),
    # 2. missing or empty datasets
    ("folder-missing", ["encode-dataset", "ae={ae}", "dataset=folder", "dataset.path={inputs}/missing"],
     ["dataset.path=", "no such folder"]),
    ("folder-empty", ["train-ae", "dataset=folder", "dataset.path={inputs}/empty"], ["no image files found"]),
    ("ae-clip", ["train-ae", "trainer.gradient_clip_val=1.0"], ["train-ae steps its", "lower optim.lr"]),
    ("bad-timesteps", ["train-ldm", "objective.timesteps=lognorm"], ["is not one of: uniform, logit_normal"]),
    ("bad-ema-warmup", ["train-ldm", "ema.warmup=1"], ["ema.warmup=1 must be > 1 (CompVis: 10)"]),
    ("vector-width-mismatch", ["train-ldm", "ae={ae}", "unet.adm_in_channels=64"],
     ["unet.adm_in_channels=64 but the conditioner's global vector has 0 features (cond.pooled): expected null"]),
    ("bad-speed", ["sample", "ckpt={inputs}/nope", "speed.autocast=fp8"], ["speed.autocast=fp8 is not one of"]),
    ("folder-unreadable", ["encode-dataset", "ae={ae}", "dataset=folder", "dataset.path={inputs}/broken"],
     ["dataset.path=", "image files of the train split can be read"]),
    ("wds-shards-missing", ["encode-dataset", "ae={ae}", "dataset=wds", "dataset.urls={inputs}/shards/{{00000..00003}}.tar"],
     ["dataset.urls=", "no file matches"]),
    ("latents-missing", ["train-ldm", "ae={ae}", "dataset=latents", "dataset.path={inputs}/missing"],
     ["dataset.path=", "no manifest.json"]),
    # 3. missing model dirs and weights
    ("ae-missing", ["encode-dataset", "ae={inputs}/nope"], ["ae=", "no such directory", "`ldmkit train-ae`"]),
    ("ckpt-missing", ["sample", "ckpt={inputs}/nope"], ["ckpt=", "no such directory", "`ldmkit train-ldm`"]),
    ("ae-weights-deleted", ["encode-dataset", "ae={ae_no_weights}"], ["model.safetensors is missing"]),
    ("ckpt-weights-deleted", ["sample", "ckpt={ldm_no_weights}"], ["model.safetensors is missing"]),
    # 4. a model dir of the wrong kind
    ("ckpt-is-an-ae", ["sample", "ckpt={ae}"], ["is a first-stage (autoencoder) dir", "needs an LDM dir"]),
    ("ae-is-an-ldm", ["train-ldm", "ae={ldm}"], ["is an LDM dir", "needs a first-stage (autoencoder) dir"]),
    # 5. latents of another first stage
    ("latents-of-another-ae", ["train-ldm", "ae={ae_other}", "dataset=latents", "dataset.path={latents}"],
     ["was encoded with first stage", "but ae="]),
    # 6. sizes the UNet cannot halve len(channel_mult) - 1 times
    ("resolution-vs-unet", ["train-ldm", "ae={ae}", "dataset.resolution=36"],
     ["9x9 latent (f=4) is not divisible by 2 = 2^(UNet levels - 1)", "e.g. 32 or 40"]),
    ("latents-vs-unet", ["train-ldm", "ae={ae}", "dataset=latents", "dataset.path={latents}",
                         "unet.channel_mult=[1,1,1,1,1]"], ["8x8 latent (f=4) is not divisible by 16"]),
    # 7. samplers and step counts
    ("steps-zero", ["sample", "ckpt={ldm}", "sampler.steps=0"], ["sampler.steps must be in 1..1000, got 0"]),
    ("steps-negative", ["sample", "ckpt={ldm}", "sampler=dpmpp_2m", "sampler.steps=-3"],
     ["sampler.steps must be >= 1, got -3"]),
    ("ddim-steps-over-timesteps", ["sample", "ckpt={ldm}", "sampler.steps=2000"], ["1..1000, got 2000"]),
    ("steps-not-a-number", ["sample", "ckpt={ldm}", "sampler.steps=abc"], ["sampler.steps='abc'", "whole number"]),
    ("eta-negative", ["sample", "ckpt={ldm}", "sampler.eta=-1"], ["sampler.eta=-1", ">= 0"]),
    # 8. guidance scale out of range
    ("guidance-negative", ["sample", "ckpt={ldm}", "guidance=-1"], ["guidance=-1", "must be in [0, 100]"]),
    ("guidance-nan", ["sample", "ckpt={ldm}", "guidance=nan"], ["guidance=nan", "must be in [0, 100]"]),
    ("guidance-inf", ["sample", "ckpt={ldm}", "guidance=inf"], ["guidance=inf", "must be in [0, 100]"]),
    ("guidance-not-a-number", ["sample", "ckpt={ldm}", "guidance=abc"], ["guidance='abc'", "must be a number"]),
    # 9. prompts files
    ("prompts-file-missing", ["sample", "ckpt={ldm}", "prompts_file={inputs}/nope.txt"], ["no such file"]),
    ("prompts-file-empty", ["sample", "ckpt={ldm}", "prompts_file={inputs}/empty.txt"], ["no prompts in it"]),
]


def snapshot(roots: list[Path]) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under the given files/dirs."""
    files = [f for r in roots if r.exists() for f in ([r] if r.is_file() else r.rglob("*")) if f.is_file()]
    return {str(f): (f.stat().st_size, f.stat().st_mtime_ns) for f in files}


def other_first_stage(ae: Path, dst: Path) -> Path:
    """A copy of a first-stage dir with different weights (so a different hash), without training."""
    from safetensors.torch import load_file, save_file

    from ldmkit.modeldir import file_hash

    dst.mkdir()
    for name in ("config.yaml", "meta.json"):
        shutil.copy2(ae / name, dst / name)
    weights = load_file(str(ae / "model.safetensors"))
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()}, str(dst / "model.safetensors"))
    meta = json.loads((dst / "meta.json").read_text())
    (dst / "meta.json").write_text(json.dumps({**meta, "hash": file_hash(dst / "model.safetensors")}))
    return dst


def without_weights(model: Path, dst: Path) -> Path:
    """A copy of a model dir (checkpoints left out) whose model.safetensors was deleted."""
    shutil.copytree(model, dst, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    (dst / "model.safetensors").unlink()
    return dst


LATE = ("ldm", "latents", "ldm_no_weights")  # made by CLI runs: the rows naming them start once these exist


def named(row: tuple, paths: dict[str, Path]) -> list[Path]:
    """The input paths a row's arguments name."""
    return [p for key, p in paths.items() if f"{{{key}}}" in " ".join(row[1])]


def quick_inputs(d: Path, ae: Path) -> dict[str, Path]:
    """Empty/broken folders, a prompts file without prompts, a foreign and a weightless first stage."""
    inputs = d / "inputs"
    (inputs / "empty").mkdir(parents=True)
    (inputs / "broken").mkdir()
    (inputs / "broken" / "a.png").write_bytes(b"")
    (inputs / "broken" / "b.jpg").write_text("not an image")
    (inputs / "empty.txt").write_text("\n  \n")
    return {"ae": ae, "inputs": inputs, "ae_other": other_first_stage(ae, d / "ae_other"),
            "ae_no_weights": without_weights(ae, d / "ae_no_weights")}


def late_inputs(d: Path, ae: Path) -> dict[str, Path]:
    """A 1-step LDM, its weightless copy and 8 encoded latents (from the real CLI)."""
    run_cli("train-ldm", f"ae={ae}", "trainer.max_steps=1", "loader.batch_size=2", f"out={d}/ldm")
    run_cli("encode-dataset", f"ae={ae}", "dataset.size=8", f"out={d}/latents")
    return {"ldm": d / "ldm", "latents": d / "latents", "ldm_no_weights": without_weights(d / "ldm", d / "ldm_no_weights")}


def command(row: tuple, paths: dict[str, Path], out: Path) -> list[str]:
    """A row's arguments with the paths filled in (training rows capped at one step in case a check fails)."""
    _, args, _ = row
    cap = ["trainer.max_steps=1"] if args[0] in ("train-ae", "train-ldm") else []
    return [a.format(**paths) for a in args] + cap + [f"out={out / row[0]}"]


@pytest.fixture(scope="module")
def results(request, tmp_path_factory, tiny_ae) -> dict[str, tuple]:
    """Run the selected rows through the CLI in this process (they stop before any work: no start-up per row);
    per row: its exit code and output, and snapshots of the inputs it names, before and after all rows ran."""
    selected = {item.callspec.id for item in request.session.items if getattr(item, "originalname", "") == TEST}
    rows = [row for row in ROWS if row[0] in selected]
    d, out = tmp_path_factory.mktemp("bad_input"), tmp_path_factory.mktemp("bad_input_out")
    paths = quick_inputs(d, tiny_ae)
    started = {}
    for late in (False, True):
        if late:
            paths.update(late_inputs(d, tiny_ae))
        for row in rows:
            if any(f"{{{key}}}" in " ".join(row[1]) for key in LATE) == late:
                before = snapshot(named(row, paths))
                code, _, stderr = ldmkit_inprocess_streams(command(row, paths, out))
                started[row[0]] = (SimpleNamespace(returncode=code, stderr=stderr), named(row, paths), before)
    return {name: (proc, before, snapshot(roots)) for name, (proc, roots, before) in started.items()}


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_one_clear_line(row, results):
    proc, before, after = results[row[0]]
    report = f"ldmkit {' '.join(row[1])} exited {proc.returncode}\n{proc.stderr}"
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, report
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, report
    for text in row[2]:
        assert text in lines[0], report
    assert before == after, f"{row[0]} changed its inputs: {sorted(set(before.items()) ^ set(after.items()))}"


def test_debug_shows_the_traceback_and_still_the_one_line(tmp_path):
    for args in (["--debug", "train-ldm", "trainer.max_stepz=3"], ["train-ldm", "trainer.max_stepz=3", "--debug"]):
        proc = run_cli(*args, check=False)
        assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr
        assert "ConfigCompositionException" in proc.stderr and "Key 'max_stepz' is not in struct" in proc.stderr
        assert proc.stderr.splitlines()[-1].startswith("error: trainer.max_stepz is not an option")
    proc = run_cli("--debug", "sample", f"ckpt={tmp_path}/nope", f"out={tmp_path}/s", check=False)
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr
    assert 'modeldir.py", line' in proc.stderr and "UserError" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(f"error: ckpt={tmp_path}/nope: no such directory")
