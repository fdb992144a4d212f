"""Generation shared by ``sample`` and ``eval-fid``: conditions for a model, batched sampling with progress."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ldmkit.console import console
from ldmkit.diffusion.samplers import check_sampler
from ldmkit.errors import UserError
from ldmkit.models.conditioners import NoConditioner, take
from ldmkit.models.ldm import LatentDiffusion
from ldmkit.progress import Tracker

PATH_KEYS = ("path", "val_path", "urls", "val_urls", "images", "captions", "segmentations", "instances", "boxes",
             "val_labels", "masks", "classes")  # dataset options that may name files
BANK_SIZE = 256  # validation conditions kept in an LDM model dir (fewer when they would exceed BANK_BYTES)
BANK_BYTES = 32 * 2**20


def absolute_paths(cfg: DictConfig) -> DictConfig:
    """A dataset config whose relative file options (that exist from here) are made absolute, so a model dir
    recording it can be used from any working directory."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute() and "://" not in value:
            if Path(value).exists() or ("{" in value and Path(value.split("{")[0] or ".").parent.is_dir()):
                out[key] = str(Path.cwd() / value)
    return out


def training_source(dataset_cfg: DictConfig) -> DictConfig:
    """The image dataset behind a training ``dataset`` config (the manifest's for latents), paths absolute."""
    from ldmkit.data.access import is_latent_shards
    from ldmkit.data.latent_shards import read_manifest

    cfg = dataset_cfg
    if is_latent_shards(cfg):  # the manifest records the source dataset
        cfg = OmegaConf.create(read_manifest(cfg.path)["dataset"])
    return absolute_paths(cfg)


def source_dataset_cfg(model_dir: Path) -> DictConfig:
    """The image dataset an LDM was trained on (recorded at training; model dirs of older versions: through its
    training config and the latents' manifest)."""
    model_cfg = OmegaConf.load(model_dir / "config.yaml")
    if "source_dataset" in model_cfg:
        return model_cfg.source_dataset
    if "dataset" not in model_cfg:
        raise UserError(f"{model_dir} records no training dataset (an imported model): pass dataset=... "
                        "(the images to compare with and to draw conditions from) or reference=DIR")
    return training_source(model_cfg.dataset)


def reference_values(dataset_cfg: DictConfig, cond, n: int) -> Any:
    """The conditioner's inputs for the first ``n`` samples of the dataset's validation split."""
    from torch.utils.data import default_collate

    from ldmkit.data.access import first_items

    items = first_items(instantiate(dataset_cfg, split="val", size=n), n)
    if len(items) < n:
        raise UserError(f"the dataset's val split has {len(items)} samples, {n} conditions were asked for")
    return cond.values(default_collate(items))


def condition_bank(source: DictConfig, cond) -> Any:
    """Up to BANK_SIZE validation conditions of ``source`` (within BANK_BYTES) to keep in a model dir; None when
    the model is unconditional or the dataset has no validation split."""
    from torch.utils.data import default_collate

    from ldmkit.data.access import first_items

    if isinstance(cond, NoConditioner):
        return None
    try:
        items = first_items(instantiate(source, split="val", size=BANK_SIZE), BANK_SIZE)
    except UserError:
        return None
    if not items:
        return None
    values = cond.values(default_collate(items))
    per_item = sum(t.element_size() * t[:1].numel() for t in _tensors(values))
    return take(values, 0, max(1, min(len(items), BANK_BYTES // max(per_item, 1))))


def _tensors(values: Any) -> list[Tensor]:
    """The tensors among conditioning values (a tensor, a list, or a dict of these)."""
    parts = values.values() if isinstance(values, dict) else [values]
    return [v for v in parts if isinstance(v, Tensor)]


def stored_conditions(ldm: LatentDiffusion, model_dir: Path, n: int) -> Any:
    """The conditions for a model given none (None if unconditional): its model dir's validation conditions (draw
    them with :func:`~ldmkit.models.conditioners.cycled_values`), else (model dirs of older versions) ``n`` of its
    dataset's validation split."""
    from ldmkit import modeldir

    if isinstance(ldm.cond, NoConditioner):
        return None
    path = model_dir / modeldir.CONDITIONS
    if not path.is_file():
        return reference_values(source_dataset_cfg(model_dir), ldm.cond, n)
    return modeldir.load_values(path)


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
    init: Tensor | None = None,
    strength: float = 1.0,
) -> Iterator[Tensor]:
    """Images in [-1, 1] (on CPU) batch by batch for (values, uncond, count) chunks, with progress over images
    (and, on a terminal, sampler steps) named ``label``; the i-th image overall uses seed + i, whatever the
    batching, and starts img2img from the latent ``init[i]`` when given (``strength``: ``LatentDiffusion.sample``)."""
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
                           size=size, uncond_values=negative, callback=on_step, strength=strength,
                           init=None if init is None else init[done:done + count])
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
    init: Tensor | None = None,
    strength: float = 1.0,
) -> Tensor:
    """``n`` images in [-1, 1] (on CPU) for ``values`` (all n at once; None = unconditional) in batches of
    ``batch_size``; sample i uses seed + i. ``size`` is the latent (h, w); ``uncond`` replaces the null
    condition (a negative prompt); ``init`` (n latents) and ``strength`` make it img2img."""
    chunks = ((None if values is None else take(values, a, min(n, a + batch_size)),
               None if uncond is None else take(uncond, a, min(n, a + batch_size)),
               min(n, a + batch_size) - a) for a in range(0, n, batch_size))
    return torch.cat(list(generate_stream(ldm, chunks, n, sampler, guidance, seed, size, label="sample",
                                          init=init, strength=strength)))
