"""Layout conditioner (boxes + classes -> tokens) and the frozen OpenCLIP text tower conditioner."""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from torch.utils.data import default_collate

from ldmkit.data.shapes import ShapesDataset
from ldmkit.diffusion.schedule import NoiseSchedule
from ldmkit.errors import UserError
from ldmkit.models.autoencoder import AutoencoderKL
from ldmkit.models.clip_conditioner import ClipConditioner, ClipTextTower
from ldmkit.models.first_stage import FirstStage
from ldmkit.models.layout_conditioner import LayoutConditioner
from ldmkit.models.ldm import LatentDiffusion
from ldmkit.models.unet import UNetModel
from ldmkit.training.ldm_module import LDMModule

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_states(model, tokens, penultimate: bool):
    """open_clip's own path: token_embedding -> +positional -> transformer (or up to the penultimate block
    via forward_intermediates) -> ln_final."""
    with torch.no_grad():
        x = model.token_embedding(tokens) + model.positional_embedding
        if penultimate:
            n = len(model.transformer.resblocks)
            _, inter = model.transformer.forward_intermediates(x, attn_mask=model.attn_mask, indices=[n - 2])
            x = inter[0]
        else:
            x = model.transformer(x, attn_mask=model.attn_mask)
        return model.ln_final(x)


def tiny_parts(context_dim: int):
    ae = AutoencoderKL(embed_dim=3, z_channels=3, ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=16)
    unet = UNetModel(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(2,), num_head_channels=32, use_spatial_transformer=True,
                     context_dim=context_dim)
    return ae, unet


def tiny_ldm(cond) -> LatentDiffusion:
    ae, unet = tiny_parts(cond.embed_dim if isinstance(cond, LayoutConditioner) else cond.width)
    return LatentDiffusion(unet, cond, NoiseSchedule(timesteps=100), FirstStage(ae, scale_factor=0.5),
                           latent_shape=(3, 8, 8))


def shapes_batch(n: int = 8) -> dict:
    data = ShapesDataset(size=n, resolution=16)
    return default_collate([data[i] for i in range(n)])


# ---------------------------------------------------------------- layout


def test_layout_tokens_mask_and_null():
    torch.manual_seed(0)
    cond = LayoutConditioner(num_classes=18, embed_dim=32, layers=1, heads=2)
    batch = shapes_batch(4)
    values = cond.values(batch)
    assert values.shape == (4, 3, 5)
    out = cond(values)
    assert out.context.shape == (4, 4, 32) and out.mask.shape == (4, 4)
    expected = torch.cat([torch.ones(4, 1, dtype=torch.bool), batch["box_labels"] >= 0], 1)
    assert torch.equal(out.mask, expected)
    null = cond(cond.null(2))
    assert null.mask.tolist() == [[True, False, False, False]] * 2
    assert torch.isfinite(null.context).all()
    # one sample (unbatched) and a dict / tuple give the same as the packed tensor
    sample = ShapesDataset(size=1, resolution=16)[0]
    assert cond.values(sample).shape == (3, 5)
    torch.testing.assert_close(cond((batch["boxes"], batch["box_labels"])).context, out.context)
    with pytest.raises(ValueError, match="0..17"):
        cond(torch.tensor([[[0.1, 0.1, 0.2, 0.2, 18.0]]]))


