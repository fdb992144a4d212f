"""End to end through the real CLI: train-ae -> encode-dataset -> train-ldm -> sample -> eval-fid (+ a sweep)."""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

import ldmkit
from ldmkit.data.latent_shards import iterate_shards
from ldmkit.models.first_stage import FirstStage
from ldmkit.models.ldm import LatentDiffusion


@pytest.fixture(scope="module")
def runs(tmp_path_factory, inception_weights):
    """Run the issue's contract lines once at tiny size; return the root dir."""
    d = tmp_path_factory.mktemp("pipeline")
    # the full paper loss (L1 + LPIPS with a random stand-in backbone + PatchGAN from step 10)
    run_cli("train-ae", "trainer.max_steps=20", "loss.perceptual.weights=random", "loss.disc_start=10",
            f"report.inception_weights={inception_weights}", "report.images=32", f"out={d}/ae")
    run_cli("encode-dataset", f"ae={d}/ae", "dataset.size=256", f"out={d}/lat")
    run_cli("train-ldm", f"ae={d}/ae", "dataset=latents", f"dataset.path={d}/lat", "cond=text",
            "trainer.max_steps=20", f"out={d}/ldm")
    run_cli("train-ldm", f"ae={d}/ae", "cond=class", "trainer.max_steps=20", f"out={d}/ldm_cls")
    run_cli("sample", f"ckpt={d}/ldm", "prompt=a red circle", "n=4", "sampler.steps=10", "guidance=3", "seed=0",
            f"out={d}/s")
    proc = run_cli("eval-fid", f"ckpt={d}/ldm", "--samples", "64", f"inception_weights={inception_weights}",
                   "sampler.steps=5", "save_samples=true", f"out={d}/e")
    (d / "e" / "stderr.txt").write_text(proc.stderr)
    run_cli("eval-fid", f"ae={d}/ae", "--samples", "32", f"inception_weights={inception_weights}", f"out={d}/e_ae")
    run_cli("train-ldm", "-m", f"ae={d}/ae", "cond=none,class", "trainer.max_steps=5", f"out={d}/sweep")
    return d


def _meta(path):
    return json.loads((path / "meta.json").read_text())


def test_first_stage_dir(runs):
    meta = _meta(runs / "ae")
    assert meta["kind"] == "first_stage" and meta["f"] == 4 and meta["latent_shape"] == [3, 8, 8]
    assert 0 < meta["scale_factor"] < 100 and math.isfinite(meta["metrics"]["val_psnr"])
    assert meta["steps"] == 20 and meta["type"] == "kl" and meta["metrics"]["val_images"] == 32
    assert 0 < meta["metrics"]["val_ssim"] <= 1 and meta["metrics"]["val_rfid"] > 0
    log = (runs / "ae" / "logs" / "metrics.csv").read_text().splitlines()
    header = log[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in log[1:]]
    gan_steps = [float(r["train/step"]) for r in rows if r.get("train/g_loss")]
    assert gan_steps and min(gan_steps) > 10  # adversarial terms only from disc_start on
    for name in ("config.yaml", "model.safetensors", "checkpoints/last.ckpt"):
        assert (runs / "ae" / name).is_file()
    with Image.open(runs / "ae" / "reconstructions.png") as im:
        assert im.size[0] > 32 * 8 and im.size[1] > 64  # 8 originals over 8 reconstructions
    fs = ldmkit.load(runs / "ae")
    assert isinstance(fs, FirstStage) and fs.scale_factor == pytest.approx(meta["scale_factor"])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = fs.encode(x)
    assert z.shape == (2, 3, 8, 8)
    torch.testing.assert_close(z, fs.posterior(x).mode() * meta["scale_factor"])
    assert not torch.equal(fs.encode(x, sample=True), z)
    assert fs.decode(z).shape == (2, 3, 32, 32)


