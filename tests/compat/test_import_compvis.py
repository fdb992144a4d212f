"""``ldmkit import-compvis``: CompVis first-stage checkpoints (+ YAML) -> ldmkit first-stage model dirs."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import compat_entries, run_cli, run_inprocess
from safetensors.torch import load_file, save_file

from ldmkit import modeldir
from ldmkit.compat import compvis
from ldmkit.errors import UserError
from ldmkit.models.autoencoder import AutoencoderKL
from ldmkit.models.first_stage import FirstStage, latent_scale
from ldmkit.models.vq import VQModel
from ldmkit.tasks.import_compvis import default_dataset, import_first_stage

# The constructor arguments in the headers of autoencoder_kl_f4.tsv and vq_f4.tsv.
KL_DDCONFIG = dict(double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 4],
                   num_res_blocks=1, attn_resolutions=[], dropout=0.0)
VQ_DDCONFIG = {**KL_DDCONFIG, "double_z": False, "z_channels": 3}
KL = dict(target="ldm.models.autoencoder.AutoencoderKL", tsv="autoencoder_kl_f4", params=dict(
    embed_dim=4, monitor="val/rec_loss", ddconfig=KL_DDCONFIG,
    lossconfig=dict(target="ldm.modules.losses.LPIPSWithDiscriminator", params=dict(disc_start=50001, kl_weight=1e-6)),
))
VQ = dict(target="ldm.models.autoencoder.VQModelInterface", tsv="vq_f4", params=dict(
    embed_dim=3, n_embed=64, monitor="val/rec_loss", ddconfig=VQ_DDCONFIG,
    lossconfig=dict(target="ldm.modules.losses.vqperceptual.VQLPIPSWithDiscriminator", params=dict(disc_start=1)),
))
LOSS_KEYS = {"loss.discriminator.main.0.weight": torch.randn(8, 3, 4, 4), "loss.logvar": torch.zeros(())}



pytestmark = pytest.mark.usefixtures("one_thread")

def _ours(spec: dict) -> torch.nn.Module:
    """The ldmkit model built from a CompVis spec's arguments."""
    dd = {k: v for k, v in spec["params"]["ddconfig"].items() if k != "double_z"}
    if spec["target"].endswith("AutoencoderKL"):
        return AutoencoderKL(embed_dim=spec["params"]["embed_dim"], **dd)
    return VQModel(embed_dim=spec["params"]["embed_dim"], n_embed=spec["params"]["n_embed"], **dd)


