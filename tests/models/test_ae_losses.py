"""First-stage loss: adaptive GAN weight, hinge/vanilla losses, disc_start, LPIPS backbone loading, PatchGAN."""

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ldmkit.errors import UserError
from ldmkit.models.autoencoder import AutoencoderKL, DiagonalGaussian
from ldmkit.models.discriminator import NLayerDiscriminator
from ldmkit.models.losses import AutoencoderLoss, adaptive_weight, hinge_d_loss, vanilla_d_loss
from ldmkit.models.perceptual import LPIPS, find_vgg_weights, lpips_skip_reason
from ldmkit.training.autoencoder_module import AutoencoderModule


def test_adaptive_weight_hand_made():
    w = torch.nn.Parameter(torch.ones(2, 2))
    a, b = torch.tensor([[3.0, 0.0], [0.0, 4.0]]), torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    lam = adaptive_weight((w * a).sum(), (w * b).sum(), w)
    assert lam.item() == pytest.approx(5.0 / (1.0 + 1e-4))  # |grad rec| = 5, |grad gan| = 1
    assert not lam.requires_grad
    assert adaptive_weight((w * a).sum(), (w * b * 0).sum(), w).item() == 1e4  # 5 / 1e-4, clamped
    assert adaptive_weight((w * 0).sum(), (w * b).sum(), w).item() == 0.0


def test_discriminator_losses_closed_form():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.5))
    expected = 0.5 * (torch.nn.functional.softplus(-real).mean() + torch.nn.functional.softplus(fake).mean())
    assert vanilla_d_loss(real, fake).item() == pytest.approx(expected.item())


def test_generator_loss_adds_adaptive_gan_term_only_from_disc_start():
    torch.manual_seed(0)
    ae = AutoencoderKL(embed_dim=3, z_channels=3, ch=32, ch_mult=(1, 2), resolution=16)
    disc = NLayerDiscriminator(ndf=8, n_layers=2)
    loss_fn = AutoencoderLoss("l1", discriminator=disc, disc_start=5, disc_weight=0.5, kl_weight=1e-6)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    rec, post = ae(x, sample_posterior=False)
    before, logs = loss_fn.generator_loss(x, rec, post, step=4, last_layer=ae.last_layer())
    assert "g_loss" not in logs
    assert before.item() == pytest.approx(((x - rec).abs().mean() + 1e-6 / 768 * post.kl().mean()).item(), rel=1e-6)
    after, logs = loss_fn.generator_loss(x, rec, post, step=5, last_layer=ae.last_layer())
    g = -disc(rec).mean()
    lam = 0.5 * adaptive_weight((x - rec).abs().mean(), g, ae.last_layer())
    assert logs["d_weight"].item() == pytest.approx(lam.item(), rel=1e-5)
    assert after.item() == pytest.approx((before + lam * g).item(), rel=1e-5)
    d_before, _ = loss_fn.discriminator_loss(x, rec, step=4)
    assert d_before.item() == 0.0


class _Images(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"image": torch.rand(3, 16, 16, generator=g) * 2 - 1}


def _fit(disc_start: int, steps: int) -> tuple[AutoencoderModule, dict]:
    torch.manual_seed(0)
    ae = AutoencoderKL(embed_dim=3, z_channels=3, ch=32, ch_mult=(1, 2), resolution=16)
    disc = NLayerDiscriminator(ndf=8, n_layers=2)
    start = {k: v.clone() for k, v in disc.state_dict().items()}
    module = AutoencoderModule(ae, AutoencoderLoss(discriminator=disc, disc_start=disc_start), lr=1e-3)
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, DataLoader(_Images(), batch_size=4))
    return module, start


def test_discriminator_inactive_before_disc_start_then_trained():
    module, start = _fit(disc_start=3, steps=3)
    assert module.global_step == 3  # training steps: the discriminator's updates are not counted
    assert all(torch.equal(v, module.loss.discriminator.state_dict()[k]) for k, v in start.items())
    module, start = _fit(disc_start=1, steps=3)
    weight = module.loss.discriminator.main[0].weight
    assert not torch.equal(weight, start["main.0.weight"])


def test_patchgan_shapes_and_init():
    d = NLayerDiscriminator(input_nc=3, ndf=16, n_layers=3)
    assert d(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    assert [k for k in d.state_dict() if k.endswith("weight")][:3] == ["main.0.weight", "main.2.weight", "main.3.weight"]
    assert abs(d.main[0].weight.std().item() - 0.02) < 0.005


def test_lpips_reads_a_local_vgg16_state_dict(tmp_path):
    import torchvision

    features = torchvision.models.vgg16().features
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    torch.save(state, tmp_path / "vgg16.pth")
    lp = LPIPS(weights=str(tmp_path / "vgg16.pth"))
    assert torch.equal(lp.net.net.slice1[0].weight, features[0].weight)
    assert torch.equal(lp.net.net.slice5._modules["28"].bias, features[28].bias)
    assert not any(p.requires_grad for p in lp.parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert lp(x, x).abs().max() == 0 and (lp(x, -x) > 0).all()
    lp.train()
    assert not lp.training


def test_lpips_missing_weights_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(UserError, match=r"vgg16-397923af\.pth.*loss\.perceptual"):
        find_vgg_weights(None)
    with pytest.raises(UserError, match="do not exist"):
        LPIPS(weights=str(tmp_path / "nope.pth"))
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="not a VGG16 state dict"):
        LPIPS(weights=str(tmp_path / "bad.pth"))


def test_only_the_default_lpips_is_skipped_without_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    reason = lpips_skip_reason(None)
    assert f"no vgg16-397923af.pth in {tmp_path / 'checkpoints'}" in reason and "\n" not in reason
    with pytest.raises(UserError, match=r"vgg16-397923af\.pth"):
        lpips_skip_reason(None, required=True)  # loss.perceptual.required=true
    with pytest.raises(UserError, match="do not exist"):
        lpips_skip_reason(str(tmp_path / "nope.pth"))  # weights asked for by path
    assert lpips_skip_reason("random") is None
    (tmp_path / "checkpoints").mkdir()
    torch.save({}, tmp_path / "checkpoints" / "vgg16-397923af.pth")
    assert lpips_skip_reason(None) is None


def test_lpips_term_enters_the_reconstruction_loss():
    torch.manual_seed(0)
    lp = LPIPS(weights="random")
    x, rec = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    post = DiagonalGaussian(torch.zeros(2, 6, 4, 4))
    plain, _ = AutoencoderLoss(kl_weight=0).generator_loss(x, rec, post, 0)
    with_p, logs = AutoencoderLoss(perceptual=lp, perceptual_weight=2.0, kl_weight=0).generator_loss(x, rec, post, 0)
    assert with_p.item() == pytest.approx(plain.item() + 2.0 * lp(x, rec).mean().item(), rel=1e-5)
    assert logs["lpips"] > 0
