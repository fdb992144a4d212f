"""``ldmkit import-compvis`` on a whole CompVis LatentDiffusion: UNet, EMA, class embedder, schedule, first stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import compat_entries, run_cli, run_inprocess

import ldmkit
from ldmkit.diffusion.cond import Cond
from ldmkit.diffusion.schedule import NoiseSchedule
from ldmkit.errors import UserError
from ldmkit.models.autoencoder import AutoencoderKL
from ldmkit.models.unet import UNetModel
from ldmkit.tasks.import_compvis import import_ldm

# The constructor arguments in the headers of unet_crossattn.tsv, class_embedder.tsv and autoencoder_kl_f4.tsv.
UNET = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[1, 2],
            num_res_blocks=2, channel_mult=[1, 2], num_head_channels=16, use_spatial_transformer=True,
            transformer_depth=1, context_dim=64)
DDCONFIG = dict(double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 4],
                num_res_blocks=1, attn_resolutions=[], dropout=0.0)


def _rand(module: torch.nn.Module, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights for every entry of a module's state dict."""
    return {k: 0.05 * torch.randn(v.shape, generator=gen) for k, v in module.state_dict().items()}


def _yaml(cond_stage, conditioning_key="crossattn", **extra) -> dict:
    """A CompVis cin-style LatentDiffusion config."""
    return {"model": {"base_learning_rate": 1e-6, "target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": {
        "linear_start": 0.0015, "linear_end": 0.0195, "timesteps": 1000, "image_size": 8, "channels": 4,
        "cond_stage_key": "class_label", "conditioning_key": conditioning_key, "scale_factor": 0.5,
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": UNET},
        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
            "embed_dim": 4, "ddconfig": DDCONFIG, "lossconfig": {"target": "torch.nn.Identity"}}},
        "cond_stage_config": cond_stage, **extra}}}


CLASS_STAGE = {"target": "ldm.modules.encoders.modules.ClassEmbedder",
               "params": {"embed_dim": 64, "n_classes": 11, "key": "class"}}


@pytest.fixture()
def checkpoint(tmp_path) -> tuple[Path, Path, dict]:
    """A synthetic CompVis LDM checkpoint (keys from the reference tsv lists) with a dot-free EMA shadow."""
    gen = torch.Generator().manual_seed(0)
    unet_args = {k: v for k, v in UNET.items() if k != "image_size"}
    unet = _rand(UNetModel(**unet_args), gen)
    assert [(k, tuple(v.shape)) for k, v in unet.items()] == compat_entries("unet_crossattn")
    ema = {k: v + 0.01 for k, v in unet.items()}
    ae = _rand(AutoencoderKL(embed_dim=4, **{k: v for k, v in DDCONFIG.items() if k != "double_z"}), gen)
    classes = {"embedding.weight": torch.randn(11, 64, generator=gen)}
    assert [(k, tuple(v.shape)) for k, v in classes.items()] == compat_entries("class_embedder")
    state = {
        **{f"model.diffusion_model.{k}": v for k, v in unet.items()},
        **{"model_ema." + ("diffusion_model." + k).replace(".", ""): v for k, v in ema.items()},
        "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(10, dtype=torch.int),
        **{f"first_stage_model.{k}": v for k, v in ae.items()},
        **{f"cond_stage_model.{k}": v for k, v in classes.items()},
        "betas": NoiseSchedule("linear", 1000, 0.0015, 0.0195).betas.double(), "scale_factor": torch.tensor(0.5),
    }
    cfg = tmp_path / "cin.yaml"
    cfg.write_text(yaml.safe_dump(_yaml(CLASS_STAGE)))
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": state, "global_step": 42}, ckpt)
    return cfg, ckpt, {"unet": unet, "ema": ema, "ae": ae, "classes": classes}


