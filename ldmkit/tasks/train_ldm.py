"""``ldmkit train-ldm``: train a conditional diffusion UNet in a first stage's latent space."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, open_dict

from ldmkit import modeldir
from ldmkit.console import console
from ldmkit.data.access import first_item, is_latent_shards, write_skips
from ldmkit.data.latent_shards import read_manifest
from ldmkit.diffusion.objectives import check_timesteps
from ldmkit.errors import UserError
from ldmkit.speed import Speed, prepare, set_threads, training_precision
from ldmkit.tasks.ae_choice import resolve_ae
from ldmkit.tasks.common import run_dir
from ldmkit.tasks.generation import condition_bank, training_source
from ldmkit.training import optim

if TYPE_CHECKING:
    from ldmkit.training.ldm_module import LDMModule


def _latent_shape(cfg: DictConfig, ae_meta: dict) -> list[int]:
    """The latent shape the UNet trains on; with dataset=latents the shards must come from ae=."""
    if not is_latent_shards(cfg.dataset):
        f, res = ae_meta["f"], cfg.dataset.resolution
        if res % f:
            raise UserError(f"dataset.resolution={res} is not divisible by the first stage's f={f}")
        shape = [ae_meta["latent_channels"], res // f, res // f]
        _check_unet_multiple(cfg, shape, f, f"dataset.resolution={res}", "set dataset.resolution to")
        return shape
    manifest = read_manifest(cfg.dataset.path)
    if manifest.get("status", "complete") != "complete":
        raise UserError(f"dataset.path={cfg.dataset.path}: the encoding is incomplete ({len(manifest['shards'])} of "
                        f"{manifest['plan']['units']} shards): re-run encode-dataset with the same arguments to finish")
    if manifest["first_stage"]["hash"] != ae_meta["hash"]:
        raise UserError(
            f"dataset.path={cfg.dataset.path} was encoded with first stage {manifest['first_stage']['hash']} "
            f"({manifest['first_stage']['path']}), but ae={cfg.ae} is {ae_meta['hash']}: pass that ae= "
            "or re-encode the dataset with this one"
        )
    shape = manifest["latent_shape"]
    _check_unet_multiple(cfg, shape, ae_meta["f"], f"dataset.path={cfg.dataset.path} (its latents)", "re-encode at")
    return shape


def _check_unet_multiple(cfg: DictConfig, shape: list[int], f: int, source: str, fix: str) -> None:
    """The UNet halves the latent len(unet.channel_mult) - 1 times: both sides must divide by 2^(levels - 1)."""
    mult = list(cfg.unet.get("channel_mult") or [1])
    m = 2 ** (len(mult) - 1)
    h, w = shape[-2:]
    if h % m or w % m:
        step = f * m
        near = " or ".join(str(r) for r in (h * f // step * step, (h * f // step + 1) * step) if r > 0)
        raise UserError(f"{source}: the {h}x{w} latent (f={f}) is not divisible by {m} = 2^(UNet levels - 1) "
                        f"for unet.channel_mult={mult}; {fix} a multiple of f*{m} = {step} px (e.g. {near}), "
                        "or use fewer UNet levels")


def _fill_unet(cfg: DictConfig, channels: int, concat: int, vector: int = 0) -> None:
    """Set the UNet's in/out channels from the first stage and the concat conditioning, and its vector input from
    the conditioner's global vector (or check the user's)."""
    with open_dict(cfg):
        for key, want in (("in_channels", channels + concat), ("out_channels", channels)):
            if cfg.unet[key] is None:
                cfg.unet[key] = want
            elif cfg.unet[key] != want:
                raise UserError(f"unet.{key}={cfg.unet[key]} but the first stage has {channels} latent channels "
                                f"and the conditioner concatenates {concat}: expected {want}")
        have = cfg.unet.get("adm_in_channels")
        if have is None and vector:
            cfg.unet.adm_in_channels = vector
        elif (have or 0) != vector:
            raise UserError(f"unet.adm_in_channels={have} but the conditioner's global vector has {vector} features "
                            f"(cond.pooled): expected {vector or 'null'}")


def _fill_cond_channels(cfg: DictConfig, latent_channels: int, dataset: object | None = None) -> None:
    """A concat conditioner's channels follow their source, as the UNet's do: inpaint's are the latent channels of
    ae= (null = take them), sr's the channels of the dataset's low-res images; a contradicting value is one line."""
    target = str(cfg.cond.get("_target_", ""))
    if target.endswith(".InpaintConditioner"):
        _fill_cond_key(cfg, "latent_channels", latent_channels, f"the first stage has {latent_channels} latent channels")
    elif target.endswith(".SRConditioner") and dataset is not None:
        lowres = first_item(dataset).get(cfg.cond.key)
        if lowres is not None and len(getattr(lowres, "shape", ())) == 3:
            n = int(lowres.shape[0])
            _fill_cond_key(cfg, "channels", n, f"the dataset's low-res images ({cfg.cond.key}) have {n} channels")


def _fill_cond_key(cfg: DictConfig, key: str, want: int, why: str) -> None:
    """Set ``cond.<key>`` to ``want`` when null, else check it: one line naming the value to use."""
    with open_dict(cfg):
        if cfg.cond.get(key) is None:
            cfg.cond[key] = want
        elif cfg.cond[key] != want:
            raise UserError(f"cond.{key}={cfg.cond[key]} but {why}: set cond.{key}={want}")


def _fill_upscale(cfg: DictConfig) -> None:
    """A super-resolution conditioner records the dataset's sr_factor, so sampling needs no dataset."""
    if "upscale" not in cfg.cond or cfg.cond.upscale is not None:
        return
    factor = cfg.source_dataset.get("sr_factor", 4)
    if factor is None:
        raise UserError("cond=sr trains on low-res copies: set dataset.sr_factor (the paper's LDM-SR: 4)")
    with open_dict(cfg):
        cfg.cond.upscale = int(factor)


