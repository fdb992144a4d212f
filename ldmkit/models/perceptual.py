"""LPIPS perceptual distance (Zhang et al. 2018) through the ``lpips`` package, with VGG16 weights read offline."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ldmkit.errors import UserError

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's ImageNet VGG16, as the torch hub cache names it


def find_vgg_weights(weights: str | None) -> Path:
    """The VGG16 state-dict file: ``weights`` if given, else the torch hub cache; one clear line if missing."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"LPIPS backbone weights {path} do not exist")
        return path
    path = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE
    if not path.is_file():
        raise UserError(
            f"LPIPS needs torchvision's VGG16 weights: put {VGG16_FILE} in {path.parent} or set "
            "loss.perceptual.weights=PATH (or loss.perceptual=null to train without LPIPS)"
        )
    return path


def lpips_skip_reason(weights: str | None, required: bool = False) -> str | None:
    """None when LPIPS can be built from ``weights``; else the one line saying the default LPIPS term is left out
    (no VGG16 weights in the torch hub cache) and how to add it. Weights asked for (a path, or ``required``) that
    are missing stay the one-line error of :func:`find_vgg_weights`."""
    if weights == "random":
        return None
    try:
        find_vgg_weights(weights)
    except UserError:
        if weights or required:
            raise
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        return (f"training without the LPIPS loss: no {VGG16_FILE} in {folder}; put it there or set "
                "loss.perceptual.weights=PATH to add it (loss.perceptual.required=true makes this an error)")
    return None


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG distance per image pair (B, 1, 1, 1) for images in [-1, 1].

    ``weights``: a VGG16 state dict (torchvision keys ``features.N.*``), default the torch hub cache;
    ``"random"`` keeps a random backbone (offline tests only: its distances mean nothing).
    """

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        import warnings

        import lpips

        path = None if weights == "random" else find_vgg_weights(weights)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchvision's "pretrained is deprecated" from lpips
            self.net = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
        if path is not None:
            load_vgg_backbone(self.net.net, path)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Always stays in eval mode (dropout in the linear heads off)."""
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """LPIPS distance between x and y."""
        return self.net(x, y)


def load_vgg_backbone(backbone: nn.Module, path: Path) -> None:
    """Copy torchvision VGG16 ``features.N.*`` tensors into lpips' sliced backbone (``sliceK.N.*``), strictly."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    target = {}
    for key in backbone.state_dict():
        _, index, name = key.split(".")
        source = f"features.{index}.{name}"
        if source not in state:
            raise UserError(f"{path}: not a VGG16 state dict (no {source!r})")
        target[key] = state[source]
    backbone.load_state_dict(target)
