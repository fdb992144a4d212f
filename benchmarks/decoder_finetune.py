"""Fine-tune only the decoder of an LDM's first stage (the encoder, hence the latent space, stays fixed, as in
Stability's ``sd-vae-ft-mse``), optionally against a PatchGAN and on noisy latents, and write a copy of the LDM
model dir that decodes with it: does a better decoder make the LDM's samples show what was asked?"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ldmkit import modeldir
from ldmkit.data.shapes import ShapesDataset
from ldmkit.models.discriminator import NLayerDiscriminator
from ldmkit.models.losses import AutoencoderLoss
from ldmkit.training.optim import warmup_cosine


def finetune_decoder(stage_dir: Path, steps: int, noise: float, gan: bool, lr: float = 1e-4, batch: int = 16,
                     seed: int = 0) -> torch.nn.Module:
    """The first stage of ``stage_dir`` after ``steps`` decoder updates (L2, + hinge PatchGAN with CompVis' adaptive
    weight when ``gan``; cosine rate decay) on decodes of posterior samples plus N(0, (u * noise)^2) in the LDM's
    scaled latent units, u ~ U(0, 1) per image."""
    torch.manual_seed(seed)
    stage = modeldir.load(stage_dir)
    ae = stage.ae.train().requires_grad_(False)
    params = [*ae.decoder.parameters(), *ae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    disc = NLayerDiscriminator(input_nc=3, ndf=32, n_layers=2) if gan else None
    loss = AutoencoderLoss(rec="l2", kl_weight=0.0, discriminator=disc, disc_start=0, disc_weight=0.5)
    opt = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9))
    decay = warmup_cosine(opt, total_steps=steps)
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.9)) if gan else None
    loader = DataLoader(ShapesDataset(size=10000), batch_size=batch, shuffle=True, drop_last=True)
    batches = iter(())
    for step in range(steps):
        x = next(batches, None)
        if x is None:
            batches = (b["image"] for b in loader)
            x = next(batches)
        with torch.no_grad():
            posterior = ae.encode(x)
            z = posterior.sample()
            z = z + noise / stage.scale_factor * torch.randn_like(z) * torch.rand(len(z), 1, 1, 1)
        rec = ae.decode(z)
        g_loss, _ = loss.generator_loss(x, rec, posterior, step, ae.last_layer())
        opt.zero_grad(set_to_none=True)
        g_loss.backward()
        opt.step()
        decay.step()
        if gan:
            d_loss, _ = loss.discriminator_loss(x, rec, step)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
    return ae.eval()


def ldm_with_decoder(ldm_dir: Path, out: Path, steps: int, noise: float, gan: bool) -> float:
    """Write ``out/first_stage`` (the fine-tuned stage) and ``out/ldm`` (the LDM of ``ldm_dir`` decoding with it);
    the fine-tuning's seconds."""
    start = time.perf_counter()
    src = ldm_dir / "first_stage"
    ae = finetune_decoder(src, steps, noise, gan)
    seconds = round(time.perf_counter() - start, 1)
    meta = {k: v for k, v in modeldir.read_json(src / "meta.json").items() if k not in ("hash", "format")}
    stage = modeldir.save(out / "first_stage", OmegaConf.load(src / "config.yaml"), {"model": ae.state_dict()}, meta)
    ldm = out / "ldm"
    shutil.rmtree(ldm, ignore_errors=True)
    modeldir.copy(ldm_dir, ldm)  # config, weights, EMA, meta; the validation conditions besides
    shutil.copy2(ldm_dir / modeldir.CONDITIONS, ldm / modeldir.CONDITIONS)
    modeldir.copy(out / "first_stage", ldm / "first_stage")
    ldm_meta = modeldir.read_json(ldm / "meta.json")
    ldm_meta["first_stage"] = {"path": str(out / "first_stage"), "hash": stage["hash"]}
    (ldm / "meta.json").write_text(json.dumps(ldm_meta, indent=2))
    return seconds