def _weights(spec: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A CompVis-format state dict with random weights, keys and shapes checked against the reference tsv."""
    gen = torch.Generator().manual_seed(seed)
    sd = {k: 0.1 * torch.randn(v.shape, generator=gen) for k, v in _ours(spec).state_dict().items()}
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == compat_entries(spec["tsv"])
    return sd


def _ldm_yaml(first_stage: dict, **params) -> dict:
    """A CompVis LatentDiffusion config around a first stage (as in configs/latent-diffusion/*.yaml)."""
    unet = dict(target="ldm.modules.diffusionmodules.openaimodel.UNetModel", params=dict(image_size=8, in_channels=4))
    fs = dict(target=first_stage["target"], params={**first_stage["params"], "lossconfig": {"target": "torch.nn.Identity"}})
    return {"model": dict(base_learning_rate=2.0e-6, target="ldm.models.diffusion.ddpm.LatentDiffusion", params=dict(
        linear_start=0.0015, linear_end=0.0195, timesteps=1000, first_stage_key="image", image_size=8, channels=4,
        unet_config=unet, first_stage_config=fs, cond_stage_config="__is_unconditional__", **params))}


def _write_yaml(path: Path, config: dict) -> Path:
    """Write a YAML config."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _write_ckpt(path: Path, state_dict: dict, global_step: int = 1234, callback_key: object = None) -> Path:
    """A Lightning-style .ckpt: state_dict plus training state (callback state with numpy scalars and arrays)."""
    key = callback_key or "ModelCheckpoint{'monitor': 'val/rec_loss', 'mode': 'min'}"  # Lightning >= 1.5 keys
    torch.save({
        "epoch": 3, "global_step": global_step, "pytorch-lightning_version": "1.4.2",
        "callbacks": {key: {"best_model_score": np.float64(0.25), "kth": np.array([1.0, 2.0])}},
        "optimizer_states": [], "lr_schedulers": [], "state_dict": state_dict,
    }, path)
    return path


def _first_stage_files(tmp_path: Path, spec: dict) -> tuple[Path, Path, dict]:
    """A standalone first-stage YAML + .ckpt (with training-only loss keys); returns the model's weights too."""
    sd = _weights(spec)
    cfg = _write_yaml(tmp_path / "config.yaml", {"model": {"base_learning_rate": 4.5e-6, "target": spec["target"],
                                                           "params": spec["params"]}})
    return cfg, _write_ckpt(tmp_path / "model.ckpt", {**sd, **LOSS_KEYS}), sd


def _direct(spec: dict, sd: dict) -> torch.nn.Module:
    """The reference: our model loaded directly with the weights (strict)."""
    model = _ours(spec)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def _assert_equivalent(out: Path, spec: dict, sd: dict, scale: float) -> None:
    """Every tensor identical after import, and load(out) encodes/decodes exactly like the direct model."""
    saved = load_file(str(out / "model.safetensors"))
    assert saved.keys() == sd.keys() and all(torch.equal(saved[k], sd[k]) for k in sd)
    stage, direct = modeldir.load(out), FirstStage(_direct(spec, sd), scale)
    assert isinstance(stage, FirstStage) and stage.scale_factor == scale
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        z = stage.encode(x)
        assert torch.equal(z, direct.encode(x)) and torch.equal(stage.decode(z), direct.decode(z))


def _first_batch(n: int, resolution: int) -> torch.Tensor:
    """The first images of the default dataset (what a KL scale is measured on)."""
    from hydra.utils import instantiate

    dataset = instantiate(default_dataset(), resolution=resolution)
    return torch.stack([dataset[i]["image"] for i in range(n)])


def _meta(out: Path) -> dict:
    """meta.json of a model dir."""
    return json.loads((out / "meta.json").read_text())


def test_kl_import_through_cli_round_trips(tmp_path):
    cfg, ckpt, sd = _first_stage_files(tmp_path, KL)
    run_cli("import-compvis", str(cfg), str(ckpt), "out=imported", "dataset.resolution=16", "scale_batch=8", cwd=tmp_path)
    out = tmp_path / "imported"
    meta = _meta(out)
    expected_scale = latent_scale(_direct(KL, sd), _first_batch(8, 16))
    assert meta["scale_source"] == "measured" and meta["scale_factor"] == pytest.approx(expected_scale, rel=1e-5)
    assert {k: meta[k] for k in ("kind", "type", "f", "latent_channels", "resolution", "latent_shape", "steps")} == {
        "kind": "first_stage", "type": "kl", "f": 4, "latent_channels": 4, "resolution": 32,
        "latent_shape": [4, 8, 8], "steps": 1234}
    assert meta["metrics"] == {} and meta["source"]["sha256"] == modeldir.file_hash(ckpt)
    assert meta["source"]["ckpt"] == str(ckpt.resolve()) and meta["source"]["target"] == KL["target"]
    _assert_equivalent(out, KL, sd, meta["scale_factor"])


def test_vq_import_round_trips_with_unit_scale(tmp_path):
    cfg, ckpt, sd = _first_stage_files(tmp_path, VQ)
    meta = import_first_stage(cfg, ckpt, tmp_path / "out")
    assert (meta["type"], meta["scale_factor"], meta["scale_source"], meta["latent_shape"]) == ("vq", 1.0, "vq", [3, 8, 8])
    _assert_equivalent(tmp_path / "out", VQ, sd, 1.0)


def test_latent_diffusion_first_stage_with_scale_from_yaml(tmp_path):
    sd = _weights(KL, seed=3)
    full = {"betas": torch.rand(1000), "model.diffusion_model.x": torch.randn(4, 4),
            **{f"first_stage_model.{k}": v for k, v in {**sd, **LOSS_KEYS}.items()}, "model_ema.decay": torch.tensor(0.9999)}
    cfg = _write_yaml(tmp_path / "ldm.yaml", _ldm_yaml(KL, scale_factor=0.18215))
    meta = import_first_stage(cfg, _write_ckpt(tmp_path / "model.ckpt", full, global_step=77), tmp_path / "out")
    assert (meta["scale_factor"], meta["scale_source"], meta["steps"]) == (0.18215, "yaml", 77)
    _assert_equivalent(tmp_path / "out", KL, sd, 0.18215)


def test_latent_diffusion_scale_by_std_takes_the_checkpoint_buffer(tmp_path):
    sd = _weights(VQ)
    full = {"scale_factor": torch.tensor(0.5), **{f"first_stage_model.{k}": v for k, v in sd.items()}}
    cfg = _write_yaml(tmp_path / "ldm.yaml", _ldm_yaml(VQ, scale_by_std=True))
    meta = import_first_stage(cfg, _write_ckpt(tmp_path / "m.ckpt", full), tmp_path / "out")
    assert (meta["scale_factor"], meta["scale_source"]) == (0.5, "checkpoint")
    meta = import_first_stage(cfg, tmp_path / "m.ckpt", tmp_path / "out2", scale_factor=2.0)
    assert (meta["scale_factor"], meta["scale_source"]) == (2.0, "override")


def test_safetensors_input(tmp_path):
    spec = {**VQ, "target": "ldm.models.autoencoder.VQModel"}
    cfg, _, sd = _first_stage_files(tmp_path, spec)
    save_file({**sd, **LOSS_KEYS}, str(tmp_path / "model.safetensors"))
    meta = import_first_stage(cfg, tmp_path / "model.safetensors", tmp_path / "out")
    assert meta["steps"] == 0 and meta["source"]["sha256"] == modeldir.file_hash(tmp_path / "model.safetensors")
    _assert_equivalent(tmp_path / "out", spec, sd, 1.0)


def test_plain_state_dict_ckpt_is_accepted(tmp_path):
    cfg, ckpt, sd = _first_stage_files(tmp_path, KL)
    torch.save(sd, ckpt)
    assert compvis.read_checkpoint(ckpt)[1] == {}
    import_first_stage(cfg, ckpt, tmp_path / "out", scale_factor=0.3)
    _assert_equivalent(tmp_path / "out", KL, sd, 0.3)


def test_lightning_1x_checkpoint_keyed_by_callback_class_loads(tmp_path):
    from pytorch_lightning.callbacks.model_checkpoint import ModelCheckpoint  # slow import: this test only

    cfg, ckpt, sd = _first_stage_files(tmp_path, VQ)
    _write_ckpt(ckpt, sd, callback_key=ModelCheckpoint)  # Lightning < 1.5 (the CompVis model zoo)
    state_dict, info = compvis.read_checkpoint(ckpt)
    assert info == {"global_step": 1234, "epoch": 3} and all(torch.equal(state_dict[k], sd[k]) for k in sd)


def test_mismatched_keys_fail_with_one_line_naming_the_first(tmp_path):
    cfg, ckpt, sd = _first_stage_files(tmp_path, KL)
    renamed = {("encoder.foo" if k == "encoder.conv_in.bias" else k): v for k, v in sd.items()}
    _write_ckpt(ckpt, {**renamed, "decoder.extra": torch.zeros(1)})
    proc = run_inprocess("import-compvis", "config.yaml", "model.ckpt", "out=o", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: model.ckpt: unexpected key 'encoder.foo' (first of 3 mismatches")


def test_wrong_shape_names_key_and_shapes(tmp_path):
    cfg, ckpt, sd = _first_stage_files(tmp_path, KL)
    sd["quant_conv.weight"] = torch.zeros(6, 8, 1, 1)
    _write_ckpt(ckpt, {f"first_stage_model.{k}": v for k, v in sd.items()})
    _write_yaml(cfg, _ldm_yaml(KL))
    with pytest.raises(UserError, match=r"key 'first_stage_model\.quant_conv\.weight' has shape \(6, 8, 1, 1\), "
                                        r"the model expects \(8, 8, 1, 1\) \(first of 1 mismatch;"):
        import_first_stage(cfg, ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_target_and_unsupported_options_are_named(tmp_path):
    cfg, ckpt, _ = _first_stage_files(tmp_path, KL)
    _write_yaml(cfg, {"model": {"target": "ldm.models.autoencoder.AutoencoderKLResi", "params": KL["params"]}})
    with pytest.raises(UserError, match=r"model\.target=ldm\.models\.autoencoder\.AutoencoderKLResi is not supported"):
        import_first_stage(cfg, ckpt, tmp_path / "out")
    ldm = _ldm_yaml(KL)
    ldm["model"]["params"]["first_stage_config"]["target"] = "ldm.models.autoencoder.IdentityFirstStage"
    with pytest.raises(UserError, match=r"first_stage_config\.target=ldm\.models\.autoencoder\.IdentityFirstStage"):
        import_first_stage(_write_yaml(cfg, ldm), ckpt, tmp_path / "out")
    bad = {**KL["params"], "ddconfig": {**KL_DDCONFIG, "attn_type": "linear"}}
    with pytest.raises(UserError, match=r"ddconfig\.attn_type='linear' is not supported"):
        import_first_stage(_write_yaml(cfg, {"model": {"target": KL["target"], "params": bad}}), ckpt, tmp_path / "o")
    bad = {**VQ["params"], "ddconfig": {**VQ_DDCONFIG, "double_z": True}}
    with pytest.raises(UserError, match=r"double_z must be False for a VQ model"):
        import_first_stage(_write_yaml(cfg, {"model": {"target": VQ["target"], "params": bad}}), ckpt, tmp_path / "o")


class _Payload:
    """A pickle that creates a marker file when unpickled with full pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_malicious_pickle_is_refused_without_running_code(tmp_path):
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Payload(proof)))
    assert proof.exists()  # the payload really runs code under full unpickling
    cfg, ckpt, sd = _first_stage_files(tmp_path, KL)
    marker = tmp_path / "pwned"
    torch.save({"state_dict": sd, "hyper_parameters": _Payload(marker)}, ckpt)
    with pytest.raises(UserError, match=r"model\.ckpt: torch\.load\(weights_only=True\) refuses to unpickle code "
                                        r"\(exec\)"):
        import_first_stage(cfg, ckpt, tmp_path / "out")
    assert not marker.exists()


def test_missing_and_unreadable_files(tmp_path):
    cfg, ckpt, _ = _first_stage_files(tmp_path, KL)
    with pytest.raises(UserError, match="nope.ckpt does not exist"):
        import_first_stage(cfg, tmp_path / "nope.ckpt", tmp_path / "out")
    with pytest.raises(UserError, match="nope.yaml does not exist"):
        import_first_stage(tmp_path / "nope.yaml", ckpt, tmp_path / "out")
    for junk in (b"not a checkpoint", b"junk\n"):
        (tmp_path / "junk.ckpt").write_bytes(junk)
        with pytest.raises(UserError, match="junk.ckpt is not a readable PyTorch checkpoint"):
            import_first_stage(cfg, tmp_path / "junk.ckpt", tmp_path / "out")
    with pytest.raises(UserError, match=r"unknown checkpoint type '\.yaml'"):
        compvis.read_state_dict(tmp_path / "config.yaml")


def test_cli_without_positionals_is_one_line_exit_2(tmp_path):
    proc = run_inprocess("import-compvis", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: usage: ldmkit import-compvis CONFIG.yaml MODEL.ckpt [out=DIR] [overrides]: "
        "missing CONFIG.yaml and MODEL.ckpt"]
    proc = run_inprocess("import-compvis", "config.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().endswith("missing MODEL.ckpt")


def test_subdict_and_training_keys():
    sd = {"a.x": torch.zeros(1), "first_stage_model.loss.w": torch.zeros(1), "first_stage_model.encoder.w": torch.ones(1)}
    assert list(compvis.subdict(sd, "first_stage_model.")) == ["loss.w", "encoder.w"]
    assert list(compvis.drop_training_keys(compvis.subdict(sd, "first_stage_model."))) == ["encoder.w"]