def test_latent_shards(runs):
    manifest = json.loads((runs / "lat" / "manifest.json").read_text())
    assert manifest["count"] == 256 and manifest["first_stage"]["hash"] == _meta(runs / "ae")["hash"]
    assert manifest["latent_shape"] == [3, 8, 8]
    samples = list(iterate_shards(runs / "lat"))
    assert len(samples) == 256
    assert {"latent_mean", "latent_std", "caption", "class_label", "boxes", "semantic", "scene"} <= set(samples[0])
    assert samples[0]["latent_mean"].shape == (3, 8, 8) and bool((samples[0]["latent_std"] > 0).all())
    # the stored posterior mean is the first stage's encoding of the same dataset sample
    from ldmkit.data.shapes import ShapesDataset
    fs = ldmkit.load(runs / "ae")
    image = ShapesDataset(size=256)[0]["image"][None]
    torch.testing.assert_close(samples[0]["latent_mean"][None], fs.posterior(image).mean, atol=2e-2, rtol=1e-2)


def test_ldm_dirs_and_api(runs):
    for name, cond in (("ldm", "TextConditioner"), ("ldm_cls", "ClassConditioner")):
        meta = _meta(runs / name)
        assert meta["kind"] == "ldm" and meta["cond"] == cond and meta["steps"] == 20
        assert meta["first_stage"]["hash"] == _meta(runs / "ae")["hash"]
        assert (runs / name / "ema.safetensors").is_file() and (runs / name / "first_stage" / "meta.json").is_file()
    ldm = ldmkit.load(runs / "ldm")
    assert isinstance(ldm, LatentDiffusion) and isinstance(ldm.first_stage, FirstStage)
    cond = ldm.cond(["a red circle"])
    out = ldm.unet(torch.randn(1, 3, 8, 8), torch.tensor([500]), context=cond.context, context_mask=cond.mask)
    assert out.shape == (1, 3, 8, 8) and out.abs().sum() > 0
    images = ldm.sample(["a red circle", "a blue square"], guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    raw = ldmkit.load(runs / "ldm", use_ema=False)
    assert not torch.equal(raw.unet.out[2].weight, ldm.unet.out[2].weight)  # EMA differs from raw weights


def test_sample_outputs(runs):
    files = sorted(p.name for p in (runs / "s").glob("0*.png"))
    assert files == [f"{i:06d}.png" for i in range(4)]
    lines = [json.loads(line) for line in (runs / "s" / "samples.jsonl").read_text().splitlines()]
    assert [(r["file"], r["prompt"], r["seed"]) for r in lines] == [(f, "a red circle", i) for i, f in enumerate(files)]
    assert {(r["sampler"], r["steps"], r["guidance"]) for r in lines} == {("ddim", 10, 3.0)}
    with Image.open(runs / "s" / "000002.png") as im:
        assert im.size == (32, 32)
        assert im.text["prompt"] == "a red circle" and im.text["seed"] == "2" and im.text["sampler"] == "ddim"
        assert im.text["steps"] == "10" and im.text["guidance"] == "3.0"
        cli_image = torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1).int()
    # `sample` draws with the EMA weights: the API with EMA gives the same image, the raw weights another one
    from functools import partial

    from ldmkit.diffusion.samplers import sample_ddim
    from ldmkit.images import to_uint8

    def api_image(use_ema: bool) -> torch.Tensor:
        ldm = ldmkit.load(runs / "ldm", use_ema=use_ema)
        x = ldm.sample(["a red circle"], sampler=partial(sample_ddim, steps=10), guidance=3.0,
                       generator=[torch.Generator().manual_seed(2)])
        return to_uint8(x)[0].int()

    assert (api_image(True) - cli_image).abs().max() <= 1
    assert (api_image(False) - cli_image).abs().float().mean() > 1
    with Image.open(runs / "s" / "grid.png") as im:
        assert im.size == (2 * 34 + 2, 2 * 34 + 2)


def test_eval_fid_metrics(runs):
    metrics = json.loads((runs / "e" / "metrics.json").read_text())
    assert metrics["samples"] == 64 and metrics["reference"] == 64
    assert math.isfinite(metrics["fid"]) and metrics["fid"] > 0
    assert math.isfinite(metrics["kid_mean"]) and metrics["kid_subset_size"] == 64
    assert metrics["isc_mean"] >= 1 and 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    # the text model on shapes: conditions are the reference captions, scored by the shapes scorer
    assert 0 <= metrics["color_acc"] <= 1 and 0 <= metrics["shape_acc"] <= 1
    assert len(list((runs / "e" / "samples").glob("*.png"))) == 64
    # the expected duration, from the first batch (32 of 64)
    assert re.search(r"eval-fid: 64 samples will take about \d+:\d\d:\d\d \(the first 32 took \d+:\d\d:\d\d\)",
                     (runs / "e" / "stderr.txt").read_text())


