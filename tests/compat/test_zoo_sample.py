"""Each task of the released CompVis models samples from the CLI on an imported (shrunk) model, with its inputs:
unconditional, class, text (BERT WordPiece from a local vocab), layout (taming's box tokens), super-resolution,
inpainting and semantic synthesis (COCO-stuff label maps, also above the training size)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import zoo
from conftest import ldmkit_inprocess, run_cli
from PIL import Image

import ldmkit
from ldmkit.diffusion.samplers import sample_ddim
from ldmkit.tasks.import_compvis import import_ldm

TASKS = {"unconditional": "ldm_celeba256", "class": "ldm_cin256-v2", "class_no_null": "ldm_cin256", "layout": "ldm_layout2img-openimages256",
         "sr": "ldm_bsr_sr", "inpaint": "ldm_inpainting_big", "semantic": "ldm_semantic_synthesis256"}
VOCAB = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "above", "blue", "square",
         "photo", "of", "##s"]
CLASSES = ["Man", "Car", "Tree", "Dog", "Boat"]


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict[str, Path]:
    """The shrunk model of each task imported (in-process, each import itself is tested in test_zoo.py)."""
    root = tmp_path_factory.mktemp("zoo_sample")
    dirs = {}
    for task, name in TASKS.items():
        dirs[task] = root / task
        import_ldm(zoo.ZOO / name / "config.yaml", zoo.write_checkpoint(name, root / f"{name}.ckpt"), dirs[task])
    return dirs


def rows(out: Path) -> list[dict]:
    """samples.jsonl of a sample run."""
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def png(path: Path) -> np.ndarray:
    """An image file as an (H, W, 3) uint8 array."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@dataclass
class Run:
    """An in-process ldmkit run: exit code and output (as a subprocess' stderr, where the one-line errors go)."""

    returncode: int
    stderr: str


