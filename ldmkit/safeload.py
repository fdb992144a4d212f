"""Reading PyTorch pickles without running their code: ``torch.load(weights_only=True)`` with a small allow-list
of inert globals; a file that needs anything else is refused with one line naming what it asked for."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ldmkit.errors import UserError


class _LightningCallbackKey:
    """Inert stand-in for the Lightning callback *class* that old Lightning checkpoints use as a dict key."""


def _safe_globals() -> list[Any]:
    """Globals published CompVis ``.ckpt`` files reference outside their tensors; none of them runs file code.

    Lightning < 1.5 keyed ``callbacks`` by the callback class (replaced by an inert class here) and stored
    numpy scalars / arrays in the callback state (numpy's own constructors, on data the restricted
    unpickler has already vetted).
    """
    import numpy as np

    stub = [(_LightningCallbackKey, f"{pkg}.callbacks.model_checkpoint.ModelCheckpoint")
            for pkg in ("pytorch_lightning", "lightning.pytorch")]
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    numpy = [(fn, f"{mod}.multiarray.{fn.__name__}") for fn in (multiarray.scalar, multiarray._reconstruct)
             for mod in ("numpy.core", "numpy._core")]
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")] if hasattr(np, "dtypes") else []
    return [*stub, *numpy, (np.dtype, "numpy.dtype"), (np.ndarray, "numpy.ndarray"), *dtypes]


def refusal(path: Path, text: str) -> UserError:
    """The one-line error for a file the weights-only unpickler refused (code it needs, or not a checkpoint)."""
    found = re.findall(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", text)
    names = sorted({"".join(n) for n in found})
    if names:
        return UserError(
            f"{path}: torch.load(weights_only=True) refuses to unpickle code ({', '.join(names)}); ldmkit never "
            "runs code from a checkpoint: convert it to .safetensors where you trust the file"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
    return UserError(f"{path} is not a readable PyTorch checkpoint ({detail[1] if detail else text.splitlines()[0]})")


def torch_load(path: Path, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` with the inert allow-list; a pickle that needs code is refused."""
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise refusal(path, str(exc)) from None
    except Exception as exc:  # torch raises many types on a corrupt file
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({first})") from None
