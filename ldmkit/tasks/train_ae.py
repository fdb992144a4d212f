"""``ldmkit train-ae``: train the first-stage autoencoder and write its model dir with a reconstruction report."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ldmkit import modeldir
from ldmkit.console import console
from ldmkit.data.access import first_items, write_skips
from ldmkit.errors import UserError
from ldmkit.evaluation.fid import find_inception_weights
from ldmkit.evaluation.reconstruction import reconstruct, reconstruction_metrics
from ldmkit.images import save_grid
from ldmkit.models.autoencoder import AutoencoderKL
from ldmkit.models.first_stage import FirstStage, IdentityStage, latent_scale
from ldmkit.models.perceptual import LPIPS, lpips_skip_reason
from ldmkit.models.vq import VQModel
from ldmkit.tasks.common import run_dir
from ldmkit.training import optim

AE_TYPES = {AutoencoderKL: "kl", VQModel: "vq", IdentityStage: "identity"}


def check_resolution(resolution: int, f: int) -> None:
    """The image side must be divisible by f and leave a latent of at least 2x2."""
    if resolution % f or resolution // f < 2:
        raise UserError(
            f"dataset.resolution={resolution} is too small for f={f}: "
            f"use a multiple of {f} that is at least {2 * f} (e.g. dataset.resolution={max(2 * f, resolution // f * f + f)})"
        )


def _chosen(group: str) -> str | None:
    """The option picked for a config group in this job (``f=8`` -> "8")."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get(group)


def loss_config(loss: DictConfig) -> tuple[DictConfig, str | None]:
    """The ``loss`` node to instantiate (``perceptual.required`` taken out) and, when the default LPIPS term is
    left out for want of its VGG16 weights, the line saying so (None when the loss is used as configured)."""
    spec = OmegaConf.create(OmegaConf.to_container(loss, resolve=True))
    perceptual = spec.get("perceptual")
    if perceptual is None:
        return spec, None
    required = bool(perceptual.pop("required", False))
    if perceptual.get("_target_") != f"{LPIPS.__module__}.{LPIPS.__qualname__}":
        return spec, None
    reason = lpips_skip_reason(perceptual.get("weights"), required)
    if reason is not None:
        spec.perceptual = None
    return spec, reason


def _say_once(text: str) -> None:
    """``text`` as one unwrapped line on stderr, from rank 0 only (DDP runs this task on every rank)."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        console.print(text, markup=False, highlight=False)


def _train(cfg: DictConfig, ae: nn.Module, loss: nn.Module, dataset, out, optimizers: tuple) -> int:
    """Fit the autoencoder (and discriminator) with Lightning, writing reconstruction grids and the loss plot;
    return the training steps done (autoencoder updates)."""
    from ldmkit.training.autoencoder_module import AutoencoderModule
    from ldmkit.training.loader import make_loader
    from ldmkit.training.pictures import LossPlot, ReconstructionGrids, check_options
    from ldmkit.training.trainer import extra_loggers, fit

    check_options(cfg.images.every_n_steps, cfg.images.count)
    loggers = extra_loggers(instantiate(cfg.logger), out)
    val = instantiate(cfg.dataset, split="val", size=cfg.images.count)  # the grids' fixed images
    module = AutoencoderModule(ae, loss, *optimizers)
    loader = make_loader(dataset, cfg.loader.batch_size, cfg.loader.num_workers, cfg.seed)
    pictures = [ReconstructionGrids(out, val, cfg.images.every_n_steps, cfg.images.count), LossPlot(out)]
    trainer = fit(cfg, module, loader, out, callbacks=pictures, loggers=loggers, name="train-ae")
    return trainer.global_step if trainer.is_global_zero else -1


def _check_manual_optimization(trainer: DictConfig) -> None:
    """train-ae steps its two optimisers itself (Lightning manual optimisation): Lightning's automatic gradient
    clipping and accumulation do not apply, and Lightning would fail mid-fit with a traceback."""
    if trainer.get("gradient_clip_val") is not None:
        raise UserError(f"trainer.gradient_clip_val={trainer.gradient_clip_val}: train-ae steps its autoencoder and "
                        "discriminator optimisers itself, so Lightning cannot clip; lower optim.lr instead")
    if int(trainer.get("accumulate_grad_batches", 1) or 1) != 1:
        raise UserError(f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}: train-ae steps its "
                        "optimisers itself, so Lightning cannot accumulate; raise loader.batch_size instead")


UNUSED_PARAMETERS = {"ddp": "ddp_find_unused_parameters_true", "ddp_spawn": "ddp_spawn_find_unused_parameters_true"}


def _ddp_finding_unused(trainer: DictConfig) -> None:
    """Under DDP, let each backward leave parameters without a gradient: the discriminator has none before
    ``loss.disc_start`` and the autoencoder none in the discriminator's update (CompVis' Lightning found unused
    parameters by default). Other strategies are left as they are."""
    strategy = trainer.get("strategy")
    if isinstance(strategy, str) and strategy in UNUSED_PARAMETERS:
        trainer.strategy = UNUSED_PARAMETERS[strategy]


def _as_trained(cfg: DictConfig, lpips_skipped: str | None) -> DictConfig:
    """The config to keep in the model dir: ``loss.perceptual`` null when training ran without LPIPS."""
    if not lpips_skipped:
        return cfg
    kept = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    kept.loss.perceptual = None
    return kept


def run(cfg: DictConfig) -> None:
    """Train, then save config.yaml, model.safetensors, meta.json (scale, metrics) and reconstructions.png."""
    import pytorch_lightning as pl

    _check_manual_optimization(cfg.trainer)
    _ddp_finding_unused(cfg.trainer)
    optimizers = optim.from_config(cfg.optim, cfg.get("lr_schedule"))
    out = run_dir()
    pl.seed_everything(cfg.seed, verbose=False)
    ae, kind = _first_stage(cfg)
    weights, reason = _inception_weights(cfg.report)
    loss_cfg, lpips_skipped = loss_config(cfg.loss) if kind != "identity" else (None, None)
    dataset = instantiate(cfg.dataset)
    steps = _fit_or_skip(cfg, ae, loss_cfg, lpips_skipped, dataset, out, optimizers)
    skipped = write_skips(dataset, out)  # every rank: the counts are summed over DDP ranks
    if steps < 0:
        return
    stage = _scaled(ae, dataset, cfg.loader.batch_size)
    metrics = _report(cfg, stage, out, weights, reason)
    extra = {**({"skipped_samples": skipped["skipped"]} if skipped else {}),
             **({"perceptual_skipped": lpips_skipped} if lpips_skipped else {})}
    meta = _save(out, _as_trained(cfg, lpips_skipped), stage, kind, steps, {"metrics": metrics, **extra})
    _say_done(out, kind, stage, metrics, meta["hash"])


def _first_stage(cfg: DictConfig) -> tuple[nn.Module, str]:
    """The untrained first stage and its kind (kl, vq, identity), checked against ``f=`` and the resolution."""
    ae = instantiate(cfg.first_stage)
    kind = AE_TYPES.get(type(ae))
    if kind is None:
        raise UserError(f"first_stage._target_={cfg.first_stage._target_} is not a first-stage model")
    if _chosen("f") == "1" and kind != "identity":
        raise UserError(f"f=1 means no first stage (pixel space): drop first_stage={_chosen('first_stage')} "
                        "or use first_stage=identity")
    check_resolution(int(cfg.dataset.resolution), ae.downsample_factor)
    return ae, kind


def _inception_weights(report: DictConfig) -> tuple[Path | None, str]:
    """The rFID Inception weights, or None and why (one line instead when ``report.on_missing_weights`` says so)."""
    weights, reason = find_inception_weights(report.inception_weights, "report.inception_weights")
    if weights is None and report.on_missing_weights != "skip":
        raise UserError(reason)
    return weights, reason


def _fit_or_skip(cfg: DictConfig, ae: nn.Module, loss_cfg: DictConfig | None, lpips_skipped: str | None, dataset,
                 out: Path, optimizers: tuple) -> int:
    """The training steps done: none for the identity stage (no loss to train), else :func:`_train`'s."""
    if loss_cfg is None:
        console.print("first_stage=identity (f=1): nothing to train; writing the pixel-space stage")
        return 0
    if lpips_skipped:
        _say_once(lpips_skipped)
    return _train(cfg, ae, instantiate(loss_cfg), dataset, out, optimizers)