def run(cfg: DictConfig) -> None:
    """Train and write the LDM model dir (config, model/ema weights, meta, first_stage/ copy)."""
    import pytorch_lightning as pl

    from ldmkit.training.ldm_module import LDMModule
    from ldmkit.training.pictures import check_options
    from ldmkit.training.trainer import extra_loggers

    options = _module_options(cfg)
    lr = effective_lr(cfg)
    optimizer, lr_schedule = optim.from_config(cfg.optim, cfg.get("lr_schedule"), lr=lr)
    out = run_dir()
    speed = _speed(cfg)
    pl.seed_everything(cfg.seed, verbose=False)
    ae_dir, ae_meta, latent_shape = _first_stage(cfg, out)
    check_options(cfg.images.every_n_steps, cfg.images.count)
    loggers = extra_loggers(instantiate(cfg.logger), out)
    dataset, val = _datasets(cfg)
    cond, bank = _conditioner(cfg, ae_meta["latent_channels"], dataset)
    ldm = modeldir.build_ldm(cfg, modeldir.load(ae_dir), latent_shape, cfg.objective.prediction, cond=cond)
    module = LDMModule(ldm, optimizer, lr_schedule, **options)
    prepare(ldm.unet, speed)  # after the EMA copy was made: only the trained UNet is compiled
    write = _ModelDirWriter(cfg, module, ae_dir, ae_meta, bank, lr)
    trainer, throughput = _fit(cfg, write, dataset, val, out, loggers)
    skipped = write_skips(dataset, out)
    if trainer.is_global_zero:
        _write_final(write, out, trainer.global_step, throughput.samples_per_s, skipped)


def _module_options(cfg: DictConfig) -> dict[str, Any]:
    """LDMModule's options from ``objective:`` and ``ema:``, checked before anything is built."""
    obj, ema = cfg.objective, cfg.ema
    check_timesteps(obj.timesteps, obj.timestep_std)
    if not 0 < ema.decay <= 1:
        raise UserError(f"ema.decay={ema.decay} must be in (0, 1]")
    if not ema.warmup > 1:
        raise UserError(f"ema.warmup={ema.warmup} must be > 1 (CompVis: 10)")
    return {"ema_decay": ema.decay, "ema_warmup": ema.warmup, "min_snr_gamma": obj.min_snr_gamma,
            "timesteps": (obj.timesteps, obj.timestep_mean, obj.timestep_std)}


def _speed(cfg: DictConfig) -> Speed:
    """The ``speed.*`` switches, with the CPU threads and the training precision applied now."""
    speed = Speed.from_config(cfg.speed)
    set_threads(speed.threads)
    with open_dict(cfg):
        cfg.trainer.precision = training_precision(cfg.trainer.precision, speed)
    return speed


def _first_stage(cfg: DictConfig, out: Path) -> tuple[Path, dict, list[int]]:
    """The first-stage model dir (kept in ``cfg.ae`` as an absolute path), its meta and the latent shape."""
    ae_dir = resolve_ae(cfg, out)
    ae_meta = modeldir.read_json(ae_dir / "meta.json")
    latent_shape = _latent_shape(cfg, ae_meta)
    with open_dict(cfg):
        cfg.ae = str(ae_dir.resolve())
    return ae_dir, ae_meta, latent_shape


def _datasets(cfg: DictConfig) -> tuple[Any, Any]:
    """The training dataset and the sample grids' validation split (the source images kept in ``cfg``)."""
    dataset = instantiate(cfg.dataset)
    with open_dict(cfg):  # sampling and eval-fid find the images here, from any working directory
        cfg.source_dataset = training_source(cfg.dataset)
    return dataset, _val_split(cfg)


