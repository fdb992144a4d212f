"""eval-fid: streamed Inception metrics equal torch-fidelity's own, FID ~ 0 for identical sets, the reference cache
is keyed by content, and on-the-fly generation feeds exactly N samples (random-weight Inception stand-in)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import ldmkit_inprocess, run_cli
from PIL import Image

from ldmkit.data.shapes import ShapesDataset
from ldmkit.evaluation.features import FeatureSet, InceptionFeatures, compute_metrics
from ldmkit.images import to_uint8

N = 16


def _write(folder, images) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid_sets")
    ds = ShapesDataset(size=N, resolution=32, seed=5)
    shapes = to_uint8(torch.stack([ds[i]["image"] for i in range(N)]))
    _write(root / "a", shapes)
    shutil.copytree(root / "a", root / "a_copy")
    noise = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (N, 3, 32, 32), dtype=np.uint8))
    _write(root / "noise", noise)
    return root, shapes, noise


def _eval(*args, out):
    code, output = ldmkit_inprocess(["eval-fid", *args, f"out={out}"])  # in-process: no start-up per run
    assert code == 0, output
    return json.loads((out / "metrics.json").read_text())


def test_streamed_metrics_equal_torch_fidelity(folders, inception_weights):
    import torch_fidelity

    _, shapes, noise = folders
    extractor = InceptionFeatures(inception_weights, torch.device("cpu"))
    sets = []
    for images in (noise, shapes):
        features = FeatureSet(extractor)
        for chunk in images.split(5):  # uneven batches: the result must not depend on batching
            features.add(chunk)
        sets.append(features.tensors())
    ours = compute_metrics(sets[0], sets[1], ["fid", "isc", "kid", "prc"], kid_subset_size=8)

    class Images(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = x

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    ref = torch_fidelity.calculate_metrics(
        input1=Images(noise), input2=Images(shapes), cuda=False, fid=True, isc=True, kid=True, prc=True,
        feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(inception_weights),
        kid_subset_size=8, isc_splits=10, batch_size=8, save_cpu_ram=True, verbose=False, cache=False)
    assert ours["fid"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-4)
    assert ours["isc_mean"] == pytest.approx(ref["inception_score_mean"], rel=1e-4)
    assert ours["kid_mean"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-4)
    assert (ours["precision"], ours["recall"]) == pytest.approx((ref["precision"], ref["recall"]), abs=1e-6)


def test_identical_sets_fid_zero_different_sets_larger_and_cache_keyed_by_content(folders, inception_weights,
                                                                                    tmp_path):
    root, _, _ = folders
    common = [f"inception_weights={inception_weights}", f"cache_dir={tmp_path}/cache", "--samples", str(N)]
    same = _eval(f"images={root}/a", f"reference={root}/a_copy", *common, out=tmp_path / "same")
    assert same["samples"] == same["reference"] == N and same["reference_cache"] == "miss"
    other = _eval(f"images={root}/noise", f"reference={root}/a_copy", *common, out=tmp_path / "other")
    assert other["reference_cache"] == "hit" and other["reference_hash"] == same["reference_hash"]
    assert abs(same["fid"]) < 1e-3 * other["fid"] and other["fid"] > 1
    assert other["kid_mean"] > same["kid_mean"] and same["precision"] == same["recall"] == 1.0
    # the same path with one image changed is another reference set: not served from the cache
    changed = root / "changed"
    shutil.copytree(root / "a_copy", changed)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(changed / "003.png")
    again = _eval(f"images={root}/a", f"reference={changed}", *common, out=tmp_path / "changed")
    assert again["reference_cache"] == "miss" and again["reference_hash"] != same["reference_hash"]
    assert again["fid"] > same["fid"]
    assert len(list((tmp_path / "cache").glob("reference-*.safetensors"))) == 2


def test_generation_feeds_exactly_n_samples_with_reference_conditions(tiny_ae, inception_weights, tmp_path):
    run_cli("train-ldm", f"ae={tiny_ae}", "cond=class", "trainer.max_steps=2", "loader.batch_size=4",
            f"out={tmp_path}/ldm")
    metrics = _eval(f"ckpt={tmp_path}/ldm", "--samples", "5", "batch_size=2", "sampler.steps=4",
                    f"inception_weights={inception_weights}", "metrics=[fid,kid]", "save_samples=true",
                    out=tmp_path / "e")
    assert metrics["samples"] == 5 and metrics["reference"] == 5
    assert "fid" in metrics and "kid_mean" in metrics and "precision" not in metrics and "isc_mean" not in metrics
    assert sorted(p.name for p in (tmp_path / "e" / "samples").iterdir()) == [f"{i:06d}.png" for i in range(5)]
    assert "n" not in metrics
    assert 0 <= metrics["color_acc"] <= 1 and 0 <= metrics["shape_acc"] <= 1  # class labels from shapes val
    # without Inception weights (skip): the samples and the conditional accuracy still come out
    skipped = _eval(f"ckpt={tmp_path}/ldm", "--samples", "3", "sampler.steps=4", "on_missing_weights=skip",
                    f"inception_weights={tmp_path}/none.pth", out=tmp_path / "s")
    assert skipped["samples"] == 3 and "fid" not in skipped and "none.pth" in skipped["skipped"]
    assert "color_acc" in skipped


def test_bad_metric_and_missing_reference_are_one_line(folders, inception_weights, tmp_path):
    root, _, _ = folders
    proc = run_cli("eval-fid", f"images={root}/a", f"reference={root}/a", f"inception_weights={inception_weights}",
                   "metrics=[fid,fdd]", f"out={tmp_path}/x", check=False)
    assert proc.returncode == 2 and "fdd" in proc.stderr.strip().splitlines()[-1]
    proc = run_cli("eval-fid", f"images={root}/a", f"inception_weights={inception_weights}", f"out={tmp_path}/y",
                   check=False)
    assert proc.returncode == 2 and "reference=DIR" in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
