"""``ldmkit info DIR``: the facts of a first-stage dir, an LDM dir, a latent-shard dir, a run dir and an f-study
dir (as JSON and as a rich table); a bogus or missing DIR is one line with exit 2; info never writes a file."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import LDMKIT, run_cli


def info(path: Path, *extra: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``ldmkit info DIR [extra]`` in ``cwd`` (a wide terminal, so table cells are not cut)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "COLUMNS": "200"}
    return subprocess.run([str(LDMKIT), "info", str(path), *extra], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def tree(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file and dir under ``roots`` with its size and mtime."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in roots if root.exists()
            for p in [root, *root.rglob("*")]}


def facts(path: Path, cwd: Path) -> tuple[dict, str]:
    """The JSON facts and the rich table of ``path``; checks that neither run wrote anything."""
    before = tree(path, cwd)
    proc = info(path, "json=true", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    table = info(path, cwd=cwd)
    assert table.returncode == 0, table.stderr
    assert tree(path, cwd) == before and not list(cwd.iterdir())
    return json.loads(proc.stdout), table.stdout


def tensor_values(path: Path) -> int:
    """Number of values in a safetensors file (loaded here, unlike info)."""
    from safetensors.torch import load_file

    return sum(t.numel() for t in load_file(str(path)).values())


def meta(path: Path) -> dict:
    return json.loads((path / "meta.json").read_text())


@pytest.fixture(scope="module")
def ldm(tiny_ae, tmp_path_factory) -> Path:
    """A 2-step class-conditional LDM (a snapshot at step 1, a loss row per step) and an eval result next to it."""
    root = tmp_path_factory.mktemp("info_ldm")
    run_cli("train-ldm", f"ae={tiny_ae}", "cond=class", "dataset.size=24", "loader.batch_size=4",
            "unet.model_channels=32", "unet.num_head_channels=16", "trainer.max_steps=2", "snapshots=[1]",
            "trainer.log_every_n_steps=1", f"out={root / 'ldm'}")
    (root / "eval" / "final").mkdir(parents=True)
    (root / "eval" / "final" / "metrics.json").write_text(json.dumps({"ckpt": str((root / "ldm").resolve()),
                                                                      "fid": 12.5, "samples": 8}))
    return root / "ldm"


def test_first_stage_model_dir(tiny_ae, tmp_path):
    got, table = facts(tiny_ae, tmp_path)
    params = tensor_values(tiny_ae / "model.safetensors")
    assert got["kind"] == "first_stage" and got["type"] == "kl" and got["f"] == 4 and got["latent_channels"] == 3
    assert got["latent_shape"] == [3, 8, 8] and got["scale_factor"] == meta(tiny_ae)["scale_factor"]
    assert got["params"] == params and got["steps"] == 2
    assert got["hash"] == meta(tiny_ae)["hash"] and got["hash_ok"] is True
    assert {"val_psnr", "val_ssim"} <= set(got["metrics"])
    assert got["files"]["model.safetensors"] == (tiny_ae / "model.safetensors").stat().st_size
    assert got["run"]["command"] == "train-ae" and "trainer.max_steps=2" in got["run"]["overrides"]
    assert got["run"]["checkpoint"]["step"] == 2
    for text in ("first-stage model dir", f"{params:,}", got["hash"], "3×8×8", "val_psnr", "train-ae"):
        assert text in table


def test_ldm_model_dir(ldm, tiny_ae, tmp_path):
    got, table = facts(ldm, tmp_path)
    params = tensor_values(ldm / "model.safetensors")
    assert got["kind"] == "ldm" and got["cond"] == "ClassConditioner" and got["cond_key"] == "class_label"
    assert got["prediction"] == "eps" and got["f"] == 4 and got["latent_shape"] == [3, 8, 8]
    assert got["params"] == params and got["steps"] == 2 and got["ema"] is True
    assert got["train_samples_per_s"] == meta(ldm)["train_samples_per_s"]
    fs = got["first_stage"]
    assert fs["hash"] == meta(tiny_ae)["hash"] and fs["path"] == str(tiny_ae.resolve()) and fs["bundled_matches"]
    assert got["snapshots"] == [{"dir": "snapshots/step_0000001", "steps": 1}]
    assert got["metrics"] == {"eval/final/metrics.json": {"fid": 12.5, "samples": 8}}
    run = got["run"]
    assert run["command"] == "train-ldm" and run["checkpoint"]["step"] == 2 and run["last_logged"]["step"] == 2
    assert any("loss" in key and math.isfinite(value) for key, value in run["last_logged"].items())
    for text in ("LDM model dir", "ClassConditioner", f"{params:,}", fs["hash"], "step_0000001", "12.5"):
        assert text in table

    copy = tmp_path / "copy"  # a bundled first stage that is not the recorded one is reported, not hidden
    shutil.copytree(ldm, copy, ignore=shutil.ignore_patterns("checkpoints", "logs", ".hydra", "snapshots"))
    shutil.copy(copy / "ema.safetensors", copy / "first_stage" / "model.safetensors")
    proc = info(copy, "json=true", cwd=copy)
    assert proc.returncode == 0 and json.loads(proc.stdout)["first_stage"]["bundled_matches"] is False


def test_latent_shard_dir(tiny_ae, tmp_path):
    out = tmp_path / "latents"
    run_cli("encode-dataset", f"ae={tiny_ae}", "dataset.size=24", "shard_size=8", "batch_size=8", f"out={out}")
    (tmp_path / "cwd").mkdir()
    got, table = facts(out, tmp_path / "cwd")
    assert got["kind"] == "latents" and got["status"] == "complete" and got["count"] == 24
    assert got["shards"] == got["planned_shards"] == 3 and got["missing_shards"] == []
    assert got["latent_shape"] == [3, 8, 8] and got["f"] == 4 and got["skipped_samples"] == 0
    assert got["first_stage"]["hash"] == meta(tiny_ae)["hash"]
    assert {"caption", "class_label", "boxes"} <= set(got["fields"]) and "latent_mean" not in got["fields"]
    assert got["cached_fields"] == [] and got["run"]["command"] == "encode-dataset"
    for text in ("latent-shard dir", "complete", meta(tiny_ae)["hash"], "caption"):
        assert text in table


def test_f_study_dir(tmp_path):
    root = tmp_path / "study"
    for i, f in enumerate((8, 4)):
        job = root / f"{i}_f={f}"
        job.mkdir(parents=True)
        (job / "result.json").write_text(json.dumps({"f": f, "latent_shape": [3, 32 // f, 32 // f], "params": 10 * f,
                                                     "ldm_steps": 5, "train_samples_per_s": 2.0,
                                                     "checkpoints": [{"step": 5, "shape_acc": 0.25}]}))
    (root / "report.md").write_text("| f |\n")
    (tmp_path / "cwd").mkdir()
    got, table = facts(root, tmp_path / "cwd")
    assert got["kind"] == "f_study" and got["report"] is True
    assert [(j["dir"], j["f"], j["params"], j["shape_acc"]) for j in got["jobs"]] == [
        ("1_f=4", 4, 40, 0.25), ("0_f=8", 8, 80, 0.25)]
    assert "f-study dir" in table and "1_f=4" in table


def test_bogus_or_missing_dir_is_one_line_exit_2(tmp_path):
    bogus = tmp_path / "bogus"
    bogus.mkdir()
    (bogus / "notes.txt").write_text("hello")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = tree(tmp_path)
    for path, says in ((bogus, "is not a model, latent-shard, run or f-study dir"),
                       (tmp_path / "missing", "no such directory"), (bogus / "notes.txt", "is not a directory")):
        proc = info(path, "json=true", cwd=cwd)
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], proc.stderr
    assert tree(tmp_path) == before
