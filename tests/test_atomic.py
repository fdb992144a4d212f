"""Crash-safe writes (ldmkit.atomic): a writer SIGKILLed in the middle of a write leaves the previous version of
a model dir, or the finished shards and manifest of an encoding, intact, and never a half file under a final name."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import LDMKIT, run_cli
from omegaconf import OmegaConf

from ldmkit import modeldir
from ldmkit.atomic import atomic_path, atomic_paths, leftovers, temp_name, write_text

SAVER = """
import sys
from pathlib import Path

import torch

from ldmkit import modeldir

out, n = Path(sys.argv[1]), int(sys.argv[2])
for version in range(1, 100_000):  # every version a different value, same shape
    weights = {"model": {"w": torch.full((n,), float(version))}}
    modeldir.save(out, {"version": version}, weights, {"kind": "first_stage", "version": version})
"""
BIG = 30_000_000  # float32 values: a 120 MB model.safetensors, so writing one takes a while
OURS = re.compile(r"\.(config|model|meta)\.tmp-\d+\.(yaml|safetensors|json)")


def _all_threads_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (SIGSTOP has fully taken effect)."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return bool(states) and all(s in "Tt" for s in states)


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120) -> None:
    """SIGKILL ``proc`` at a moment when ``ready()`` holds: poll, freeze it (SIGSTOP), re-check the frozen state
    (resume and poll on if the moment passed), then kill it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the writer exited ({proc.returncode}) before the moment to kill it came")
        if ready():
            proc.send_signal(signal.SIGSTOP)
            while not _all_threads_stopped(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.001)
            if ready():
                proc.kill()
                proc.wait()
                return
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    pytest.fail(f"no moment to kill the writer came within {timeout} s")


def _size(path: Path) -> int:
    """File size, 0 when it does not exist (yet / any more)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _scratch(out: Path) -> list[Path]:
    """Hidden files in ``out`` that are not ldmkit's own temporaries (safetensors writes through its own)."""
    return [p for p in out.glob(".*") if not OURS.fullmatch(p.name)]


@pytest.mark.parametrize("moment", ["weights_being_written", "weights_written_not_renamed"])
def test_model_dir_killed_mid_save_keeps_the_previous_version(tmp_path, moment):
    out = tmp_path / "model"
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(out), str(BIG)])
    model_tmp = out / f".model.tmp-{proc.pid}.safetensors"
    full: list[int] = []

    def ready() -> bool:
        if not full:  # wait for a first complete version to be there
            if not (out / "meta.json").is_file():
                return False
            full.append(_size(out / "model.safetensors"))
        if moment == "weights_being_written":
            return bool(_scratch(out)) or 0 < _size(model_tmp) < full[0]
        return _size(model_tmp) > 0

    _kill_when(proc, ready)
    meta = modeldir.read_json(out / "meta.json")
    assert meta["hash"] == modeldir.file_hash(out / "model.safetensors")
    w = modeldir.load_weights(out / "model.safetensors")["w"]
    assert w.numel() == BIG and w.min() == w.max() == meta["version"] >= 1
    assert OmegaConf.load(out / "config.yaml").version == meta["version"]
    in_progress = leftovers(out / "config.yaml")  # written first: the save that was killed had begun
    assert len(in_progress) == 1 and OmegaConf.load(in_progress[0]).version == meta["version"] + 1
    if moment == "weights_written_not_renamed":
        assert _size(model_tmp) == full[0]


def _tiny_first_stage(path: Path) -> Path:
    """A random-weight 32 px KL first stage (f=4) saved as a model dir: no training needed."""
    from hydra.utils import instantiate

    node = {"_target_": "ldmkit.models.autoencoder.AutoencoderKL", "embed_dim": 3, "z_channels": 3, "ch": 32,
            "ch_mult": [1, 2, 4], "num_res_blocks": 1, "attn_resolutions": [], "resolution": 32}
    cfg = OmegaConf.create({"first_stage": node})
    torch.manual_seed(0)
    ae = instantiate(cfg.first_stage)
    modeldir.save(path, cfg, {"model": ae.state_dict()}, {"kind": "first_stage", "type": "kl", "f": 4,
                  "latent_channels": 3, "resolution": 32, "latent_shape": [3, 8, 8], "scale_factor": 1.0})
    return path


def _keys(shard: Path) -> set[str]:
    """The sample keys of a tar, reading it to the end (a torn tar raises)."""
    with tarfile.open(shard) as tar:
        return {m.name.split(".", 1)[0] for m in tar.getmembers()}


