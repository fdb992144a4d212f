"""``ldmkit train-ae``: train the first-stage autoencoder and write its model dir."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from ldmkit import modeldir
from ldmkit.errors import UserError
from ldmkit.models.first_stage import FirstStage, latent_scale
from ldmkit.models.losses import psnr
from ldmkit.tasks.common import console, run_dir, save_grid


def _check_resolution(resolution: int, f: int) -> None:
    """The image side must be divisible by f and leave a latent of at least 2x2."""
    if resolution % f or resolution // f < 2:
        raise UserError(f"dataset.resolution={resolution} is too small or not divisible for f={f}: use a multiple of {f} that is >= {2 * f}")


def run(cfg: DictConfig) -> None:
    """Train, then save config.yaml, model.safetensors, meta.json and reconstructions.png."""
    import pytorch_lightning as pl

    from ldmkit.training.autoencoder_module import AutoencoderModule
    from ldmkit.training.trainer import make_trainer

    out = run_dir()
    pl.seed_everything(cfg.seed, verbose=False)
    dataset = instantiate(cfg.dataset)
    val = instantiate(cfg.dataset, split="val", size=max(cfg.recon_images, cfg.loader.batch_size))
    ae = instantiate(cfg.first_stage)
    _check_resolution(cfg.dataset.resolution, ae.downsample_factor)
    module = AutoencoderModule(ae, instantiate(cfg.loss), lr=cfg.optim.lr, betas=cfg.optim.betas)
    loader = DataLoader(dataset, batch_size=cfg.loader.batch_size, shuffle=True, drop_last=True,
                        num_workers=cfg.loader.num_workers, persistent_workers=cfg.loader.num_workers > 0)
    trainer = make_trainer(dict(cfg.trainer), out)
    trainer.fit(module, loader)
    if not trainer.is_global_zero:
        return

    ae = module.ae.cpu().eval()
    first = next(iter(DataLoader(dataset, batch_size=cfg.loader.batch_size)))["image"]
    scale = latent_scale(ae, first)
    images = torch.stack([val[i]["image"] for i in range(len(val))])
    with torch.no_grad():
        rec = FirstStage(ae, scale).decode(FirstStage(ae, scale).encode(images)).clamp(-1, 1)
    k = cfg.recon_images
    save_grid(torch.cat([images[:k], rec[:k]]), out / "reconstructions.png", nrow=k)
    f = ae.downsample_factor
    res = cfg.dataset.resolution
    metrics = {"val_psnr": float(psnr(images, rec).mean()), "val_l1": float((images - rec).abs().mean())}
    meta = modeldir.save(out, cfg, {"model": ae.state_dict()}, {
        "kind": "first_stage",
        "type": "kl",
        "f": f,
        "latent_channels": ae.latent_channels,
        "resolution": res,
        "latent_shape": [ae.latent_channels, res // f, res // f],
        "scale_factor": scale,
        "steps": trainer.global_step,
        "metrics": metrics,
    })
    console.print(f"first stage f={f} -> {out}  (scale {scale:.4f}, val PSNR {metrics['val_psnr']:.2f} dB, hash {meta['hash']})")
