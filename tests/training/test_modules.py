"""Lightning modules: the LDM loss inputs, EMA with the CompVis warm-up, the first-stage loss."""

import pytest
import torch

from ldmkit.diffusion.schedule import NoiseSchedule
from ldmkit.models.autoencoder import AutoencoderKL, DiagonalGaussian
from ldmkit.models.conditioners import ClassConditioner, Conditioner, NoConditioner, TextConditioner
from ldmkit.models.first_stage import FirstStage
from ldmkit.models.ldm import LatentDiffusion
from ldmkit.models.losses import AutoencoderLoss, psnr
from ldmkit.models.unet import UNetModel
from ldmkit.training.ldm_module import LDMModule, compvis_ema


def tiny_ldm(cond: Conditioner | None = None) -> LatentDiffusion:
    cond = ClassConditioner(num_classes=4, embed_dim=16) if cond is None else cond
    cross = not isinstance(cond, NoConditioner)
    ae = AutoencoderKL(embed_dim=3, z_channels=3, ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=16)
    unet = UNetModel(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(2,), num_head_channels=32, use_spatial_transformer=cross,
                     context_dim=16 if cross else None)
    return LatentDiffusion(unet, cond, NoiseSchedule(timesteps=100), FirstStage(ae, scale_factor=0.5),
                           latent_shape=(3, 8, 8))


def lit_ema(init: torch.Tensor, updates: list[torch.Tensor], decay: float, warmup: float = 10) -> torch.Tensor:
    """CompVis' LitEma by hand: shadow = init; update k: d = min(decay, (1+k)/(warmup+k)) (LitEma: warmup 10);
    shadow -= (1-d)(shadow - w)."""
    shadow = init.clone()
    for k, w in enumerate(updates, start=1):
        d = min(decay, (1 + k) / (warmup + k))
        shadow -= (1 - d) * (shadow - w)
    return shadow


@pytest.mark.parametrize("warmup", [10, 3])
def test_ema_warmup_matches_compvis_lit_ema(warmup):
    net = torch.nn.Linear(2, 1, bias=False)
    net.weight.data[:] = 1.0
    ema = compvis_ema(net, 0.999, warmup)  # starts from the weights at construction, as LitEma
    weights = [torch.full((1, 2), v) for v in (0.0, 1.0, 3.0, -2.0)]
    for w in weights:
        net.weight.data[:] = w
        ema.update_parameters(net)
    expected = lit_ema(torch.ones(1, 2), weights, 0.999, warmup)
    torch.testing.assert_close(ema.module.weight.data, expected)
    first = float(lit_ema(torch.ones(1, 2), weights[:1], 0.999, warmup)[0, 0])
    assert abs(first - 2 / (warmup + 1)) < 1e-7  # the first step blends: d = 2 / (warmup + 1) of the start stays


def test_latents_from_shards_and_images():
    ldm = tiny_ldm()
    module = LDMModule(ldm, ema_decay=0.9)
    mean = torch.randn(4, 3, 8, 8)
    z = module.latents({"latent_mean": mean, "latent_std": torch.zeros_like(mean)})
    torch.testing.assert_close(z, 0.5 * mean)  # scale * (mean + 0 * eps)
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    draws = torch.stack([module.latents({"image": images}) for _ in range(64)])
    assert draws.shape == (64, 4, 3, 8, 8) and not torch.equal(draws[0], draws[1])  # fresh draw per step
    post = ldm.first_stage.posterior(images)
    torch.testing.assert_close(draws.mean(0), 0.5 * post.mean, atol=6 * 0.5 * post.std.max().item() / 8, rtol=0)


def test_shards_and_images_give_the_same_latents_for_the_same_noise():
    """Training on encode-dataset shards (fp16 mean + std) or on images encoded on the fly draws the same z."""
    ldm = tiny_ldm()
    module = LDMModule(ldm)
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    post = ldm.first_stage.posterior(images)
    shard = {"latent_mean": post.mean.half().float(), "latent_std": post.std.half().float()}  # as stored
    torch.manual_seed(3)
    from_images = module.latents({"image": images})
    torch.manual_seed(3)
    from_shards = module.latents(shard)
    torch.testing.assert_close(from_shards, from_images, atol=2e-3, rtol=2e-3)
    assert from_images.abs().mean() > 0.05