def test_encoding_killed_mid_shard_leaves_no_half_shard_and_resumes(tmp_path):
    from ldmkit.data.latent_writer import verify

    ae, out = _tiny_first_stage(tmp_path / "ae"), tmp_path / "lat"
    args = ["encode-dataset", f"ae={ae}", "dataset.size=20", "shard_size=4", "batch_size=2", f"out={out}"]
    proc = subprocess.Popen([str(LDMKIT), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})

    def ready() -> bool:
        try:
            listed = json.loads((out / "manifest.json").read_text())["shards"]
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        return bool(listed) and any(_size(p) > 0 for p in out.glob(".0*.tmp-*.tar"))

    _kill_when(proc, ready)
    manifest = modeldir.read_json(out / "manifest.json")
    assert manifest["status"] == "partial" and manifest["shards"]
    assert [p.name for p in out.glob(".0*.tmp-*.tar")], "killed while a shard was being written"
    for shard in sorted(out.glob("0*.tar")):  # every shard under its final name is complete
        assert len(_keys(shard)) == 4, shard.name
    assert sum(len(_keys(out / name)) for name in manifest["shards"]) == manifest["count"]

    run_cli(*args)
    assert verify(out)["samples"] == 20
    assert not list(out.glob(".*.tmp-*")), "the resumed run removed the killed run's temporaries"


def test_exception_inside_atomic_path_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_atomic_paths_renames_nothing_when_the_block_fails(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "sub" / "b.txt"
    with pytest.raises(KeyError), atomic_paths(a, b) as (ta, tb):
        ta.write_text("new a")
        tb.write_text("new b")
        raise KeyError("late failure")
    assert not a.exists() and not b.exists() and not leftovers(a) and not leftovers(b)
    with atomic_paths(a, b) as (ta, tb):
        ta.write_text("a")
        tb.write_text("b")
        assert not a.exists()  # nothing is renamed before the block ends
    assert a.read_text() == "a" and b.read_text() == "b"


def test_temp_names_are_hidden_keep_the_suffix_and_are_found_as_leftovers(tmp_path):
    target = tmp_path / "000003.tar"
    tmp = temp_name(target)
    assert tmp.name.startswith(".") and tmp.suffix == ".tar" and tmp.parent == tmp_path
    tmp.write_bytes(b"x")
    (tmp_path / ".000004.tmp-1.tar").write_bytes(b"other shard")
    assert leftovers(target) == [tmp]


def test_write_json_round_trip_and_overwrite(tmp_path):
    path = tmp_path / "deep" / "manifest.json"
    data = {"count": 3, "caption": "un cercle rouge …", "shape": [3, 8, 8], "nested": {"x": None}}
    modeldir.write_json(path, data)
    assert modeldir.read_json(path) == data and path.read_text().endswith("\n")
    modeldir.write_json(path, {"count": 4})
    assert modeldir.read_json(path) == {"count": 4} and not leftovers(path)
    write_text(tmp_path / "report.md", "# ünïcode\n")
    assert (tmp_path / "report.md").read_text(encoding="utf-8") == "# ünïcode\n"


def test_failed_save_keeps_the_previous_model_dir(tmp_path):
    modeldir.save(tmp_path, {"version": 1}, {"model": {"w": torch.ones(4)}}, {"kind": "first_stage"})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(KeyError):  # no model.safetensors to hash: fails after config and ema were written
        modeldir.save(tmp_path, {"version": 2}, {"ema": {"w": torch.zeros(4)}}, {"kind": "first_stage"})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_copy_and_images_leave_no_temporaries(tmp_path):
    from PIL import Image

    from ldmkit.images import save_grid

    src, dst = tmp_path / "src", tmp_path / "dst"
    meta = modeldir.save(src, {"a": 1}, {"model": {"w": torch.ones(4)}, "ema": {"w": torch.ones(4)}}, {"kind": "x"})
    modeldir.copy(src, dst)
    assert sorted(p.name for p in dst.iterdir()) == ["config.yaml", "ema.safetensors", "meta.json", "model.safetensors"]
    assert modeldir.read_json(dst / "meta.json") == meta and meta["hash"] == modeldir.file_hash(dst / "model.safetensors")
    save_grid(torch.zeros(4, 3, 8, 8), tmp_path / "grid.png", nrow=2)
    with Image.open(tmp_path / "grid.png") as im:
        assert im.format == "PNG"
    assert not list(tmp_path.glob(".*")) and not list(dst.glob(".*"))


CKPT_SAVER = """
import sys

import torch

from ldmkit.training.trainer import AtomicCheckpointIO

path, n = sys.argv[1], int(sys.argv[2])
io = AtomicCheckpointIO()
for version in range(1, 100_000):
    io.save_checkpoint({"global_step": version, "state_dict": {"w": torch.full((n,), float(version))}}, path)
"""


def test_checkpoint_killed_mid_write_keeps_the_previous_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", CKPT_SAVER, str(ckpt), str(BIG)])
    tmp = ckpt.with_name(f".last.tmp-{proc.pid}.ckpt")
    full: list[int] = []

    def ready() -> bool:
        if not full:
            if not ckpt.is_file():
                return False
            full.append(_size(ckpt))
        return 0 < _size(tmp) < full[0]  # the next version half written

    _kill_when(proc, ready)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    w = state["state_dict"]["w"]
    assert w.numel() == BIG and w.min() == w.max() == state["global_step"] >= 1
