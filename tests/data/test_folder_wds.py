"""Image folders and webdataset shards: every good image once, right pixels/captions/classes, bad ones counted."""

from __future__ import annotations

import copy
import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from ldmkit.data.folder import ImageFolderDataset
from ldmkit.data.skips import SkipCounter, counting_handler
from ldmkit.data.transforms import ImageTransform, decode_image, to_rgb
from ldmkit.data.wds import wds_dataset
from ldmkit.errors import UserError

R = 16
GRAY = 128 / 127.5 - 1.0
TOL = 1.5 / 127.5


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    """An image's file bytes."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(seed: int, size: tuple[int, int] = (24, 20)) -> Image.Image:
    """A random RGB image."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def palette(transparent: bool) -> Image.Image:
    """A P-mode image of palette index 1 = (0, 128, 0), optionally transparent."""
    img = Image.new("P", (20, 20), 1)
    img.putpalette([0, 0, 0, 0, 128, 0] + [0] * 762)
    if transparent:
        img.info["transparency"] = 1
    return img


def bomb_png(w: int = 10000, h: int = 10000) -> bytes:
    """A tiny PNG whose header claims w x h pixels (a decompression-bomb stand-in)."""
    data = bytearray(encode(Image.new("L", (1, 1))))
    ihdr = struct.pack(">II", w, h) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def truncated_jpeg() -> bytes:
    """The first half of a JPEG."""
    data = encode(noise(99, (64, 64)), "JPEG")
    return data[: len(data) // 2]


BAD_FILES = {"cats/trunc.jpg", "dogs/bomb.png", "dogs/empty.png", "dogs/fake.jpg"}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A class-folder tree: 19 good images of many modes, 4 broken files, captions, ignored extras."""
    root = tmp_path / "imgs"
    files: dict[str, bytes] = {
        "top.png": encode(Image.new("RGB", (20, 20), (10, 20, 30))),
        "cats/red.png": encode(Image.new("RGB", (40, 32), (255, 0, 0))),
        "cats/gray.png": encode(Image.new("L", (20, 20), 128)),
        "cats/rgba.png": encode(Image.new("RGBA", (20, 20), (0, 0, 255, 0))),
        "cats/pal.png": encode(palette(False)),
        "cats/pal_t.png": encode(palette(True), transparency=1),
        "cats/trunc.jpg": truncated_jpeg(),
        "dogs/cmyk.jpg": encode(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), "JPEG", quality=95),
        "dogs/i16.png": encode(Image.fromarray(np.full((20, 20), 32896, np.uint16))),
        "dogs/Upper.JPG": encode(noise(7), "JPEG"),
        "dogs/sub/deep.png": encode(noise(8)),
        "dogs/empty.png": b"",
        "dogs/fake.jpg": b"this is not an image\n",
        "dogs/bomb.png": bomb_png(),
        "cats/._red.jpg": b"AppleDouble junk",
        ".hidden/x.png": encode(noise(9)),
        "dogs/readme.md": b"# not an image",
    }
    files.update({f"cats/noise_{k}.jpg": encode(noise(k), "JPEG") for k in range(10)})
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "cats/red.txt").write_text("a red square\n")
    (root / "cats/noise_3.txt").write_text("static")
    return root


GOOD_FILES = {
    "top.png", "cats/red.png", "cats/gray.png", "cats/rgba.png", "cats/pal.png", "cats/pal_t.png",
    "dogs/cmyk.jpg", "dogs/i16.png", "dogs/Upper.JPG", "dogs/sub/deep.png",
} | {f"cats/noise_{k}.jpg" for k in range(10)}


def check_image(image: torch.Tensor) -> None:
    """Shape, dtype and range of an item image."""
    assert image.shape == (3, R, R) and image.dtype == torch.float32
    assert image.min() >= -1.0 and image.max() <= 1.0


def test_folder_reads_every_good_image_and_counts_bad_ones(folder):
    ds = ImageFolderDataset(folder, resolution=R, val_fraction=0.0)
    assert len(ds) == len(GOOD_FILES | BAD_FILES) and ds.classes == ["", "cats", "dogs"]
    items = [ds[i] for i in range(len(ds))]
    keys = [it["key"] for it in items]
    assert set(keys) == GOOD_FILES and len(keys) - len(set(keys)) == len(BAD_FILES)
    assert ds.skips.count == len(BAD_FILES)  # empty.png + fake.jpg are adjacent: each still counted once
    reasons = " | ".join(ds.skips.summary()["examples"])
    for bad in BAD_FILES:
        assert bad in reasons
    assert "too many pixels" in reasons and "empty file" in reasons and "not an image" in reasons
    assert [ds[i]["key"] for i in range(len(ds))] == keys and ds.skips.count == len(BAD_FILES)
    by_key = {it["key"]: it for it in items}
    for it in items:
        check_image(it["image"])
    assert torch.allclose(by_key["cats/rgba.png"]["image"], torch.ones(3, R, R), atol=TOL)  # alpha 0 -> white
    assert torch.allclose(by_key["cats/pal_t.png"]["image"], torch.ones(3, R, R), atol=TOL)
    for key in ("cats/gray.png", "dogs/i16.png"):
        assert torch.allclose(by_key[key]["image"], torch.full((3, R, R), GRAY), atol=TOL)
    green = torch.tensor([-1.0, 128 / 127.5 - 1, -1.0])[:, None, None].expand(3, R, R)
    assert torch.allclose(by_key["cats/pal.png"]["image"], green, atol=TOL)
    red = torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, R, R)
    assert torch.allclose(by_key["cats/red.png"]["image"], red, atol=TOL)
    assert torch.allclose(by_key["dogs/cmyk.jpg"]["image"], red, atol=4 / 127.5)
    assert by_key["cats/red.png"]["caption"] == "a red square" and by_key["cats/noise_3.jpg"]["caption"] == "static"
    assert by_key["cats/gray.png"]["caption"] == ""
    labels = {k: (int(v["class_label"]), v["class_name"]) for k, v in by_key.items()}
    assert labels["top.png"] == (0, "") and labels["cats/red.png"] == (1, "cats")
    assert labels["dogs/sub/deep.png"] == (2, "dogs") and by_key["top.png"]["class_label"].dtype == torch.int64


def test_folder_counts_skips_across_dataloader_workers(folder):
    ds = ImageFolderDataset(folder, resolution=R, val_fraction=0.0)
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    keys = [k for batch in loader for k in batch["key"]]
    assert set(keys) == GOOD_FILES and len(keys) == len(ds)
    assert ds.skips.count == len(BAD_FILES)


def test_folder_split_is_disjoint_deterministic_and_capped(folder):
    train = ImageFolderDataset(folder, resolution=R, split="train", val_fraction=0.3, crop="random", flip=True)
    val = ImageFolderDataset(folder, resolution=R, split="val", val_fraction=0.3, crop="random", flip=True)
    assert val.files and train.files and not set(train.files) & set(val.files)
    assert set(train.files) | set(val.files) == GOOD_FILES | BAD_FILES
    assert ImageFolderDataset(folder, split="val", val_fraction=0.3).files == val.files
    assert ImageFolderDataset(folder, split="val", val_fraction=0.3, seed=1).files != val.files
    assert val.transform.crop == "center" and not val.transform.flip and train.transform.flip
    assert ImageFolderDataset(folder, val_fraction=0.3, size=5).files == train.files[:5]


def test_folder_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError) as err:
        ImageFolderDataset(tmp_path / "nope")
    assert "nope" in str(err.value) and "*.jpg" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match=r"no image files.*\*\.webp"):
        ImageFolderDataset(tmp_path)
    with pytest.raises(UserError, match="crop"):
        ImageFolderDataset(tmp_path, crop="middle")
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.jpg").write_bytes(b"nope")
    ds = ImageFolderDataset(tmp_path, val_fraction=0.0)
    with pytest.raises(UserError, match="none of the 2 image files") as err:
        ds[0]
    assert "\n" not in str(err.value) and ds.skips.count == 2
    noise(1).save(tmp_path / "c.png")  # no sub-folders: no class fields
    assert set(ImageFolderDataset(tmp_path, resolution=R, val_fraction=0.0)[0]) == {"image", "caption", "key"}


MODES = [
    (Image.new("L", (4, 4), 128), (128, 128, 128)),
    (Image.new("LA", (4, 4), (128, 0)), (255, 255, 255)),
    (Image.new("LA", (4, 4), (128, 255)), (128, 128, 128)),
    (palette(False), (0, 128, 0)),
    (palette(True), (255, 255, 255)),
    (Image.new("RGBA", (4, 4), (0, 0, 255, 0)), (255, 255, 255)),
    (Image.new("RGBA", (4, 4), (0, 0, 255, 255)), (0, 0, 255)),
    (Image.new("RGBA", (4, 4), (255, 0, 0, 128)), (255, 127, 127)),
    (Image.fromarray(np.full((4, 4), 32896, np.uint16)), (128, 128, 128)),
    (Image.frombytes("I;16B", (4, 4), np.full((4, 4), 65535, ">u2").tobytes()), (255, 255, 255)),
    (Image.fromarray(np.full((4, 4), 32896, np.int32)), (128, 128, 128)),
    (Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
    (Image.new("1", (4, 4), 1), (255, 255, 255)),
]


@pytest.mark.parametrize(("img", "rgb"), MODES, ids=[f"{m.mode}-{i}" for i, (m, _) in enumerate(MODES)])
def test_to_rgb(img, rgb):
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == img.size
    assert np.abs(np.asarray(out).astype(int) - np.array(rgb)).max() <= 1


def test_decode_image_reasons():
    assert decode_image(encode(noise(1))).size == (24, 20)
    for data, reason in [
        (b"", "empty file"),
        (b"hello", "not an image"),
        (truncated_jpeg(), "truncated"),
        (bomb_png(), "too many pixels"),
        (encode(noise(1)), "24x20"),
    ]:
        with pytest.raises(ValueError, match=reason):
            decode_image(data, max_pixels=100 if reason == "24x20" else 89_478_485)


def test_transform_shapes_crop_flip_and_validation():
    torch.manual_seed(0)
    img = noise(3, (40, 20))
    center = ImageTransform(R)(img)
    check_image(center)
    assert torch.equal(center, ImageTransform(R)(img))
    crops = [ImageTransform(R, crop="random")(img) for _ in range(10)]
    assert all(c.shape == (3, R, R) for c in crops) and any(not torch.equal(c, crops[0]) for c in crops)
    half = Image.fromarray(np.concatenate([np.zeros((R, R // 2, 3), np.uint8), np.full((R, R // 2, 3), 255, np.uint8)], 1))
    plain = ImageTransform(R)(half)
    flips = [ImageTransform(R, flip=True)(half) for _ in range(20)]
    assert all(torch.equal(f, plain) or torch.equal(f, plain.flip(-1)) for f in flips)
    assert {torch.equal(f, plain) for f in flips} == {True, False}
    with pytest.raises(ValueError, match="crop"):
        ImageTransform(R, crop="middle")
    with pytest.raises(ValueError, match="resolution"):
        ImageTransform(0)


def write_shard(path: Path, samples: list[dict]) -> None:
    """Write raw-bytes samples to one tar shard."""
    with wds.TarWriter(str(path), encoder=False) as sink:
        for s in samples:
            sink.write(s)


GOOD_KEYS = {f"{k:09d}" for k in (0, 1, 2, 4, 5, 7, 8, 9)}


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """Two img2dataset-style shards: 8 good samples (jpg/jpeg/png/webp/JPG), a truncated and a fake JPEG."""
    jpg = encode(noise(0), "JPEG")
    write_shard(tmp_path / "00000.tar", [
        {"__key__": "000000000", "jpg": jpg, "txt": b"caption 0", "json": b'{"url": "u0"}'},
        {"__key__": "000000001", "png": encode(Image.new("RGB", (20, 20), (0, 0, 255))), "txt": b"blue"},
        {"__key__": "000000002", "webp": encode(Image.new("RGB", (20, 20), (0, 255, 0)), "WEBP", lossless=True)},
        {"__key__": "000000003", "jpg": truncated_jpeg(), "txt": b"broken"},
        {"__key__": "000000004", "jpeg": jpg, "txt": b"four"},
    ])
    write_shard(tmp_path / "00001.tar", [
        {"__key__": "000000005", "jpg": jpg, "txt": b"five", "json": b"{}"},
        {"__key__": "000000006", "jpg": b"<html>not found</html>", "txt": b"fake"},
        {"__key__": "000000007", "png": encode(Image.new("L", (20, 20), 128))},
        {"__key__": "000000008", "jpg": jpg},
        {"__key__": "000000009", "JPG": jpg},
    ])
    return tmp_path


def test_wds_reads_every_good_sample_once_without_sleeping(shards):
    ds = wds_dataset(f"{shards}/{{00000..00001}}.tar", resolution=R, shuffle=0, shuffle_shards=False)
    start = time.perf_counter()
    items = list(ds)
    assert time.perf_counter() - start < 1.0
    keys = [it["key"] for it in items]
    assert sorted(keys) == sorted(GOOD_KEYS)
    assert ds.skips.count == 2
    reasons = " | ".join(ds.skips.summary()["examples"])
    assert "000000003.jpg" in reasons and "truncated" in reasons and "000000006.jpg: not an image" in reasons
    by_key = {it["key"]: it for it in items}
    for it in items:
        check_image(it["image"])
    blue = torch.tensor([-1.0, -1.0, 1.0])[:, None, None].expand(3, R, R)
    assert torch.allclose(by_key["000000001"]["image"], blue, atol=TOL)
    assert torch.allclose(by_key["000000007"]["image"], torch.full((3, R, R), GRAY), atol=TOL)
    assert by_key["000000000"]["caption"] == "caption 0" and by_key["000000000"]["json"] == '{"url": "u0"}'
    assert by_key["000000002"]["caption"] == "" and by_key["000000002"]["json"] == ""


def test_wds_url_forms(shards):
    expected = sorted(GOOD_KEYS)
    for urls in ([str(shards / "00000.tar"), str(shards / "00001.tar")], str(shards),
                 f"pipe:cat {shards}/{{00000..00001}}.tar", f"{shards}/00000.tar::{shards}/00001.tar"):
        assert sorted(it["key"] for it in wds_dataset(urls, resolution=R)) == expected, urls


def test_wds_dataloader_workers_share_the_skip_count(shards):
    ds = wds_dataset(f"{shards}/{{00000..00001}}.tar", resolution=R, shuffle=4)
    keys = [k for batch in DataLoader(ds, batch_size=3, num_workers=2) for k in batch["key"]]
    assert sorted(keys) == sorted(GOOD_KEYS) and ds.skips.count == 2


def test_wds_sample_shuffle_is_seeded(shards):
    urls = f"{shards}/{{00000..00001}}.tar"

    def order(ds):
        return [it["key"] for it in ds]

    first = wds_dataset(urls, resolution=R, shuffle=8, shuffle_shards=False, seed=3)
    again = wds_dataset(urls, resolution=R, shuffle=8, shuffle_shards=False, seed=3)
    a = order(first)
    assert sorted(a) == sorted(GOOD_KEYS) and a == order(again)  # the same seed: the same order
    assert a != sorted(GOOD_KEYS)  # shuffled at all
    others = [order(wds_dataset(urls, resolution=R, shuffle=8, shuffle_shards=False, seed=s)) for s in range(4, 8)]
    assert any(o != a for o in others)  # another seed: another order
    assert any(order(first) != a for _ in range(4))  # a later pass of the same dataset: a new order


def test_wds_epochs_sizes_and_val(shards):
    urls = f"{shards}/{{00000..00001}}.tar"
    locked = wds_dataset(urls, resolution=R, resampled=True, epoch_size=7)
    assert len(locked) == 7 and len(list(locked)) == 7
    assert sum(len(b["key"]) for b in DataLoader(locked, batch_size=2, num_workers=2)) == 7
    looped = wds_dataset(urls, resolution=R, epoch_size=12)
    assert len(list(looped)) == 12
    assert len(list(wds_dataset(urls, resolution=R, size=3))) == 3
    val = wds_dataset(urls, resolution=R, split="val", size=5)
    assert [it["key"] for it in val] == [it["key"] for it in val] == sorted(GOOD_KEYS)[:5]
    only = wds_dataset(urls, resolution=R, split="val", val_urls=str(shards / "00001.tar"))
    assert sorted(it["key"] for it in only) == ["000000005", "000000007", "000000008", "000000009"]


def test_wds_errors(shards):
    with pytest.raises(UserError) as err:
        wds_dataset(f"{shards}/{{00005..00006}}.tar")
    assert "{00005..00006}.tar" in str(err.value) and "no file matches" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="1 of 3 shards missing"):
        wds_dataset(f"{shards}/{{00000..00002}}.tar")
    with pytest.raises(UserError, match="valid choices: split_by_node"):
        wds_dataset(str(shards), nodesplitter="by_magic")
    write_shard(shards / "extra.tar", [{"__key__": "x", "txt": b"caption only"}])
    ds = wds_dataset(str(shards / "extra.tar"))
    assert list(ds) == [] and ds.skips.count == 1 and "no image member" in ds.skips.reasons()[0]


def test_counting_handler_records_the_cause_and_does_not_sleep():
    counter = SkipCounter(examples=2)
    handler = counting_handler(counter)
    start = time.perf_counter()
    for _ in range(3):
        try:
            try:
                raise OSError("image file is truncated")
            except OSError as e:
                raise wds.autodecode.DecodingError("s.tar", "k", "jpg", {}) from e
        except Exception as exn:  # the handler gets whatever webdataset caught
            assert handler(exn) is True
    assert time.perf_counter() - start < 0.1
    assert counter.summary() == {"skipped": 3, "examples": ["s.tar k.jpg: OSError: image file is truncated"] * 2}
    snapshot = copy.deepcopy(counter)
    snapshot.skip("later")
    assert counter.count == 3 and snapshot.count == 4
