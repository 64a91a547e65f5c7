"""Do the patches land on objects? Patch and heatmap quality against
ground-truth boxes.

The pure functions work on NumPy arrays (the benchmark uses them directly);
:func:`evaluate_patches` applies them to a FiftyOne collection and stores the
figures with the patch run.

Definitions
-----------

Coordinates are continuous pixel coordinates: pixel ``x`` covers
``[x, x + 1)``, so its centre is ``x + 0.5``. Ground-truth boxes are
``[x0, y0, x1, y1]`` floats (FiftyOne's relative boxes times the image width
and height); patch boxes are whole pixels, half-open ``[x0, x1)``, as the
sampler writes them (relative boxes are rounded to the nearest pixel).

-   **Centre of a patch**: the centre point of its centre pixel,
    ``(x0 + (x1 - x0) // 2 + 0.5, y0 + (y1 - y0) // 2 + 0.5)`` - the pixel
    whose saliency the sampler weights the position by.
-   **Hit**: the centre lies inside a *non-crowd* ground-truth box, borders
    included (``bx0 <= cx <= bx1`` and ``by0 <= cy <= by1``). Boxes whose
    ``iscrowd`` attribute is truthy are ignored.
-   **Object-hit rate**: hits / patches, pooled over all patches of the
    evaluated images.
-   **Uniform rate**: the same rate for patches with the same sizes and
    count, each placed independently and uniformly over its legal positions
    (top-left ``x0`` in ``0 .. W - w``, as in the sampler; a box larger
    than the image is centred on that axis), drawn with
    :func:`xpatch_core.sampler.image_rng` ``(seed, key=sample id)``. No
    overlap control is applied. ``uniform_expected`` is its exact
    expectation (the share of legal positions whose centre pixel is a hit),
    free of sampling noise.
-   **Centre-prior rate**: for every patch, a box of the same size centred
    on the image (``x0 = (W - w) // 2``, ``y0 = (H - h) // 2``); one box
    per patch, so images weigh as in the hit rate.
-   **Pointing game**: the peak of the heatmap is the centre of its maximum
    cell (first in raster order) in image coordinates,
    ``((j + 0.5) * W / w, (i + 0.5) * H / h)`` for cell ``(i, j)`` of an
    ``h x w`` map (for a full-resolution map, the centre of the maximum
    pixel). A hit if the Euclidean distance from that point to a non-crowd
    box (0 inside it) is ``<= radius`` pixels. A constant or non-finite map
    has no peak and counts as a miss (``degenerate_maps``).
-   Images without a non-crowd ground-truth box are excluded from every rate
    and counted in ``images_without_gt``.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from xpatch_core.errors import ParameterError
from xpatch_core.sampler import image_rng

_CHUNK = 256

__all__ = [
    "QualityAccumulator",
    "center_hits",
    "center_points",
    "center_prior_boxes",
    "evaluate_patches",
    "gt_boxes_px",
    "gt_mask",
    "hit_rate",
    "peak_point",
    "point_box_distance",
    "pointing_game",
    "pointing_hit",
    "rel_to_px",
    "uniform_boxes",
    "uniform_expected_hits",
]


# -- geometry ----------------------------------------------------------------------


def _boxes(boxes: Any, name: str) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim != 2 or b.shape[1] != 4:
        raise ParameterError(f"{name} must be an (N, 4) array of [x0, y0, x1, y1], got shape {b.shape}")
    return b


def rel_to_px(rel_boxes: Any, image_size: tuple[int, int], *, whole_pixels: bool = False) -> np.ndarray:
    """Converts FiftyOne relative boxes ``[x, y, w, h]`` to pixel boxes.

    Args:
        rel_boxes: an ``(N, 4)`` array of relative ``[x, y, w, h]``
        image_size: ``(width, height)``
        whole_pixels: round the corners to the nearest whole pixel (patch
            boxes are whole pixels)

    Returns:
        an ``(N, 4)`` float64 array of ``[x0, y0, x1, y1]`` (int64 with
        ``whole_pixels``)
    """
    r = np.asarray(rel_boxes, dtype=np.float64).reshape(-1, 4)
    W, H = image_size
    out = np.stack([r[:, 0] * W, r[:, 1] * H, (r[:, 0] + r[:, 2]) * W, (r[:, 1] + r[:, 3]) * H], axis=1)
    if whole_pixels:
        return np.rint(out).astype(np.int64)
    return out


def center_points(boxes_px: Any) -> np.ndarray:
    """Centre points of patch boxes: the centre of each box's centre pixel.

    Args:
        boxes_px: ``(N, 4)`` whole-pixel boxes ``[x0, y0, x1, y1]``, half-open

    Returns:
        an ``(N, 2)`` float64 array ``(x0 + (x1 - x0) // 2 + 0.5, ...)``
    """
    b = np.rint(_boxes(boxes_px, "boxes_px")).astype(np.int64)
    cx = b[:, 0] + (b[:, 2] - b[:, 0]) // 2
    cy = b[:, 1] + (b[:, 3] - b[:, 1]) // 2
    return np.stack([cx, cy], axis=1).astype(np.float64) + 0.5


def center_hits(boxes_px: Any, gt_boxes_px: Any) -> np.ndarray:
    """Which patch centres lie inside a ground-truth box (borders included).

    Args:
        boxes_px: ``(N, 4)`` whole-pixel patch boxes
        gt_boxes_px: ``(M, 4)`` ground-truth boxes ``[x0, y0, x1, y1]``
            (crowd boxes already removed)

    Returns:
        an ``(N,)`` bool array
    """
    c = center_points(boxes_px)
    g = _boxes(gt_boxes_px, "gt_boxes_px")
    if c.shape[0] == 0 or g.shape[0] == 0:
        return np.zeros(c.shape[0], dtype=bool)
    inside = (
        (c[:, None, 0] >= g[None, :, 0]) & (c[:, None, 0] <= g[None, :, 2])
        & (c[:, None, 1] >= g[None, :, 1]) & (c[:, None, 1] <= g[None, :, 3])
    )
    return inside.any(axis=1)


def hit_rate(boxes_px: Any, gt_boxes_px: Any) -> float:
    """Share of patches whose centre lies inside a ground-truth box.

    Args:
        boxes_px: ``(N, 4)`` whole-pixel patch boxes
        gt_boxes_px: ``(M, 4)`` non-crowd ground-truth boxes

    Returns:
        the rate in ``[0, 1]``, or NaN without patches
    """
    h = center_hits(boxes_px, gt_boxes_px)
    return float(h.mean()) if h.size else float("nan")


def gt_mask(gt_boxes_px: Any, image_size: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside a ground-truth box (borders included).

    Args:
        gt_boxes_px: ``(M, 4)`` boxes ``[x0, y0, x1, y1]``
        image_size: ``(width, height)``

    Returns:
        an ``(H, W)`` bool array
    """
    W, H = int(image_size[0]), int(image_size[1])
    m = np.zeros((H, W), dtype=bool)
    for x0, y0, x1, y1 in _boxes(gt_boxes_px, "gt_boxes_px"):
        # pixel x is inside iff x0 <= x + 0.5 <= x1
        a, b = max(math.ceil(x0 - 0.5), 0), min(math.floor(x1 - 0.5), W - 1)
        c, d = max(math.ceil(y0 - 0.5), 0), min(math.floor(y1 - 0.5), H - 1)
        if a <= b and c <= d:
            m[c : d + 1, a : b + 1] = True
    return m


def _legal(m: int, p: int) -> tuple[int, int]:
    """First and last top-left position of a box of ``p`` on an axis of ``m``
    (one centred position when it does not fit)."""
    if p > m:
        lo = (m - p) // 2
        return lo, lo
    return 0, m - p


def _sizes(sizes: Any) -> np.ndarray:
    s = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    if s.size and s.min() < 1:
        raise ParameterError("patch sizes must be >= 1 pixel")
    return s


def uniform_boxes(sizes: Any, image_size: tuple[int, int], seed: int = 0, key: Any = None) -> np.ndarray:
    """Boxes of the given sizes placed uniformly over their legal positions.

    Each box is placed independently (no overlap control) with
    :func:`xpatch_core.sampler.image_rng` ``(seed, key)``: all ``x``
    draws, then all ``y`` draws.

    Args:
        sizes: ``(N, 2)`` ``(width, height)`` in pixels
        image_size: ``(width, height)``
        seed: the seed
        key: the sample key (e.g. its id)

    Returns:
        an ``(N, 4)`` int64 array of ``[x0, y0, x1, y1]``
    """
    s = _sizes(sizes)
    W, H = int(image_size[0]), int(image_size[1])
    rng = image_rng(int(seed), key)
    n = s.shape[0]
    ux, uy = rng.random(n), rng.random(n)
    out = np.empty((n, 4), dtype=np.int64)
    for k, (w, h) in enumerate(s):
        lx, hx = _legal(W, int(w))
        ly, hy = _legal(H, int(h))
        x0 = lx + int(ux[k] * (hx - lx + 1))
        y0 = ly + int(uy[k] * (hy - ly + 1))
        out[k] = (x0, y0, x0 + w, y0 + h)
    return out


def uniform_expected_hits(sizes: Any, gt_boxes_px: Any, image_size: tuple[int, int],
                          mask: np.ndarray | None = None) -> np.ndarray:
    """Exact probability that a uniformly placed box of each size is a hit.

    Args:
        sizes: ``(N, 2)`` ``(width, height)`` in pixels
        gt_boxes_px: ``(M, 4)`` non-crowd ground-truth boxes
        image_size: ``(width, height)``
        mask: the :func:`gt_mask` of these boxes, if already computed

    Returns:
        an ``(N,)`` float64 array: the share of each size's legal positions
        whose centre pixel is inside a box
    """
    s = _sizes(sizes)
    W, H = int(image_size[0]), int(image_size[1])
    m = gt_mask(gt_boxes_px, (W, H)) if mask is None else mask
    C = np.zeros((H + 1, W + 1), dtype=np.int64)
    C[1:, 1:] = m.cumsum(0).cumsum(1)
    out = np.empty(s.shape[0])
    cache: dict[tuple[int, int], float] = {}
    for k, (w, h) in enumerate(s):
        key = (int(w), int(h))
        if key not in cache:
            lx, hx = _legal(W, key[0])
            ly, hy = _legal(H, key[1])
            # legal centre pixels, clipped to the image
            a, b = min(max(lx + key[0] // 2, 0), W - 1), min(max(hx + key[0] // 2, 0), W - 1)
            c, d = min(max(ly + key[1] // 2, 0), H - 1), min(max(hy + key[1] // 2, 0), H - 1)
            hits = C[d + 1, b + 1] - C[c, b + 1] - C[d + 1, a] + C[c, a]
            cache[key] = float(hits) / float((b - a + 1) * (d - c + 1))
        out[k] = cache[key]
    return out


def center_prior_boxes(sizes: Any, image_size: tuple[int, int]) -> np.ndarray:
    """Boxes of the given sizes centred on the image.

    Args:
        sizes: ``(N, 2)`` ``(width, height)`` in pixels
        image_size: ``(width, height)``

    Returns:
        an ``(N, 4)`` int64 array, ``x0 = (W - w) // 2``, ``y0 = (H - h) // 2``
    """
    s = _sizes(sizes)
    W, H = int(image_size[0]), int(image_size[1])
    x0 = (W - s[:, 0]) // 2
    y0 = (H - s[:, 1]) // 2
    return np.stack([x0, y0, x0 + s[:, 0], y0 + s[:, 1]], axis=1).astype(np.int64)


def peak_point(saliency: Any, image_size: tuple[int, int]) -> tuple[float, float] | None:
    """The heatmap's peak in image coordinates.

    Args:
        saliency: a 2-D map covering the whole image (any resolution)
        image_size: ``(width, height)``

    Returns:
        ``(x, y)``: the centre of the first maximum cell, scaled to the
        image; None for a constant or non-finite map
    """
    m = np.asarray(saliency, dtype=np.float64)
    if m.ndim == 3:
        m = m[..., 0]
    if m.ndim != 2 or m.size == 0:
        raise ParameterError(f"saliency must be a 2-D map, got shape {m.shape}")
    if not np.isfinite(m).all() or m.max() == m.min():
        return None
    i, j = np.unravel_index(int(m.argmax()), m.shape)
    h, w = m.shape
    W, H = image_size
    return (j + 0.5) * W / w, (i + 0.5) * H / h


def point_box_distance(point: tuple[float, float], boxes_px: Any) -> np.ndarray:
    """Euclidean distance from a point to each box (0 inside or on it).

    Args:
        point: ``(x, y)``
        boxes_px: ``(M, 4)`` boxes ``[x0, y0, x1, y1]``

    Returns:
        an ``(M,)`` float64 array
    """
    g = _boxes(boxes_px, "boxes_px")
    x, y = point
    dx = np.maximum(np.maximum(g[:, 0] - x, 0.0), x - g[:, 2])
    dy = np.maximum(np.maximum(g[:, 1] - y, 0.0), y - g[:, 3])
    return np.hypot(dx, dy)


def pointing_hit(saliency: Any, image_size: tuple[int, int], gt_boxes_px: Any, radius: float = 15.0) -> bool:
    """The pointing game on one image.

    Args:
        saliency: a 2-D map covering the image
        image_size: ``(width, height)``
        gt_boxes_px: ``(M, 4)`` non-crowd ground-truth boxes
        radius: the tolerance in pixels

    Returns:
        True if the peak (:func:`peak_point`) is within ``radius`` of a box
    """
    p = peak_point(saliency, image_size)
    g = _boxes(gt_boxes_px, "gt_boxes_px")
    if p is None or g.shape[0] == 0:
        return False
    return bool(point_box_distance(p, g).min() <= radius)


def pointing_game(saliency_maps: Sequence[Any], image_sizes: Sequence[tuple[int, int]],
                  gt_boxes: Sequence[Any], radius: float = 15.0) -> float:
    """The pointing game over images (images without boxes are excluded).

    Args:
        saliency_maps: one 2-D map per image
        image_sizes: one ``(width, height)`` per image
        gt_boxes: one ``(M, 4)`` array of non-crowd boxes per image
        radius: the tolerance in pixels

    Returns:
        the share of hits, or NaN if no image has a box
    """
    hits = [pointing_hit(m, s, g, radius) for m, s, g in zip(saliency_maps, image_sizes, gt_boxes)
            if _boxes(g, "gt_boxes").shape[0]]
    return float(np.mean(hits)) if hits else float("nan")


def gt_boxes_px(detections: Any, image_size: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Non-crowd pixel boxes of a ``fo.Detections`` (or a list of detections).

    Args:
        detections: a ``fo.Detections``, a list of ``fo.Detection`` or None
        image_size: ``(width, height)``

    Returns:
        ``(boxes, crowd)``: an ``(M, 4)`` float64 array and the number of
        crowd boxes left out (``iscrowd`` attribute truthy)
    """
    dets = getattr(detections, "detections", detections) or []
    rel, crowd = [], 0
    for d in dets:
        bb = getattr(d, "bounding_box", None)
        if bb is None or len(bb) != 4:
            continue
        try:
            is_crowd = d.get_attribute_value("iscrowd", 0) if hasattr(d, "get_attribute_value") else 0
        except (AttributeError, KeyError):
            is_crowd = 0
        if is_crowd:
            crowd += 1
            continue
        rel.append(bb)
    return (rel_to_px(rel, image_size) if rel else np.zeros((0, 4))), crowd


# -- aggregation -------------------------------------------------------------------


class QualityAccumulator:
    """Accumulates the quality figures image by image.

    Used by :func:`evaluate_patches` and by ``benchmarks/bench_quality.py``,
    so both report the same numbers for the same boxes.

    Args:
        radius: the pointing-game tolerance in pixels
    """

    def __init__(self, radius: float = 15.0):
        if not isinstance(radius, (int, float)) or isinstance(radius, bool) or not (
            math.isfinite(radius) and radius >= 0
        ):
            raise ParameterError(f"radius must be a finite number >= 0, got {radius!r}")
        self.radius = float(radius)
        self.images = 0
        self.images_evaluated = 0
        self.images_without_gt = 0
        self.images_without_patches = 0
        self.patches = 0
        self.hits = 0
        self.uniform_hits = 0
        self.uniform_expected = 0.0
        self.center_hits = 0
        self.crowd_ignored = 0
        self.pointing_images = 0
        self.pointing_hits = 0
        self.degenerate_maps = 0
        self.images_without_heatmap = 0

    def add(self, image_size: tuple[int, int], boxes_px: Any, gt_px: Any, *, saliency: Any = None,
            seed: int = 0, key: Any = None, crowd: int = 0) -> None:
        """Adds one image.

        Args:
            image_size: ``(width, height)``
            boxes_px: ``(N, 4)`` whole-pixel patch boxes (may be empty)
            gt_px: ``(M, 4)`` non-crowd ground-truth boxes
            saliency: the image's heatmap, or None (not in the pointing game)
            seed: the seed of the uniform baseline
            key: the sample key of the uniform baseline
            crowd: crowd boxes that were left out (for the record)
        """
        self.images += 1
        self.crowd_ignored += int(crowd)
        g = _boxes(gt_px, "gt_px")
        b = np.rint(_boxes(boxes_px, "boxes_px")).astype(np.int64)
        if g.shape[0] == 0:
            self.images_without_gt += 1
            return
        if saliency is None:
            self.images_without_heatmap += 1
        else:
            self.pointing_images += 1
            if peak_point(saliency, image_size) is None:
                self.degenerate_maps += 1
            self.pointing_hits += int(pointing_hit(saliency, image_size, g, self.radius))
        if b.shape[0] == 0:
            self.images_without_patches += 1
            return
        self.images_evaluated += 1
        sizes = np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)
        self.patches += b.shape[0]
        self.hits += int(center_hits(b, g).sum())
        self.uniform_hits += int(center_hits(uniform_boxes(sizes, image_size, seed, key), g).sum())
        self.uniform_expected += float(uniform_expected_hits(sizes, g, image_size).sum())
        self.center_hits += int(center_hits(center_prior_boxes(sizes, image_size), g).sum())

    def result(self) -> dict[str, Any]:
        """Returns the figures.

        Returns:
            a JSON-serialisable dict: ``hit_rate``, ``uniform_rate``,
            ``uniform_expected``, ``ratio`` (hit / uniform), ``ratio_expected``,
            ``center_prior_rate``, ``pointing_game``, and the counts behind
            them (rates are None when nothing could be measured)
        """
        def rate(a: float, b: float) -> float | None:
            return float(a) / float(b) if b else None

        hit = rate(self.hits, self.patches)
        uni = rate(self.uniform_hits, self.patches)
        uexp = rate(self.uniform_expected, self.patches)
        return {
            "hit_rate": hit,
            "uniform_rate": uni,
            "uniform_expected": uexp,
            "ratio": (hit / uni) if hit is not None and uni else None,
            "ratio_expected": (hit / uexp) if hit is not None and uexp else None,
            "center_prior_rate": rate(self.center_hits, self.patches),
            "pointing_game": rate(self.pointing_hits, self.pointing_images),
            "radius": self.radius,
            "images": self.images,
            "images_evaluated": self.images_evaluated,
            "images_without_gt": self.images_without_gt,
            "images_without_patches": self.images_without_patches,
            "images_without_heatmap": self.images_without_heatmap,
            "patches": self.patches,
            "hits": self.hits,
            "uniform_hits": self.uniform_hits,
            "center_prior_hits": self.center_hits,
            "pointing_images": self.pointing_images,
            "pointing_hits": self.pointing_hits,
            "degenerate_maps": self.degenerate_maps,
            "crowd_boxes_ignored": self.crowd_ignored,
        }


# -- FiftyOne ----------------------------------------------------------------------


def _settings(dataset: Any, patches_field: str, gt_field: str,
              heatmap_field: str | None) -> tuple[str | None, dict[str, Any], str | None]:
    """The patch run behind ``patches_field`` (key and info) and the heatmap
    field of the pointing game (the run's own when None is given)."""
    import fiftyone as fo

    from xpatch_core.runs import collections as colls
    from xpatch_core.runs import get_run_info
    from xpatch_core.runs.records import run_of_field

    colls.require_field(dataset, patches_field, fo.Detections, "patches_field")
    colls.require_field(dataset, gt_field, fo.Detections, "gt_field")
    if gt_field == patches_field:
        raise ParameterError("gt_field must differ from patches_field")
    run_key = run_of_field(dataset, patches_field, "patches")
    info = get_run_info(dataset, run_key) if run_key is not None else {}
    if heatmap_field is None:
        heatmap_field = info.get("config", {}).get("heatmap_field")
        if heatmap_field is not None and not colls.field_exists(dataset, heatmap_field):
            heatmap_field = None
    if heatmap_field is not None:
        colls.require_field(dataset, heatmap_field, fo.Heatmap, "heatmap_field")
    return run_key, info, heatmap_field


def _accumulate(acc: QualityAccumulator, images: Any, patches_field: str, gt_field: str,
                heatmap_field: str | None, kept: set[str] | None, run_seed: int) -> int:
    """Adds every image to ``acc``; returns the number without a known size."""
    from xpatch_core.heatmaps import read_heatmap
    from xpatch_core.runs.collections import chunks

    dataset = images._dataset
    paths = ["id", f"{patches_field}.detections", f"{gt_field}.detections", "metadata.width", "metadata.height"]
    if heatmap_field is not None:
        paths.append(heatmap_field)
    unknown_size = 0
    for chunk_ids in chunks(images.values("id"), _CHUNK):
        cols = dataset.select(list(chunk_ids), ordered=True).values(paths)
        hms = cols[5] if heatmap_field is not None else [None] * len(cols[0])
        for sid, dets, gt, mw, mh, hm in zip(*cols[:5], hms):
            W = getattr(hm, "width", None) or mw
            H = getattr(hm, "height", None) or mh
            if not W or not H:
                unknown_size += 1
                continue
            size = (int(W), int(H))
            dets = [d for d in (dets or []) if kept is None or d.id in kept]
            rel = [d.bounding_box for d in dets if d.bounding_box is not None and len(d.bounding_box) == 4]
            boxes = rel_to_px(rel, size, whole_pixels=True) if rel else np.zeros((0, 4), dtype=np.int64)
            seed = run_seed
            s0 = dets[0].get_attribute_value("seed", None) if dets else None
            if isinstance(s0, int) and not isinstance(s0, bool) and s0 >= 0:
                seed = s0
            g, crowd = gt_boxes_px(gt, size)
            saliency = read_heatmap(hm) if hm is not None and len(g) else None
            acc.add(size, boxes, g, saliency=saliency, seed=seed, key=sid, crowd=crowd)
    return unknown_size


def evaluate_patches(
    sample_collection: Any,
    patches_field: str,
    gt_field: str,
    *,
    radius: float = 15.0,
    heatmap_field: str | None = None,
    store: bool = True,
) -> dict[str, Any]:
    """Measures whether a patch run's patches land on objects.

    See the module docstring for the exact definitions. For a patches view,
    only the patches it holds are evaluated (filters carry over); for other
    collections, every patch of ``patches_field`` in it.

    Args:
        sample_collection: a FiftyOne image collection or a patches view
        patches_field: the ``fo.Detections`` field of the patches
        gt_field: a ``fo.Detections`` field of ground-truth objects; boxes
            with a truthy ``iscrowd`` attribute are ignored
        radius: the pointing-game tolerance in pixels
        heatmap_field: the ``fo.Heatmap`` field for the pointing game;
            default: the patch run's heatmap field (none: no pointing game)
        store: store the figures with the patch run (``evaluation`` in its
            results, and ``evaluations[gt_field]``)

    Returns:
        a dict with ``hit_rate``, ``uniform_rate``, ``uniform_expected``,
        ``ratio``, ``center_prior_rate``, ``pointing_game``, the counts
        behind them, the fields, the run key and ``stored``

    Raises:
        ParameterError: for unknown fields or a bad radius
    """
    from xpatch_core.runs import update_run_results
    from xpatch_core.runs.collections import select_patches

    acc = QualityAccumulator(radius)  # validates radius first
    sel = select_patches(sample_collection, patches_field)
    dataset = sel.images._dataset
    run_key, info, heatmap_field = _settings(dataset, patches_field, gt_field, heatmap_field)
    run_seed = int(info.get("config", {}).get("seed") or 0)
    unknown_size = _accumulate(acc, sel.images, patches_field, gt_field, heatmap_field, sel.kept, run_seed)
    out = acc.result()
    out.update({
        "patches_field": patches_field,
        "gt_field": gt_field,
        "heatmap_field": heatmap_field,
        "images_without_size": unknown_size,
        "run_key": run_key,
        "view": "patches view" if sel.kept is not None else (
            "dataset" if len(sel.images) == len(dataset) else "view"),
        "evaluated_at": _dt.datetime.now(_dt.UTC).isoformat(),
        "stored": False,
    })
    if run_key is not None:
        out["run_updated_at"] = info.get("results", {}).get("updated_at")
    if store and run_key is not None:
        previous = info.get("results", {}).get("evaluations") or {}
        previous = dict(previous) if isinstance(previous, dict) else {}
        out["stored"] = True
        previous[gt_field] = out
        update_run_results(dataset, run_key, evaluation=out, evaluations=previous)
    return out