def test_eval_fid_on_a_first_stage_reports_reconstruction_metrics(runs):
    metrics = json.loads((runs / "e_ae" / "metrics.json").read_text())
    assert metrics["images"] == 32 and metrics["rfid"] > 0 and math.isfinite(metrics["rkid"])
    assert 0 < metrics["ssim"] <= 1
    # the same validation images and first stage as train-ae's own report (its first 32 of 32)
    assert metrics["psnr"] == pytest.approx(_meta(runs / "ae")["metrics"]["val_psnr"], abs=1e-4)
    with Image.open(runs / "e_ae" / "reconstructions.png") as im:
        assert im.size == (8 * 34 + 2, 2 * 34 + 2)


def test_multirun_sweep_one_dir_per_job(runs):
    jobs = sorted(p for p in (runs / "sweep").iterdir() if p.is_dir() and (p / "meta.json").is_file())
    assert [p.name for p in jobs] == ["0_cond=none,trainer.max_steps=5", "1_cond=class,trainer.max_steps=5"]
    assert [_meta(p)["cond"] for p in jobs] == ["NoConditioner", "ClassConditioner"]
    assert all(_meta(p)["steps"] == 5 for p in jobs)


def test_sampling_is_seeded(runs, tmp_path):
    from conftest import ldmkit_inprocess

    args = ["sample", f"ckpt={runs}/ldm_cls", "label=red circle", "n=2", "sampler.steps=4"]
    for name, extra in (("a", ["seed=3"]), ("b", ["seed=3"]), ("c", ["seed=4"]), ("e", ["seed=3", "batch_size=1"])):
        assert ldmkit_inprocess([*args, *extra, f"out={tmp_path}/{name}"])[0] == 0  # e: sample i uses seed + i
    read = lambda d: (tmp_path / d / "grid.png").read_bytes()  # noqa: E731
    assert read("a") == read("b") and read("a") != read("c")
    pixels = lambda d: np.asarray(Image.open(tmp_path / d / "grid.png")).astype(int)  # noqa: E731
    assert np.abs(pixels("a") - pixels("e")).max() <= 1  # another batch size: the same images up to float rounding
    code, output = ldmkit_inprocess(["sample", f"ckpt={runs}/ldm_cls", "prompt=a red circle", f"out={tmp_path}/d"])
    assert code == 2 and "(ClassConditioner) takes label=; drop prompt=" in output


def test_a_moved_model_dir_needs_no_training_data(runs, tmp_path, inception_weights):
    """sample and eval-fid draw a moved LDM's conditions from its own dir, with its training latents gone."""
    from conftest import ldmkit_inprocess

    from ldmkit import modeldir
    from ldmkit.data.shapes import ShapesDataset

    text_dir, class_dir = tmp_path / "moved" / "ldm", tmp_path / "moved" / "ldm_cls"
    shutil.copytree(runs / "ldm", text_dir)
    shutil.copytree(runs / "ldm_cls", class_dir)
    (runs / "lat").rename(runs / "lat_away")
    try:
        code, out = ldmkit_inprocess(["sample", f"ckpt={text_dir}", "n=3", "sampler.steps=2", f"out={tmp_path}/s"])
        assert code == 0, out
        code, out = ldmkit_inprocess(["eval-fid", f"ckpt={class_dir}", "--samples", "6", "sampler.steps=2",
                                      f"reference={runs}/s", f"inception_weights={inception_weights}",
                                      f"out={tmp_path}/e"])
        assert code == 0, out
    finally:
        (runs / "lat_away").rename(runs / "lat")
    val = ShapesDataset(size=256, split="val")
    prompts = [json.loads(line)["prompt"] for line in (tmp_path / "s" / "samples.jsonl").read_text().splitlines()]
    assert prompts == [val[i]["caption"] for i in range(3)]  # the validation captions kept at training
    labels = modeldir.load_values(class_dir / modeldir.CONDITIONS)
    assert labels.tolist() == [val[i]["class_label"] for i in range(256)]
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["samples"] == 6 and metrics["reference"] == 5 and math.isfinite(metrics["fid"])
