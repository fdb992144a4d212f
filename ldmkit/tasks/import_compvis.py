"""``ldmkit import-compvis``: a CompVis first-stage checkpoint + its YAML -> an ldmkit first-stage model dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from ldmkit import modeldir
from ldmkit.compat import compvis
from ldmkit.tasks.common import console, run_dir


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
    spec = compvis.first_stage_spec(compvis.load_yaml(config), str(config))
    state_dict, info = compvis.read_checkpoint(ckpt)
    ae = compvis.build_first_stage(spec, state_dict, str(ckpt))
    dataset = default_dataset() if dataset is None else dataset
    scale, scale_source = choose_scale(scale_factor, spec, state_dict, lambda: measure_scale(ae, dataset, batch_size))
    base = OmegaConf.to_container(settings, resolve=True) if isinstance(settings, DictConfig) else settings
    cfg = OmegaConf.create({**(base or {}), "first_stage": spec.config})
    f, res = ae.downsample_factor, int(spec.config["resolution"])
    return modeldir.save(Path(out), cfg, {"model": ae.state_dict()}, {
        "kind": "first_stage",
        "type": spec.type,
        "f": f,
        "latent_channels": ae.latent_channels,
        "resolution": res,
        "latent_shape": [ae.latent_channels, res // f, res // f],
        "scale_factor": scale,
        "scale_source": scale_source,
        "steps": info.get("global_step", 0),
        "metrics": {},
        "source": {
            "target": spec.source_target,
            "config": str(Path(config).resolve()),
            "ckpt": str(Path(ckpt).resolve()),
            "sha256": modeldir.file_hash(Path(ckpt)),
        },
    })


def run(cfg: DictConfig) -> None:
    """Import ``ckpt=`` described by ``config=`` into the run dir (``out=``)."""
    out = run_dir()
    meta = import_first_stage(cfg.config, cfg.ckpt, out, scale_factor=cfg.scale_factor, dataset=cfg.dataset,
                              batch_size=cfg.scale_batch, settings=cfg)
    console.print(f"first stage {meta['type']} f={meta['f']} imported -> {out}  "
                  f"(scale {meta['scale_factor']:.5f} from {meta['scale_source']}, hash {meta['hash']})")
