"""Tests for the classical shapes scorer: colour, kind and object count of images of the shapes dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldmkit.data.shapes import (
    BACKGROUNDS,
    COLORS,
    KINDS,
    Scene,
    ShapeObject,
    ShapesDataset,
    class_name,
    render,
)
from ldmkit.evaluation.shapes_scorer import (
    accuracy,
    detect,
    detect_batch,
    request_from_class,
    requests_from_scene,
    score,
)

N_IMAGES = {32: 500, 64: 250}  # val images scored per resolution (64 px costs ~4x more per image)


def _image(scene: Scene, resolution: int) -> torch.Tensor:
    """Render a scene as the dataset does: float (3, H, W) in [-1, 1]."""
    return torch.from_numpy(render(scene, resolution)).permute(2, 0, 1).float() / 127.5 - 1.0


def _scene(*objects: ShapeObject, background=BACKGROUNDS[1], gradient: str = "none", end=None) -> Scene:
    """A hand-built scene on a flat (or gradient) background."""
    return Scene(tuple(objects), (background, end or background), gradient, "")


@pytest.fixture(scope="module", params=sorted(N_IMAGES))
def val(request) -> dict:
    """Real val images (seed 0) with their class labels and scenes, at 32 and 64 px."""
    res = request.param
    ds = ShapesDataset(size=N_IMAGES[res], resolution=res, split="val", seed=0)
    items = [ds[i] for i in range(len(ds))]
    images = torch.stack([it["image"] for it in items])
    return {
        "images": images,
        "dets": detect_batch(images),
        "labels": [int(it["class_label"]) for it in items],
        "scenes": [it["scene"] for it in items],
    }


def test_dataset_class_label_and_count(val) -> None:
    color_hits, pair_hits, count_hits = [], [], []
    for det, label, scene_json in zip(val["dets"], val["labels"], val["scenes"], strict=True):
        color, kind = class_name(label).split()
        color_hits.append(any(d.color == color for d in det))
        pair_hits.append(any(d.color == color and d.kind == kind for d in det))
        count_hits.append(len(det) == len(Scene.from_json(scene_json).objects))
    assert np.mean(color_hits) >= 0.98
    assert np.mean(pair_hits) >= 0.95
    assert np.mean(count_hits) >= 0.95
    # The batch API agrees with the per-image check, from scene requests and from class-label requests.
    requests = [requests_from_scene(s) for s in val["scenes"]]
    assert [(r["color"], r["kind"]) for r in requests] == [tuple(class_name(c).split()) for c in val["labels"]]
    acc = accuracy(val["images"], requests)
    assert acc == pytest.approx(
        {"color_acc": np.mean(color_hits), "shape_acc": np.mean(pair_hits), "count_acc": np.mean(count_hits),
         "n": len(requests)}
    )
    acc = accuracy(val["images"][:50], [request_from_class(c) for c in val["labels"][:50]])
    assert set(acc) == {"color_acc", "shape_acc", "n"} and acc["shape_acc"] == pytest.approx(np.mean(pair_hits[:50]))


def test_every_object_found_with_its_kind(val) -> None:
    """Not only the largest object: every object's colour is found with the right kind, nothing extra."""
    scenes = [Scene.from_json(s) for s in val["scenes"]]
    objects = right = extra = 0
    for det, scene in zip(val["dets"], scenes, strict=True):
        by_color = {d.color: d.kind for d in det}
        objects += len(scene.objects)
        right += sum(by_color.get(o.color) == o.kind for o in scene.objects)
        extra += len(det) > len(scene.objects)
    assert right >= 0.97 * objects
    assert extra <= 0.02 * len(scenes)


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("kind", KINDS)
def test_hand_built_single_shapes(kind: str, resolution: int) -> None:
    cases = [  # (colour, cx, cy, radius, background, gradient end)
        ("red", 0.5, 0.5, 0.25, BACKGROUNDS[0], None),
        ("green", 0.3, 0.7, 0.13, BACKGROUNDS[3], None),
        ("blue", 0.75, 0.25, 0.2, BACKGROUNDS[4], BACKGROUNDS[6]),
        ("yellow", 0.2, 0.2, 0.12, BACKGROUNDS[5], None),
        ("purple", 0.6, 0.4, 0.17, BACKGROUNDS[7], BACKGROUNDS[2]),
        ("orange", 0.72, 0.72, 0.26, BACKGROUNDS[2], None),
    ]
    for color, cx, cy, r, bg, end in cases:
        obj = ShapeObject(kind, color, "large" if r > 0.2 else "small", cx, cy, r)
        scene = _scene(obj, background=bg, gradient="none" if end is None else "vertical", end=end)
        det = detect(_image(scene, resolution))
        assert [(d.color, d.kind) for d in det] == [(color, kind)], (color, cx, cy, r)
        assert np.allclose(det[0].box, obj.box(), atol=1.5 / resolution), (det[0].box, obj.box())


def test_occluded_square_keeps_its_kind() -> None:
    """A small circle drawn over a corner of a large square hides part of it; both keep their kind."""
    square = ShapeObject("square", "red", "large", 0.4, 0.4, 0.27)
    circle = ShapeObject("circle", "blue", "small", 0.66, 0.66, 0.14)
    det = detect(_image(_scene(square, circle), 32))
    assert sorted((d.color, d.kind) for d in det) == [("blue", "circle"), ("red", "square")]


