"""Pictures of a training run through the CLI: reconstruction grids (train-ae), EMA sample grids (train-ldm),
loss.png, TensorBoard logs with logger=tensorboard; the grids leave training bit-exactly unchanged."""

from __future__ import annotations

import importlib.util
import math
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image
from safetensors.torch import load_file

from ldmkit.errors import UserError
from ldmkit.training.pictures import check_options, quiet_eval, read_losses
from ldmkit.training.trainer import extra_loggers

TINY_LDM = ["cond=class", "dataset.size=24", "loader.batch_size=4", "unet.model_channels=32",
            "unet.num_head_channels=16"]
PICTURES = ["images.every_n_steps=2", "trainer.max_steps=4", "trainer.log_every_n_steps=1"]
HAS_TB = any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX"))
TB = ["logger=tensorboard"] if HAS_TB else []
RES = 32  # the shapes dataset's default resolution


def _grid_size(n: int, cols: int, side: int = RES) -> tuple[int, int]:
    """(width, height) of torchvision's make_grid(nrow=cols, padding=2) of n images of side x side."""
    return cols * (side + 2) + 2, math.ceil(n / cols) * (side + 2) + 2


def _cells(path: Path, n: int, cols: int, side: int = RES) -> list[np.ndarray]:
    """The grid's images (padding cut away); the PNG must open and have make_grid's size."""
    with Image.open(path) as img:
        assert img.size == _grid_size(n, cols, side), path
        pixels = np.asarray(img.convert("RGB"), dtype=np.float32)
    return [pixels[2 + r * (side + 2):][:side, 2 + c * (side + 2):][:, :side]
            for r, c in (divmod(i, cols) for i in range(n))]


def _check_plot(path: Path) -> None:
    """loss.png opens, has a sensible size and is not blank."""
    with Image.open(path) as img:
        assert 300 <= img.width <= 2000 and 300 <= img.height <= 2000, img.size
        assert np.asarray(img.convert("L")).std() > 5


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory) -> Path:
    """A 4-step train-ae (with a discriminator, which Lightning's step count leaves out), grids every 2 steps."""
    out = tmp_path_factory.mktemp("pictures") / "ae"
    run_cli("train-ae", *PICTURES, *TB, "images.count=4", "loss.perceptual=null", "report.images=8", "report.grid=2",
            "loader.batch_size=4", f"out={out}")
    return out


@pytest.fixture(scope="module")
def ldm_runs(ae_run, tmp_path_factory) -> dict[int, Path]:
    """Two 4-step train-ldm runs side by side: grids every 2 steps (+ TensorBoard), and only the final grid."""
    root = tmp_path_factory.mktemp("pictures_ldm")
    runs = {2: root / "every2", 0: root / "every0"}
    extra = {2: [*TB, "images.count=10"], 0: ["images.every_n_steps=0"]}
    with ThreadPoolExecutor(2) as pool:
        done = [pool.submit(run_cli, "train-ldm", f"ae={ae_run}", *TINY_LDM, *PICTURES, *extra[k], f"out={out}")
                for k, out in runs.items()]
        for job in done:
            job.result()
    return runs


def test_train_ae_writes_reconstruction_grids_every_n_training_steps_and_the_loss_plot(ae_run):
    assert sorted(p.name for p in (ae_run / "images").iterdir()) == ["recon_step_2.png", "recon_step_4.png"]
    for name in ("recon_step_2.png", "recon_step_4.png"):
        cells = _cells(ae_run / "images" / name, 8, 4)  # 4 validation images over their 4 reconstructions
        assert all(cell.std() > 1 for cell in cells)
    originals = [_cells(ae_run / "images" / n, 8, 4)[:4] for n in ("recon_step_2.png", "recon_step_4.png")]
    np.testing.assert_array_equal(*originals)  # the same fixed images at every step
    _check_plot(ae_run / "loss.png")
    assert {"rec", "kl", "loss"} <= set(read_losses(ae_run / "logs" / "metrics.csv"))


def test_train_ldm_writes_ema_sample_grids_and_the_loss_plot(ldm_runs):
    every2, every0 = ldm_runs[2], ldm_runs[0]
    assert sorted(p.name for p in (every2 / "images").iterdir()) == ["samples_step_2.png", "samples_step_4.png"]
    assert sorted(p.name for p in (every0 / "images").iterdir()) == ["samples_step_4.png"]  # the final one only
    for path in (every2 / "images" / "samples_step_2.png", every2 / "images" / "samples_step_4.png"):
        assert all(cell.std() > 1 for cell in _cells(path, 10, 8))  # 10 samples: 8 per row, 2 rows
    assert all(cell.std() > 1 for cell in _cells(every0 / "images" / "samples_step_4.png", 8, 8))
    for run in (every2, every0):
        _check_plot(run / "loss.png")


@pytest.mark.skipif(not HAS_TB, reason="neither tensorboard nor tensorboardX is installed")
def test_logger_tensorboard_writes_event_files_next_to_the_csv_log(ae_run, ldm_runs):
    for run in (ae_run, ldm_runs[2]):
        events = list((run / "tb").glob("events.out.tfevents.*"))
        assert events and all(e.stat().st_size > 0 for e in events), run
        assert (run / "logs" / "metrics.csv").is_file()
    assert not (ldm_runs[0] / "tb").exists()  # logger=csv (default): no TensorBoard


def test_sample_grids_and_tensorboard_do_not_change_training(ldm_runs):
    for name in ("model.safetensors", "ema.safetensors"):
        want, got = load_file(str(ldm_runs[0] / name)), load_file(str(ldm_runs[2] / name))
        assert want.keys() == got.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), f"{name}: {key}"


def test_a_logger_whose_package_is_missing_is_a_one_line_error(tmp_path):
    def tensorboard_logger(save_dir: str):
        raise ModuleNotFoundError("Neither `tensorboard` nor `tensorboardX` is available.")

    with pytest.raises(UserError, match=r"^logger=tensorboard needs .*: pip install tensorboard$"):
        extra_loggers({"tensorboard": tensorboard_logger}, tmp_path)
    assert extra_loggers({}, tmp_path) == [] and extra_loggers(None, tmp_path) == []


def test_no_logged_rows_means_no_loss_series(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss\n")
    assert read_losses(tmp_path / "metrics.csv") == {} and read_losses(tmp_path / "missing.csv") == {}


@pytest.mark.parametrize("every,count", [(-1, 8), (2, 0), ("x", 8), (True, 8)])
def test_bad_image_options_are_one_line_errors(every, count):
    with pytest.raises(UserError, match=r"^images\.(every_n_steps|count)="):
        check_options(every, count)


def test_quiet_eval_restores_the_global_rngs_and_train_modes():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5).eval())
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    with quiet_eval(net):
        assert not any(m.training for m in net.modules()) and not torch.is_grad_enabled()
        torch.randn(3), np.random.rand(), random.random()
    assert torch.equal(torch.get_rng_state(), before[0]) and (np.random.get_state()[1] == before[1]).all()
    assert random.getstate() == before[2]
    assert [m.training for m in net.modules()] == [True, True, False]
