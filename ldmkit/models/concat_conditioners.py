"""Concat conditioners (paper Sec. 4.3.2 semantic synthesis and super-resolution, Sec. 4.5 inpainting).

They hand the UNet spatial channels (``Cond.concat``) that ``LatentDiffusion.net`` resizes to the latent
(area-average down, bilinear up) and joins to it, so the UNet's ``in_channels`` is the latent channels plus
``concat_channels``. They can be combined with cross-attention conditioners through ``MultiConditioner``.

Null values ("no condition", for conditioning dropout and guidance) are spatially constant, so ``null(n)``
returns 1x1 maps that the resize to the latent expands; ``drop`` replaces whole samples of a batch by the
null value at the batch's own size.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldmkit.diffusion.cond import Cond, resize_to
from ldmkit.models.conditioners import Conditioner, keep_mask, stack_same_size


def map_size(inputs: dict[str, list], name: str, factor: int = 1) -> tuple[int, int] | None:
    """The (H, W) of the first ``name`` input times ``factor`` (None when there is none)."""
    maps = inputs.get(name) or []
    return None if not maps else (int(maps[0].shape[-2]) * factor, int(maps[0].shape[-1]) * factor)


def one_hot_maps(values: Tensor, channels: int, offset: int = 0) -> Tensor:
    """Integer label maps (B, H, W) -> float one-hot (B, channels, H, W); labels below ``offset`` give zeros.

    Label ``offset + c`` lights channel c (the built-in semantic maps use offset -1 for their null label);
    float (B, channels, H, W) maps pass through as given (already one-hot, as CompVis' data loaders make them).
    """
    maps = torch.as_tensor(values)
    if maps.is_floating_point() and maps.dim() == 4 and maps.shape[1] == channels:
        return maps.float()
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() != 3 or maps.is_floating_point():
        raise ValueError(f"semantic maps must be integer (B, H, W), got {maps.dtype} {tuple(maps.shape)}")
    shifted = maps.long() - offset + 1  # 0 = no class (the null label)
    if shifted.numel() and (shifted.min() < 0 or shifted.max() > channels):
        raise ValueError(f"semantic labels must be in {offset - 1}..{offset + channels - 1} ({offset - 1} = null), "
                         f"got {int(maps.min())}..{int(maps.max())}")
    return F.one_hot(shifted, channels + 1)[..., 1:].permute(0, 3, 1, 2).float()


class _MapConditioner(Conditioner):
    """Values are one (B, ...) tensor per batch; dropout (the base class) fills whole samples with the 1x1 null."""

    def __init__(self) -> None:
        super().__init__()
        # Parameter-free: this empty, non-persistent buffer follows .to(device) so outputs land on it.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)


class SemanticConditioner(_MapConditioner):
    """Semantic map -> one-hot channels (background + classes) concatenated to the latent (Sec. 4.3.2).

    Values are int64 (B, H, W) maps with 0 = background and ``c + 1`` for class ``c`` (the shapes
    dataset's ``semantic`` field); -1 is the null label whose one-hot vector is all zero ("no class at all").
    Resizing to the latent by area averaging turns the one-hot channels into per-pixel class fractions.
    """

    inputs = ("semantic",)
    task = "semantic"

    def __init__(self, num_classes: int, key: str = "semantic", drop_prob: float = 0.0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.key, self.drop_prob, self.num_classes = key, drop_prob, int(num_classes)
        self.concat_channels = self.num_classes + 1

    def null(self, n: int) -> Tensor:
        """``n`` null maps (1x1 of label -1: a zero one-hot vector everywhere once resized)."""
        return torch.full((n, 1, 1), -1, dtype=torch.long)

    def forward(self, values: Tensor) -> Cond:
        """(B, H, W) labels in -1..num_classes -> (B, num_classes + 1, H, W) float one-hot (zero for -1)."""
        labels = torch.as_tensor(values, device=self._anchor.device)
        if labels.is_floating_point():
            raise ValueError(f"semantic maps must be integer (B, H, W), got {labels.dtype} {tuple(labels.shape)}")
        return Cond(concat=one_hot_maps(labels, self.concat_channels, offset=0))

    def from_inputs(self, inputs: dict[str, list]) -> Tensor:
        """Label maps (0 = background, class c = c + 1) of one size, stacked."""
        maps = stack_same_size(inputs["semantic"], "semantic maps")
        if maps.numel() and (maps.min() < 0 or maps.max() > self.num_classes):
            raise ValueError(f"labels go up to {int(maps.max())} but this model knows 0..{self.num_classes} "
                             "(0 = background)")
        return maps

    def output_size(self, inputs: dict[str, list]) -> tuple[int, int] | None:
        """The map's size: maps are drawn at image resolution."""
        return map_size(inputs, "semantic")


class SRConditioner(_MapConditioner):
    """Low-resolution image concatenated to the latent (super-resolution, Sec. 4.3.2); null = zeros.

    Values are float (B, 3, h, w) images in [-1, 1] (the shapes dataset's ``lowres`` field); the resize to the
    latent upsamples them bilinearly (or area-averages them when they are larger than the latent).
    """

    inputs = ("image",)
    task = "super-resolution"

    def __init__(self, key: str = "lowres", channels: int = 3, drop_prob: float = 0.0, upscale: int | None = None,
                 ) -> None:
        super().__init__()
        self.key, self.drop_prob = key, drop_prob
        self.concat_channels = int(channels)
        self.upscale = 4 if upscale is None else int(upscale)  # output pixels per low-res pixel

    def null(self, n: int) -> Tensor:
        """``n`` null images (1x1 zeros, i.e. mid grey everywhere once resized)."""
        return torch.zeros(n, self.concat_channels, 1, 1)

    def forward(self, values: Tensor) -> Cond:
        """(B, C, h, w) images -> the same channels as float concat conditioning."""
        images = torch.as_tensor(values, device=self._anchor.device)
        if images.dim() != 4 or images.shape[1] != self.concat_channels:
            raise ValueError(
                f"low-res images must be (B, {self.concat_channels}, h, w), got {tuple(images.shape)}"
            )
        return Cond(concat=images.float())

    def from_inputs(self, inputs: dict[str, list]) -> Tensor:
        """Low-res images of one size, stacked."""
        return stack_same_size(inputs["image"], "images")

    def output_size(self, inputs: dict[str, list]) -> tuple[int, int] | None:
        """The low-res size times ``upscale``."""
        return map_size(inputs, "image", self.upscale)


class InpaintConditioner(Conditioner):
    """Masked image encoded by the first stage + the mask, concatenated to the latent (inpainting, Sec. 4.5).

    Values are a dict ``{"image": (B, 3, H, W) in [-1, 1], "mask": (B, 1, H, W) in {0, 1}}`` (1 = region to
    fill), optionally with ``"null": (B,) bool`` marking samples that carry the null condition. The output is
    ``first_stage.encode(image * (1 - mask))`` (posterior mean, no gradient) and the mask area-resized to the
    latent (the fraction of each latent pixel to fill): ``latent_channels + 1`` channels. The null condition
    is a zero latent and a zero mask. The first stage comes from ``attach`` and is deliberately not a
    sub-module: it is neither in this conditioner's state dict nor in the optimiser (nor copied by the EMA).
    """

    inputs = ("image", "mask")
    task = "inpainting"

    def __init__(self, latent_channels: int, key: str = "image", mask_key: str = "mask",
                 drop_prob: float = 0.0, mask_resize: str = "area", scaled: bool = True) -> None:
        super().__init__()
        if latent_channels is None:
            raise ValueError("latent_channels=None: give the first stage's latent channels (train-ldm takes them "
                             "from ae=)")
        if latent_channels < 1:
            raise ValueError(f"latent_channels must be >= 1, got {latent_channels}")
        if mask_resize not in ("area", "nearest"):
            raise ValueError(f"mask_resize={mask_resize!r} is not one of area, nearest")
        self.key, self.mask_key, self.drop_prob = key, mask_key, drop_prob
        # CompVis (scripts/inpaint.py): nearest mask and the unscaled pre-quantisation latent (scaled=False)
        self.mask_resize, self.scaled = mask_resize, bool(scaled)
        self.latent_channels = int(latent_channels)
        self.concat_channels = self.latent_channels + 1
        self.__dict__["_first_stage"] = None

    def attach(self, first_stage: nn.Module) -> None:
        """Keep a reference to the (frozen) first stage, without registering it as a sub-module."""
        channels = getattr(first_stage, "latent_channels", self.latent_channels)
        if channels != self.latent_channels:
            raise ValueError(
                f"InpaintConditioner(latent_channels={self.latent_channels}) but the first stage has "
                f"{channels} latent channels: set cond.latent_channels={channels}"
            )
        self.__dict__["_first_stage"] = first_stage

    @property
    def first_stage(self) -> nn.Module:
        """The attached first stage (error if ``attach`` was not called)."""
        fs = self.__dict__["_first_stage"]
        if fs is None:
            raise RuntimeError("InpaintConditioner has no first stage: call attach(first_stage) first "
                               "(LatentDiffusion does this when it is built)")
        return fs

    def __deepcopy__(self, memo: dict) -> InpaintConditioner:
        """Deep copy (e.g. the EMA model) that shares the frozen first stage instead of copying it."""
        fs = self.__dict__["_first_stage"]
        if fs is not None:
            memo[id(fs)] = fs
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items()})
        return clone

    def from_inputs(self, inputs: dict[str, list]) -> dict[str, Tensor]:
        """Images and masks (one mask for all images, or one each) of matching sizes."""
        images, masks = inputs["image"], inputs["mask"]
        if len(masks) == 1 < len(images):
            masks = masks * len(images)
        if len(images) != len(masks):
            raise ValueError(f"{len(images)} images but {len(masks)} masks: give one mask, or one per image")
        for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
            if image.shape[-2:] != mask.shape[-2:]:
                raise ValueError(f"mask {i} is {tuple(mask.shape[-2:])} but its image is {tuple(image.shape[-2:])}")
        return {"image": stack_same_size(images, "images"), "mask": torch.stack(masks)}

    def output_size(self, inputs: dict[str, list]) -> tuple[int, int] | None:
        """The image's size (the result keeps the image outside the mask)."""
        return map_size(inputs, "image")

    def composite(self, images: Tensor, values: dict[str, Tensor]) -> Tensor:
        """The given image outside the mask, the sample inside it (CompVis scripts/inpaint.py); null samples and
        inputs of another size than the samples are returned as sampled."""
        image, mask = torch.as_tensor(values["image"]), torch.as_tensor(values["mask"])
        if image.shape[-2:] != images.shape[-2:] or mask.shape[-2:] != images.shape[-2:]:
            return images
        mask = (mask if mask.dim() == 4 else mask[:, None]).to(images.device, images.dtype)
        null = values.get("null")
        if null is not None:
            mask = torch.where(torch.as_tensor(null, dtype=torch.bool, device=images.device).view(-1, 1, 1, 1),
                               torch.ones_like(mask), mask)
        return (1 - mask) * image.to(images.device, images.dtype) + mask * images

    def values(self, batch: dict) -> dict[str, Tensor]:
        """The image and mask fields of a batch."""
        return {"image": batch[self.key], "mask": batch[self.mask_key]}

    def null(self, n: int) -> dict[str, Tensor]:
        """``n`` null conditions (flagged; 1x1 placeholders, the output is a zero latent and a zero mask)."""
        return {"image": torch.zeros(n, 3, 1, 1), "mask": torch.zeros(n, 1, 1, 1),
                "null": torch.ones(n, dtype=torch.bool)}

    def drop(self, values: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Flag each sample as null with prob. ``drop_prob`` (images and masks stay, for their shape)."""
        n = len(values["image"])
        if self.drop_prob <= 0 or n == 0:
            return values
        dropped = ~keep_mask(n, self.drop_prob, generator)
        previous = values.get("null")
        if previous is not None:
            dropped = dropped | torch.as_tensor(previous, dtype=torch.bool).cpu()
        return {**values, "null": dropped}

    def forward(self, values: dict[str, Tensor]) -> Cond:
        """Image + mask -> (B, latent_channels + 1, h, w): masked-image latent and the latent-sized mask."""
        fs = self.first_stage
        device = next(iter(fs.parameters()), torch.empty(0)).device
        image, mask = values["image"], values["mask"]
        image = torch.as_tensor(image, device=device).float()
        mask = torch.as_tensor(mask, device=device).float()
        if mask.dim() == 3:
            mask = mask[:, None]
        n = len(image)
        null = values.get("null")
        null = torch.zeros(n, dtype=torch.bool) if null is None else torch.as_tensor(null, dtype=torch.bool)
        null = null.to(device)
        if null.numel() and bool(null.all()):
            return Cond(concat=torch.zeros(n, self.concat_channels, 1, 1, device=device))
        if image.dim() != 4 or mask.shape != (n, 1, *image.shape[-2:]):
            raise ValueError(
                f"inpainting needs images (B, C, H, W) and masks (B, 1, H, W) of the same size, got "
                f"{tuple(image.shape)} and {tuple(mask.shape)}"
            )
        with torch.no_grad():
            masked = image * (1.0 - mask)
            z = (fs.encode(masked) if self.scaled else fs.posterior(masked).mode()).float()
        small = resize_to(mask, z.shape[-2:]) if self.mask_resize == "area" \
            else F.interpolate(mask, size=z.shape[-2:], mode="nearest")
        concat = torch.cat([z, small], dim=1)
        return Cond(concat=concat * (~null).view(-1, 1, 1, 1).to(concat.dtype))


class SpatialRescaler(_MapConditioner):
    """CompVis ``SpatialRescaler`` (semantic synthesis): one-hot map -> ``n_stages`` resizes by ``multiplier`` ->
    optional 1×1 ``channel_mapper``; concatenated to the latent (Sec. 4.3.2, semantic_synthesis256/512).

    Values are integer (B, H, W) label maps, label c lighting channel c (COCO-stuff: 182 labels, the PNG's
    values), or float one-hot (B, in_channels, H, W); -1 is the null label (all zeros).
    """

    inputs = ("semantic",)
    task = "semantic"

    def __init__(self, n_stages: int = 1, method: str = "bilinear", multiplier: float = 0.5, in_channels: int = 3,
                 out_channels: int | None = None, bias: bool = False, key: str = "segmentation",
                 drop_prob: float = 0.0) -> None:
        super().__init__()
        if n_stages < 0 or method not in ("nearest", "linear", "bilinear", "trilinear", "bicubic", "area"):
            raise ValueError(f"SpatialRescaler(n_stages={n_stages}, method={method!r}) is not supported")
        self.key, self.drop_prob = key, drop_prob
        self.n_stages, self.method, self.multiplier, self.in_channels = int(n_stages), method, multiplier, in_channels
        if out_channels is not None:
            self.channel_mapper = nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        self.concat_channels = int(out_channels if out_channels is not None else in_channels)

    def null(self, n: int) -> Tensor:
        """``n`` null maps (1x1 of label -1: all-zero one-hot)."""
        return torch.full((n, 1, 1), -1, dtype=torch.long)

    def forward(self, values: Tensor) -> Cond:
        """Label maps (or one-hot maps) -> the rescaled, channel-mapped concat channels."""
        x = one_hot_maps(torch.as_tensor(values), self.in_channels).to(self._anchor.device)
        if x.shape[-1] > 1 or x.shape[-2] > 1:  # 1x1 null maps stay 1x1 (zeros are zeros at any size)
            for _ in range(self.n_stages):
                x = F.interpolate(x, scale_factor=self.multiplier, mode=self.method)
        if hasattr(self, "channel_mapper"):
            x = self.channel_mapper(x.to(self.channel_mapper.weight.dtype))
        return Cond(concat=x)

    def from_inputs(self, inputs: dict[str, list]) -> Tensor:
        """Label maps of one size, stacked (labels 0..in_channels-1)."""
        maps = stack_same_size(inputs["semantic"], "semantic maps")
        if maps.numel() and (maps.min() < 0 or maps.max() >= self.in_channels):
            raise ValueError(f"labels go up to {int(maps.max())} but this model knows 0..{self.in_channels - 1}")
        return maps

    def output_size(self, inputs: dict[str, list]) -> tuple[int, int] | None:
        """The map's size: maps are drawn at image resolution."""
        return map_size(inputs, "semantic")