def test_whole_ldm_import_through_cli_gives_the_same_eps(tmp_path, checkpoint):
    cfg, ckpt, ref = checkpoint
    run_cli("import-compvis", str(cfg), str(ckpt), "out=ldm", cwd=tmp_path)
    meta = json.loads((tmp_path / "ldm" / "meta.json").read_text())
    assert meta["kind"] == "ldm" and meta["ema"] and meta["steps"] == 42 and meta["latent_shape"] == [4, 8, 8]
    assert meta["cond"] == "ClassConditioner" and meta["scale_factor"] == 0.5 and meta["prediction"] == "eps"
    raw = ldmkit.load(tmp_path / "ldm", use_ema=False)
    ema = ldmkit.load(tmp_path / "ldm")
    for key, value in ref["unet"].items():
        assert torch.equal(raw.unet.state_dict()[key], value) and torch.equal(ema.unet.state_dict()[key], value + 0.01)
    assert torch.equal(raw.cond.embedding.weight, ref["classes"]["embedding.weight"])
    assert raw.cond.num_classes == 11 and not raw.cond.null_class  # only n_classes 1001 (cin256-v2) has a null row
    assert torch.equal(raw.first_stage.ae.encoder.conv_in.weight, ref["ae"]["encoder.conv_in.weight"])
    # the reference: CompVis' UNet (same layout) with these weights, fed the class embedding as context
    reference = UNetModel(**{k: v for k, v in UNET.items() if k != "image_size"})
    reference.load_state_dict(ref["unet"])
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.tensor([3, 10])
    context = ref["classes"]["embedding.weight"][y][:, None]
    with torch.no_grad():
        torch.testing.assert_close(raw.eps(x, t, raw.condition(y)), reference(x, t, context=context))
        assert raw.eps(x, t, Cond(context)).shape == x.shape


def test_first_stage_only_on_request(tmp_path, checkpoint):
    cfg, ckpt, _ = checkpoint
    run_cli("import-compvis", str(cfg), str(ckpt), "part=first_stage", "out=fs", cwd=tmp_path)
    assert json.loads((tmp_path / "fs" / "meta.json").read_text())["kind"] == "first_stage"


def test_unsupported_conditioner_and_wrong_schedule_are_named(tmp_path, checkpoint):
    cfg, ckpt, _ = checkpoint
    clip = {"target": "ldm.modules.encoders.modules.FrozenCLIPTextEmbedder", "params": {"version": "ViT-L/14"}}
    cfg.write_text(yaml.safe_dump(_yaml(clip)))
    proc = run_inprocess("import-compvis", str(cfg), str(ckpt), "out=x", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "FrozenCLIPTextEmbedder (conditioning_key=crossattn) has no ldmkit equivalent" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    bert = {"target": "ldm.modules.encoders.modules.BERTEmbedder", "params": {"n_embed": 64, "n_layer": 1}}
    cfg.write_text(yaml.safe_dump(_yaml(bert)))  # a BERT model's YAML with a class model's checkpoint
    with pytest.raises(UserError, match=r"unexpected key 'cond_stage_model\.embedding\.weight'"):
        import_ldm(cfg, ckpt, tmp_path / "b")
    cfg.write_text(yaml.safe_dump(_yaml(CLASS_STAGE, linear_end=0.012)))
    with pytest.raises(UserError, match="betas differ from the schedule"):
        import_ldm(cfg, ckpt, tmp_path / "y")
    cfg.write_text(yaml.safe_dump(_yaml(CLASS_STAGE, parameterization="v")))
    assert import_ldm(cfg, ckpt, tmp_path / "v")["prediction"] == "v"


def test_missing_ema_key_is_named(tmp_path, checkpoint):
    cfg, ckpt, _ = checkpoint
    data = torch.load(ckpt, weights_only=True)
    del data["state_dict"]["model_ema.diffusion_modelout2bias"]
    torch.save(data, ckpt)
    with pytest.raises(UserError, match=r"'model_ema\.diffusion_modelout2bias' for UNet parameter 'out\.2\.bias'"):
        import_ldm(cfg, ckpt, tmp_path / "z")
