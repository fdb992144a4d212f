"""Concat conditioners take their channels from ae= as the UNet does: cond=inpaint and cond=sr train and sample on
a first stage with other latent channels than the f=4 presets' 3; a contradicting cond value is one line."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ldmkit_inprocess
from omegaconf import OmegaConf

from ldmkit import modeldir
from ldmkit.models.autoencoder import AutoencoderKL

LATENT = 2  # latent channels of the first stage below (the cond/UNet presets assume 3)
TINY = ["trainer.max_steps=1", "loader.batch_size=2", "dataset.size=4", "unet.model_channels=32",
        "unet.num_head_channels=16", "images.every_n_steps=0", "logger=csv"]


@pytest.fixture(scope="module")
def ae_dir(tmp_path_factory):
    """A first-stage model dir (f=2, 2 latent channels, random weights) written directly: no training needed."""
    node = {"_target_": "ldmkit.models.autoencoder.AutoencoderKL", "embed_dim": LATENT, "z_channels": LATENT,
            "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "resolution": 32}
    torch.manual_seed(0)
    ae = AutoencoderKL(**{k: v for k, v in node.items() if k != "_target_"})
    out = tmp_path_factory.mktemp("ae_c2") / "ae"
    meta = modeldir.first_stage_meta(ae, "kl", 32, 1.0, 0)
    modeldir.save(out, OmegaConf.create({"first_stage": node}), {"model": ae.state_dict()}, meta)
    return out


@pytest.mark.parametrize(("cond", "concat"), [("inpaint", LATENT + 1), ("sr", 3)])
def test_concat_cond_on_other_latent_channels_trains_and_samples(ae_dir, tmp_path, one_thread, cond, concat):
    code, text = ldmkit_inprocess(["train-ldm", f"ae={ae_dir}", f"cond={cond}", *TINY, f"out={tmp_path}/ldm"])
    assert code == 0, text
    cfg = OmegaConf.load(tmp_path / "ldm" / "config.yaml")
    assert (cfg.unet.in_channels, cfg.unet.out_channels) == (LATENT + concat, LATENT)
    assert cfg.cond.get("latent_channels", LATENT) == LATENT
    assert json.loads((tmp_path / "ldm" / "meta.json").read_text())["latent_shape"] == [LATENT, 16, 16]
    code, text = ldmkit_inprocess(["sample", f"ckpt={tmp_path}/ldm", "n=2", "sampler.steps=2", f"out={tmp_path}/s"])
    assert code == 0, text
    assert sorted(p.name for p in (tmp_path / "s").glob("0*.png")) == ["000000.png", "000001.png"]


@pytest.mark.parametrize(("override", "line"), [
    ("cond.latent_channels=3", "cond.latent_channels=3 but the first stage has 2 latent channels: "
                               "set cond.latent_channels=2"),
    ("cond.channels=2", "cond.channels=2 but the dataset's low-res images (lowres) have 3 channels: "
                        "set cond.channels=3"),
])
def test_contradicting_cond_channels_is_one_line(ae_dir, tmp_path, override, line):
    cond = "inpaint" if "latent" in override else "sr"
    code, text = ldmkit_inprocess(["train-ldm", f"ae={ae_dir}", f"cond={cond}", override, *TINY,
                                   f"out={tmp_path}/ldm"])
    assert code == 2 and line in text and "Traceback" not in text
    assert not (tmp_path / "ldm" / "model.safetensors").exists()