def _conditioner(cfg: DictConfig, latent_channels: int, dataset: Any) -> tuple[Any, Any]:
    """The conditioner (its channels and the UNet's filled in, its inputs checked on a sample) and the bank of
    conditions that a model dir keeps for sampling without a dataset."""
    _fill_upscale(cfg)
    _fill_cond_channels(cfg, latent_channels, dataset)
    cond = instantiate(cfg.cond)
    _check_fields(cond, dataset)
    bank = condition_bank(cfg.source_dataset, cond)
    _fill_unet(cfg, latent_channels, cond.concat_channels, cond.vector_dim)
    return cond, bank


@dataclass
class _ModelDirWriter:
    """Writes LDM model dirs of the weights being trained: the final one and the snapshots."""

    cfg: DictConfig
    module: LDMModule
    ae_dir: Path
    ae_meta: dict
    bank: Any
    lr: float

    def __call__(self, where: Path, steps: int, extra: dict | None = None) -> dict:
        """A model dir (config, weights, EMA, meta, first_stage/ copy) of the current weights; its meta."""
        modeldir.copy(self.ae_dir, where / "first_stage")
        if self.bank is not None:  # sample / eval-fid given no conditions draw these: the model dir is self-contained
            modeldir.save_values(where / modeldir.CONDITIONS, self.bank)
        ldm = self.module.ldm
        weights = {"model": ldm.trainable().state_dict(), "ema": self.module.ema.module.state_dict()}
        meta = modeldir.ldm_meta(ldm, self.ae_dir, self.ae_meta, steps, lr=self.lr, **(extra or {}))
        return modeldir.save(where, self.cfg, weights, meta)


def _fit(cfg: DictConfig, write: _ModelDirWriter, dataset: Any, val: Any, out: Path, loggers: list) -> tuple:
    """Train with Lightning (throughput, snapshots, sample grids, loss plot); the trainer and the throughput."""
    from ldmkit.training.callbacks import Snapshots, Throughput
    from ldmkit.training.loader import make_loader
    from ldmkit.training.pictures import LossPlot, SampleGrids
    from ldmkit.training.trainer import fit

    loader = make_loader(dataset, cfg.loader.batch_size, cfg.loader.num_workers, cfg.seed)
    throughput = Throughput(cfg.loader.batch_size)
    snapshots = Snapshots(list(cfg.snapshots or []), lambda step: write(out / "snapshots" / f"step_{step:07d}", step))
    grids = SampleGrids(out, val, cfg.images.every_n_steps, cfg.images.count, cfg.images.steps, cfg.seed)
    trainer = fit(cfg, write.module, loader, out, callbacks=[throughput, snapshots, grids, LossPlot(out)],
                  loggers=loggers, name="train-ldm")
    return trainer, throughput


def _write_final(write: _ModelDirWriter, out: Path, steps: int, samples_per_s: float | None,
                 skipped: dict | None) -> None:
    """The run's own model dir (training speed and skipped samples in its meta) and the line saying so."""
    speed = {"train_samples_per_s": round(samples_per_s, 3)} if samples_per_s else {}
    meta = write(out, steps, {**speed, **({"skipped_samples": skipped["skipped"]} if skipped else {})})
    console.print(f"LDM ({type(write.module.ldm.cond).__name__}, {steps} steps) -> {out}  (hash {meta['hash']})")


def _val_split(cfg: DictConfig):
    """The first ``images.count`` validation samples (of the source images for dataset=latents), whose conditions
    the sample grids use; None (null conditions, one line) when there is no such split."""
    try:
        return instantiate(cfg.source_dataset, split="val", size=cfg.images.count)
    except UserError as exc:
        console.print(f"sample grids use the null condition: no validation split to take conditions from ({exc})")
        return None


def _check_fields(cond, dataset) -> None:
    """The conditioner must find its inputs in a dataset sample: else one line naming the missing field."""
    sample = first_item(dataset)
    try:
        cond.values(sample)
    except KeyError as exc:
        raise UserError(f"cond needs the dataset field {exc.args[0]!r}; the dataset has {sorted(sample)}") from None
    if getattr(cond, "cache_field", None) in sample:
        console.print(f"text-encoder states: cached in the shards ({cond.cache_field}), not recomputed")


def effective_lr(cfg: DictConfig) -> float:
    """``optim.lr``, or with ``optim.scale_lr`` lr × batch × devices × nodes × accumulation (CompVis)."""
    if not cfg.optim.scale_lr:
        return float(cfg.optim.lr)
    devices = cfg.trainer.get("devices", 1)
    n_dev = len(devices) if isinstance(devices, ListConfig | list) else (int(devices) if str(devices).isdigit() else 1)
    accumulate = cfg.trainer.get("accumulate_grad_batches", 1)
    factor = cfg.loader.batch_size * n_dev * cfg.trainer.get("num_nodes", 1) * accumulate
    return float(cfg.optim.lr) * factor

