"""torch-fidelity glue: Inception weights from a local file only, FID / KID of image sets in memory."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ldmkit.errors import UserError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def hub_inception_path() -> Path:
    """Where torch-fidelity looks for the Inception weights in the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def find_inception_weights(path: str | None, option: str = "inception_weights") -> tuple[Path | None, str]:
    """The weights file to use, or None and a one-line reason naming the missing file and where to put it."""
    if path:
        p = Path(path).expanduser()
        return (p, "") if p.is_file() else (None, f"{option}={path} does not exist")
    p = hub_inception_path()
    if p.is_file():
        return p, ""
    return None, f"Inception weights not found: put {INCEPTION_FILE} at {p} or pass {option}=PATH"


def check_weights_file(path: Path) -> None:
    """Refuse a weights file that is not plain tensors (torch-fidelity itself unpickles it fully)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure means we must not hand it on
        raise UserError(f"inception_weights={path} is not a plain state dict of tensors ({type(exc).__name__})") from None
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise UserError(f"inception_weights={path} is not an Inception-v3 state dict (no fc.weight)")


def fid_kid(generated: Tensor, reference: Tensor, weights: Path, kid_subset_size: int, batch_size: int = 64) -> dict:
    """FID and KID (mean, std) between uint8 image sets held in memory (see ``features`` for streams)."""
    from ldmkit.evaluation.features import FeatureSet, InceptionFeatures, compute_metrics

    extractor = InceptionFeatures(weights, generated.device)
    sets = []
    for images in (generated, reference):
        features = FeatureSet(extractor)
        for chunk in images.split(batch_size):
            features.add(chunk)
        sets.append(features.tensors())
    return compute_metrics(sets[0], sets[1], ["fid", "kid"], kid_subset_size)
