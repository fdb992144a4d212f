"""Generation shared by ``sample`` and ``eval-fid``: conditions for a model, batched sampling with progress."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ldmkit.diffusion.samplers import check_sampler
from ldmkit.errors import UserError
from ldmkit.models.conditioners import NoConditioner, take
from ldmkit.models.ldm import LatentDiffusion
from ldmkit.progress import Tracker
from ldmkit.tasks.common import console


def source_dataset_cfg(model_dir: Path) -> DictConfig:
    """The image dataset an LDM was trained on (through the manifest when it was trained on latents)."""
    from ldmkit.data.access import is_latent_shards
    from ldmkit.data.latent_shards import read_manifest

    model_cfg = OmegaConf.load(model_dir / "config.yaml")
    if "dataset" not in model_cfg:
        raise UserError(f"{model_dir} records no training dataset (an imported model): pass dataset=... "
                        "(the images to compare with and to draw conditions from) or reference=DIR")
    cfg = model_cfg.dataset
    if is_latent_shards(cfg):  # the manifest records the source dataset
        cfg = OmegaConf.create(read_manifest(cfg.path)["dataset"])
    return cfg


def reference_values(dataset_cfg: DictConfig, cond, n: int) -> Any:
    """The conditioner's inputs for the first ``n`` samples of the dataset's validation split."""
    from torch.utils.data import default_collate

    from ldmkit.data.access import first_items

    items = first_items(instantiate(dataset_cfg, split="val", size=n), n)
    if len(items) < n:
        raise UserError(f"the dataset's val split has {len(items)} samples, {n} conditions were asked for")
    return cond.values(default_collate(items))


def reference_conditions(ldm: LatentDiffusion, model_dir: Path, n: int) -> Any:
    """``n`` conditions drawn from the validation split of the model's dataset (None if unconditional)."""
    if isinstance(ldm.cond, NoConditioner):
        return None
    return reference_values(source_dataset_cfg(model_dir), ldm.cond, n)


MAX_GUIDANCE = 100.0  # classifier-free guidance scales beyond this only saturate the images


def check_guidance(value: Any, option: str = "guidance") -> None:
    """A guidance scale must be a finite number in [0, MAX_GUIDANCE] (0 = unconditional, 1 = no guidance)."""
    if value is None:
        return
    try:
        scale = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{option}={value!r}: the classifier-free guidance scale must be a number") from None
    if isinstance(value, bool) or not 0 <= scale <= MAX_GUIDANCE:  # NaN fails both comparisons
        raise UserError(f"{option}={value}: the classifier-free guidance scale must be in [0, {MAX_GUIDANCE:g}] "
                        "(1 = no guidance, 0 = unconditional)")


def generate_stream(
    ldm: LatentDiffusion,
    chunks: Iterable[tuple[Any, Any, int]],
    total: int,
    sampler: Any,
    guidance: float,
    seed: int,
    size: tuple[int, int] | None = None,
    label: str = "sampling",
) -> Iterator[Tensor]:
    """Images in [-1, 1] (on CPU) batch by batch for (values, uncond, count) chunks, with progress over images
    (and, on a terminal, sampler steps) named ``label``; the i-th image overall uses seed + i, whatever the
    batching."""
    check_sampler(sampler, ldm.schedule.num_timesteps)  # before the progress bar: a bad option is one line
    check_guidance(guidance)
    if float(guidance) != 1.0:
        try:
            ldm.cond.null(1)  # guidance needs a null condition the model was trained with
        except ValueError as exc:
            raise UserError(f"guidance={float(guidance):g}: {exc}") from None
    done = 0
    with Tracker(console, transient=True) as tracker:
        images = tracker.add(label, total=total, unit="img")
        steps = tracker.add("steps", plain=False)

        def on_step(info: dict) -> None:
            """Sampler step ``info["i"]`` of the current batch is done."""
            tracker.update(steps, completed=info["i"] + 1, total=info["total"])
            tracker.update(images, info=f"batch step {info['i'] + 1}/{info['total']}")

        for values, negative, count in chunks:
            generators = [torch.Generator().manual_seed(seed + i) for i in range(done, done + count)]
            tracker.reset(steps)
            x = ldm.sample(values, n=count, sampler=sampler, guidance=guidance, generator=generators,
                           size=size, uncond_values=negative, callback=on_step)
            done += count
            tracker.update(images, advance=count, info="")
            yield x.cpu()


def generate(
    ldm: LatentDiffusion,
    values: Any,
    n: int,
    sampler: Any,
    guidance: float,
    seed: int,
    batch_size: int,
    size: tuple[int, int] | None = None,
    uncond: Any = None,
) -> Tensor:
    """``n`` images in [-1, 1] (on CPU) for ``values`` (all n at once; None = unconditional) in batches of
    ``batch_size``; sample i uses seed + i. ``size`` is the latent (h, w); ``uncond`` replaces the null
    condition (a negative prompt)."""
    chunks = ((None if values is None else take(values, a, min(n, a + batch_size)),
               None if uncond is None else take(uncond, a, min(n, a + batch_size)),
               min(n, a + batch_size) - a) for a in range(0, n, batch_size))
    return torch.cat(list(generate_stream(ldm, chunks, n, sampler, guidance, seed, size, label="sample")))