def _scaled(ae: nn.Module, dataset, batch_size: int) -> FirstStage:
    """The trained model (CPU, eval mode) with its latent scale, measured on the first training batch."""
    ae = ae.cpu().eval()
    first = torch.stack([item["image"] for item in first_items(dataset, batch_size)])
    return FirstStage(ae, latent_scale(ae, first))


def _report(cfg: DictConfig, stage: FirstStage, out: Path, weights: Path | None, reason: str) -> dict:
    """Reconstruct the first validation images: ``reconstructions.png`` and the metrics (PSNR, SSIM, L1, rFID)."""
    n_val = max(cfg.report.images, cfg.report.grid)
    val = first_items(instantiate(cfg.dataset, split="val", size=n_val), n_val)
    if not val:
        raise UserError("the dataset's val split is empty: the reconstruction report needs validation images")
    images = torch.stack([item["image"] for item in val])
    rec = reconstruct(stage, images)
    k = cfg.report.grid
    save_grid(torch.cat([images[:k], rec[:k]]), out / "reconstructions.png", nrow=k)
    metrics = {f"val_{k}": v for k, v in reconstruction_metrics(images, rec, weights).items()}
    if weights is None:
        metrics["val_rfid_skipped"] = reason
    return metrics


def _save(out: Path, cfg: DictConfig, stage: FirstStage, kind: str, steps: int, extra: dict) -> dict:
    """The model dir: the config as trained, the weights and the meta (scale, steps, ``extra``); its meta."""
    meta = modeldir.first_stage_meta(stage.ae, kind, int(cfg.dataset.resolution), stage.scale_factor, steps, **extra)
    return modeldir.save(out, cfg, {"model": stage.ae.state_dict()}, meta)


def _say_done(out: Path, kind: str, stage: FirstStage, metrics: dict, model_hash: str) -> None:
    """The line summing up the model dir written."""
    rfid = f", rFID {metrics['val_rfid']:.2f}" if "val_rfid" in metrics else ""
    console.print(
        f"first stage {kind} f={stage.downsample_factor} -> {out}  (scale {stage.scale_factor:.4f}, "
        f"val PSNR {metrics['val_psnr']:.2f} dB, SSIM {metrics['val_ssim']:.3f}{rfid}, hash {model_hash})"
    )
