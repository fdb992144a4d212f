"""Which first stage ``train-ldm`` trains on when ``first_stage=`` (or ``f=``) names a preset instead of ``ae=DIR``.

With ``ae=DIR`` the dir's autoencoder must be the chosen preset (else one line naming the first difference);
with ``ae=latest`` the newest train-ae model dir of that preset and the dataset's resolution is used; when there
is none, ``train-ae`` trains it first into ``<out>/first_stage/`` (as the f-study does), with the job's
dataset, first-stage and f choices and overrides, resolution and seed (plus ``ae_args``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ldmkit import modeldir
from ldmkit.console import console
from ldmkit.errors import UserError

FORWARDED = ("dataset", "first_stage", "f", "seed")  # the overrides train-ae gets from a train-ldm job
IGNORED = ("resolution",)  # follows the dataset; compared through meta.json instead


def chosen(cfg: DictConfig) -> bool:
    """Whether the job names a first-stage preset (``first_stage=`` or ``f=``) rather than only ``ae=``."""
    return OmegaConf.select(cfg, "first_stage") is not None


def default_preset() -> str:
    """train-ae's default first_stage option (what an ``f=`` alone builds on)."""
    from ldmkit.runner import conf_dir

    defaults = OmegaConf.load(Path(conf_dir()) / "train_ae.yaml").defaults
    return next(str(d["first_stage"]) for d in defaults if isinstance(d, DictConfig) and "first_stage" in d)


def wanted_node(cfg: DictConfig) -> dict[str, Any]:
    """The chosen first stage's config node (an ``f=`` alone is applied to train-ae's default preset)."""
    from ldmkit.runner import conf_dir

    node = OmegaConf.to_container(cfg.first_stage, resolve=True)
    if "_target_" not in node:
        base = OmegaConf.load(Path(conf_dir()) / "first_stage" / f"{default_preset()}.yaml")
        node = OmegaConf.to_container(OmegaConf.merge(base, node), resolve=False)
    return {k: v for k, v in node.items() if k not in IGNORED}


def difference(wanted: dict[str, Any], ae_dir: Path) -> str | None:
    """The first key where the model dir's first stage differs from ``wanted`` (None: the same)."""
    have = OmegaConf.to_container(OmegaConf.load(ae_dir / "config.yaml").first_stage, resolve=False)
    for key, value in wanted.items():
        if have.get(key) != value:
            return f"first_stage.{key}={have.get(key)!r}, the choice has {value!r}"
    return None


def matching(wanted: dict[str, Any], resolution: int) -> list[Path]:
    """train-ae model dirs of this preset and resolution, oldest first."""
    root = Path("runs") / "train-ae"
    found = sorted(root.glob("**/meta.json"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    return [m.parent for m in found if modeldir.read_json(m).get("kind") == "first_stage"
            and modeldir.read_json(m).get("resolution") == resolution and (m.parent / "config.yaml").is_file()
            and difference(wanted, m.parent) is None]


def forwarded(cfg: DictConfig) -> list[str]:
    """What train-ae needs to build this job's first stage on its data: the chosen dataset / first_stage / f
    options (also when an experiment chose them), their dotted overrides, the resolution, the seed, ``ae_args``."""
    from hydra.core.hydra_config import HydraConfig

    from ldmkit.cli_args import quote_paths

    hydra = HydraConfig.get()
    choices = hydra.runtime.choices
    args = [f"{group}={choices[group]}" for group in ("dataset", "first_stage", "f")
            if choices.get(group) not in (None, "null")]
    dotted = [o for o in hydra.overrides.task if "." in o.split("=")[0] and
              o.lstrip("+~").split("=")[0].split(".")[0] in FORWARDED]
    extra = [f"dataset.resolution={cfg.dataset.resolution}", f"seed={cfg.seed}"]
    return quote_paths([*args, *dotted, *extra, *(str(a) for a in cfg.get("ae_args") or [])])


def train_first(cfg: DictConfig, out: Path) -> Path:
    """Run ``ldmkit train-ae`` with this job's first-stage and data overrides into ``<out>/first_stage``."""
    target = out / "first_stage"
    log = out / "logs" / "train-ae.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"no train-ae model dir of this first stage yet: training it first -> {target} (log: {log})")
    with open(log, "w") as sink:
        proc = subprocess.run([sys.executable, "-m", "ldmkit.cli", "train-ae", *forwarded(cfg), f"out={target}"],
                              stdout=sink, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0 or not (target / "meta.json").is_file():
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        raise UserError(f"train-ae for first_stage= failed (exit {proc.returncode}): "
                        f"{lines[-1] if lines else 'no output'} (log: {log})")
    return target


def resolve_ae(cfg: DictConfig, out: Path) -> Path:
    """The first-stage model dir this train-ldm job uses (``ae=``, checked against ``first_stage=`` if given)."""
    if not chosen(cfg):
        return modeldir.resolve(cfg.ae, "first_stage", "ae")
    wanted = wanted_node(cfg)
    if "resolution" not in cfg.dataset and cfg.ae in (None, "", "latest"):
        raise UserError("first_stage= with latent shards: pass ae= (the first stage the shards were encoded with)")
    resolution = int(cfg.dataset.resolution) if "resolution" in cfg.dataset else None
    if cfg.ae not in (None, "", "latest"):
        ae_dir = modeldir.resolve(cfg.ae, "first_stage", "ae")
        diff = difference(wanted, ae_dir)
        if diff is not None:
            raise UserError(f"ae={cfg.ae} is not the first_stage you chose ({diff}): drop one of ae= / first_stage=")
        return ae_dir
    found = matching(wanted, resolution)
    if found:
        console.print(f"first stage: {found[-1]} (the newest train-ae dir of this preset at {resolution} px)")
        return found[-1]
    return train_first(cfg, out)
