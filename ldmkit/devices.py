"""Where inference runs."""

from __future__ import annotations

import torch


def device() -> torch.device:
    """The device for inference in sample / eval-fid / encode-dataset (CUDA when available)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
