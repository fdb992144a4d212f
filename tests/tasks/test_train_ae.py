"""train-ae: every first-stage preset and f, the resolution check, short KL/VQ runs through the CLI."""

import json

import pytest
import torch
from conftest import run_cli, run_inprocess
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import ldmkit
from ldmkit.runner import conf_dir

PRESETS = {  # name -> (type, f, latent channels)
    "kl_f4": ("AutoencoderKL", 4, 3), "kl_f8": ("AutoencoderKL", 8, 4), "kl_f16": ("AutoencoderKL", 16, 8),
    "kl_f32": ("AutoencoderKL", 32, 32), "vq_f4": ("VQModel", 4, 3), "vq_f8": ("VQModel", 8, 4),
    "vq_f16": ("VQModel", 16, 8), "identity": ("IdentityStage", 1, 3),
}
F_CHANNELS = {"1": 3, "2": 2, "4": 3, "8": 4, "16": 8, "32": 32}  # paper Table 13


def _first_stage(*overrides: str):
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train_ae", overrides=list(overrides))
    return instantiate(cfg.first_stage), cfg


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_encode_decode_at_the_right_shapes(name):
    kind, f, channels = PRESETS[name]
    res = 64 if f == 32 else 32
    ae, _ = _first_stage(f"first_stage={name}", f"dataset.resolution={res}")
    assert type(ae).__name__ == kind and ae.downsample_factor == f and ae.latent_channels == channels
    x = torch.rand(2, 3, res, res) * 2 - 1
    with torch.no_grad():
        z = ae.encode(x).mode()
        assert z.shape == (2, channels, res // f, res // f)
        assert ae.decode(z).shape == x.shape


# f=1 has no autoencoder to combine with a preset (rejected: see the next test)
@pytest.mark.parametrize("f,preset", [(f, None) for f in F_CHANNELS] + [(f, "vq_f4") for f in F_CHANNELS if f != "1"])
def test_f_group_sets_downsampling_and_channels(f, preset):
    ae, cfg = _first_stage(*([f"first_stage={preset}"] if preset else []), f"f='{f}'")
    assert ae.downsample_factor == int(f) and ae.latent_channels == F_CHANNELS[f]
    target = "IdentityStage" if f == "1" else "VQModel" if preset else "AutoencoderKL"
    assert cfg.first_stage._target_.endswith(target)


def test_f1_with_an_autoencoder_preset_is_rejected(tmp_path):
    proc = run_inprocess("train-ae", "f=1", "first_stage=vq_f4", f"out={tmp_path}/x", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: f=1 means no first stage")


def test_too_small_resolution_for_f_is_one_line_exit_2(tmp_path):
    proc = run_inprocess("train-ae", "f=32", f"out={tmp_path}/x", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: dataset.resolution=32 is too small for f=32: use a multiple of 32 that is at least 64 "
        "(e.g. dataset.resolution=64)")
    assert not (tmp_path / "x" / "meta.json").exists()


def _untrained_val_l1(out) -> float:
    """L1 of the same architecture with fresh weights on the same validation images."""
    cfg = OmegaConf.load(out / "config.yaml")
    torch.manual_seed(0)
    stage = ldmkit.models.first_stage.FirstStage(instantiate(cfg.first_stage), 1.0).eval()
    val = instantiate(cfg.dataset, split="val", size=cfg.report.images)
    images = torch.stack([val[i]["image"] for i in range(len(val))])
    with torch.no_grad():
        return float((stage.decode(stage.encode(images)).clamp(-1, 1) - images).abs().mean())


@pytest.mark.parametrize("preset", ["kl_f4", "vq_f4"])
def test_short_run_reduces_validation_l1(preset, tmp_path):
    out = tmp_path / preset
    run_cli("train-ae", f"first_stage={preset}", "first_stage.ch_mult=[1,2,2]", "trainer.max_steps=60",
            "optim.lr=2e-3", "loss.perceptual=null", "loss.discriminator=null", "report.images=64", f"out={out}",
            cwd=tmp_path)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["type"] == preset[:2] and meta["steps"] == 60
    assert meta["scale_factor"] == 1.0 if preset.startswith("vq") else meta["scale_factor"] != 1.0
    assert meta["metrics"]["val_l1"] < 0.6 * _untrained_val_l1(out), meta["metrics"]
    stage = ldmkit.load(out)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert stage.decode(stage.encode(x)).shape == x.shape


def test_identity_first_stage_writes_an_exact_pixel_stage(tmp_path):
    run_cli("train-ae", "f=1", "report.images=8", f"out={tmp_path}/px", cwd=tmp_path)
    meta = json.loads((tmp_path / "px" / "meta.json").read_text())
    assert meta["type"] == "identity" and meta["f"] == 1 and meta["latent_shape"] == [3, 32, 32]
    assert meta["steps"] == 0 and meta["scale_factor"] == 1.0 and meta["metrics"]["val_l1"] == 0.0
    stage = ldmkit.load(tmp_path / "px")
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(stage.decode(stage.encode(x)), x)
