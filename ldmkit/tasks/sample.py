"""``ldmkit sample``: images from an LDM model dir, one PNG each plus grid.png and samples.json."""

from __future__ import annotations

import math

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from ldmkit import modeldir
from ldmkit.errors import UserError
from ldmkit.tasks.common import console, device, run_dir, save_grid, save_png
from ldmkit.tasks.generation import as_list, conditions, generate


def run(cfg: DictConfig) -> None:
    """Sample ``n`` images and write them with the conditions that produced them."""
    if cfg.n < 1:
        raise UserError(f"n={cfg.n}: need at least one sample")
    out = run_dir()
    ckpt = modeldir.resolve(cfg.ckpt, "ldm", "ckpt")
    ldm = modeldir.load(ckpt, use_ema=cfg.use_ema).to(device())
    values = conditions(ldm, ckpt, cfg.n, cfg.prompt, cfg.label)
    total = cfg.n if values is None else len(values)
    images = generate(ldm, values, total, instantiate(cfg.sampler), cfg.guidance, cfg.seed, cfg.batch_size)
    for i, image in enumerate(images):
        save_png(image, out / f"{i:06d}.png")
    several = len(as_list(cfg.prompt if cfg.prompt is not None else cfg.label) or []) > 1
    save_grid(images, out / "grid.png", nrow=cfg.n if several else max(1, math.ceil(math.sqrt(total))))
    listed = [None] * total if values is None else [v.tolist() if isinstance(v, Tensor) else v for v in values]
    modeldir.write_json(out / "samples.json", {
        "ckpt": str(ckpt.resolve()),
        "seed": cfg.seed,
        "guidance": cfg.guidance,
        "sampler": dict(cfg.sampler),
        "samples": [{"file": f"{i:06d}.png", "cond": v} for i, v in enumerate(listed)],
    })
    console.print(f"{total} samples -> {out}/grid.png")
