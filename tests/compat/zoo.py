"""The shrunk CompVis model zoo (``tests/fixtures/compat/zoo``): rebuild each fixture's checkpoint from its keys.tsv.

The rule (the zoo's README): schedule buffers from CompVis ``register_schedule`` (float64 numpy, stored float32),
``scale_factor`` from the YAML (else 1.0), the EMA's decay/num_updates fixed, every other weight a seeded normal
draw keyed by crc32(key), scaled by its shape; inpainting's ``cond_stage_model.*`` equals ``first_stage_model.*``.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import torch
import yaml

ZOO = Path(__file__).parents[1] / "fixtures" / "compat" / "zoo"
NAMES = sorted(p.name for p in ZOO.iterdir() if p.is_dir())
SCHEDULE_KEYS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                 "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                 "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef1", "posterior_mean_coef2")


def rows(name: str) -> list[tuple[str, tuple[int, ...], str]]:
    """keys.tsv of a fixture: (key, shape, dtype) in checkpoint order."""
    out = []
    for line in (ZOO / name / "keys.tsv").read_text().splitlines():
        key, shape, dtype = line.split("\t")
        out.append((key, () if shape == "scalar" else tuple(int(s) for s in shape.split("x")), dtype))
    return out


def register_schedule(params: dict) -> dict[str, np.ndarray]:
    """CompVis ``DDPM.register_schedule`` in float64 (linear / cosine / sqrt_linear / sqrt; v_posterior 0)."""
    n, start, end = int(params.get("timesteps", 1000)), params.get("linear_start", 1e-4), params.get("linear_end", 2e-2)
    kind = params.get("beta_schedule", "linear")
    if kind == "linear":
        betas = np.linspace(start ** 0.5, end ** 0.5, n, dtype=np.float64) ** 2
    elif kind == "cosine":
        s = params.get("cosine_s", 8e-3)
        t = np.arange(n + 1, dtype=np.float64) / n + s
        alphas = np.cos(t / (1 + s) * math.pi / 2) ** 2
        betas = np.clip(1 - alphas[1:] / alphas[:-1], 0, 0.999)
    elif kind == "sqrt_linear":
        betas = np.linspace(start, end, n, dtype=np.float64)
    else:
        betas = np.linspace(start, end, n, dtype=np.float64) ** 0.5
    alphas_cumprod = np.cumprod(1.0 - betas)
    prev = np.append(1.0, alphas_cumprod[:-1])
    post_var = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
    return {"betas": betas, "alphas_cumprod": alphas_cumprod, "alphas_cumprod_prev": prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod), "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - alphas_cumprod),
            "log_one_minus_alphas_cumprod": np.log(1 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / alphas_cumprod - 1), "posterior_variance": post_var,
            "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
            "posterior_mean_coef1": betas * np.sqrt(prev) / (1 - alphas_cumprod),
            "posterior_mean_coef2": (1 - prev) * np.sqrt(1 - betas) / (1 - alphas_cumprod)}


def weight(key: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """The fixture rule's value of one ordinary weight."""
    gen = torch.Generator().manual_seed(zlib.crc32(key.encode()) + 1_000_003 * seed)
    n = torch.randn(shape, generator=gen)
    if len(shape) >= 2:
        return n / math.sqrt(math.prod(shape[1:]))
    if len(shape) == 1 and key.endswith("weight"):
        return 1 + 0.1 * n
    return 0.1 * n


def config(name: str) -> dict:
    """The fixture's (shrunk) CompVis YAML."""
    return yaml.safe_load((ZOO / name / "config.yaml").read_text())


def state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The fixture's checkpoint state dict, rebuilt from keys.tsv by the zoo's rule."""
    params = config(name)["model"].get("params", {})
    schedule = register_schedule(params)
    sd: dict[str, torch.Tensor] = {}
    for key, shape, _ in rows(name):
        if key in SCHEDULE_KEYS:
            sd[key] = torch.tensor(schedule[key], dtype=torch.float32)
        elif key == "scale_factor":
            sd[key] = torch.tensor(float(params.get("scale_factor", 1.0)))
        elif key == "model_ema.decay":
            sd[key] = torch.tensor(0.9999, dtype=torch.float32)
        elif key == "model_ema.num_updates":
            sd[key] = torch.tensor(1000, dtype=torch.int32)
        elif key.startswith("cond_stage_model.") and params.get("cond_stage_config") == "__is_first_stage__":
            sd[key] = weight("first_stage_model." + key[len("cond_stage_model."):], shape, seed)
        else:
            sd[key] = weight(key, shape, seed)
        assert tuple(sd[key].shape) == shape, key
    return sd


def write_checkpoint(name: str, path: Path, seed: int = 0) -> Path:
    """``model.ckpt`` of a fixture (a Lightning-style checkpoint) at ``path``."""
    torch.save({"state_dict": state_dict(name, seed), "global_step": 1234}, path)
    return path


def reference(name: str) -> dict:
    """The CompVis outputs (``ref.pt``) of a fixture."""
    return torch.load(ZOO / name / "ref.pt", weights_only=True)
