"""The paper's datasets read from tiny trees in their published formats: class ids, boxes through resize + crop,
label orders, padding, flags, derived lowres/mask fields, splits, sizes, one-line errors and the Hydra options."""

from __future__ import annotations

import csv
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from ldmkit.data.coco import CocoDataset
from ldmkit.data.derived import Derived, lama_mask
from ldmkit.data.imagenet import ImageNetDataset
from ldmkit.data.openimages import OpenImagesDataset
from ldmkit.data.paper_datasets import (
    LandscapesDataset,
    PaperImageFolder,
    Placement,
    laion_dataset,
    resized_size,
)
from ldmkit.data.shapes import downsample
from ldmkit.data.transforms import ImageTransform
from ldmkit.data.wds import wds_dataset
from ldmkit.errors import UserError

R = 16  # 40x30 images -> resized 21x16, centre crop left = round(2.5) = 2, top = 0
OPTIONS = ("imagenet", "coco", "openimages", "laion", "celebahq", "ffhq", "lsun_churches", "lsun_bedrooms", "places",
           "landscapes")


def photo(path: Path, seed: int = 0, size: tuple[int, int] = (40, 30), fmt: str = "JPEG") -> Path:
    """A small random image file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, fmt)
    return path


def one_line_error(match: str, build) -> str:
    """Build something that must fail with a one-line UserError matching ``match``; return the message."""
    with pytest.raises(UserError, match=match) as info:
        build()
    assert "\n" not in str(info.value)
    return str(info.value)


# --- geometry ------------------------------------------------------------------------------------------------


def test_placement_matches_image_transform_and_moves_boxes_by_hand(tmp_path):
    assert resized_size(40, 30, R) == (21, 16) and resized_size(30, 40, R) == (16, 21)
    img = Image.open(photo(tmp_path / "a.png", fmt="PNG"))
    where = Placement(21, 16, 2, 0, R)
    assert torch.equal(where.image(img), ImageTransform(R, "center")(img))  # same pixels as dataset=folder
    # box x 4..20, y 3..15 of 40x30 -> resized x 2.1..10.5, y 1.6..8 -> crop left 2 -> / 16
    boxes, keep = where.boxes(np.array([[0.1, 0.1, 0.5, 0.5], [0.0, 0.0, 0.025, 1.0], [0.75, 0.0, 1.0, 1.0]]))
    np.testing.assert_allclose(boxes[0], [0.1 / 16, 0.1, 8.5 / 16, 0.5], atol=1e-6)
    np.testing.assert_allclose(boxes[2], [13.75 / 16, 0.0, 1.0, 1.0], atol=1e-6)  # clamped to the crop
    assert keep.tolist() == [True, False, True]  # the thin box left of the crop is dropped
    flipped, _ = Placement(21, 16, 2, 0, R, flip=True).boxes(np.array([[0.1, 0.1, 0.5, 0.5]]))
    np.testing.assert_allclose(flipped[0], [1 - 8.5 / 16, 0.1, 1 - 0.1 / 16, 0.5], atol=1e-6)


# --- ImageNet ------------------------------------------------------------------------------------------------


def imagenet_tree(root: Path, wnids=("n02000002", "n01000001", "n03000003")) -> Path:
    """train/<wnid>/*.JPEG (two per class, plus a stray file) and a flat val/ with val_labels.txt."""
    for k, w in enumerate(wnids):
        for j in range(2):
            photo(root / "train" / w / f"{w}_{j}.JPEG", seed=10 * k + j)
    photo(root / "train" / "stray.JPEG")
    val = {f"ILSVRC2012_val_0000000{j + 1}.JPEG": wnids[k % len(wnids)] for j, k in enumerate((2, 1, 0))}
    for j, name in enumerate(val):
        photo(root / "val" / name, seed=100 + j)
    (root / "val_labels.txt").write_text("".join(f"{n} {w}\n" for n, w in val.items()))
    return root


def test_imagenet_train_ids_follow_sorted_wnids(tmp_path):
    root = imagenet_tree(tmp_path)
    ds = ImageNetDataset(root, resolution=R)
    assert ds.classes == ["n01000001", "n02000002", "n03000003"]
    assert len(ds) == 6  # the stray file directly in train/ has no class
    items = [ds[i] for i in range(len(ds))]
    assert [int(it["class_label"]) for it in items] == [0, 0, 1, 1, 2, 2]
    assert [it["class_name"] for it in items][::2] == ds.classes
    assert items[0]["key"] == "train/n01000001/n01000001_0.JPEG"
    assert items[0]["class_label"].dtype == torch.int64 and items[0]["caption"] == ""
    assert items[0]["image"].shape == (3, R, R) and -1 <= items[0]["image"].min() <= items[0]["image"].max() <= 1
    assert len(ImageNetDataset(root, resolution=R, size=3)) == 3
    subset = ImageNetDataset(imagenet_tree(tmp_path / "sub", wnids=("n09000009", "n04000004")), resolution=R)
    assert subset.classes == ["n04000004", "n09000009"] and int(subset[0]["class_label"]) == 0


def test_imagenet_val_from_label_files_and_folders(tmp_path):
    root = imagenet_tree(tmp_path)
    val = ImageNetDataset(root, resolution=R, split="val")
    assert [(it["key"], int(it["class_label"])) for it in (val[i] for i in range(3))] == [
        ("val/ILSVRC2012_val_00000001.JPEG", 2), ("val/ILSVRC2012_val_00000002.JPEG", 0),
        ("val/ILSVRC2012_val_00000003.JPEG", 1)]
    (root / "val_labels.txt").unlink()
    with open(root / "LOC_val_solution.csv", "w", newline="") as f:  # Kaggle: ids without extension, wnid first
        w = csv.writer(f)
        w.writerow(["ImageId", "PredictionString"])
        w.writerows([["ILSVRC2012_val_00000003", "n02000002 1 2 30 20 n02000002 3 4 9 9"],
                     ["ILSVRC2012_val_00000001", "n03000003 0 0 10 10"],
                     ["ILSVRC2012_val_00000002", "n01000001 5 5 20 20"]])
    kaggle = ImageNetDataset(root, resolution=R, split="val", size=2)
    assert len(kaggle) == 2 and [int(kaggle[i]["class_label"]) for i in range(2)] == [2, 0]
    folders = tmp_path / "folders"  # val/<wnid>/ layout, no train/: ids from the val wnids
    photo(folders / "val" / "n05000005" / "b.JPEG")
    photo(folders / "val" / "n01000001" / "a.JPEG")
    ds = ImageNetDataset(folders, resolution=R, split="val")
    assert ds.classes == ["n01000001", "n05000005"] and int(ds[1]["class_label"]) == 1


def test_imagenet_errors_are_one_line(tmp_path):
    root = imagenet_tree(tmp_path)
    (root / "val_labels.txt").unlink()
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text("65\n970\n230\n")
    one_line_error("meta.mat", lambda: ImageNetDataset(root, resolution=R, split="val"))
    (root / "val_labels.txt").write_text("ILSVRC2012_val_00000001.JPEG n03000003\n")
    one_line_error("2 of 3 val images have no label", lambda: ImageNetDataset(root, resolution=R, split="val"))
    (root / "val_labels.txt").write_text("".join(f"ILSVRC2012_val_0000000{j}.JPEG n07000007\n" for j in (1, 2, 3)))
    one_line_error("n07000007 is not one of the 3 wnid folders", lambda: ImageNetDataset(root, R, split="val"))
    one_line_error("no train/ folder", lambda: ImageNetDataset(tmp_path / "val", resolution=R))
    one_line_error("no such folder", lambda: ImageNetDataset(tmp_path / "nowhere", resolution=R))
    one_line_error("no such file", lambda: ImageNetDataset(root, R, split="val", val_labels="labels.txt"))


# --- COCO ----------------------------------------------------------------------------------------------------

CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]


def coco_tree(root: Path) -> Path:
    """images/{train,val}2017 + captions/instances JSON as the official files (40x30 images)."""
    for split, names in (("train", ["000000000009.jpg", "000000000025.jpg"]), ("val", ["000000000139.jpg"])):
        images = [{"id": int(n[:12]), "file_name": n, "width": 40, "height": 30} for n in names]
        images.append({"id": 777, "file_name": "000000000777.jpg", "width": 40, "height": 30})  # no file
        for j, n in enumerate(names):
            photo(root / "images" / f"{split}2017" / n, seed=j)
        first = images[0]["id"]
        anns = [  # (x, y, w, h) pixels of the 40x30 image
            {"id": 1, "image_id": first, "category_id": 3, "bbox": [30, 0, 10, 30], "area": 300, "iscrowd": 0},
            {"id": 2, "image_id": first, "category_id": 90, "bbox": [0, 0, 1, 30], "area": 30, "iscrowd": 0},
            {"id": 3, "image_id": first, "category_id": 1, "bbox": [4, 3, 16, 12], "area": 192, "iscrowd": 1},
        ]
        caps = [{"id": 10, "image_id": first, "caption": " A car next to a person. "},
                {"id": 11, "image_id": first, "caption": "Another caption."}]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(
            {"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": CATEGORIES}))
        (root / "annotations" / f"captions_{split}2017.json").write_text(json.dumps(
            {"info": {}, "licenses": [], "images": images, "annotations": caps}))
    return root


def test_coco_boxes_labels_padding_and_captions(tmp_path):
    ds = CocoDataset(coco_tree(tmp_path), resolution=R, max_objects=4)
    assert ds.files == ["000000000009.jpg", "000000000025.jpg"]  # the listed image without a file is left out
    assert ds.class_names == ["person", "car", "toothbrush"]  # sorted by category id 1, 3, 90
    item = ds[0]
    assert item["caption"] == "A car next to a person." and item["key"] == "000000000009.jpg"
    assert item["boxes"].shape == (4, 4) and item["boxes"].dtype == torch.float32
    # the person box (by hand, see test_placement...) is larger than the car box clamped at the right edge;
    # the toothbrush box lies left of the crop and is dropped
    np.testing.assert_allclose(item["boxes"][:2].numpy(), [[0.1 / 16, 0.1, 8.5 / 16, 0.5], [13.75 / 16, 0, 1, 1]],
                               atol=1e-6)
    assert item["box_labels"].tolist() == [0, 1, -1, -1] and item["box_labels"].dtype == torch.int64
    assert item["boxes"][2:].abs().sum() == 0
    assert ds[1]["box_labels"].tolist() == [-1] * 4 and ds[1]["caption"] == ""
    assert CocoDataset(tmp_path, resolution=R, max_objects=1)[0]["box_labels"].tolist() == [0]  # largest kept
    val = CocoDataset(tmp_path, resolution=R, split="val", size=1)
    assert val.files == ["000000000139.jpg"] and val[0]["box_labels"][:2].tolist() == [0, 1]
    torch.manual_seed(0)
    rnd = CocoDataset(tmp_path, resolution=R, caption_choice="random")
    assert {rnd[0]["caption"] for _ in range(20)} == {"A car next to a person.", "Another caption."}
    no_boxes = CocoDataset(tmp_path, resolution=R, instances=None)
    assert no_boxes[0]["box_labels"].tolist() == [-1] * 30 and no_boxes.files == ds.files


def test_coco_errors_are_one_line(tmp_path):
    root = coco_tree(tmp_path)
    (root / "annotations" / "instances_val2017.json").unlink()
    one_line_error("instances_val2017.json does not exist", lambda: CocoDataset(root, R, split="val"))
    (root / "annotations" / "instances_val2017.json").write_text('{"images": []')
    one_line_error("not readable JSON", lambda: CocoDataset(root, R, split="val"))
    (root / "annotations" / "instances_val2017.json").write_text('{"images": [], "annotations": []}')
    one_line_error("no 'categories'", lambda: CocoDataset(root, R, split="val"))
    one_line_error("dataset.images=pics/train2017", lambda: CocoDataset(root, R, images="pics/{split}2017"))
    one_line_error("both null", lambda: CocoDataset(root, R, captions=None, instances=None))


# --- OpenImages ----------------------------------------------------------------------------------------------

BOX_HEADER = ["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax", "IsOccluded",
              "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside"]


def openimages_tree(root: Path) -> Path:
    """images/{train,validation}/<ImageID>.jpg, V6 box CSVs (train with the oidv6- prefix), class CSV (no header)."""
    (root / "class-descriptions-boxable.csv").write_text(
        '/m/0k4j,Car\n/m/01s55n,Suitcase\n/m/01g317,Person\n/m/0199g,"Bicycle, mountain"\n')
    rows = {
        "train": [  # a: person (group, inside) + suitcase (occluded, depiction) + car outside the crop; b: car
            ["000a", "xclick", "/m/01g317", "1", "0.1", "0.5", "0.1", "0.5", "0", "0", "1", "0", "1"],
            ["000a", "xclick", "/m/01s55n", "1", "0.75", "1.0", "0.0", "1.0", "1", "0", "0", "1", "-1"],
            ["000a", "xclick", "/m/0k4j", "1", "0.0", "0.025", "0.0", "1.0", "0", "0", "0", "0", "0"],
            ["000b", "activemil", "/m/0k4j", "1", "0.2", "0.4", "0.2", "0.4", "0", "0", "0", "0", "0"],
            ["zzzz", "xclick", "/m/0k4j", "1", "0.2", "0.4", "0.2", "0.4", "0", "0", "0", "0", "0"],  # no file
        ],
        "validation": [["000c", "xclick", "/m/0199g", "1", "0.0", "1.0", "0.0", "1.0", "0", "1", "0", "0", "0"]],
    }
    for subset, body in rows.items():
        name = ("oidv6-" if subset == "train" else "") + f"{subset}-annotations-bbox.csv"
        with open(root / name, "w", newline="") as f:
            csv.writer(f).writerows([BOX_HEADER, *body])
        for image_id in {r[0] for r in body} - {"zzzz"}:
            photo(root / "images" / subset / f"{image_id}.jpg")
    photo(root / "images" / "train" / "0nobox.jpg")  # an image without boxes is not an item
    return root


def test_openimages_boxes_taming_label_order_and_flags(tmp_path):
    ds = OpenImagesDataset(openimages_tree(tmp_path), resolution=R, max_objects=3)
    # ids sorted as strings (/m/0199g < /m/01g317 < /m/0k4j), /m/01s55n moved last
    assert ds.class_names == ["Bicycle, mountain", "Person", "Car", "Suitcase"]
    assert ds.files == ["000a", "000b"] and len(ds) == 2
    item = ds[0]
    assert item["key"] == "000a" and item["caption"] == ""
    np.testing.assert_allclose(item["boxes"][:2].numpy(), [[0.1 / 16, 0.1, 8.5 / 16, 0.5], [13.75 / 16, 0, 1, 1]],
                               atol=1e-6)
    assert item["box_labels"].tolist() == [1, 3, -1]
    assert item["box_flags"].dtype == torch.bool and item["box_flags"].shape == (3, 4)
    # (group, occluded, depiction, inside); -1 (unknown) reads as False
    assert item["box_flags"].tolist() == [[True, False, False, True], [False, True, True, False], [False] * 4]
    assert ds[1]["box_labels"].tolist() == [2, -1, -1]
    val = OpenImagesDataset(tmp_path, resolution=R, split="val")
    assert val.files == ["000c"] and val[0]["box_labels"].tolist()[:2] == [0, -1]
    assert len(OpenImagesDataset(tmp_path, resolution=R, size=1)) == 1


def test_openimages_errors_are_one_line(tmp_path):
    root = openimages_tree(tmp_path)
    one_line_error("test-annotations-bbox.csv: no such file", lambda: OpenImagesDataset(
        root, R, split="val", val_subset="test", images="images/validation"))
    one_line_error("dataset.images=images/test", lambda: OpenImagesDataset(root, R, val_subset="test", split="val"))
    (root / "validation-annotations-bbox.csv").write_text("ImageID,Label,X\n000c,/m/0199g,1\n")
    one_line_error("not an OpenImages box CSV", lambda: OpenImagesDataset(root, R, split="val"))
    (root / "class-descriptions-boxable.csv").unlink()
    one_line_error("dataset.classes", lambda: OpenImagesDataset(root, R))


# --- folders, landscapes, derived fields ----------------------------------------------------------------------


def test_image_folders_ignore_numbered_subfolders_and_take_a_val_folder(tmp_path):
    for k in range(4):
        photo(tmp_path / "ffhq" / f"{k // 2 * 1000:05d}" / f"{k:05d}.png", seed=k, fmt="PNG")
    ds = PaperImageFolder(tmp_path / "ffhq", resolution=R, val_fraction=0.0)
    assert len(ds) == 4 and set(ds[0]) == {"image", "caption", "key"}
    assert int(PaperImageFolder(tmp_path / "ffhq", resolution=R, classes=True)[0]["class_label"]) in (0, 1)
    photo(tmp_path / "lsun_val" / "x.webp", fmt="WEBP")
    val = PaperImageFolder(tmp_path / "ffhq", resolution=R, split="val", val_path=tmp_path / "lsun_val")
    assert val.files == ["x.webp"] and val.split == "val"
    assert len(PaperImageFolder(tmp_path / "ffhq", resolution=R, val_path=tmp_path / "lsun_val")) == 4
    one_line_error("dataset.val_path=", lambda: PaperImageFolder(tmp_path / "ffhq", R, split="val",
                                                                 val_path=tmp_path / "none"))


def test_derived_lowres_and_reproducible_lama_masks(tmp_path):
    for k in range(3):
        photo(tmp_path / "places" / f"{k}.jpg", seed=k, size=(48, 40))
    make = lambda: PaperImageFolder(tmp_path / "places", resolution=32, val_fraction=0.0, sr_factor=4,  # noqa: E731
                                    masks="lama", seed=7)
    ds = make()
    item = ds[1]
    assert item["lowres"].shape == (3, 8, 8) and torch.equal(item["lowres"], downsample(item["image"], 4))
    mask = item["mask"]
    assert mask.shape == (1, 32, 32) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and 0 < mask.mean() <= 0.5
    assert torch.equal(make()[1]["mask"], mask) and torch.equal(ds[1]["mask"], mask)  # same item, same mask
    assert not torch.equal(ds[0]["mask"], mask)
    covers = [lama_mask(np.random.default_rng(s), 64).mean() for s in range(30)]
    assert all(0 < c <= 0.5 for c in covers) and len(set(covers)) > 20
    one_line_error("dataset.sr_factor=3", lambda: Derived(32, sr_factor=3))
    one_line_error("valid choices: lama, null", lambda: Derived(32, masks="box"))


def test_landscapes_label_maps_follow_the_image(tmp_path):
    (tmp_path / "segmentations").mkdir()
    label = np.where(np.arange(40)[None, :] < 20, 5, 7).repeat(30, 0).astype(np.uint8)  # left 5, right 7
    for stem in ("a", "b", "c"):
        photo(tmp_path / "images" / f"{stem}.jpg")
        if stem != "c":  # c has no label map
            Image.fromarray(label, mode="L").save(tmp_path / "segmentations" / f"{stem}.png")
    ds = LandscapesDataset(tmp_path, resolution=R, val_fraction=0.0, masks="lama")
    assert len(ds) == 3
    item = ds[0]
    sem = item["semantic"]
    assert sem.shape == (R, R) and sem.dtype == torch.int64 and item["mask"].shape == (1, R, R)
    # x = 20 of 40 is x = 10.5 of the 21 px resized map, 8.5 after the crop at left 2
    assert (sem[:, :8] == 5).all() and (sem[:, 9:] == 7).all()
    assert ds[2]["key"] == "a.jpg" and ds.skips.count == 1  # c has no label map: skipped (next item) and counted
    assert "no label map" in ds.skips.reasons()[-1]
    one_line_error("dataset.segmentations=segs", lambda: LandscapesDataset(tmp_path, R, segmentations="segs"))


def test_laion_shards_with_derived_fields(tmp_path):
    with wds.TarWriter(str(tmp_path / "00000.tar")) as sink:
        for k in range(2):
            buf = (tmp_path / f"{k}.jpg")
            photo(buf, seed=k)
            sink.write({"__key__": f"{k:09d}", "jpg": buf.read_bytes(), "txt": f"caption {k}", "json": "{}"})
    make = lambda: laion_dataset(str(tmp_path / "00000.tar"), resolution=R, split="val",  # noqa: E731
                                 sr_factor=2, masks="lama")
    items = list(make())
    assert [it["caption"] for it in items] == ["caption 0", "caption 1"]
    assert items[0]["lowres"].shape == (3, 8, 8) and items[0]["mask"].shape == (1, R, R)
    assert all(torch.equal(a["mask"], b["mask"]) for a, b in zip(items, make(), strict=True))
    plain = next(iter(laion_dataset(str(tmp_path), resolution=R, split="val")))  # a folder of shards, no extras
    assert set(plain) == set(next(iter(wds_dataset(str(tmp_path), resolution=R, split="val"))))
    assert torch.equal(plain["image"], items[0]["image"])


# --- Hydra options --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIONS)
def test_hydra_composes_every_option(name):
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_method
    from omegaconf import OmegaConf

    from ldmkit.runner import conf_dir

    where = "urls" if name == "laion" else "path"
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train_ldm", overrides=[f"dataset={name}", f"dataset.{where}=/x"])
    data = OmegaConf.to_container(cfg.dataset, resolve=True)
    assert data[where] == "/x" and data["resolution"] == 256 and data["split"] == "train"
    assert {"size", "seed", "sr_factor", "masks", "crop", "flip"} <= set(data)
    target = get_method(data.pop("_target_"))
    params = inspect.signature(target).parameters
    assert set(data) <= set(params) or any(p.kind is p.VAR_KEYWORD for p in params.values())
