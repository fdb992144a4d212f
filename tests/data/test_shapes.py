"""Tests for the built-in procedural "shapes" dataset."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from ldmkit.data.shapes import (
    COLORS,
    KINDS,
    MAX_OBJECTS,
    NUM_CLASSES,
    Scene,
    ShapeObject,
    ShapesDataset,
    class_name,
    downsample,
    object_class,
    render,
    render_semantic,
    sample_scene,
)

BG = ((40, 40, 40), (40, 40, 40))



def _article_a(caption: str) -> str:
    """The caption with "an" written as "a" (so phrases split uniformly)."""
    return re.sub(r"\ban\b", "a", caption)

def _scene(*objects: ShapeObject, caption: str = "") -> Scene:
    return Scene(tuple(objects), BG, "none", caption)


def _single_object_indices(ds: ShapesDataset, count: int) -> list[int]:
    return [i for i in range(len(ds)) if len(ds.scene(i).objects) == 1][:count]


def test_class_indexing() -> None:
    assert NUM_CLASSES == len(KINDS) * len(COLORS)
    assert {"red", "green", "blue", "yellow", "purple", "orange"} <= set(COLORS)
    assert object_class("circle", "red") == list(COLORS).index("red")
    assert object_class(KINDS[-1], list(COLORS)[-1]) == NUM_CLASSES - 1
    assert class_name(object_class("triangle", "blue")) == "blue triangle"
    assert sorted(object_class(k, c) for k in KINDS for c in COLORS) == list(range(NUM_CLASSES))


def test_determinism_and_independence() -> None:
    a, b = ShapesDataset(size=50, seed=3), ShapesDataset(size=50, seed=3)
    forward = [a[i] for i in range(10)]
    backward = [b[i] for i in reversed(range(10))][::-1]
    for x, y in zip(forward, backward, strict=True):
        assert (
            torch.equal(x["image"], y["image"]) and x["caption"] == y["caption"] and x["scene"] == y["scene"]
        )
    other_seed, val = ShapesDataset(size=50, seed=4), ShapesDataset(size=50, seed=3, split="val")
    for other in (other_seed, val):
        assert all(other.scene(i) != a.scene(i) for i in range(10))
        assert not torch.equal(
            torch.stack([other[i]["image"] for i in range(10)]), torch.stack([x["image"] for x in forward])
        )
    assert len({a.scene(i).to_json() for i in range(50)}) == 50


def test_getitem_fields_and_collate() -> None:
    ds = ShapesDataset(size=5, resolution=32)
    assert len(ds) == 5
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["class_label"].dtype == torch.int64 and item["class_label"].dim() == 0
    assert item["boxes"].shape == (MAX_OBJECTS, 4) and item["boxes"].dtype == torch.float32
    assert item["box_labels"].shape == (MAX_OBJECTS,) and item["box_labels"].dtype == torch.int64
    assert item["semantic"].shape == (32, 32) and item["semantic"].dtype == torch.int64
    assert item["lowres"].shape == (3, 8, 8) and item["lowres"].dtype == torch.float32
    assert item["mask"].shape == (1, 32, 32) and item["mask"].dtype == torch.float32
    assert set(item) == {
        "image", "caption", "class_label", "boxes", "box_labels", "semantic", "lowres", "mask", "scene"
    }
    scene = Scene.from_json(item["scene"])
    assert scene.caption == item["caption"]
    expected = torch.from_numpy(render(scene, 32)).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(item["image"], expected)
    batch = default_collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 32, 32) and batch["semantic"].shape == (4, 32, 32)
    assert batch["lowres"].shape == (4, 3, 8, 8) and batch["mask"].shape == (4, 1, 32, 32)
    assert batch["class_label"].shape == (4,) and batch["boxes"].shape == (4, MAX_OBJECTS, 4)
    assert isinstance(batch["caption"], list) and len(batch["caption"]) == 4
    assert isinstance(batch["scene"], list)
    assert list(ds) and len(list(ds)) == 5  # IndexError ends iteration
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(IndexError):
        ds[-1]


def test_split_validation() -> None:
    with pytest.raises(ValueError, match="train, val") as e:
        ShapesDataset(split="test")
    assert "test" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("res", [32, 64])
def test_render_shapes_and_dtypes(res: int) -> None:
    scene = sample_scene(np.random.default_rng(0))
    img, sem = render(scene, res), render_semantic(scene, res)
    assert img.shape == (res, res, 3) and img.dtype == np.uint8
    assert sem.shape == (res, res) and sem.dtype == np.int64
    assert sem.min() >= 0 and sem.max() <= NUM_CLASSES


def test_json_round_trip() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        scene = sample_scene(rng)
        back = Scene.from_json(scene.to_json())
        assert back == scene and back.to_json() == scene.to_json()
        assert isinstance(back.background[0], tuple) and isinstance(back.objects, tuple)


def test_single_object_image_matches_fields() -> None:
    ds = ShapesDataset(size=400, resolution=32, seed=1)
    bg_far = [np.array(c, float) for c in COLORS.values()]
    for i in _single_object_indices(ds, 12):
        scene, item = ds.scene(i), ds[i]
        obj = scene.objects[0]
        img = render(scene, 32).astype(float)
        sem = item["semantic"].numpy()
        assert set(np.unique(sem)) == {0, object_class(obj.kind, obj.color) + 1}
        # Interior pixels (all 4-neighbours covered too) carry exactly the object colour.
        inner = sem != 0
        inner[1:-1, 1:-1] &= (
            (sem[:-2, 1:-1] != 0) & (sem[2:, 1:-1] != 0) & (sem[1:-1, :-2] != 0) & (sem[1:-1, 2:] != 0)
        )
        inner[[0, -1], :] = inner[:, [0, -1]] = False
        assert np.abs(img[inner].mean(0) - COLORS[obj.color]).max() < 3
        assert np.abs(img[sem != 0].mean(0) - COLORS[obj.color]).max() < 40
        # Background pixels are far from every object colour.
        bg = img[sem == 0]
        assert min(np.linalg.norm(bg - c, axis=1).min() for c in bg_far) > 60 or bg.size == 0
        # The semantic map's bounding box matches the scene box (within about a pixel).
        ys, xs = np.nonzero(sem)
        sem_box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 32
        assert np.abs(sem_box - item["boxes"][0].numpy()).max() <= 1.5 / 32
        assert item["box_labels"].tolist() == [object_class(obj.kind, obj.color), -1, -1]
        assert item["boxes"][1:].abs().sum() == 0
        assert item["class_label"].item() == object_class(obj.kind, obj.color)
        assert obj.color in item["caption"] and obj.kind in item["caption"]


def test_background_far_from_object_colours() -> None:
    ds = ShapesDataset(size=60, seed=2)
    cols = np.array(list(COLORS.values()), float)
    for i in range(60):
        sc = ds.scene(i)
        bg = render(Scene((), sc.background, sc.gradient, ""), 32).reshape(-1, 1, 3).astype(float)
        assert np.linalg.norm(bg - cols[None], axis=-1).min() > 100


def test_scene_invariants_over_many_samples() -> None:
    ds = ShapesDataset(size=300, seed=5)
    counts, gradients, small_side = set(), set(), []
    for i in range(len(ds)):
        sc = ds.scene(i)
        counts.add(len(sc.objects))
        gradients.add(sc.gradient)
        assert (sc.background[0] == sc.background[1]) == (sc.gradient == "none")
        sem = render_semantic(sc, 32)
        for k, o in enumerate(sc.objects):
            assert o.radius <= o.cx <= 1 - o.radius and o.radius <= o.cy <= 1 - o.radius
            assert o.color in sc.caption and o.kind in sc.caption
            visible = (sem == object_class(o.kind, o.color) + 1).sum()
            alone = (render_semantic(Scene((o,), sc.background, "none", ""), 32) != 0).sum()
            assert visible >= 0.3 * alone, f"object {k} of sample {i} mostly hidden"
            if o.size == "small":
                small_side.append(2 * o.radius * 32)
        assert len({o.color for o in sc.objects}) == len(sc.objects)
        radii = [o.radius for o in sc.objects]
        assert radii == sorted(radii, reverse=True)  # larger drawn first, so smaller stay visible
        labels = sc.box_labels()
        assert (labels[len(sc.objects) :] == -1).all() and (labels[: len(sc.objects)] >= 0).all()
        largest = max(range(len(sc.objects)), key=lambda k: sc.objects[k].radius)
        assert sc.class_label() == labels[largest]
        cap = _article_a(sc.caption)
        assert cap.count(" a ") + 1 == len(sc.objects) and cap.startswith("a ")
        assert " a o" not in sc.caption and not sc.caption.startswith("a o")  # "an orange ..."
    assert counts == {1, 2, 3} and gradients == {"none", "horizontal", "vertical"}
    assert min(small_side) >= 6
    assert len(set(ShapesDataset(size=100, max_objects=1).scene(i).caption for i in range(100))) > 10
    assert all(len(ShapesDataset(size=30, max_objects=1).scene(i).objects) == 1 for i in range(30))


def test_relations_in_hand_built_scenes() -> None:
    from ldmkit.data.shapes import relation

    a = ShapeObject("circle", "red", "small", 0.2, 0.5, 0.12)
    b = ShapeObject("square", "blue", "small", 0.8, 0.45, 0.12)
    assert relation(a, b) == "left of" and relation(b, a) == "right of"
    top = ShapeObject("triangle", "green", "large", 0.5, 0.25, 0.22)
    bottom = ShapeObject("circle", "yellow", "large", 0.45, 0.75, 0.22)
    assert relation(top, bottom) == "above" and relation(bottom, top) == "below"
    # Captions generated by sample_scene use the same rule on the first two mentioned objects.
    rng = np.random.default_rng(11)
    seen = set()
    for _ in range(200):
        sc = sample_scene(rng)
        if len(sc.objects) < 2:
            continue
        caption = _article_a(sc.caption)
        words = caption.split()
        by_phrase = {(o.color, o.kind): o for o in sc.objects}
        first = (
            by_phrase[(words[2], words[3])]
            if words[1] in ("small", "large")
            else by_phrase[(words[1], words[2])]
        )
        rest = caption.split(" a ", 1)[1].split(" and ")[0].split()
        second = by_phrase[(rest[-2], rest[-1])]
        rel = relation(first, second)
        assert f" {rel} a " in caption
        seen.add(rel)
    assert seen == {"left of", "right of", "above", "below"}


def test_class_label_largest_and_ties() -> None:
    small = ShapeObject("circle", "red", "small", 0.2, 0.2, 0.14)
    big = ShapeObject("square", "green", "large", 0.7, 0.7, 0.25)
    big2 = ShapeObject("triangle", "blue", "large", 0.3, 0.7, 0.25)
    assert _scene(small, big).class_label() == object_class("square", "green")
    assert _scene(small, big, big2).class_label() == object_class("square", "green")
    assert _scene(small, big2, big).class_label() == object_class("triangle", "blue")
    assert _scene(small).box_labels().tolist() == [object_class("circle", "red"), -1, -1]
    boxes = _scene(small, big).boxes()
    assert (
        boxes.dtype == np.float32 and np.allclose(boxes[0], [0.06, 0.06, 0.34, 0.34]) and not boxes[2].any()
    )


def test_gradient_backgrounds() -> None:
    lo, hi = (20, 20, 24), (90, 90, 92)
    for gradient, axis in (("horizontal", 1), ("vertical", 0)):
        img = render(Scene((), (lo, hi), gradient, ""), 32).astype(int)[..., 0]
        along = np.diff(img, axis=axis)
        assert (along >= 0).all() and along.sum() > 0 and not np.diff(img, axis=1 - axis).any()
        assert abs(img.min() - lo[0]) <= 2 and abs(img.max() - hi[0]) <= 2
    plain = render(Scene((), (lo, lo), "none", ""), 16)
    assert (plain == np.array(lo, np.uint8)).all()


def test_render_geometry_and_antialiasing() -> None:
    sq = ShapeObject("square", "red", "large", 0.5, 0.5, 0.25)
    sem = render_semantic(_scene(sq), 32)
    assert (sem[8:24, 8:24] == object_class("square", "red") + 1).all() and (sem != 0).sum() == 256
    # A circle's edge gets intermediate (blended) values; the semantic map stays hard.
    circ = ShapeObject("circle", "yellow", "large", 0.5, 0.5, 0.27)
    img = render(_scene(circ), 32).astype(int)
    g = img[..., 1]
    assert ((g > 45) & (g < 210)).sum() > 20
    tri = ShapeObject("triangle", "blue", "large", 0.5, 0.5, 0.25)
    tsem = render_semantic(_scene(tri), 32) != 0
    rows = tsem.sum(1)
    assert rows[9] < rows[16] < rows[23]  # widens towards the base (y down)
    # Later objects are drawn on top in both the image and the semantic map.
    on_top = ShapeObject("circle", "green", "small", 0.5, 0.5, 0.12)
    s2 = _scene(sq, on_top)
    assert render_semantic(s2, 32)[16, 16] == object_class("circle", "green") + 1
    assert tuple(render(s2, 32)[16, 16]) == COLORS["green"]


@pytest.mark.parametrize("res,factor", [(32, 4), (16, 2), (32, 1)])
def test_lowres_is_the_bicubic_downsampled_image(res: int, factor: int) -> None:
    import torch.nn.functional as F

    ds = ShapesDataset(size=6, resolution=res, sr_factor=factor, seed=2)
    for i in range(6):
        item = ds[i]
        low = item["lowres"]
        assert low.shape == (3, res // factor, res // factor) and low.dtype == torch.float32
        assert -1.0 <= low.min() and low.max() <= 1.0
        expected = F.interpolate(item["image"][None], scale_factor=1 / factor, mode="bicubic", antialias=True)
        torch.testing.assert_close(low, expected[0].clamp(-1, 1))
        assert abs(low.mean() - item["image"].mean()) < 0.02
        torch.testing.assert_close(ds[i]["lowres"], low)  # deterministic
    # Hand case: a flat image downsamples to the same flat value.
    flat = torch.from_numpy(render(Scene((), ((30, 38, 58),) * 2, "none", ""), 16)).permute(2, 0, 1).float()
    low = downsample(flat / 127.5 - 1, 4)
    assert low.shape == (3, 4, 4)
    torch.testing.assert_close(low, (flat[:, :4, :4] / 127.5 - 1))
    with pytest.raises(ValueError, match="sr_factor"):
        ShapesDataset(resolution=32, sr_factor=3)
    with pytest.raises(ValueError, match="sr_factor"):
        ShapesDataset(resolution=32, sr_factor=0)


def test_inpaint_masks_are_seeded_rectangles_in_the_coverage_range() -> None:
    from ldmkit.data.shapes import MASK_COVERAGE

    ds = ShapesDataset(size=200, resolution=32, seed=4)
    covers = []
    for i in range(200):
        m = ds[i]["mask"]
        assert m.shape == (1, 32, 32) and m.dtype == torch.float32
        assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
        ys, xs = torch.nonzero(m[0], as_tuple=True)
        box = m[0, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        assert bool((box == 1).all()) and box.numel() == m.sum()  # exactly one filled rectangle
        covers.append(m.mean().item())
    lo, hi = MASK_COVERAGE
    assert (lo, hi) == (0.1, 0.5)
    assert lo <= min(covers) and max(covers) <= hi
    assert min(covers) < 0.15 and max(covers) > 0.45  # spans the range
    # Deterministic per (seed, split, index), different across seeds/splits, and independent of the scenes.
    again = ShapesDataset(size=200, resolution=32, seed=4)
    assert all(torch.equal(ds[i]["mask"], again[i]["mask"]) for i in (0, 7, 199))
    other = ShapesDataset(size=200, resolution=32, seed=5)
    val = ShapesDataset(size=200, resolution=32, seed=4, split="val")
    assert not all(torch.equal(ds[i]["mask"], o[i]["mask"]) for o in (other, val) for i in range(5))
    rng = np.random.default_rng(np.random.SeedSequence([4, 0, 3]))
    assert ds.scene(3) == sample_scene(rng)  # the scene stream is unchanged by the mask
    for res in (4, 8, 16, 64):
        small = ShapesDataset(size=100, resolution=res, sr_factor=1)
        cov = [small.mask(i).mean() for i in range(100)]
        assert lo <= min(cov) and max(cov) <= hi
