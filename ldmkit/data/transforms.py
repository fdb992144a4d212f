"""Image decoding and preprocessing shared by the image-folder and webdataset readers.

- :func:`decode_image`: bytes -> fully loaded PIL image, or a ``ValueError`` with a short reason (empty,
  not an image, truncated/corrupt, too many pixels). Only plain raster formats are opened (no EPS/PDF,
  which would shell out to Ghostscript), and the EXIF orientation of camera photos is applied.
- :func:`to_rgb`: any PIL mode -> 8-bit RGB. Transparency is composited onto white; 16-bit greyscale
  (``I;16*``, and ``I``, read as a 16-bit range) is scaled to 8 bits (v / 257), not clipped. 16-bit RGB(A)
  PNGs arrive already as 8-bit RGB(A): Pillow keeps each sample's high byte (at most 1 level from v / 257).
- :class:`ImageTransform`: PIL image -> float32 (3, R, R) in [-1, 1] (shorter side resized to R with
  antialiased bicubic, then a centre or random R x R crop, then an optional random horizontal flip).
  Randomness comes from torch's global RNG, which DataLoader seeds per worker.
"""

from __future__ import annotations

import io
import operator
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp")
MAX_PIXELS = 89_478_485  # PIL's default limit (about 0.25 GB at 24 bit), but here exceeding it is an error
CROPS: tuple[str, ...] = ("center", "random")
# Formats decode_image will open (JPEG covers MPO): raster formats whose decoders never run external programs.
SAFE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_WHITE = (255, 255, 255, 255)


def _sixteen_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit greyscale -> RGB, scaling 0..65535 to 0..255 (rounded)."""
    arr = np.asarray(img).astype(np.float64)
    arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="L").convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB: alpha/transparency over white, 16-bit scaled, CMYK/P/L/1 converted."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT:
        return _sixteen_to_rgb(img)
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return img.convert("RGB")


def _too_many_pixels(size: tuple[int, int], max_pixels: int) -> ValueError:
    """The error for an image over the pixel limit."""
    w, h = size
    return ValueError(f"too many pixels: {w}x{h} = {w * h} > {max_pixels} (possible decompression bomb)")


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) with PIL's decompression-bomb warning turned into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=SAFE_FORMATS)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise ValueError(f"too many pixels: {e}") from None
        except UnidentifiedImageError:
            raise ValueError(f"not an image (unrecognised format; {len(data)} bytes)") from None
        except Exception as e:  # any header parsing failure means a corrupt file
            raise ValueError(f"corrupt image header: {type(e).__name__}: {e}") from None
    if img.width * img.height > max_pixels:
        raise _too_many_pixels(img.size, max_pixels)
    return img


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Bytes -> fully loaded, EXIF-oriented PIL image; ``ValueError`` with a short reason on any failure."""
    if not data:
        raise ValueError("empty file (0 bytes)")
    img = _open(data, max_pixels)
    try:
        img.load()
    except Exception as e:  # decoders raise OSError, SyntaxError, struct.error, ...
        raise ValueError(f"truncated or corrupt {img.format} image: {type(e).__name__}: {e}") from None
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # a malformed EXIF block: keep the pixels as stored
        pass
    return img


def check_crop(crop: str) -> str:
    """Validate a crop mode name."""
    if crop not in CROPS:
        raise ValueError(f"unknown crop {crop!r}; valid choices: {', '.join(CROPS)}")
    return crop


def check_resolution(resolution: int) -> int:
    """Validate an output side length."""
    try:
        resolution = operator.index(resolution)
    except TypeError:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}") from None
    if resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution}")
    return resolution


def to_tensor(img: Image.Image) -> Tensor:
    """8-bit RGB PIL image -> float32 (3, H, W) in [-1, 1]."""
    return TF.pil_to_tensor(img).float().div_(127.5).sub_(1.0).contiguous()


class ImageTransform:
    """PIL image -> float32 (3, R, R) in [-1, 1]: resize shorter side, centre/random crop, optional flip."""

    def __init__(self, resolution: int, crop: str = "center", flip: bool = False) -> None:
        """Validate and store the output side ``resolution``, the ``crop`` mode and whether to ``flip``."""
        self.resolution = check_resolution(resolution)
        self.crop = check_crop(crop)
        self.flip = bool(flip)

    def __repr__(self) -> str:
        """Constructor-style representation."""
        return f"ImageTransform(resolution={self.resolution}, crop={self.crop!r}, flip={self.flip})"

    def resize(self, img: Image.Image) -> Image.Image:
        """Resize the shorter side to the resolution (antialiased bicubic; no-op when already there)."""
        if min(img.size) == self.resolution:
            return img
        return TF.resize(img, [self.resolution], interpolation=InterpolationMode.BICUBIC, antialias=True)

    def crop_square(self, img: Image.Image) -> Image.Image:
        """Centre or random resolution x resolution crop of an image whose shorter side is the resolution."""
        r = self.resolution
        if self.crop == "center":
            return TF.center_crop(img, [r, r])
        top = int(torch.randint(0, img.height - r + 1, ()))
        left = int(torch.randint(0, img.width - r + 1, ()))
        return TF.crop(img, top, left, r, r)

    def __call__(self, img: Image.Image) -> Tensor:
        """Convert to RGB, resize, crop, maybe flip, and scale to [-1, 1]."""
        img = self.crop_square(self.resize(to_rgb(img)))
        if self.flip and bool(torch.rand(()) < 0.5):
            img = TF.horizontal_flip(img)
        return to_tensor(img)