@pytest.mark.parametrize("layers", [0, 2])
def test_layout_permutation_and_coordinates(layers):
    torch.manual_seed(0)
    cond = LayoutConditioner(num_classes=18, embed_dim=32, layers=layers, heads=2).eval()
    values = torch.tensor([[[0.1, 0.1, 0.4, 0.4, 3.0], [0.5, 0.2, 0.9, 0.6, 7.0], [0, 0, 0, 0, -1]]])
    out = cond(values)
    perm = torch.tensor([1, 0, 2])
    swapped = cond(values[:, perm])
    # box order does not matter: the tokens permute with the boxes (start token unchanged)
    torch.testing.assert_close(swapped.context[:, 1:], out.context[:, 1 + perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(swapped.context[:, 0], out.context[:, 0], atol=1e-5, rtol=1e-5)
    moved = values.clone()
    moved[0, 0, [0, 2]] += 0.05  # shift box 0 right
    assert (cond(moved).context[0, 1] - out.context[0, 1]).abs().max() > 1e-3
    relabeled = values.clone()
    relabeled[0, 0, 4] = 4.0
    assert (cond(relabeled).context[0, 1] - out.context[0, 1]).abs().max() > 1e-3
    # padded rows ignore whatever coordinates they hold
    junk = values.clone()
    junk[0, 2, :4] = 0.7
    torch.testing.assert_close(cond(junk).context[:, :2], out.context[:, :2])


def test_layout_null_through_unet_has_no_nan():
    torch.manual_seed(0)
    cond = LayoutConditioner(num_classes=18, embed_dim=16, layers=1, heads=2)
    _, unet = tiny_parts(16)
    c = cond(cond.null(2))
    y = unet(torch.randn(2, 3, 8, 8), torch.tensor([5, 50]), context=c.context, context_mask=c.mask)
    assert y.shape == (2, 3, 8, 8) and torch.isfinite(y).all()


def test_layout_dropout_rate_drops_whole_layouts():
    cond = LayoutConditioner(embed_dim=8, layers=0, drop_prob=0.25)
    values = torch.rand(20000, 3, 5)
    values[..., 4] = 2.0
    dropped = cond.drop(values, generator=torch.Generator().manual_seed(0))
    nulled = (dropped[..., 4] == -1).all(1)
    assert abs(nulled.float().mean().item() - 0.25) < 0.02
    assert torch.equal(dropped[~nulled], values[~nulled])  # the others untouched, no partial layouts
    assert (dropped[nulled, :, :4] == 0).all() and ((dropped[..., 4] == -1).sum(1) % 3 == 0).all()


# ---------------------------------------------------------------- clip


@pytest.mark.parametrize("layer", ["last", "penultimate"])
def test_clip_matches_open_clip_and_is_frozen(tiny_clip, layer):
    model, config, weights = tiny_clip
    cond = ClipConditioner.from_files(model=str(config), weights=str(weights), layer=layer, drop_prob=0.0)
    captions = ["a small red circle left of a blue square", ""]
    out = cond(captions)
    assert out.context.shape == (2, 77, 64) and cond.width == cond.context_dim == 64
    tokens = cond.tokenize(captions)
    torch.testing.assert_close(out.context, reference_states(model, tokens, layer == "penultimate"))
    assert out.mask.sum(1).tolist() == [11, 2]  # SOT + 9 words + EOT; SOT + EOT for the null caption
    assert out.mask[:, 0].all() and not out.mask[0, 11:].any()
    assert not out.context.requires_grad
    assert all(not p.requires_grad for p in cond.parameters())
    cond.train()
    assert cond.training and not cond.tower.training
    assert not hasattr(cond.tower, "visual") and cond.tower.text_projection is None  # text tower only
    # a shorter context: positions sliced, states of the real tokens are unchanged (causal attention)
    short = ClipConditioner.from_files(model=str(config), weights=str(weights), layer=layer, context_length=16)
    torch.testing.assert_close(short(captions).context, out.context[:, :16])


def test_clip_loads_torch_files_and_mask_keeps_token_zero(tiny_clip, tmp_path):
    model, config, weights = tiny_clip
    path = tmp_path / "wrapped.bin"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    cond = ClipConditioner.from_files(model=str(config), weights=str(path), layer="last")
    ref = ClipConditioner.from_files(model=str(config), weights=str(weights), layer="last")
    torch.testing.assert_close(cond(["hello"]).context, ref(["hello"]).context)
    out = cond(["!% ok"])  # '!' (not word-final) is BPE id 0: still a real token
    assert cond.tokenize(["!% ok"])[0].tolist()[:5] == [49406, 0, 260, 2481, 49407] and out.mask.sum().item() == 5


def test_clip_user_errors(tiny_clip, tmp_path):
    _, config, weights = tiny_clip
    with pytest.raises(UserError) as exc:
        ClipConditioner.from_files(model=str(config), weights=str(tmp_path / "nope.safetensors"))
    msg = str(exc.value)
    assert "nope.safetensors" in msg and "cond.weights=PATH" in msg and "\n" not in msg
    with pytest.raises(UserError, match="cond.weights is not set"):
        ClipConditioner.from_files(model=str(config), weights=None)
    with pytest.raises(UserError, match="laion2b_s34b_b79k"):  # a hub tag is just a missing file
        ClipConditioner.from_files(model="ViT-B-32", weights="laion2b_s34b_b79k")
    with pytest.raises(UserError, match="ViT-Nope-99 is not an open_clip model name") as exc:
        ClipConditioner.from_files(model="ViT-Nope-99", weights=str(weights))
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="hub"):
        ClipConditioner.from_files(model="hf-hub:laion/CLIP-ViT-H-14-laion2B-s32B-b79K", weights=str(weights))
    with pytest.raises(UserError, match="does not fit"):  # ViT-B-32 is 512 wide: the tiny weights do not fit
        ClipConditioner.from_files(model="ViT-B-32", weights=str(weights))
    with pytest.raises(UserError, match="set cond.width=64"):
        ClipConditioner.from_files(model=str(config), weights=str(weights), width=1024)
    with pytest.raises(UserError, match="layer"):
        ClipConditioner.from_files(model=str(config), weights=str(weights), layer="middle")


def test_clip_old_model_dir_config_and_a_built_tower(tiny_clip, tmp_path):
    """config.yaml of model dirs written before from_files targets the class with model=/weights=: it still
    builds the same conditioner; a ClipTextTower built in memory needs no file at all."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ldmkit.runner import conf_dir

    _, config, weights = tiny_clip
    settings = dict(layer="last", context_length=77, width=64, key="caption", drop_prob=0.1)
    shipped = OmegaConf.load(Path(conf_dir()) / "cond" / "clip.yaml").cond
    new = instantiate(shipped, model=str(config), weights=str(weights), **settings)
    old = instantiate({"_target_": "ldmkit.models.clip_conditioner.ClipConditioner", "model": str(config),
                       "weights": str(weights), **settings})
    assert type(old) is type(new) is ClipConditioner
    assert old.state_dict().keys() == new.state_dict().keys()
    assert all(torch.equal(v, new.state_dict()[k]) for k, v in old.state_dict().items())
    assert old.fingerprint == new.fingerprint
    text = ClipTextTower.from_config(json.loads(config.read_text()), "tiny")
    text.tower.load_state_dict(new.tower.state_dict())
    built = ClipConditioner(text, **settings)
    torch.testing.assert_close(built(["a red circle"]).context, new(["a red circle"]).context)
    with pytest.raises(TypeError, match="weights="):
        ClipConditioner(text, weights=str(weights))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")  # the settings are checked before the weights are read
    with pytest.raises(UserError, match="set cond.width=64"):
        ClipConditioner.from_files(model=str(config), weights=str(junk), width=1024)


# ---------------------------------------------------------------- training


def _train(ldm: LatentDiffusion, batch: dict, steps: int = 30) -> list[float]:
    module = LDMModule(ldm, lr=2e-3, ema_decay=0.9)
    module.log = lambda *a, **k: None
    module.train()
    opt = module.configure_optimizers()
    losses = []
    for _ in range(steps):
        loss = module.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        module.on_train_batch_end(None, batch, 0)
        losses.append(loss.item())
    return losses, opt


def test_layout_ldm_training_step_learns():
    torch.manual_seed(0)
    ldm = tiny_ldm(LayoutConditioner(num_classes=18, embed_dim=16, layers=1, heads=2, drop_prob=0.1))
    losses, _ = _train(ldm, shapes_batch())
    assert sum(losses[-5:]) < sum(losses[:5])
    assert ldm.cond.class_embedding.weight.grad is not None  # the conditioner is trained with the UNet


def test_clip_ldm_training_step_learns_and_tower_stays_frozen(tiny_clip):
    _, config, weights = tiny_clip
    torch.manual_seed(0)
    ldm = tiny_ldm(ClipConditioner.from_files(model=str(config), weights=str(weights), drop_prob=0.1))
    before = {k: v.clone() for k, v in ldm.cond.state_dict().items()}
    losses, opt = _train(ldm, shapes_batch())
    assert sum(losses[-5:]) < sum(losses[:5])
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    assert not in_opt & {id(p) for p in ldm.cond.parameters()}  # frozen tower: not in the optimiser
    assert all(torch.equal(v, ldm.cond.state_dict()[k]) for k, v in before.items())
    assert not ldm.cond.tower.training


# ---------------------------------------------------------------- CLI


@pytest.fixture
def ae_dir(tiny_ae):
    return tiny_ae


def test_cli_train_ldm_layout(ae_dir, tmp_path):
    import ldmkit

    out = tmp_path / "ldm"
    run_cli("train-ldm", f"ae={ae_dir}", "cond=layout", "trainer.max_steps=3", "loader.batch_size=8", f"out={out}")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["cond"] == "LayoutConditioner" and meta["steps"] == 3
    ldm = ldmkit.load(out)
    assert isinstance(ldm.cond, LayoutConditioner)
    values = ldm.cond.values(shapes_batch(2))
    x = ldm.sample(values, sampler=None, guidance=2.0, generator=torch.Generator().manual_seed(0),
                   return_latents=True)
    assert torch.isfinite(x).all()


def test_cli_train_ldm_clip(ae_dir, tiny_clip, tmp_path):
    import ldmkit

    _, config, weights = tiny_clip
    out = tmp_path / "ldm"
    run_cli("train-ldm", f"ae={ae_dir}", "cond=clip", f"cond.model={config}", f"cond.weights={weights}",
            "cond.width=64", "trainer.max_steps=3", "loader.batch_size=8", f"out={out}")
    ldm = ldmkit.load(out)
    assert isinstance(ldm.cond, ClipConditioner) and ldm.cond.width == 64
    assert all(not p.requires_grad for p in ldm.cond.parameters())
