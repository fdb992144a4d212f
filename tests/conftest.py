"""Shared fixtures: the CLI runner and a random-weight Inception (a test stand-in, never a real FID)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

LDMKIT = Path(sys.executable).with_name("ldmkit")
CACHE = tempfile.mkdtemp(prefix="ldmkit-test-cache-")  # eval-fid's reference cache: never the user's ~/.cache


def run_cli(*args: str, cwd: Path | None = None, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the installed ``ldmkit`` console script; fail with its output when ``check`` and it exits non-zero."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "HF_HUB_OFFLINE": "1", "LDMKIT_CACHE": CACHE}
    proc = subprocess.run([str(LDMKIT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ldmkit {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_inprocess(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``run_cli(*args, check=False)`` in this process (no interpreter start-up, ~5 s less per call): for the
    commands that stop early with a user error, whose message a test checks."""
    import contextlib

    with contextlib.chdir(cwd or Path.cwd()):
        code, out, err = ldmkit_inprocess_streams(list(args))
    return subprocess.CompletedProcess([str(LDMKIT), *args], code, out, err)


def ldmkit_inprocess(args: list[str]) -> tuple[int, str]:
    """Run ``ldmkit ARGS`` in this process (no interpreter start-up): its exit code and its output."""
    code, out, err = ldmkit_inprocess_streams(args)
    return code, out + err


def ldmkit_inprocess_streams(args: list[str]) -> tuple[int, str, str]:
    """Run ``ldmkit ARGS`` in this process: its exit code, its stdout and its stderr."""
    import contextlib
    import io

    from ldmkit.cli import app

    out, err, argv = io.StringIO(), io.StringIO(), sys.argv
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = app(args, prog_name="ldmkit", standalone_mode=False)
        except SystemExit as exc:
            code = exc.code
        finally:
            sys.argv = argv
    return (code if isinstance(code, int) else 0 if code is None else 1), out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> Path:
    """torch-fidelity's Inception-v3 with random (kaiming) weights saved as a plain state dict."""
    from stand_ins import write_random_inception

    return write_random_inception(tmp_path_factory.mktemp("inception") / "weights-inception-random.pth")


@pytest.fixture(scope="session")
def tiny_ae(tmp_path_factory) -> Path:
    """A first-stage model dir (kl_f4 on 32 px shapes) from a 2-step train-ae: shared by the CLI tests that only
    need some first stage to encode with."""
    out = tmp_path_factory.mktemp("tiny_ae") / "ae"
    run_cli("train-ae", "trainer.max_steps=2", "loss.perceptual=null", "loss.discriminator=null", "report.images=8",
            "report.grid=2", "loader.batch_size=4", f"out={out}")
    return out


TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A random tiny open_clip CLIP (whole model, vision tower too) saved as config JSON + safetensors."""
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    model = CLIP(**TINY_CLIP).eval()
    with torch.no_grad():  # move every weight off its init (LayerNorm 1/0 would hide a missed load)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    (d / "tiny.json").write_text(json.dumps(TINY_CLIP))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "tiny.safetensors"))
    return model, d / "tiny.json", d / "tiny.safetensors"


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
