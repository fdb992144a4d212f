"""``ldmkit import-compvis``: a CompVis first-stage checkpoint + its YAML -> an ldmkit first-stage model dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from ldmkit import modeldir
from ldmkit.compat import compvis
from ldmkit.console import console
from ldmkit.tasks.common import run_dir
from ldmkit.tasks.inputs import use_local_files


def default_dataset() -> DictConfig:
    """The shipped ``dataset=shapes`` config (for measuring a KL scale outside Hydra)."""
    from ldmkit.runner import conf_dir

    return OmegaConf.load(Path(conf_dir()) / "dataset" / "shapes.yaml")


def measure_scale(ae: nn.Module, dataset: Any, batch_size: int) -> float:
    """1/std of z on the first batch of the dataset (CompVis ``scale_by_std``; VQ gives 1.0)."""
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from ldmkit.models.first_stage import latent_scale

    images = next(iter(DataLoader(instantiate(dataset), batch_size=batch_size)))["image"]
    return latent_scale(ae, images)


def choose_scale(
    override: float | None,
    spec: compvis.FirstStageSpec,
    state_dict: dict[str, Tensor],
    measure: Any,
) -> tuple[float, str]:
    """(scale, source): override, the checkpoint's buffer, the YAML, VQ 1.0, else ``measure()`` (KL)."""
    if override is not None:
        return float(override), "override"
    if (value := compvis.checkpoint_scale(state_dict)) is not None:
        return value, "checkpoint"
    if spec.scale_factor is not None:
        return spec.scale_factor, spec.scale_source
    if spec.type == "vq":
        return 1.0, "vq"
    return float(measure()), "measured"


def import_first_stage(
    config: str | Path,
    ckpt: str | Path,
    out: str | Path,
    *,
    scale_factor: float | None = None,
    dataset: Any = None,
    batch_size: int = 16,
    settings: Any = None,
) -> dict:
    """Convert and write the model dir ``out``; returns its meta. ``settings`` is saved alongside ``first_stage``."""
    return write_first_stage(compvis.load_yaml(config), *compvis.read_checkpoint(ckpt), config, ckpt, out,
                             scale_factor=scale_factor, dataset=dataset, batch_size=batch_size, settings=settings)


def write_first_stage(
    yaml_cfg: dict,
    state_dict: dict[str, Tensor],
    info: dict,
    config: str | Path,
    ckpt: str | Path,
    out: str | Path,
    *,
    scale_factor: float | None = None,
    dataset: Any = None,
    batch_size: int = 16,
    settings: Any = None,
) -> dict:
    """The first stage of an already-read CompVis checkpoint -> a first-stage model dir; returns its meta."""
    spec = compvis.first_stage_spec(yaml_cfg, str(config))
    ae = compvis.build_first_stage(spec, state_dict, str(ckpt))
    dataset = default_dataset() if dataset is None else dataset
    scale, scale_source = choose_scale(scale_factor, spec, state_dict, lambda: measure_scale(ae, dataset, batch_size))
    cfg = OmegaConf.create({**_plain(settings), "first_stage": spec.config})
    source = {"target": spec.source_target, "config": str(Path(config).resolve()), "ckpt": str(Path(ckpt).resolve()),
              "sha256": modeldir.file_hash(Path(ckpt))}
    meta = modeldir.first_stage_meta(ae, spec.type, int(spec.config["resolution"]), scale, info.get("global_step", 0),
                                     scale_source=scale_source, metrics={}, source=source)
    return modeldir.save(Path(out), cfg, {"model": ae.state_dict()}, meta)


def _plain(settings: Any) -> dict:
    """The import's own settings as plain containers (saved beside the model's nodes in config.yaml)."""
    base = OmegaConf.to_container(settings, resolve=True) if isinstance(settings, DictConfig) else settings
    return dict(base or {})


