"""Shared fixtures: the CLI runner and a random-weight Inception (a test stand-in, never a real FID)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LDMKIT = Path(sys.executable).with_name("ldmkit")


def run_cli(*args: str, cwd: Path | None = None, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the installed ``ldmkit`` console script; fail with its output when ``check`` and it exits non-zero."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(LDMKIT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ldmkit {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> Path:
    """torch-fidelity's Inception-v3 with random (kaiming) weights saved as a plain state dict."""
    from ldmkit.evaluation.fid import write_random_inception

    return write_random_inception(tmp_path_factory.mktemp("inception") / "weights-inception-random.pth")


@pytest.fixture(scope="session")
def tiny_ae(tmp_path_factory) -> Path:
    """A first-stage model dir (kl_f4 on 32 px shapes) from a 2-step train-ae: shared by the CLI tests that only
    need some first stage to encode with."""
    out = tmp_path_factory.mktemp("tiny_ae") / "ae"
    run_cli("train-ae", "trainer.max_steps=2", "loss.perceptual=null", "loss.discriminator=null", "report.images=8",
            "report.grid=2", "loader.batch_size=4", f"out={out}")
    return out


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is fastest, and immune to a busy machine's oversubscription."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


COMPAT = Path(__file__).parent / "fixtures" / "compat"


def compat_entries(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) pairs, in order, of a CompVis reference state dict listed in fixtures/compat/<name>.tsv."""
    entries = []
    for line in (COMPAT / f"{name}.tsv").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split("\t")
        dims = shape.strip().strip("()").split(",")
        entries.append((key, tuple(int(d) for d in dims if d.strip())))
    return entries
