"""Generation shared by ``sample`` and ``eval-fid``: conditions for a model, batched sampling with progress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.progress import Progress
from torch import Tensor

from ldmkit.errors import UserError
from ldmkit.models.conditioners import ClassConditioner, NoConditioner, TextConditioner
from ldmkit.models.ldm import LatentDiffusion
from ldmkit.tasks.common import console


def source_dataset_cfg(model_dir: Path) -> DictConfig:
    """The image dataset an LDM was trained on (through the manifest when it was trained on latents)."""
    from ldmkit.data.latent_shards import read_manifest

    cfg = OmegaConf.load(model_dir / "config.yaml").dataset
    if "path" in cfg:  # latent shards: the manifest records the source dataset
        cfg = OmegaConf.create(read_manifest(cfg.path)["dataset"])
    return cfg


def reference_values(dataset_cfg: DictConfig, cond, n: int) -> Any:
    """The conditioner's inputs for the first ``n`` samples of the dataset's validation split."""
    from torch.utils.data import default_collate

    dataset = instantiate(dataset_cfg, split="val", size=n)
    return cond.values(default_collate([dataset[i] for i in range(n)]))


def parse_label(label: Any, cond: ClassConditioner) -> int:
    """A class id or a class name of the shapes dataset ('red circle') -> class id."""
    from ldmkit.data.shapes import class_name

    names = {class_name(i): i for i in range(cond.num_classes)}
    if isinstance(label, int) or str(label).isdigit():
        if not 0 <= int(label) < cond.num_classes:
            raise UserError(f"label={label} is out of range 0..{cond.num_classes - 1}")
        return int(label)
    if label not in names:
        raise UserError(f"label={label!r} is not a class; use 0..{cond.num_classes - 1} or a name like {next(iter(names))!r}")
    return names[label]


def as_list(value: Any) -> list | None:
    """None, a scalar, or a (Hydra) list -> None or a plain list."""
    if value is None:
        return None
    return list(value) if isinstance(value, list | tuple | ListConfig) else [value]


def conditions(ldm: LatentDiffusion, model_dir: Path, n: int, prompt: Any, label: Any) -> Any:
    """Conditioning values: ``n`` per prompt=/label= (one or a list), else ``n`` validation conditions."""
    cond = ldm.cond
    if isinstance(cond, NoConditioner):
        if prompt is not None or label is not None:
            raise UserError("this model is unconditional: drop prompt=/label=")
        return None
    if isinstance(cond, TextConditioner) and label is not None:
        raise UserError("this model is text-conditional: use prompt='...' instead of label=")
    if isinstance(cond, ClassConditioner) and prompt is not None:
        raise UserError("this model is class-conditional: use label=ID or label='red circle' instead of prompt=")
    if prompt is not None:
        return [str(p) for p in as_list(prompt) for _ in range(n)]
    if label is not None:
        return torch.tensor([parse_label(lb, cond) for lb in as_list(label) for _ in range(n)], dtype=torch.long)
    return reference_values(source_dataset_cfg(model_dir), cond, n)


def generate(
    ldm: LatentDiffusion,
    values: Any,
    n: int,
    sampler: Any,
    guidance: float,
    seed: int,
    batch_size: int,
) -> Tensor:
    """``n`` images in [-1, 1] (on CPU), sampled in batches with a rich progress bar; sample i uses seed + i."""
    images = []
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("sampling", total=n)
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            chunk = None if values is None else values[start:stop]
            generators = [torch.Generator().manual_seed(seed + i) for i in range(start, stop)]  # seed + i per sample
            x = ldm.sample(chunk, n=stop - start, sampler=sampler, guidance=guidance, generator=generators,
                           callback=lambda info, k=stop - start: bar.advance(task, k / info["total"]))
            images.append(x.cpu())
    return torch.cat(images)
