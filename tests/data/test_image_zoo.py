"""The corrupt-image zoo (issue 8): broken files in a folder or a shard are skipped and counted, never fatal;
unusual but valid modes (CMYK, 16-bit, RGBA, LA, P, L, 1) become the right 8-bit RGB colours."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from conftest import run_cli
from PIL import Image

from ldmkit.data.access import EachOnce
from ldmkit.data.folder import ImageFolderDataset
from ldmkit.data.wds import wds_dataset

S = 8  # image side = dataset resolution: no resampling, so every pixel keeps its decoded colour


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    """An image's file bytes."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk (length, type, data, CRC)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_rgb16(rgb: tuple[int, int, int], w: int = S, h: int = S) -> bytes:
    """A 48-bit (16 bits per channel) RGB PNG of one colour (PIL cannot write these)."""
    row = b"\0" + np.tile(np.array(rgb, ">u2"), w).tobytes()
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(row * h))
            + png_chunk(b"IEND", b""))


def bomb_png(w: int = 20000, h: int = 20000) -> bytes:
    """A tiny grayscale PNG whose header claims w x h pixels (over PIL's decompression-bomb limit)."""
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0")) \
        + png_chunk(b"IEND", b"")


def palette(transparent: bool) -> bytes:
    """A P-mode PNG of palette index 1 = blue (index 1 transparent if asked)."""
    img = Image.new("P", (S, S), 1)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    return encode(img, **({"transparency": 1} if transparent else {}))


# name -> (file bytes, expected RGB, tolerance). Transparency is composited onto white; 16-bit is v / 257.
GOOD = {
    "rgb.png": (encode(Image.new("RGB", (S, S), (10, 200, 30))), (10, 200, 30), 0),
    "rgb.jpg": (encode(Image.new("RGB", (S, S), (200, 100, 50)), "JPEG", quality=95), (200, 100, 50), 3),
    "cmyk.jpg": (encode(Image.new("CMYK", (S, S), (0, 255, 255, 0)), "JPEG", quality=95), (255, 0, 0), 3),
    "gray.png": (encode(Image.new("L", (S, S), 77)), (77, 77, 77), 0),
    "gray16.png": (encode(Image.fromarray(np.full((S, S), 1000, np.uint16))), (4, 4, 4), 0),  # 3.89 -> 4
    "gray16_white.png": (encode(Image.fromarray(np.full((S, S), 65535, np.uint16))), (255, 255, 255), 0),
    "rgb16.png": (png_rgb16((65535, 32896, 51400)), (255, 128, 200), 1),  # PIL keeps the high bytes
    "rgba.png": (encode(Image.new("RGBA", (S, S), (255, 0, 0, 128))), (255, 127, 127), 1),
    "rgba_clear.png": (encode(Image.new("RGBA", (S, S), (0, 0, 255, 0))), (255, 255, 255), 0),
    "la.png": (encode(Image.new("LA", (S, S), (0, 255))), (0, 0, 0), 0),
    "palette.png": (palette(False), (0, 0, 255), 0),
    "palette_clear.png": (palette(True), (255, 255, 255), 0),
    "bilevel.png": (encode(Image.new("1", (S, S), 1)), (255, 255, 255), 0),
    "png_named.jpg": (encode(Image.new("RGB", (S, S), (1, 2, 3))), (1, 2, 3), 0),  # the content decides
}
BAD = {
    "empty.jpg": (b"", "empty file"),
    "text.png": (b"hello, not an image\n", "not an image"),
    "html.jpg": (b"<html>404 not found</html>", "not an image"),
    "truncated.jpg": (GOOD["rgb.jpg"][0][:200], "corrupt"),
    "truncated.png": (encode(Image.effect_noise((64, 64), 64))[:300], "truncated"),
    "bomb.png": (bomb_png(), "too many pixels"),
}


def centre_rgb(image) -> tuple[int, ...]:
    """The 8-bit colour of an item image's centre pixel."""
    return tuple(int(v) for v in ((image[:, S // 2, S // 2] + 1) * 127.5).round())


def check_items(items: list[dict], key_of) -> None:
    """Exactly the good files, each with its expected colour everywhere."""
    assert sorted(key_of(it["key"]) for it in items) == sorted(GOOD)
    for it in items:
        _, rgb, tol = GOOD[key_of(it["key"])]
        pixels = ((it["image"] + 1) * 127.5).round().reshape(3, -1)
        assert pixels.min(1).values.tolist() == pixels.max(1).values.tolist(), it["key"]  # one solid colour
        assert max(abs(a - b) for a, b in zip(centre_rgb(it["image"]), rgb, strict=True)) <= tol, (it["key"], rgb)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    """A folder with every good and every broken file."""
    root = tmp_path_factory.mktemp("zoo")
    for name, (data, *_) in {**GOOD, **BAD}.items():
        (root / name).write_bytes(data)
    return root


def test_folder_yields_the_good_images_in_rgb_and_counts_the_bad(zoo):
    ds = ImageFolderDataset(zoo, resolution=S, val_fraction=0.0)
    assert len(ds) == len(GOOD) + len(BAD)
    check_items(list(EachOnce(ds)), lambda key: key)
    assert ds.skips.count == len(BAD)
    reasons = ds.skips.summary()["examples"]
    for name, (_, why) in BAD.items():
        assert any(r.startswith(f"{name}: ") and why in r for r in reasons), (name, reasons)
    assert ds[ds.files.index("empty.jpg")]["key"] not in BAD  # a training read gets a neighbour, not an error


def test_shard_yields_the_good_images_in_rgb_and_counts_the_bad(tmp_path):
    with wds.TarWriter(str(tmp_path / "00000.tar"), encoder=False) as sink:
        for name, (data, *_) in {**GOOD, **BAD}.items():
            ext = name.rpartition(".")[2]
            sink.write({"__key__": name.replace(".", "_"), ext: data, "txt": name.encode()})
    ds = wds_dataset(str(tmp_path / "00000.tar"), resolution=S, shuffle=0, shuffle_shards=False)
    items = list(ds)
    names = {it["key"]: it["caption"] for it in items}
    check_items(items, names.__getitem__)
    assert ds.skips.count == len(BAD)


def test_encode_dataset_skips_and_counts_the_broken_files(zoo, tiny_ae, tmp_path):
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in zoo.iterdir()}
    run_cli("encode-dataset", f"ae={tiny_ae}", "dataset=folder", f"dataset.path={zoo}", "dataset.val_fraction=0",
            f"out={tmp_path}/lat")
    manifest = json.loads((tmp_path / "lat" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["count"] == len(GOOD)
    assert manifest["skipped_samples"] == len(BAD)
    examples = " | ".join(e for unit in manifest["units"].values() for e in unit["examples"])
    assert all(name in examples for name in BAD)
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in zoo.iterdir()} == before