COND_NAMES = ["none", "class", "text"]  # layout, clip, semantic, sr, inpaint: tests/models


@pytest.mark.parametrize("name", COND_NAMES)
def test_training_step_learns_and_first_stage_stays_frozen(name):
    torch.manual_seed(0)
    cond = {"none": NoConditioner(), "class": ClassConditioner(num_classes=4, embed_dim=16),
            "text": TextConditioner(context_length=16, width=16, layers=1, heads=2)}[name]
    ldm = tiny_ldm(cond)
    module = LDMModule(ldm, lr=2e-3, ema_decay=0.9)
    module.log = lambda *a, **k: None
    module.train()
    assert not ldm.first_stage.training and all(not p.requires_grad for p in ldm.first_stage.parameters())
    opt = module.configure_optimizers()
    batch = {"latent_mean": torch.randn(8, 3, 8, 8), "latent_std": torch.zeros(8, 3, 8, 8),
             "class_label": torch.arange(8) % 4, "caption": ["a red circle", "a blue square"] * 4}
    before = [p.clone() for p in ldm.first_stage.parameters()]
    losses = []
    for _ in range(30):
        loss = module.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        module.on_train_batch_end(None, batch, 0)
        losses.append(loss.item())
    assert sum(losses[-5:]) < sum(losses[:5])
    assert all(torch.equal(a, b) for a, b in zip(before, ldm.first_stage.parameters(), strict=True))
    assert not torch.equal(module.ema.module["unet"].out[2].weight, ldm.unet.out[2].weight)


def test_autoencoder_loss_values():
    x = torch.zeros(2, 3, 4, 4)
    rec = torch.full_like(x, 0.5)
    post = DiagonalGaussian(torch.zeros(2, 2, 2, 2))  # mean 0, logvar 0: KL = 0
    loss, logs = AutoencoderLoss("l1", kl_weight=1.0).generator_loss(x, rec, post, step=0)
    assert loss.item() == 0.5 and logs["rec"].item() == 0.5 and logs["kl"].item() == 0
    loss2, _ = AutoencoderLoss("l2", kl_weight=1.0).generator_loss(x, rec, DiagonalGaussian(torch.ones(2, 2, 2, 2)), 0)
    kl = 0.5 * (1 + torch.e - 1 - 1) * 4  # per sample over C*H*W = 1*2*2
    assert abs(loss2.item() - (0.25 + kl / 48)) < 1e-6  # KL divided by the pixels of one image (3*4*4)
    assert abs(psnr(torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.2)).item() - 20.0) < 1e-4


@pytest.mark.parametrize("prediction,gamma", [("v", None), ("x0", 5.0), ("eps", 5.0)])
def test_training_loss_uses_the_objective_target_and_min_snr_weight(prediction, gamma):
    from ldmkit.diffusion.objectives import min_snr_weight, target

    torch.manual_seed(0)
    ldm = tiny_ldm()
    ldm.prediction = prediction
    module = LDMModule(ldm, min_snr_gamma=gamma)
    module.log = lambda *a, **k: None
    ldm.cond.drop_prob = 0.0
    batch = {"latent_mean": torch.randn(4, 3, 8, 8), "latent_std": torch.zeros(4, 3, 8, 8),
             "class_label": torch.arange(4)}
    torch.manual_seed(1)
    loss = module.training_step(batch, 0)
    torch.manual_seed(1)
    z = 0.5 * (batch["latent_mean"] + 0 * torch.randn(4, 3, 8, 8))
    t = torch.randint(0, 100, (4,))
    noise = torch.randn_like(z)
    out = ldm.net(ldm.schedule.q_sample(z, t, noise), t, ldm.condition(batch["class_label"]))
    per = (out - target(prediction, ldm.schedule, z, noise, t)).pow(2).flatten(1).mean(1)
    weight = min_snr_weight(prediction, ldm.schedule, t, gamma) if gamma else torch.ones(4)
    torch.testing.assert_close(loss, (per * weight).mean())