def test_background_only_has_no_detections() -> None:
    images = [_image(_scene(background=b), 32) for b in BACKGROUNDS]
    images += [_image(_scene(background=a, gradient=g, end=b), 32)
               for a, b, g in zip(BACKGROUNDS, BACKGROUNDS[::-1], ["horizontal", "vertical"] * 4, strict=True)]
    assert all(d == [] for d in detect_batch(torch.stack(images)))
    assert score(images[0], color="red", kind="circle", count=0) == {
        "color": False, "kind": False, "color_kind": False, "count": True
    }


def test_score_requested_properties() -> None:
    img = _image(_scene(ShapeObject("circle", "red", "large", 0.5, 0.5, 0.25)), 32)
    assert score(img, color="red", kind="circle", count=1) == {
        "color": True, "kind": True, "color_kind": True, "count": True
    }
    assert score(img, color="blue", kind="square", count=2) == {
        "color": False, "kind": False, "color_kind": False, "count": False
    }
    assert score(img, color="red", kind="square") == {"color": True, "kind": False, "color_kind": False}
    assert score(img, kind="circle") == {"kind": True}
    two = _image(_scene(ShapeObject("circle", "red", "large", 0.3, 0.3, 0.2),
                        ShapeObject("square", "blue", "small", 0.75, 0.75, 0.15)), 32)
    assert score(two, color="red", kind="square", count=2) == {
        "color": True, "kind": True, "color_kind": False, "count": True
    }
    with pytest.raises(ValueError, match="unknown colour"):
        score(img, color="pink")
    with pytest.raises(ValueError, match="unknown kind"):
        score(img, kind="hexagon")


def test_noise_is_rarely_accepted() -> None:
    g = torch.Generator().manual_seed(0)
    uniform = torch.rand(100, 3, 32, 32, generator=g) * 2 - 1
    gaussian = torch.randn(100, 3, 32, 32, generator=g).clamp(-1, 1)
    for noise in (uniform, gaussian):
        acc = accuracy(noise, [{"color": "red", "kind": "circle"}] * len(noise))
        assert acc["color_acc"] < 0.1 and acc["shape_acc"] < 0.1


def test_robust_to_mild_pixel_noise() -> None:
    """Generated samples are not pixel-exact: Gaussian noise (sigma 0.1 in [-1, 1] units) barely matters."""
    ds = ShapesDataset(size=150, resolution=32, split="val", seed=1)
    scenes = [ds.scene(i) for i in range(len(ds))]
    clean = torch.stack([_image(s, 32) for s in scenes])
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    acc = accuracy(noisy, [requests_from_scene(s.to_json()) for s in scenes])
    assert acc["color_acc"] >= 0.97 and acc["shape_acc"] >= 0.95 and acc["count_acc"] >= 0.95


def test_accuracy_edge_cases() -> None:
    img = _image(_scene(ShapeObject("triangle", "green", "large", 0.5, 0.5, 0.25)), 32)[None]
    assert accuracy(img, [{"count": 1}]) == {"count_acc": 1.0, "n": 1.0}
    assert accuracy(img, [{"kind": "triangle"}]) == {"shape_acc": 1.0, "n": 1.0}
    assert accuracy(img[:0], []) == {"n": 0.0}
    with pytest.raises(ValueError, match="1 images but 2 requests"):
        accuracy(img, [{}, {}])
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        detect(img)
    assert request_from_class(0) == {"color": list(COLORS)[0], "kind": KINDS[0]}


def test_caption_requests_follow_the_dataset_grammar(val) -> None:
    from ldmkit.evaluation.shapes_scorer import request_from_caption

    assert request_from_caption("a small red triangle right of a small blue square and a purple square") == {
        "color": "red", "kind": "triangle", "count": 3}
    assert request_from_caption("an orange circle") == {"color": "orange", "kind": "circle", "count": 1}
    assert request_from_caption("a square") == {"kind": "square", "count": 1}
    assert request_from_caption("nothing here") == {}
    # On real images, the caption's first object and its object count are what the scorer sees.
    captions = [Scene.from_json(s).caption for s in val["scenes"]]
    acc = accuracy(val["images"], [request_from_caption(c) for c in captions])
    assert acc["color_acc"] >= 0.95 and acc["shape_acc"] >= 0.95 and acc["count_acc"] >= 0.95, acc


def test_requests_for_conditioning_values() -> None:
    from ldmkit.evaluation.cond_accuracy import images_accuracy, requests_for, single_object_values

    labels = single_object_values("class")
    captions = single_object_values("text")
    assert labels.tolist() == list(range(len(COLORS) * len(KINDS)))
    assert captions[0] == "a " + class_name(0) and any(c.startswith("an orange") for c in captions)
    assert requests_for(labels) == [request_from_class(i) for i in range(len(labels))]
    assert [{k: r[k] for k in ("color", "kind")} for r in requests_for(captions)] == requests_for(labels)
    with pytest.raises(ValueError, match="class labels or captions"):
        requests_for([{"boxes": 1}])
    # A rendered single-object image per class: every request is met; a swapped colour is not.
    images = torch.stack([
        _image(_scene(ShapeObject(*class_name(c).split()[::-1], "large", 0.5, 0.5, 0.3)), 32) for c in range(18)
    ])
    assert images_accuracy(images, labels) == {"color_acc": 1.0, "shape_acc": 1.0, "n": 18.0}
    wrong = images_accuracy(images, torch.roll(labels, 1))
    assert wrong["color_acc"] == 0.0
