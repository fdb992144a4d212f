"""Resuming: a run SIGKILLed at a random step and resumed ends with the unbroken run's weights; SIGTERM/SIGUSR1
save a checkpoint and exit; bad resume targets (pickled code, another model, none) are one-line errors; a
non-finite loss stops training naming the step, with the last checkpoint intact."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import CACHE, LDMKIT, run_cli, run_inprocess
from safetensors.torch import load_file

from ldmkit.training.loader import EpochSampler

TINY = ["cond=class", "dataset.size=24", "loader.batch_size=4", "unet.model_channels=32", "unet.num_head_channels=16",
        "trainer.log_every_n_steps=1"]
STEPS = 10  # 6 batches per epoch: the runs cross an epoch boundary


def _start(*args: str) -> subprocess.Popen:
    """The CLI as a background process (its output kept in a pipe)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "LDMKIT_CACHE": CACHE}
    return subprocess.Popen([str(LDMKIT), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(condition, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Poll ``condition`` until true; fail when the process ended first or time runs out."""
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) first:\n{proc.stderr.read()[-2000:]}")
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def _ckpt_step(path: Path) -> int:
    """The global step of a checkpoint (-1 when there is none yet)."""
    if not path.is_file():
        return -1
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    """Model and EMA weights of a finished run dir."""
    return {f"{n}/{k}": v for n in ("model", "ema") for k, v in load_file(str(run / f"{n}.safetensors")).items()}


def _losses(run: Path) -> dict[int, float]:
    """step -> logged training loss."""
    with open(run / "logs" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def test_sigkill_at_a_random_step_then_resume_equals_the_unbroken_run(tiny_ae, tmp_path):
    args = ["train-ldm", f"ae={tiny_ae}", *TINY, f"trainer.max_steps={STEPS}", "checkpoint.every_n_steps=1"]
    run_cli(*args, f"out={tmp_path / 'unbroken'}")
    rng = random.Random()
    kill_after, delay = rng.randint(1, STEPS - 2), rng.uniform(0, 0.5)
    out = tmp_path / "killed"
    proc = _start(*args, f"out={out}")
    _wait(lambda: _ckpt_step(out / "checkpoints" / "last.ckpt") >= kill_after, proc)
    time.sleep(delay)  # anywhere in the next step(s), or during the next checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (out / "model.safetensors").exists(), f"the run finished before the kill ({kill_after=})"
    run_cli(*args, f"out={out}", "resume=true")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["last.ckpt"]  # one checkpoint, overwritten
    want, got = _weights(tmp_path / "unbroken"), _weights(out)
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=f"{key} ({kill_after=}, {delay=:.2f})")
    assert _losses(out) == pytest.approx(_losses(tmp_path / "unbroken"), abs=1e-6)  # one row per step, none lost


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_saves_a_checkpoint_and_resume_finishes(tiny_ae, tmp_path, sig):
    out = tmp_path / "run"
    args = ["train-ldm", f"ae={tiny_ae}", *TINY, "checkpoint.every_n_steps=1000"]
    proc = _start(*args, "trainer.max_steps=100000", "snapshots=[1]", f"out={out}")
    _wait(lambda: (out / "snapshots" / "step_0000001" / "meta.json").is_file(), proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err[-2000:]
    step = _ckpt_step(out / "checkpoints" / "last.ckpt")
    assert step >= 1 and f"stopped by {sig.name} after step {step}" in err and "resume=true" in err
    assert not (out / "meta.json").exists()  # no model dir from an interrupted run
    run_cli(*args, f"trainer.max_steps={step + 2}", "resume=true", f"out={out}")
    assert _ckpt_step(out / "checkpoints" / "last.ckpt") == step + 2
    assert (out / "meta.json").is_file()


def test_bad_resume_targets_are_one_line_errors(tiny_ae, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _Touch(marker), "loops": {}}, evil)
    args = ["train-ldm", f"ae={tiny_ae}", *TINY, "trainer.max_steps=2"]
    cases = {
        evil: "refuses to unpickle code",
        tmp_path / "nothing.ckpt": "no such checkpoint",
        "true": "no checkpoint in",
    }
    ae_run = tiny_ae / "checkpoints" / "last.ckpt"
    assert ae_run.is_file()
    cases[ae_run] = "the checkpoint is of another model"
    for target, message in cases.items():
        proc = run_inprocess(*args, f"resume={target}", f"out={tmp_path / 'new'}")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (target, proc.stderr[-2000:])
    assert not marker.exists()  # the pickled code never ran


class _Touch:
    """A pickle whose loading would create a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tiny_ae, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train-ldm", f"ae={tiny_ae}", *TINY, "optim.lr=1e30", "trainer.max_steps=50",
                   "checkpoint.every_n_steps=1", f"out={out}", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "at training step" in lines[-1] and "training stopped" in lines[-1] and "is intact" in lines[-1]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    step = int(lines[-1].split("at training step ")[1].split(":")[0])
    assert ckpt["global_step"] == step - 1  # the step before the bad one
    assert not (out / "meta.json").exists()


def test_ae_with_discriminator_resumed_halfway_equals_one_run(tmp_path):
    args = ["train-ae", "loss.perceptual=null", "loss.disc_start=0", "dataset.size=24", "loader.batch_size=4",
            "report.images=4", "report.grid=2", "lr_schedule.total_steps=8"]  # one schedule for all
    run_cli(*args, "trainer.max_steps=8", f"out={tmp_path / 'one'}")
    run_cli(*args, "trainer.max_steps=3", f"out={tmp_path / 'two'}")
    run_cli(*args, "trainer.max_steps=8", "resume=true", f"out={tmp_path / 'two'}")
    a, b = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("one", "two"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    assert _ckpt_step(tmp_path / "two" / "checkpoints" / "last.ckpt") == 8  # training steps, not optimiser steps


def test_epoch_sampler_is_seeded_split_over_ranks_and_starts_mid_epoch(monkeypatch):
    import ldmkit.training.loader as loader

    sampler = EpochSampler(10, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and list(EpochSampler(10, seed=3)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == list(range(10))
    sampler.start(0, 4)
    assert list(sampler) == first[4:] and list(sampler) == first  # the skip applies once
    ranks = []
    for rank in range(3):
        monkeypatch.setattr(loader, "_rank_world", lambda r=rank: (r, 3))
        ranks.append(list(EpochSampler(10, seed=3)))
    assert [len(r) for r in ranks] == [3, 3, 3] and len({i for r in ranks for i in r}) == 9


@pytest.mark.parametrize("resampled", [True, False])
def test_shard_stream_resumes_mid_epoch_like_the_unbroken_stream(tmp_path, resampled):
    import io

    import webdataset as wds
    from PIL import Image

    from ldmkit.data.wds import wds_dataset
    from ldmkit.training.loader import make_loader, start_mid_epoch

    for s in range(3):
        with wds.TarWriter(str(tmp_path / f"{s}.tar"), encoder=False) as sink:
            for i in range(8):
                buf = io.BytesIO()
                Image.new("RGB", (8, 8), (s * 80, i * 30, 0)).save(buf, "PNG")
                sink.write({"__key__": f"{s}-{i}", "png": buf.getvalue(), "txt": b"x"})

    def loader():
        ds = wds_dataset(f"{tmp_path}/{{0..2}}.tar", resolution=8, shuffle=5, seed=1, resampled=resampled,
                         epoch_size=16)
        return make_loader(ds, batch_size=2, num_workers=2, seed=1)

    whole = loader()
    epochs = [[tuple(b["key"]) for b in whole] for _ in range(2)]
    assert len(epochs[1]) == 8 and epochs[0] != epochs[1]
    resumed = loader()
    start_mid_epoch(resumed, epoch=1, batches=3)
    assert [tuple(b["key"]) for b in resumed] == epochs[1][3:]
