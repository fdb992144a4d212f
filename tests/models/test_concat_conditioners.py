"""Concat conditioners (semantic maps, super-resolution, inpainting) and their combination with text."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from omegaconf import OmegaConf
from torch.utils.data import default_collate

import ldmkit
from ldmkit.data.shapes import NUM_CLASSES, ShapesDataset
from ldmkit.diffusion.cond import resize_to
from ldmkit.diffusion.schedule import NoiseSchedule
from ldmkit.models.autoencoder import AutoencoderKL
from ldmkit.models.concat_conditioners import InpaintConditioner, SemanticConditioner, SRConditioner
from ldmkit.models.conditioners import MultiConditioner, TextConditioner
from ldmkit.models.first_stage import FirstStage
from ldmkit.models.ldm import LatentDiffusion
from ldmkit.models.unet import UNetModel
from ldmkit.training.ldm_module import LDMModule

RES = 16  # images; the tiny first stage has f = 2, so latents are 3 x 8 x 8


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_first_stage(seed: int = 0) -> FirstStage:
    torch.manual_seed(seed)
    ae = AutoencoderKL(embed_dim=3, z_channels=3, ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=RES)
    return FirstStage(ae, scale_factor=0.5).eval()


def batch(n: int = 8, resolution: int = RES, sr_factor: int = 4) -> dict:
    ds = ShapesDataset(size=n, resolution=resolution, sr_factor=sr_factor, seed=1)
    return default_collate([ds[i] for i in range(n)])


def make_cond(name: str):
    if name == "semantic":
        return SemanticConditioner(num_classes=NUM_CLASSES, drop_prob=0.1)
    if name == "sr":
        return SRConditioner(drop_prob=0.1)
    if name == "inpaint":
        return InpaintConditioner(latent_channels=3)
    text = TextConditioner(context_length=16, width=32, layers=1, heads=2, drop_prob=0.1)
    semantic = SemanticConditioner(num_classes=NUM_CLASSES, drop_prob=0.05)
    return MultiConditioner({"semantic": semantic, "text": text})


def tiny_ldm(cond) -> LatentDiffusion:
    context = 32 if isinstance(cond, MultiConditioner) else None
    unet = UNetModel(in_channels=3 + cond.concat_channels, out_channels=3, model_channels=32,
                     channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,), num_head_channels=32,
                     use_spatial_transformer=context is not None, context_dim=context)
    return LatentDiffusion(unet, cond, NoiseSchedule(timesteps=100), tiny_first_stage(),
                           latent_shape=(3, 8, 8))


# --- semantic ---------------------------------------------------------------------------------------------


def test_semantic_one_hot_hand_case_and_area_fractions():
    cond = SemanticConditioner(num_classes=3)
    assert cond.concat_channels == 4 and cond.key == "semantic"
    labels = torch.tensor([[[0, 1, 2, 3], [3, 3, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2]]])
    out = cond(labels).concat
    assert out.shape == (1, 4, 4, 4) and out.dtype == torch.float32
    assert torch.equal(out.sum(1), torch.ones(1, 4, 4))  # exactly one class per pixel
    assert torch.equal(out.argmax(1), labels)
    # Area resize to a 2x2 latent: per-latent-pixel class fractions.
    frac = resize_to(out, (2, 2))
    torch.testing.assert_close(frac[0, :, 0, 0], torch.tensor([0.25, 0.25, 0.0, 0.5]))  # {0,1,3,3}
    torch.testing.assert_close(frac[0, :, 1, 1], torch.tensor([0.0, 0.5, 0.5, 0.0]))  # {1,1,2,2}
    torch.testing.assert_close(frac.sum(1), torch.ones(1, 2, 2))
    # On a real batch: one-hot matches the semantic map and sums to 1.
    sem = batch(4)["semantic"]
    real = SemanticConditioner(num_classes=NUM_CLASSES)(sem).concat
    assert real.shape == (4, NUM_CLASSES + 1, RES, RES) and torch.equal(real.sum(1), torch.ones(4, RES, RES))
    assert torch.equal(real.argmax(1), sem)


def test_semantic_null_drop_and_range():
    cond = SemanticConditioner(num_classes=3, drop_prob=0.25)
    null = cond.null(2)
    assert null.shape == (2, 1, 1) and (null == -1).all()
    assert torch.equal(cond(null).concat, torch.zeros(2, 4, 1, 1))  # no class at all
    assert torch.equal(resize_to(cond(null).concat, (8, 8)), torch.zeros(2, 4, 8, 8))
    maps = torch.randint(0, 4, (20000, 2, 2))
    dropped = cond.drop(maps, generator=torch.Generator().manual_seed(0))
    is_null = (dropped == -1).flatten(1).all(1)
    assert abs(is_null.float().mean().item() - 0.25) < 0.02
    assert torch.equal(dropped[~is_null], maps[~is_null])  # whole samples are replaced, the rest kept
    kept = (~is_null[:64]).float()[:, None, None].expand(64, 2, 2)
    assert torch.equal(cond(dropped[:64]).concat.sum(1), kept)  # null samples: zero one-hot
    assert torch.equal(SemanticConditioner(num_classes=3).drop(maps), maps)  # drop_prob 0: unchanged
    with pytest.raises(ValueError, match=r"-1\.\.3"):
        cond(torch.tensor([[[4]]]))
    with pytest.raises(ValueError, match="integer"):
        cond(torch.zeros(1, 2, 2))


# --- super-resolution ---------------------------------------------------------------------------------------


def test_sr_passes_the_lowres_image_and_drops_to_zeros():
    b = batch(4)
    cond = SRConditioner(drop_prob=0.3)
    assert cond.concat_channels == 3 and cond.key == "lowres"
    out = cond(b["lowres"]).concat
    assert torch.equal(out, b["lowres"]) and out.shape == (4, 3, RES // 4, RES // 4)
    # LatentDiffusion.net upsamples it bilinearly to the 8x8 latent.
    up = resize_to(out, (8, 8))
    bilinear = F.interpolate(b["lowres"], size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, bilinear)
    assert torch.equal(cond(cond.null(2)).concat, torch.zeros(2, 3, 1, 1))
    images = torch.rand(20000, 3, 2, 2) + 0.5
    dropped = cond.drop(images, generator=torch.Generator().manual_seed(1))
    is_null = (dropped == 0).flatten(1).all(1)
    assert abs(is_null.float().mean().item() - 0.3) < 0.02
    assert torch.equal(dropped[~is_null], images[~is_null])
    with pytest.raises(ValueError, match="3, h, w"):
        cond(torch.zeros(1, 1, 4, 4))


# --- inpainting ---------------------------------------------------------------------------------------------


def test_inpaint_encodes_the_masked_image_and_appends_the_mask():
    fs = tiny_first_stage()
    cond = InpaintConditioner(latent_channels=3)
    assert cond.concat_channels == 4 and cond.values({"image": 1, "mask": 2}) == {"image": 1, "mask": 2}
    with pytest.raises(RuntimeError, match="attach"):
        cond(cond.values(batch(2)))
    cond.attach(fs)
    b = batch(4)
    out = cond(cond.values(b)).concat
    assert out.shape == (4, 4, 8, 8)
    with torch.no_grad():
        expected = fs.encode(b["image"] * (1 - b["mask"]))
    torch.testing.assert_close(out[:, :3], expected)
    torch.testing.assert_close(out[:, 3:], F.avg_pool2d(b["mask"], 2))  # area: fraction to fill per latent px
    assert not out.requires_grad
    # Hand case: a mask aligned with latent pixels gives a 0/1 mask channel; half-covered pixels give 0.5.
    mask = torch.zeros(1, 1, RES, RES)
    mask[..., 4:8, 2:6] = 1
    mask[..., 10, 10] = 1
    mask[..., 12:14, 12] = 1
    hand = cond({"image": b["image"][:1], "mask": mask}).concat[0, 3]
    want = torch.zeros(8, 8)
    want[2:4, 1:3] = 1
    want[5, 5], want[6, 6] = 0.25, 0.5
    assert torch.equal(hand, want)
    # Masked pixels do not matter: changing the image inside the mask leaves the latent unchanged.
    changed = b["image"].clone()
    changed[b["mask"].expand_as(changed) == 1] = 0.7
    torch.testing.assert_close(cond({"image": changed, "mask": b["mask"]}).concat, out)


def test_inpaint_null_and_dropout():
    fs = tiny_first_stage()
    cond = InpaintConditioner(latent_channels=3, drop_prob=0.3)
    cond.attach(fs)
    assert torch.equal(cond(cond.null(3)).concat, torch.zeros(3, 4, 1, 1))
    big = {"image": torch.zeros(20000, 1), "mask": torch.zeros(20000, 1)}
    flags = cond.drop(big, generator=torch.Generator().manual_seed(2))["null"]
    assert flags.shape == (20000,) and abs(flags.float().mean().item() - 0.3) < 0.02
    b = batch(8)
    values = cond.drop(cond.values(b), generator=torch.Generator().manual_seed(3))
    assert values["image"] is b["image"] and 0 < values["null"].sum() < 8  # images kept, samples flagged
    out = cond(values).concat
    full = InpaintConditioner(latent_channels=3)
    full.attach(fs)
    ref = full(cond.values(b)).concat
    null = values["null"]
    assert torch.equal(out[null], torch.zeros_like(out[null]))  # zero latent + zero mask
    torch.testing.assert_close(out[~null], ref[~null])
    plain = cond.values(b)
    assert InpaintConditioner(latent_channels=3).drop(plain) is plain  # drop_prob 0: unchanged


def test_inpaint_first_stage_is_not_a_submodule():
    cond = InpaintConditioner(latent_channels=3)
    ldm = tiny_ldm(cond)
    assert cond.first_stage is ldm.first_stage
    assert len(cond.state_dict()) == 0 and len(list(cond.parameters())) == 0 and not list(cond.children())
    keys = ldm.trainable().state_dict().keys()
    assert not any(k.startswith("cond.") for k in keys) and any(k.startswith("unet.") for k in keys)
    module = LDMModule(ldm)
    opt_params = {id(p) for group in module.configure_optimizers().param_groups for p in group["params"]}
    assert not opt_params & {id(p) for p in ldm.first_stage.parameters()}
    assert module.ema.module["cond"].first_stage is ldm.first_stage  # the EMA copy shares, not copies, it
    with pytest.raises(ValueError, match="latent_channels=4"):
        InpaintConditioner(latent_channels=4).attach(ldm.first_stage)


def test_inpaint_needs_images_from_the_dataset():
    from ldmkit.errors import UserError
    from ldmkit.tasks.train_ldm import _check_fields

    shard_sample = {k: v for k, v in ShapesDataset(size=1)[0].items() if k != "image"}
    with pytest.raises(UserError, match="'image'"):
        _check_fields(InpaintConditioner(latent_channels=3), [shard_sample])


# --- combination --------------------------------------------------------------------------------------------


def test_semantic_text_combination_keeps_per_part_dropout():
    multi = make_cond("semantic_text")
    multi.parts["semantic"].drop_prob, multi.parts["text"].drop_prob = 1.0, 0.0
    assert multi.concat_channels == NUM_CLASSES + 1 and multi.key == "semantic,caption"
    b = batch(2)
    values = multi.drop(multi.values(b))
    assert (values["semantic"] == -1).all() and values["text"] == b["caption"]
    out = multi(values)
    assert out.context.shape == (2, 16, 32) and out.mask.shape == (2, 16)
    assert out.concat.shape == (2, NUM_CLASSES + 1, RES, RES) and not out.concat.any()


# --- training -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["semantic", "sr", "inpaint", "semantic_text"])
def test_training_step_learns_with_concat_conditioning(name):
    torch.manual_seed(0)
    ldm = tiny_ldm(make_cond(name))
    module = LDMModule(ldm, lr=2e-3, ema_decay=0.9)
    module.log = lambda *a, **k: None
    module.train()
    opt = module.configure_optimizers()
    b = batch(8)
    first_conv = ldm.unet.input_blocks[0][0]
    assert first_conv.in_channels == 3 + ldm.cond.concat_channels
    losses = []
    for step in range(30):
        loss = module.training_step(b, step)
        opt.zero_grad()
        loss.backward()
        if step == 29:  # the concat channels reach the UNet (once the zero-init output layer has moved)
            assert first_conv.weight.grad[:, 3:].abs().sum() > 0
        opt.step()
        module.on_train_batch_end(None, b, step)
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses


# --- through the CLI ----------------------------------------------------------------------------------------


@pytest.fixture
def ae_dir(tiny_ae):
    return tiny_ae


@pytest.mark.parametrize("name", ["semantic", "inpaint"])
def test_train_ldm_cli_and_reload(ae_dir, tmp_path, name):
    out = tmp_path / name
    run_cli("train-ldm", f"ae={ae_dir}", f"cond={name}", "trainer.max_steps=3", "loader.batch_size=4",
            "dataset.size=16", "unet.model_channels=32", f"out={out}")
    cfg = OmegaConf.load(out / "config.yaml")
    ldm = ldmkit.load(out)
    assert type(ldm.cond).__name__ == cfg.cond._target_.rsplit(".", 1)[1]
    assert cfg.unet.in_channels == 3 + ldm.cond.concat_channels and cfg.unet.context_dim is None
    ds = ShapesDataset(size=2, split="val")
    b = default_collate([ds[0], ds[1]])
    with torch.no_grad():
        cond = ldm.condition(ldm.cond.values(b))
        z = torch.randn(2, *ldm.latent_shape)
        eps = ldm.net(z, torch.tensor([10, 500]), cond)
    assert eps.shape == z.shape and torch.isfinite(eps).all()
    if name == "inpaint":
        assert ldm.cond.first_stage is ldm.first_stage
