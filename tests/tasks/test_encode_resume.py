"""encode-dataset at scale: a run killed (SIGKILL) mid-way and re-run with the same arguments ends with every
sample exactly once; several worker processes give the same shards; --verify catches a damaged output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tarfile
import time

import pytest
import torch
from conftest import LDMKIT, run_cli, run_inprocess

from ldmkit.data.latent_shards import iterate_shards

N, SHARD = 480, 16  # 30 shards


@pytest.fixture
def ae(tiny_ae):
    return tiny_ae


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def _encode_args(ae, out, *extra):
    return ["encode-dataset", f"ae={ae}", f"dataset.size={N}", f"shard_size={SHARD}", "batch_size=8",
            f"out={out}", *extra]


def test_killed_run_resumes_to_every_sample_exactly_once(ae, tmp_path):
    out = tmp_path / "lat"
    proc = subprocess.Popen([str(LDMKIT), *_encode_args(ae, out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if len(_manifest(out)["shards"]) >= 3:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = _manifest(out)
    assert killed["status"] == "partial" and 3 <= len(killed["shards"]) < N // SHARD
    before = {name: (out / name).stat().st_mtime_ns for name in killed["shards"]}
    partial = run_cli("train-ldm", f"ae={ae}", "dataset=latents", f"dataset.path={out}", f"out={tmp_path}/ldm",
                      check=False)
    assert partial.returncode == 2 and "incomplete" in partial.stderr

    run_cli(*_encode_args(ae, out))
    final = _manifest(out)
    assert final["status"] == "complete" and final["count"] == N and len(final["shards"]) == N // SHARD
    assert all((out / name).stat().st_mtime_ns == t for name, t in before.items())  # kept, not re-encoded
    keys = [s["__key__"] for s in iterate_shards(out)]
    assert sorted(keys) == [f"{i:09d}" for i in range(N)]
    assert not list(out.glob(".*.tmp-*")) and not list(out.glob("*.tmp"))
    (tmp_path / "cwd").mkdir()
    verified = run_cli("encode-dataset", "--verify", str(out), cwd=tmp_path / "cwd")
    assert "480" in verified.stderr + verified.stdout
    assert not list((tmp_path / "cwd").iterdir())  # a check writes nothing: no dated run dir left behind

    other = run_inprocess(*_encode_args(ae, out), "shard_size=32")
    assert other.returncode == 2 and "shard_size" in other.stderr


def test_workers_write_the_same_shards_and_verify_catches_damage(ae, tmp_path):
    run_cli(*_encode_args(ae, tmp_path / "one"), "dataset.size=64")
    run_cli(*_encode_args(ae, tmp_path / "two"), "dataset.size=64", "--workers", "2")
    one = {s["__key__"]: s for s in iterate_shards(tmp_path / "one")}
    two = {s["__key__"]: s for s in iterate_shards(tmp_path / "two")}
    assert sorted(one) == sorted(two) == [f"{i:09d}" for i in range(64)]
    for key in one:
        torch.testing.assert_close(one[key]["latent_mean"], two[key]["latent_mean"], atol=1e-3, rtol=1e-3)
        assert one[key]["caption"] == two[key]["caption"]
    with tarfile.open(tmp_path / "one" / "000000.tar") as tar:  # plain ustar members: no pax header to parse per file
        assert all(m.pax_headers == {} and isinstance(m.mtime, int) for m in tar.getmembers())
    manifest = _manifest(tmp_path / "two")
    manifest["count"] = 65
    (tmp_path / "two" / "manifest.json").write_text(json.dumps(manifest))
    bad = run_inprocess("encode-dataset", "--verify", str(tmp_path / "two"))
    assert bad.returncode == 2 and "says 65 samples, the shards hold 64" in bad.stderr
    (tmp_path / "two" / "000001.tar").unlink()
    bad = run_inprocess("encode-dataset", "--verify", str(tmp_path / "two"))
    assert bad.returncode == 2 and "000001.tar is listed in manifest.json but missing" in bad.stderr