def _with_cond_files(cond: dict, settings: dict) -> dict:
    """The conditioner node with the local files ``cond.vocab`` / ``cond.classes`` the user gave (stored absolute)."""
    given = settings.get("cond") or {}
    files = {k: str(Path(v).expanduser().resolve()) for k, v in given.items() if v is not None and k in cond}
    return {**cond, **files}


def import_ldm(config: str | Path, ckpt: str | Path, out: str | Path, *, scale_factor: float | None = None,
               settings: Any = None) -> dict:
    """A whole CompVis LatentDiffusion -> an ldmkit LDM model dir (first stage in ``out/first_stage``)."""
    from hydra.utils import instantiate

    from ldmkit.compat import compvis_ldm

    yaml_cfg = compvis.load_yaml(config)
    state_dict, info = compvis.read_checkpoint(ckpt)
    spec = compvis_ldm.ldm_spec(yaml_cfg, state_dict, str(config))
    out, base = Path(out), {k: v for k, v in _plain(settings).items() if k not in ("dataset", "cond")}
    cond_node = _with_cond_files(spec.cond, _plain(settings))
    cfg = OmegaConf.create({**base, "unet": spec.unet, "cond": cond_node, "diffusion": spec.diffusion})
    cond = instantiate(cfg.cond)
    use_local_files(cond, _plain(settings).get("cond"))  # before anything is written: a bad file is one line
    compvis.load_strict(cond, compvis_ldm.cond_state(state_dict, spec.cond, str(ckpt)), str(ckpt),
                        compvis_ldm.COND_PREFIX)
    fs_meta = write_first_stage(yaml_cfg, state_dict, info, config, ckpt, out / "first_stage",
                                scale_factor=scale_factor, settings=base)
    ldm = modeldir.build_ldm(cfg, modeldir.load(out / "first_stage"), spec.latent_shape, spec.prediction, cond=cond)
    compvis.load_strict(ldm.unet, compvis.subdict(state_dict, compvis_ldm.UNET_PREFIX), str(ckpt),
                        compvis_ldm.UNET_PREFIX)
    compvis_ldm.check_schedule(state_dict, ldm.schedule, str(ckpt))
    weights = {"model": ldm.trainable().state_dict()}
    ema = compvis_ldm.ema_state(state_dict, [n for n, _ in ldm.unet.named_parameters()])
    if ema is not None:
        weights["ema"] = {**weights["model"], **{f"unet.{k}": v for k, v in ema.items()}}
    meta = modeldir.ldm_meta(ldm, out / "first_stage", fs_meta, info.get("global_step", 0), ema=ema is not None,
                             source={**fs_meta["source"], "target": compvis_ldm.LDM_TARGET})
    return modeldir.save(out, cfg, weights, meta)


def run(cfg: DictConfig) -> None:
    """Import ``ckpt=`` described by ``config=`` into the run dir (``out=``): a whole LDM or a first stage."""
    from ldmkit.compat.compvis_ldm import LDM_TARGET

    out = run_dir()
    target = (compvis.load_yaml(cfg.config).get("model") or {}).get("target")
    if target == LDM_TARGET and cfg.part == "all":
        meta = import_ldm(cfg.config, cfg.ckpt, out, scale_factor=cfg.scale_factor, settings=cfg)
        console.print(f"LDM ({meta['task']}: {meta['cond']}, {meta['prediction']}-prediction, "
                      f"EMA {'yes' if meta['ema'] else 'no'}) "
                      f"imported -> {out}  (first stage f={meta['f']}, scale {meta['scale_factor']:.5f})")
        return
    meta = import_first_stage(cfg.config, cfg.ckpt, out, scale_factor=cfg.scale_factor, dataset=cfg.dataset,
                              batch_size=cfg.scale_batch, settings=cfg)
    console.print(f"first stage {meta['type']} f={meta['f']} imported -> {out}  "
                  f"(scale {meta['scale_factor']:.5f} from {meta['scale_source']}, hash {meta['hash']})")
