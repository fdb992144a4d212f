"""``ldmkit sample``: images from an LDM model dir: one PNG each (its condition, seed and sampler in the PNG
text chunks), ``grid.png`` and a ``samples.jsonl`` index."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor

from ldmkit import modeldir
from ldmkit.atomic import atomic_path, write_text
from ldmkit.console import console
from ldmkit.devices import device
from ldmkit.diffusion.guidance import guidance_scale
from ldmkit.diffusion.samplers import DEFAULT_STRENGTH, check_sampler, check_strength
from ldmkit.errors import UserError, check_whole
from ldmkit.images import save_grid, to_uint8
from ldmkit.models.conditioners import cycled_values, num_values
from ldmkit.models.ldm import LatentDiffusion
from ldmkit.speed import Speed, for_sampling
from ldmkit.tasks.common import run_dir
from ldmkit.tasks.generation import check_guidance, generate, stored_conditions
from ldmkit.tasks.inputs import (
    Requests,
    as_list,
    check_input_files,
    init_image_requests,
    input_options,
    negative_values,
    read_init_images,
    repeat_requests,
    use_local_files,
    user_requests,
)


def check_options(cfg: DictConfig) -> None:
    """Numbers that make no sense stop here, in one line."""
    check_whole(cfg.n, "n", 1)
    check_whole(cfg.batch_size, "batch_size", 1)
    check_whole(cfg.seed, "seed")
    check_guidance(cfg.guidance)
    for key in ("H", "W"):
        if cfg.get(key) is not None:
            check_whole(cfg[key], key, 1, " of pixels")
    init_files = as_list(cfg.get("init_image")) or []
    if cfg.get("strength") is not None:
        check_strength(cfg.strength)
        if not init_files:
            raise UserError(f"strength={cfg.strength} is img2img's: give init_image= (the image to start from) too")
    for file in init_files:
        if not Path(str(file)).is_file():
            raise UserError(f"init_image={file}: no such file")


def reference_requests(ldm: LatentDiffusion, ckpt: Path, n: int) -> Requests | None:
    """``n`` validation-set conditions (one sample each), described by caption / label where simple."""
    no_bank = not (ckpt / modeldir.CONDITIONS).is_file()
    if ldm.cond.inputs and no_bank and "dataset" not in OmegaConf.load(ckpt / "config.yaml"):
        raise UserError(f"this {ldm.cond.task} model was not trained here (no dataset to draw conditions from): "
                        f"give {input_options(ldm.cond.inputs)}")
    values = stored_conditions(ldm, ckpt, n)
    if values is None:
        return None
    values = cycled_values(values, 0, n)
    if isinstance(values, list) and all(isinstance(v, str) for v in values):
        described = [{"prompt": v, "reference": f"val[{i}]"} for i, v in enumerate(values)]
    elif isinstance(values, Tensor) and values.dim() == 1:
        described = [{"label": int(v), "reference": f"val[{i}]"} for i, v in enumerate(values)]
    else:
        described = [{"reference": f"val[{i}]"} for i in range(num_values(values))]
    return Requests(values, described)


def image_size(cfg: DictConfig, reqs: Requests | None, ldm: LatentDiffusion) -> tuple[int, int] | None:
    """The pixel size asked for (H=/W=), else the one the inputs imply, else None (the training size)."""
    implied = reqs.size if reqs is not None else None
    if cfg.get("H") is None and cfg.get("W") is None:
        return implied
    f = ldm.first_stage.downsample_factor
    default = implied or (ldm.latent_shape[1] * f, ldm.latent_shape[2] * f)
    h = int(cfg.H) if cfg.get("H") is not None else default[0]
    w = int(cfg.W) if cfg.get("W") is not None else default[1]
    if cfg.get("mask") is not None and implied is not None and (h, w) != tuple(implied):
        raise UserError(f"H={h} W={w} but the inpainting image is {implied[0]}x{implied[1]}: drop H=/W=")
    return h, w


@dataclass
class Plan:
    """What one ``sample`` run generates, sample by sample."""

    values: Any  # conditioning values, one per sample (None: unconditional)
    described: list[dict]  # each sample's request as its PNG / samples.jsonl describe it
    grid_rows: int
    size: tuple[int, int] | None  # the latent (h, w); None = the training size
    uncond: Any  # negative-prompt values replacing the null condition (None: the null condition)
    init: Tensor | None  # img2img: each sample's init latent
    strength: float  # img2img strength (1 = plain sampling)


def run(cfg: DictConfig) -> None:
    """Sample ``n`` images per request and write them with the conditions that produced them: options checked,
    model loaded, samples planned from the inputs, generated, written."""
    check_options(cfg)
    speed = Speed.from_config(cfg.speed)
    check_input_files(cfg)
    ckpt = _checked_ckpt(cfg)
    out = run_dir()
    ldm = for_sampling(modeldir.load(ckpt, use_ema=cfg.use_ema).to(device()), speed)
    use_local_files(ldm.cond, cfg.get("cond"))
    with open_dict(cfg):
        cfg.guidance = guidance_scale(cfg.guidance, ldm.cond)
        if cfg.get("init_image") is not None and cfg.get("strength") is None:
            cfg.strength = DEFAULT_STRENGTH
    plan = plan_samples(cfg, ldm, ckpt)
    images = generate(ldm, plan.values, len(plan.described), instantiate(cfg.sampler), cfg.guidance, cfg.seed,
                      cfg.batch_size, size=plan.size, uncond=plan.uncond, init=plan.init, strength=plan.strength)
    write_samples(cfg, out, images, plan, ckpt)


def _checked_ckpt(cfg: DictConfig) -> Path:
    """The LDM model dir of ckpt=, with the sampler options checked against its schedule (before it loads)."""
    ckpt = modeldir.resolve(cfg.ckpt, "ldm", "ckpt")
    timesteps = OmegaConf.select(OmegaConf.load(ckpt / "config.yaml"), "diffusion.timesteps")
    if timesteps is not None:
        check_sampler(instantiate(cfg.sampler), int(timesteps))
    return ckpt


def plan_samples(cfg: DictConfig, ldm: LatentDiffusion, ckpt: Path) -> Plan:
    """Inputs -> requests -> one entry per sample, with the output size, negatives and init latents."""
    reqs, per_request, init_files = _requests(cfg, ldm, ckpt)
    size = _latent_size(cfg, reqs, ldm)
    values, described = (None, [{}] * cfg.n) if reqs is None else repeat_requests(reqs, per_request)
    rows = cfg.n if reqs is not None and len(reqs) > 1 and per_request > 1 else math.ceil(math.sqrt(len(described)))
    init = _init_latents(ldm, init_files, described, size) if init_files else None
    return Plan(values, described, max(1, rows), size, negative_values(ldm.cond, cfg.get("negative_prompt"),
                len(described)), init, float(cfg.strength) if init_files else 1.0)


def _requests(cfg: DictConfig, ldm: LatentDiffusion, ckpt: Path) -> tuple[Requests | None, int, list[str]]:
    """The requests (the user's inputs, else n of the model's validation conditions), samples per request, and the
    init images (img2img: each request with its image; unconditional: n samples per image)."""
    reqs, per_request = user_requests(ldm.cond, cfg), cfg.n
    if reqs is None:
        reqs, per_request = reference_requests(ldm, ckpt, cfg.n), 1
    init_files = [str(f) for f in as_list(cfg.get("init_image")) or []]
    if init_files:
        per_request = cfg.n if reqs is None else per_request
        reqs = init_image_requests(reqs, init_files, ldm.cond)
    return reqs, per_request, init_files


def _latent_size(cfg: DictConfig, reqs: Requests | None, ldm: LatentDiffusion) -> tuple[int, int] | None:
    """The latent (h, w) of the pixel size asked for or implied by the inputs (None: the training size)."""
    pixels = image_size(cfg, reqs, ldm)
    try:
        return ldm.latent_size(*pixels) if pixels else None
    except ValueError as exc:
        raise UserError(f"{exc}; set H=/W= (or resize the inputs)") from None


def _init_latents(ldm: LatentDiffusion, files: list[str], described: list[dict], size) -> Tensor:
    """img2img: the latents z0 of the init images at the output size, one per sample."""
    f = ldm.first_stage.downsample_factor
    latents = ldm.encode(read_init_images(files, tuple(s * f for s in size or ldm.latent_shape[1:])))
    return latents[[files.index(d["init_image"]) for d in described]]


def write_samples(cfg: DictConfig, out: Path, images: Tensor, plan: Plan, ckpt: Path) -> None:
    """One PNG per sample (its record in the text chunks), grid.png and samples.jsonl."""
    records = _records(cfg, plan.described)
    for image, record in zip(images, records, strict=True):
        save_png_with_text(image, out / record["file"], record)
    save_grid(images, out / "grid.png", nrow=plan.grid_rows)
    write_jsonl(out / "samples.jsonl", [{**r, "ckpt": str(ckpt.resolve())} for r in records])
    console.print(f"{len(records)} samples ({images.shape[-2]}x{images.shape[-1]}) -> {out}/grid.png")


def sampler_name(cfg: DictConfig) -> str:
    """The sampler group option chosen (``ddim``, ``dpmpp_2m`` …)."""
    from hydra.core.hydra_config import HydraConfig

    choice = HydraConfig.get().runtime.choices.get("sampler") if HydraConfig.initialized() else None
    return str(choice or cfg.sampler._target_.rsplit(".", 1)[-1])


def _records(cfg: DictConfig, described: list[dict]) -> list[dict[str, Any]]:
    """What each sample's PNG text chunks and its samples.jsonl line say."""
    sampler = {k: v for k, v in OmegaConf.to_container(cfg.sampler).items() if not k.startswith("_")}
    shared = {"sampler": sampler_name(cfg), "steps": sampler.get("steps"), "guidance": float(cfg.guidance),
              "negative_prompt": cfg.get("negative_prompt"), "sampler_options": sampler}
    if as_list(cfg.get("init_image")):  # img2img: each row names its init image (described)
        shared["strength"] = float(cfg.strength)
    return [{"file": f"{i:06d}.png", **d, "seed": int(cfg.seed) + i, **shared} for i, d in enumerate(described)]


def save_png_with_text(image: Tensor, path: Path, record: dict) -> None:
    """One image in [-1, 1] as PNG with every field of ``record`` as a tEXt chunk (JSON for non-strings)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in record.items():
        if key != "file" and value is not None:
            info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(image).permute(1, 2, 0).cpu().numpy()).save(tmp, pnginfo=info)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line, written atomically (temporary name, fsync, rename)."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