def cli(*args: str, cwd: Path, check: bool = True) -> Run:
    """``ldmkit ARGS`` in this process, in ``cwd`` (no interpreter start-up per call)."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        code, output = ldmkit_inprocess(list(args))
    finally:
        os.chdir(old)
    if check and code != 0:
        raise AssertionError(f"ldmkit {' '.join(args)} exited {code}\n{output}")
    return Run(code, output)


def sample(*args: str, cwd: Path, check: bool = True) -> Run:
    """``ldmkit sample`` with few steps."""
    return cli("sample", "sampler.steps=4", "seed=0", *args, cwd=cwd, check=check)


def test_unconditional_and_class(imported, tmp_path):
    sample(f"ckpt={imported['unconditional']}", "n=2", "out=u", cwd=tmp_path)
    assert png(tmp_path / "u" / "000001.png").shape == (32, 32, 3)
    sample(f"ckpt={imported['class']}", "label=[3,999]", "n=1", "out=c", cwd=tmp_path)
    assert [r["label"] for r in rows(tmp_path / "c")] == [3, 999]
    proc = sample(f"ckpt={imported['class']}", "label=1000", "out=bad", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "label=1000 is out of range 0..999" in proc.stderr and proc.stderr.count("\n") == 1
    proc = sample(f"ckpt={imported['class_no_null']}", "label=999", "guidance=3", "out=bad", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "guidance=3: this class model has no null class" in proc.stderr
    sample(f"ckpt={imported['class_no_null']}", "label=999", "n=1", "out=c999", cwd=tmp_path)  # 1000 real classes
    proc = sample(f"ckpt={imported['class']}", "out=bad", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "this class model was not trained here" in proc.stderr and "give label=" in proc.stderr
    proc = cli("eval-fid", f"ckpt={imported['unconditional']}", "--samples", "4", "on_missing_weights=skip",
               "out=e", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "records no training dataset (an imported model)" in proc.stderr


def test_text_from_strings_equals_token_ids(tmp_path):
    name = "ldm_txt2img-1p4B-eval"
    ckpt = zoo.write_checkpoint(name, tmp_path / "model.ckpt")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    run_cli("import-compvis", str(zoo.ZOO / name / "config.yaml"), str(ckpt), f"cond.vocab={vocab}", "out=txt",
            cwd=tmp_path)
    info = cli("info", "txt", "json=true", cwd=tmp_path).stderr
    assert json.loads(info)["task"] == "text" and '"target": "ldm.models.diffusion.ddpm.LatentDiffusion"' in info
    sample("ckpt=txt", "prompt=a red circle above blue squares", "n=1", "guidance=5", "out=s", cwd=tmp_path)
    assert rows(tmp_path / "s")[0]["prompt"] == "a red circle above blue squares"
    # the same through token ids: [CLS] a red circle above blue square ##s [SEP] [PAD]...
    ids = torch.zeros(1, 77, dtype=torch.long)
    ids[0, :9] = torch.tensor([3, 6, 7, 8, 9, 10, 11, 14, 4])
    ldm = ldmkit.load(tmp_path / "txt")
    assert torch.equal(ldm.cond.tokenize(["a red circle above blue squares"]), ids)
    image = ldm.sample(ids, sampler=partial(sample_ddim, steps=4), guidance=5.0,
                       generator=[torch.Generator().manual_seed(0)])
    expected = ((image[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    assert np.abs(png(tmp_path / "s" / "000000.png").astype(int) - expected.astype(int)).max() <= 1


def test_text_without_vocab_is_one_line(tmp_path, imported, monkeypatch):
    name = "ldm_text2img256"
    ckpt = zoo.write_checkpoint(name, tmp_path / "model.ckpt")
    import_ldm(zoo.ZOO / name / "config.yaml", ckpt, tmp_path / "t")
    (tmp_path / "empty-hf-cache").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    proc = run_cli("sample", f"ckpt={tmp_path / 't'}", "prompt=a red circle", "out=x", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "cond.vocab=PATH" in proc.stderr and "Hugging Face cache" in proc.stderr
    proc = sample(f"ckpt={imported['class']}", "label=1", f"cond.vocab={tmp_path}/none.txt", "out=y", cwd=tmp_path,
                  check=False)
    assert proc.returncode == 2 and "cond.vocab= is for BERT text models" in proc.stderr


def test_layout_by_class_names(imported, tmp_path):
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (tmp_path / "boxes.yaml").write_text("- {box: [0.1, 0.1, 0.5, 0.6], label: car}\n"
                                         "- {box: [0.5, 0.4, 0.9, 0.9], label: 3, group: true}\n")
    sample(f"ckpt={imported['layout']}", f"layout={tmp_path}/boxes.yaml", f"cond.classes={tmp_path}/classes.txt",
           "n=2", "out=l", cwd=tmp_path)
    assert rows(tmp_path / "l")[1]["layout"][0]["label"] == "car" and png(tmp_path / "l" / "000001.png").shape == (
        32, 32, 3)
    proc = sample(f"ckpt={imported['layout']}", f"layout={tmp_path}/boxes.yaml", "out=bad", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "cond.classes=PATH" in proc.stderr and proc.stderr.count("\n") == 1


def test_super_resolution_is_four_times_and_convolutional(imported, tmp_path):
    rng = np.random.default_rng(0)
    for side in (8, 16):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(tmp_path / f"lr{side}.png")
        sample(f"ckpt={imported['sr']}", f"image={tmp_path}/lr{side}.png", "n=1", f"out=sr{side}", cwd=tmp_path)
        assert png(tmp_path / f"sr{side}" / "000000.png").shape == (4 * side, 4 * side, 3)


def test_inpainting_keeps_the_image_outside_the_mask(imported, tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 4:28] = 255
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    sample(f"ckpt={imported['inpaint']}", f"image={tmp_path}/img.png", f"mask={tmp_path}/mask.png", "n=1",
           "out=i", cwd=tmp_path)
    out = png(tmp_path / "i" / "000000.png").astype(int)
    keep = mask == 0
    assert np.abs(out[keep] - image[keep].astype(int)).max() <= 1  # the original, outside the mask
    assert np.abs(out[~keep] - image[~keep].astype(int)).mean() > 5  # generated inside it


def test_semantic_maps_at_and_above_training_size(imported, tmp_path):
    rng = np.random.default_rng(2)
    for h, w in ((32, 32), (48, 64)):
        Image.fromarray(rng.integers(0, 182, (h, w), dtype=np.uint8)).save(tmp_path / f"map{h}.png")
        sample(f"ckpt={imported['semantic']}", f"semantic={tmp_path}/map{h}.png", "n=1", f"out=s{h}", cwd=tmp_path)
        assert png(tmp_path / f"s{h}" / "000000.png").shape == (h, w, 3)
    Image.fromarray(np.full((32, 32), 200, np.uint8)).save(tmp_path / "high.png")
    proc = sample(f"ckpt={imported['semantic']}", f"semantic={tmp_path}/high.png", "out=bad", cwd=tmp_path,
                  check=False)
    assert proc.returncode == 2 and "labels go up to 200 but this model knows 0..181" in proc.stderr
