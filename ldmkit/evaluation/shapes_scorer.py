"""Classical (weight-free, deterministic) scorer for the ``shapes`` dataset: which colours, kinds and how many
objects an image in [-1, 1] shows, so generated samples can be checked against the conditions they came from.

Per image: fit the background as a linear ramp ``b0 + bx*x + by*y`` (the dataset's flat and gradient
backgrounds) to the muted, low-chroma pixels; model each pixel as a blend ``b + a * (c - b)`` of the background
with each palette colour ``c`` and keep the colour with the smallest residual, so anti-aliased rims keep their
colour (a half-covered orange pixel on a dark background is nearer red than orange in plain RGB). Pixels with
``a >= 0.5`` and a small residual are object pixels; a 3x3 majority vote mends pixel noise and the one-pixel
blends where two objects touch. Object pixels form 4-connected same-colour components; tiny or thin ones are
dropped. A component's kind is the silhouette (rendered like :func:`ldmkit.data.shapes.render`, in the box
measured to sub-pixel precision from the alpha profile) that best matches its alpha map, ignoring pixels next
to other objects (which may occlude it: larger objects are drawn first and placement can overlap).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from ldmkit.data.shapes import BACKGROUNDS, COLORS, KINDS, SUPERSAMPLE, Scene, class_name

_PALETTE = np.array(list(COLORS.values()), np.float32)  # (C, 3) in 0..255
_BG_PRIOR = np.array(BACKGROUNDS, np.float32).mean(0)  # background guess when none is visible
BACKGROUND_CHROMA = 40.0  # max - min channel (0..255) below which a pixel counts as background for the fit
MIN_ALPHA = 0.5  # blend weight from which a pixel belongs to an object (~ pixel-centre coverage)
MAX_RESIDUAL = 0.25  # colour-fit residual allowed, relative to |c - b|
MIN_VOTES = 4  # a non-background pixel takes the colour of at least this many of its 3x3 neighbourhood
MIN_AREA = 0.008  # components smaller than this fraction of the image are noise
MIN_CORE = 0.002  # ... and so are components whose interior (3x3 erosion) is smaller than this fraction
_RIDGE = 1.0  # weight (in pixels) of the background prior in the ramp fit
_BACKGROUND, _UNEXPLAINED = -1, -2  # pixel labels besides palette indices


@dataclass(frozen=True)
class Detection:
    """One detected object: palette colour, kind, bounding box (x0, y0, x1, y1 image fractions), pixel area
    and misfit of the kind's silhouette (coverage error per unit of visible area; 0 = exact)."""

    color: str
    kind: str
    box: tuple[float, float, float, float]
    area: int
    misfit: float = 0.0


def _to_batch(images: Tensor) -> np.ndarray:
    """(3, H, W) or (B, 3, H, W) images in [-1, 1] -> float32 numpy (B, 3, H, W) in 0..255."""
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (3, H, W) or (B, 3, H, W) images, got shape {tuple(images.shape)}")
    return ((images.detach().float().cpu() + 1.0) * 127.5).clamp(0.0, 255.0).numpy()


def _fit_background(x: np.ndarray) -> np.ndarray:
    """Per-image least-squares ramp ``b0 + bx*x + by*y`` fitted to low-chroma pixels -> (B, 3, H, W)."""
    b, _, h, w = x.shape
    weight = (x.max(1) - x.min(1) < BACKGROUND_CHROMA).astype(np.float32).reshape(b, -1)  # (B, HW)
    ys, xs = np.meshgrid(np.linspace(-1, 1, h, dtype=np.float32), np.linspace(-1, 1, w, dtype=np.float32),
                         indexing="ij")
    design = np.stack([np.ones_like(xs), xs, ys], -1).reshape(-1, 3)  # (HW, 3)
    gram = np.einsum("bn,ni,nj->bij", weight, design, design) + _RIDGE * np.eye(3, dtype=np.float32)
    rhs = np.einsum("bn,ni,bcn->bic", weight, design, x.reshape(b, 3, -1))  # (B, 3 coeffs, 3 channels)
    rhs[:, 0] += _RIDGE * _BG_PRIOR
    coef = np.linalg.solve(gram, rhs)
    return np.einsum("ni,bic->bcn", design, coef).reshape(b, 3, h, w)


