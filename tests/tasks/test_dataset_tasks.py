"""Your own data through the real CLI: an image folder (classes, captions, a broken file) and img2dataset-style
webdataset shards feed train-ae, encode-dataset and train-ldm; skipped samples are counted in the run dir."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import webdataset as wds
from conftest import run_cli, run_inprocess
from PIL import Image

from ldmkit.data.folder import split_score
from ldmkit.data.latent_shards import iterate_shards
from ldmkit.data.shapes import ShapesDataset

N_GOOD = 24
VAL = 0.25  # dataset.val_fraction


def _png_bytes(image) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(((image.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """24 shapes images as a folder tree (class = kind of the largest object, caption .txt) plus one truncated
    file, and the same images as two img2dataset-style shards plus one broken sample."""
    root = tmp_path_factory.mktemp("own_data")
    ds = ShapesDataset(size=N_GOOD, resolution=32, seed=3)
    folder = root / "folder"
    with wds.TarWriter(str(root / "00000.tar")) as a, wds.TarWriter(str(root / "00001.tar")) as b:
        for i in range(N_GOOD):
            item = ds[i]
            png = _png_bytes(item["image"])
            kind = ds.scene(i).objects[0].kind  # the largest object
            (folder / kind).mkdir(parents=True, exist_ok=True)
            (folder / kind / f"{i:03d}.png").write_bytes(png)
            (folder / kind / f"{i:03d}.txt").write_text(item["caption"])
            (a if i % 2 else b).write({"__key__": f"{i:09d}", "png": png, "txt": item["caption"],
                                       "json": json.dumps({"i": i})})
        a.write({"__key__": "broken", "jpg": png[:40], "txt": "truncated"})
    broken = next(f"circle/broken{j}.png" for j in range(100) if split_score(f"circle/broken{j}.png", 0) >= VAL)
    (folder / broken).write_bytes(png[: len(png) // 3])  # a truncated PNG in the train split
    return root


def test_train_ae_encode_and_train_ldm_from_a_folder(data, tmp_path):
    common = ["dataset=folder", f"dataset.path={data}/folder", f"dataset.val_fraction={VAL}"]
    run_cli("train-ae", *common, "trainer.max_steps=8", "loss.perceptual=null", "loss.discriminator=null",
            "report.images=4", "report.grid=2", "loader.batch_size=4", f"out={tmp_path}/ae")
    meta = json.loads((tmp_path / "ae" / "meta.json").read_text())
    assert meta["kind"] == "first_stage" and meta["steps"] == 8  # > one epoch: every train file was read
    skipped = json.loads((tmp_path / "ae" / "skipped.json").read_text())
    assert skipped["skipped"] == meta["skipped_samples"] == 1 and "circle/broken" in skipped["examples"][0]

    run_cli("encode-dataset", f"ae={tmp_path}/ae", *common, f"out={tmp_path}/lat")
    manifest = json.loads((tmp_path / "lat" / "manifest.json").read_text())
    samples = list(iterate_shards(tmp_path / "lat"))
    assert manifest["count"] == len(samples) and manifest["skipped_samples"] == 1
    assert {"caption", "class_label", "class_name", "key"} <= set(manifest["fields"])
    keys = [s["key"] for s in samples]
    assert len(set(keys)) == len(keys) and all(k.endswith(".png") for k in keys)
    assert {s["class_name"] for s in samples} <= {"circle", "square", "triangle"}

    run_cli("train-ldm", f"ae={tmp_path}/ae", "dataset=latents", f"dataset.path={tmp_path}/lat", "cond=class",
            "cond.num_classes=3", "trainer.max_steps=2", "loader.batch_size=4", f"out={tmp_path}/ldm")
    assert json.loads((tmp_path / "ldm" / "meta.json").read_text())["steps"] == 2


def test_train_ldm_streams_img2dataset_shards(data, tiny_ae, tmp_path):
    run_cli("train-ldm", f"ae={tiny_ae}", "dataset=wds", f"dataset.urls={data}/{{00000..00001}}.tar",
            "cond=text", "trainer.max_steps=7", "loader.batch_size=4", f"out={tmp_path}/ldm")
    meta = json.loads((tmp_path / "ldm" / "meta.json").read_text())
    assert meta["steps"] == 7 and meta["cond"] == "TextConditioner"  # > one pass over the 24 good samples
    assert json.loads((tmp_path / "ldm" / "skipped.json").read_text())["skipped"] >= 1


def test_bad_dataset_paths_are_one_line_errors(tmp_path):
    for args, message in (
        (["dataset=folder", f"dataset.path={tmp_path}/none"], "none"),
        (["dataset=wds", f"dataset.urls={tmp_path}/{{00000..00003}}.tar"], "00000"),
    ):
        proc = run_inprocess("train-ae", *args, "trainer.max_steps=1", f"out={tmp_path}/x")
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
