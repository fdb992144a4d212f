"""Model-dir resolution (`latest`, wrong kinds) and saving with a hash."""

import json
import os

import pytest
import torch
from omegaconf import OmegaConf

from ldmkit import modeldir
from ldmkit.errors import UserError


def _fake(path, kind, mtime):
    path.mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps({"kind": kind}))
    (path / "config.yaml").write_text("{}\n")
    (path / "model.safetensors").write_bytes(b"")
    os.utime(path / "meta.json", (mtime, mtime))


def test_latest_is_the_newest_dir_of_that_kind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake(tmp_path / "runs/train-ae/old", "first_stage", 1000)
    _fake(tmp_path / "runs/train-ae/new", "first_stage", 2000)
    _fake(tmp_path / "runs/train-ae/sweep/0_f=8", "first_stage", 1500)
    assert modeldir.resolve("latest", "first_stage", "ae").name == "new"
    assert modeldir.resolve(str(tmp_path / "runs/train-ae/old"), "first_stage", "ae").name == "old"
    with pytest.raises(UserError, match="run `ldmkit train-ldm`"):
        modeldir.resolve("latest", "ldm", "ckpt")
    with pytest.raises(UserError, match="is a first-stage .autoencoder. dir .* needs an LDM dir"):
        modeldir.resolve(str(tmp_path / "runs/train-ae/old"), "ldm", "ckpt")
    with pytest.raises(UserError, match="no meta.json"):
        modeldir.resolve(str(tmp_path), "first_stage", "ae")
    (tmp_path / "runs/train-ae/new/model.safetensors").unlink()
    with pytest.raises(UserError, match="model.safetensors is missing"):
        modeldir.resolve(str(tmp_path / "runs/train-ae/new"), "first_stage", "ae")


def test_save_writes_hash_of_weights(tmp_path):
    meta = modeldir.save(tmp_path, OmegaConf.create({"a": 1}), {"model": {"w": torch.ones(2)}}, {"kind": "x"})
    assert meta["hash"] == modeldir.file_hash(tmp_path / "model.safetensors") and len(meta["hash"]) == 16
    assert json.loads((tmp_path / "meta.json").read_text()) == meta
    assert OmegaConf.load(tmp_path / "config.yaml").a == 1
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        modeldir.read_json(tmp_path / "broken.json")