def _classify_pixels(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel the palette index whose blend with the fitted background explains it best, or -1
    (background, alpha < MIN_ALPHA) / -2 (object-like but no palette colour fits) -> int (B, H, W); and the
    blend weight of every colour -> (B, C, H, W).

    With ``d = p - b`` and ``v = c - b``: ``alpha = d.v / v.v`` and residual ``|d - alpha v| / |v|``."""
    bg = _fit_background(x)
    d = x - bg
    dv = np.einsum("bchw,kc->bkhw", d, _PALETTE) - (d * bg).sum(1, keepdims=True)  # (B, C, H, W)
    pb = np.einsum("bchw,kc->bkhw", bg, _PALETTE)
    vv = np.maximum((_PALETTE**2).sum(1)[None, :, None, None] - 2 * pb + (bg * bg).sum(1, keepdims=True), 1.0)
    alpha = np.clip(dv / vv, 0.0, 1.25)
    res2 = (d * d).sum(1, keepdims=True) - 2 * alpha * dv + alpha * alpha * vv
    residual = np.sqrt(np.maximum(res2, 0.0) / vv)
    best = residual.argmin(1)[:, None]
    a, r = np.take_along_axis(alpha, best, 1)[:, 0], np.take_along_axis(residual, best, 1)[:, 0]
    labels = np.where(a < MIN_ALPHA, _BACKGROUND, np.where(r <= MAX_RESIDUAL, best[:, 0], _UNEXPLAINED))
    return _majority(labels, alpha.shape[1]), alpha


def _majority(labels: np.ndarray, num_colors: int) -> np.ndarray:
    """Relabel every non-background pixel with the commonest colour of its 3x3 neighbourhood (ties: the lower
    index) if it has at least MIN_VOTES of the 9 pixels; otherwise the pixel keeps its label."""
    _, h, w = labels.shape
    onehot = labels[:, None] == np.arange(num_colors)[None, :, None, None]
    onehot = np.pad(onehot, ((0, 0), (0, 0), (1, 1), (1, 1)))
    votes = sum(onehot[..., i : i + h, j : j + w].astype(np.int8) for i in range(3) for j in range(3))
    mode = votes.argmax(1)
    return np.where((labels != _BACKGROUND) & (votes.max(1) >= MIN_VOTES), mode, labels)


def _components(labels: np.ndarray) -> np.ndarray:
    """4-connected components of equal non-negative labels (any leading batch dims); each pixel gets its
    component's smallest flat index (unique over the batch), -1 where the label is negative."""
    fg = labels >= 0
    n = labels.size
    dtype = np.int32 if n < 2**31 - 1 else np.int64
    ids = np.where(fg, np.arange(n, dtype=dtype).reshape(labels.shape), dtype(n))
    link_x = fg[..., :-1] & (labels[..., :-1] == labels[..., 1:])  # pixel joined to its right neighbour
    link_y = fg[..., :-1, :] & (labels[..., :-1, :] == labels[..., 1:, :])  # ... to the one below
    flat = np.full(n + 1, n, dtype)
    while True:
        new = ids.copy()
        m = np.where(link_x, np.minimum(ids[..., :-1], ids[..., 1:]), dtype(n))
        np.minimum(new[..., :-1], m, out=new[..., :-1])
        np.minimum(new[..., 1:], m, out=new[..., 1:])
        m = np.where(link_y, np.minimum(ids[..., :-1, :], ids[..., 1:, :]), dtype(n))
        np.minimum(new[..., :-1, :], m, out=new[..., :-1, :])
        np.minimum(new[..., 1:, :], m, out=new[..., 1:, :])
        flat[:n] = new.ravel()
        new = flat[new]  # pointer jumping: adopt the label of the pixel our label points to
        if np.array_equal(new, ids):
            return np.where(fg, ids, -1)
        ids = new


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation of a (H, W) mask."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    return np.logical_or.reduce([p[i : i + h, j : j + w] for i in range(3) for j in range(3)])


def _coverage(box: tuple[float, float, float, float], h: int, w: int) -> np.ndarray:
    """Coverage (K, h, w) of an h x w pixel grid by every kind filling the box (x0, y0, x1, y1, pixel
    units), by SUPERSAMPLE x SUPERSAMPLE point sampling as in :func:`ldmkit.data.shapes.render`."""
    x0, y0, x1, y1 = box
    s = SUPERSAMPLE
    v = (((np.arange(h * s) + 0.5) / s - (y0 + y1) / 2) / max((y1 - y0) / 2, 0.5))[:, None]
    u = (((np.arange(w * s) + 0.5) / s - (x0 + x1) / 2) / max((x1 - x0) / 2, 0.5))[None, :]
    square = (np.abs(u) <= 1) & (np.abs(v) <= 1)
    shapes = {"circle": u * u + v * v <= 1, "square": square, "triangle": square & (np.abs(u) <= (v + 1) / 2)}
    return np.stack([shapes[k] for k in KINDS]).reshape(len(KINDS), h, s, w, s).mean((2, 4))


def _extent(profile: np.ndarray) -> tuple[float, float]:
    """Sub-pixel (start, end) of a 1-D coverage profile from its partly covered first and last cells."""
    if profile.max() <= 0:
        return 0.0, float(profile.size)
    full = np.flatnonzero(profile >= min(MIN_ALPHA, profile.max()))
    i, j = int(full[0]), int(full[-1])
    before = profile[i - 1] if i > 0 else 0.0
    after = profile[j + 1] if j + 1 < profile.size else 0.0
    return i + 1 - profile[i] - before, j + profile[j] + after


def _candidate_boxes(box: tuple[float, float, float, float]) -> list[tuple[float, float, float, float]]:
    """The measured box and, if it is not square, the squares grown from it on either side or both: objects
    have square boxes, so a short side is an occluded (or, for a triangle, too thin to show) one."""
    x0, y0, x1, y1 = box
    grow = (x1 - x0) - (y1 - y0)
    if abs(grow) < 0.5:
        return [box]
    if grow > 0:
        return [box, (x0, y0 - grow, x1, y1), (x0, y0, x1, y1 + grow), (x0, y0 - grow / 2, x1, y1 + grow / 2)]
    return [box, (x0 + grow, y0, x1, y1), (x0, y0, x1 - grow, y1), (x0 + grow / 2, y0, x1 - grow / 2, y1)]


def _kind(own: np.ndarray, alpha: np.ndarray, labels: np.ndarray) -> tuple[str, tuple[float, ...], float]:
    """Kind, box (x0, y0, x1, y1 pixel units) and misfit of one component (bool (H, W)) given its colour's
    alpha map: the silhouette whose coverage best matches the visible alpha; the misfit is the absolute
    coverage error per unit of visible area. Pixels next to other objects are ignored: they may hide part of
    the component, or be blends of two objects."""
    unknown = _dilate((labels != _BACKGROUND) & ~own)
    seen_alpha = np.where(_dilate(own) & ~unknown, np.clip(alpha, 0.0, 1.0), 0.0)
    if not (seen_alpha >= MIN_ALPHA).any():  # entirely next to other objects: measure it anyway
        unknown = np.zeros_like(own)
        seen_alpha = np.where(own, np.clip(alpha, 0.0, 1.0), 0.0)
    xs0, xs1 = _extent(seen_alpha.max(0))
    ys0, ys1 = _extent(seen_alpha.max(1))
    box = (xs0, ys0, xs1, ys1)
    best = (np.inf, 0)
    for cand in _candidate_boxes(box):
        errors = (np.abs(_coverage(cand, *own.shape) - seen_alpha) * ~unknown).sum((1, 2))
        best = min(best, (float(errors.min()), int(errors.argmin())))
    return KINDS[best[1]], box, best[0] / max(float(seen_alpha.sum()), 1.0)


def _detections(labels: np.ndarray, alpha: np.ndarray, comps: np.ndarray) -> list[Detection]:
    """Detections of one image from its pixel labels, per-colour alpha (C, H, W) and component ids (H, W),
    largest first."""
    h, w = comps.shape
    ids, counts = np.unique(comps[comps >= 0], return_counts=True)
    out = []
    for cid, n in zip(ids.tolist(), counts.tolist(), strict=True):
        if n < MIN_AREA * h * w:
            continue
        ys, xs = np.nonzero(comps == cid)
        m = abs(int(np.ptp(ys)) - int(np.ptp(xs))) + 2  # room for the squared-up boxes and the dilations
        top, left = max(int(ys.min()) - m, 0), max(int(xs.min()) - m, 0)
        win = (slice(top, int(ys.max()) + m + 1), slice(left, int(xs.max()) + m + 1))
        own = comps[win] == cid
        if (~_dilate(~own)).sum() < max(1.0, MIN_CORE * h * w):  # thin strips: blends along object borders
            continue
        c = int(labels.flat[cid % (h * w)])
        kind, (x0, y0, x1, y1), misfit = _kind(own, alpha[c][win], labels[win])
        box = ((x0 + left) / w, (y0 + top) / h, (x1 + left) / w, (y1 + top) / h)
        box = tuple(min(max(float(v), 0.0), 1.0) for v in box)
        out.append(Detection(list(COLORS)[c], kind, box, int(n), misfit))
    return sorted(out, key=lambda d: -d.area)


def detect_batch(images: Tensor) -> list[list[Detection]]:
    """Detections of every image of a (B, 3, H, W) batch in [-1, 1], each list largest object first."""
    labels, alpha = _classify_pixels(_to_batch(images))
    comps = _components(labels)
    return [_detections(*args) for args in zip(labels, alpha, comps, strict=True)]


def detect(image: Tensor) -> list[Detection]:
    """Detections (largest first) in one (3, H, W) image in [-1, 1]."""
    if image.dim() != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {tuple(image.shape)}")
    return detect_batch(image)[0]


def _check_request(color: str | None, kind: str | None) -> None:
    """Reject colours and kinds the dataset does not have."""
    if color is not None and color not in COLORS:
        raise ValueError(f"unknown colour {color!r}; expected one of {', '.join(COLORS)}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


def score_detections(
    dets: list[Detection], color: str | None = None, kind: str | None = None, count: int | None = None
) -> dict[str, bool]:
    """Which requested properties the detections satisfy; keys only for what was requested: "color",
    "kind", "color_kind" (one object with both) and "count" (exact number of objects)."""
    _check_request(color, kind)
    out: dict[str, bool] = {}
    if color is not None:
        out["color"] = any(d.color == color for d in dets)
    if kind is not None:
        out["kind"] = any(d.kind == kind for d in dets)
    if color is not None and kind is not None:
        out["color_kind"] = any(d.color == color and d.kind == kind for d in dets)
    if count is not None:
        out["count"] = len(dets) == count
    return out


def score(
    image: Tensor, color: str | None = None, kind: str | None = None, count: int | None = None
) -> dict[str, bool]:
    """Does one (3, H, W) image in [-1, 1] show the requested colour / kind / pair / object count."""
    return score_detections(detect(image), color, kind, count)


def hits(images: Tensor, requests: list[dict], batch_size: int | None = None) -> dict[str, list[bool]]:
    """Per-request outcomes of (N, 3, H, W) images against their requests (dict with optional ``color``,
    ``kind``, ``count``): lists ``color_acc``, ``shape_acc`` (the kind in the requested colour, or the kind
    alone without a colour) and ``count_acc``, each over the requests that set it. Images are scored
    ``batch_size`` at a time (default: 64 at 32 x 32, fewer when larger)."""
    if len(images) != len(requests):
        raise ValueError(f"{len(images)} images but {len(requests)} requests")
    batch_size = batch_size or max(1, 65536 // (images.shape[-1] * images.shape[-2]))
    dets = [d for chunk in images.split(batch_size) for d in detect_batch(chunk)] if len(images) else []
    out: dict[str, list[bool]] = {"color_acc": [], "shape_acc": [], "count_acc": []}
    for det, req in zip(dets, requests, strict=True):
        s = score_detections(det, req.get("color"), req.get("kind"), req.get("count"))
        if "color" in s:
            out["color_acc"].append(s["color"])
        if "kind" in s:
            out["shape_acc"].append(s.get("color_kind", s["kind"]))
        if "count" in s:
            out["count_acc"].append(s["count"])
    return out


def fractions(outcomes: dict[str, list[bool]], n: int) -> dict[str, float]:
    """Accuracy per key (present only if some request set it) and ``n`` = the number of images."""
    out = {k: sum(v) / len(v) for k, v in outcomes.items() if v}
    out["n"] = float(n)
    return out


def accuracy(images: Tensor, requests: list[dict], batch_size: int | None = None) -> dict[str, float]:
    """Fractions of images meeting their request (see :func:`hits`); ``n`` = number of images."""
    return fractions(hits(images, requests, batch_size), len(requests))


def request_from_class(class_label: int) -> dict:
    """Request ``{"color", "kind"}`` for a class index (as in :func:`ldmkit.data.shapes.class_name`)."""
    color, kind = class_name(int(class_label)).split()
    return {"color": color, "kind": kind}


def requests_from_scene(scene_json: str) -> dict:
    """Request for a scene (``ShapesDataset[i]["scene"]``): the largest object's colour and kind (the class
    label's semantics) plus the number of objects."""
    scene = Scene.from_json(scene_json)
    return {**request_from_class(scene.class_label()), "count": len(scene.objects)}


def request_from_caption(caption: str) -> dict:
    """Request for a caption of the shapes grammar ("a [size] <colour> <kind> [relation ...]"): the first
    object phrase's colour and kind plus the number of object phrases (``{}`` parts it does not name)."""
    words = caption.lower().replace(",", " ").split()
    phrases = [i for i, w in enumerate(words) if w in KINDS]
    out: dict = {}
    if phrases:
        out["kind"] = words[phrases[0]]
        colors = [w for w in words[: phrases[0]] if w in COLORS]
        if colors:
            out["color"] = colors[-1]
        out["count"] = len(phrases)
    return out
