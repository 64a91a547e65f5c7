"""Carrying ground truth into patches: boxes, instance masks, segmentation
masks and a patch class. NumPy only (no FiftyOne, no Pillow).

Coordinates are absolute pixels of the source image *as displayed* (after
EXIF orientation), boxes ``[x0, y0, x1, y1]`` with ``x1 - x0`` the width. A
patch box has whole-pixel corners and may extend outside the image
(``border="pad"``).

**Boxes** follow SAHI's slicing (``sahi.slicing.slice_image`` /
``slice_coco``, ``process_coco_annotations`` for box annotations): an
annotation is kept in a patch when its box overlaps the patch (a positive
area) and ``area(box ∩ patch) / area(box) >= min_area_ratio`` (SAHI's
default is 0.1), both areas in whole square pixels (truncated, as SAHI's
annotation areas are, so that the same annotations are kept; the exact
ratio is what is stored); its box is then clipped to the patch and expressed in the
patch's pixels. Before that, a box is clipped to the image (the visible part
of the object; SAHI assumes boxes inside the image) and a box that is empty,
not finite or entirely outside the image is dropped with a reason. SAHI
computes the ratio on the polygon instead of the box when a COCO annotation
carries one; here the box is used (a ``fo.Detections`` box is what every
detection dataset has).

**Instance masks** follow the convention of FiftyOne's COCO importer: a
detection's mask covers the pixel rows ``round(y0):round(y1)`` and columns
``round(x0):round(x1)`` (rounded half up here; the importer rounds halves to
even, so the two differ only on boxes with corners at exactly half a pixel).
FiftyOne's ``Detection.to_segmentation`` draws masks differently (corners
truncated, a mask one pixel off in shape resized), so its drawings of a patch
and of the whole image can differ by a pixel at object edges; the masks as
stored are exact cuts.
The carried mask covers the clipped box in the same convention, cut from the
source mask (pixels the source mask does not cover are False).

**The patch class** (:func:`classify_patch`): for each class, the share of
the patch's pixels covered by the union of that class's objects (instance
masks where the detections have them, boxes otherwise). The class with the
largest share wins if its share is at least ``min_coverage``; otherwise the
patch gets the background label. The share is returned (stored as the
``coverage`` attribute) so ambiguous patches can be filtered. Padding
outside the image counts as uncovered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CarriedBox",
    "carry_boxes",
    "classify_patch",
    "class_coverage",
    "crop_instance_mask",
    "crop_segmentation",
    "label_problem",
    "mask_origin",
    "segmentation_class",
]

_PATH_CHARS = ("/", "\\", "\x00")


@dataclass(frozen=True)
class CarriedBox:
    """One ground-truth box kept in a patch.

    Attributes:
        index: the annotation's index in the input
        box: the box clipped to the patch, in the patch's pixels
            ``[x0, y0, x1, y1]`` (floats)
        source_box: the same box in source pixels
        area_ratio: ``area(box ∩ patch) / area(box)``, in ``(0, 1]``
        kept_ratio: the same share in whole square pixels, as SAHI counts
            it: what ``min_area_ratio`` is compared with
    """

    index: int
    box: tuple[float, float, float, float]
    source_box: tuple[float, float, float, float]
    area_ratio: float
    kept_ratio: float


def label_problem(label: Any) -> str | None:
    """Says why a class label cannot name a folder, or None when it can.

    FiftyOne's directory-tree exporters use the label as a folder name, so
    a label holding ``/``, ``\\``, NUL or control characters, or equal to
    ``.``, ``..`` or an empty text, could write outside the export folder.

    Args:
        label: a label value

    Returns:
        a reason, or None
    """
    if not isinstance(label, str):
        return f"label {label!r} is not a text"
    text = label.strip()
    if text in ("", ".", ".."):
        return f"label {label!r} is empty or a relative path"
    if any(c in label for c in _PATH_CHARS) or any(ord(c) < 32 for c in label):
        return f"label {label[:60]!r} holds path or control characters"
    return None


def clip_to_image(boxes: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clips absolute boxes to the image.

    Args:
        boxes: ``(N, 4)`` float ``[x0, y0, x1, y1]``
        size: ``(width, height)``

    Returns:
        ``(clipped boxes, valid mask, clipped mask)``: valid is False for
        boxes that are not finite, empty, or outside the image; clipped is
        True for valid boxes that had to be cut
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w, h = size
    finite = np.all(np.isfinite(b), axis=1)
    safe = np.where(finite[:, None], b, 0.0)
    out = np.stack([np.clip(safe[:, 0], 0, w), np.clip(safe[:, 1], 0, h),
                    np.clip(safe[:, 2], 0, w), np.clip(safe[:, 3], 0, h)], axis=1)
    valid = finite & (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    clipped = valid & np.any(np.abs(out - safe) > 1e-9, axis=1)
    return out, valid, clipped


def carry_boxes(boxes: np.ndarray, patch: tuple[int, int, int, int], min_area_ratio: float) -> list[CarriedBox]:
    """Keeps and clips boxes in one patch, as SAHI does.

    Args:
        boxes: ``(N, 4)`` float ``[x0, y0, x1, y1]`` in source pixels,
            already clipped to the image and valid (see
            :func:`clip_to_image`)
        patch: the patch box ``[x0, y0, x1, y1]`` in source pixels
        min_area_ratio: the least share of a box's area inside the patch
            for it to be kept, in ``[0, 1]``

    Returns:
        the kept boxes, in input order
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    px0, py0, px1, py1 = (float(v) for v in patch)
    ix0 = np.maximum(b[:, 0], px0)
    iy0 = np.maximum(b[:, 1], py0)
    ix1 = np.minimum(b[:, 2], px1)
    iy1 = np.minimum(b[:, 3], py1)
    iw = ix1 - ix0
    ih = iy1 - iy0
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    # the decision compares whole-pixel areas, as SAHI does (its annotation
    # areas are truncated to integers); an object under one square pixel has
    # no whole-pixel area, and its exact ratio decides
    whole = np.floor(area)
    decide = np.where(whole >= 1, np.floor(inter) / np.maximum(whole, 1), inter / area)
    out = []
    for k in np.flatnonzero(inter > 0):
        ratio = float(inter[k] / area[k])
        if float(decide[k]) >= min_area_ratio:
            src = (float(ix0[k]), float(iy0[k]), float(ix1[k]), float(iy1[k]))
            out.append(CarriedBox(int(k), (src[0] - px0, src[1] - py0, src[2] - px0, src[3] - py0), src,
                                  min(ratio, 1.0), min(float(decide[k]), 1.0)))
    return out


def mask_origin(box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """The pixel rectangle a detection's mask covers (the COCO importer's convention).

    Args:
        box: ``[x0, y0, x1, y1]`` in pixels

    Returns:
        ``(col0, row0, col1, row1)``, each corner rounded half up (so that
        shifting a box by whole pixels shifts its mask by the same amount)
    """
    return tuple(int(math.floor(v + 0.5)) for v in box)  # type: ignore[return-value]


def _fit(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resizes a mask to ``shape`` (rows, cols) by nearest neighbour."""
    if mask.shape[:2] == shape:
        return mask
    rows = np.minimum((np.arange(shape[0]) + 0.5) * mask.shape[0] / max(shape[0], 1), mask.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * mask.shape[1] / max(shape[1], 1), mask.shape[1] - 1)
    return mask[rows.astype(np.int64)][:, cols.astype(np.int64)]


def crop_instance_mask(mask: np.ndarray, source_box: tuple[float, float, float, float],
                       clipped_box: tuple[float, float, float, float]) -> np.ndarray:
    """Cuts a detection's instance mask to its clipped box.

    Args:
        mask: the source mask (2-D), covering ``mask_origin(source_box)``
            (resized to it by nearest neighbour if its shape differs)
        source_box: the detection's original box in source pixels
        clipped_box: the clipped box in source pixels

    Returns:
        a bool mask covering ``mask_origin(clipped_box)``
    """
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    c0, r0, c1, r1 = mask_origin(source_box)
    m = _fit(m.astype(bool), (max(r1 - r0, 1), max(c1 - c0, 1)))
    n0, s0, n1, s1 = mask_origin(clipped_box)
    out = np.zeros((max(s1 - s0, 0), max(n1 - n0, 0)), dtype=bool)
    rr0, rr1 = max(s0, r0), min(s1, r0 + m.shape[0])
    cc0, cc1 = max(n0, c0), min(n1, c0 + m.shape[1])
    if rr1 > rr0 and cc1 > cc0:
        out[rr0 - s0:rr1 - s0, cc0 - n0:cc1 - n0] = m[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0]
    return out


def class_coverage(labels: list[str], boxes: list[tuple[float, float, float, float]],
                   masks: list[np.ndarray | None], patch_size: tuple[int, int]) -> dict[str, float]:
    """The share of a patch's pixels covered by each class's objects.

    Args:
        labels: each object's class
        boxes: each object's box clipped to the patch, in patch pixels
        masks: each object's mask covering ``mask_origin(box)``, or None to
            use the box
        patch_size: ``(width, height)`` of the patch

    Returns:
        class -> share in ``[0, 1]`` (union of the class's objects)
    """
    pw, ph = patch_size
    planes: dict[str, np.ndarray] = {}
    for label, box, mask in zip(labels, boxes, masks):
        plane = planes.setdefault(label, np.zeros((ph, pw), dtype=bool))
        c0, r0, c1, r1 = mask_origin(box)
        c0, r0 = max(c0, 0), max(r0, 0)
        c1, r1 = min(c1, pw), min(r1, ph)
        if c1 <= c0 or r1 <= r0:
            continue
        if mask is None:
            plane[r0:r1, c0:c1] = True
        else:
            oc, orow, _, _ = mask_origin(box)
            part = np.asarray(mask, dtype=bool)[r0 - orow:r1 - orow, c0 - oc:c1 - oc]
            plane[r0:r0 + part.shape[0], c0:c0 + part.shape[1]] |= part
    total = float(pw * ph)
    return {label: float(plane.sum()) / total for label, plane in planes.items()}


def classify_patch(coverage: dict[str, float], min_coverage: float, background: str) -> tuple[str, float]:
    """Picks the patch class from the classes' coverage.

    Args:
        coverage: class -> share of the patch (:func:`class_coverage`)
        min_coverage: the least share for a class to win, in ``[0, 1]``
        background: the label of a patch no class covers enough

    Returns:
        ``(label, share of the best class)``; ties go to the class name
        first in sort order, so the result does not depend on input order
    """
    if not coverage:
        return background, 0.0
    best = min(coverage, key=lambda k: (-coverage[k], k))
    share = coverage[best]
    if share > 0 and share >= min_coverage:
        return best, share
    return background, share


def crop_segmentation(mask: np.ndarray, patch: tuple[int, int, int, int],
                      image_size: tuple[int, int]) -> np.ndarray:
    """Cuts a semantic segmentation mask to a patch.

    The mask may have another resolution than the image (FiftyOne stretches
    it over the image): the patch is mapped to mask pixels by scaling. Parts
    of the patch outside the image are 0 (background).

    Args:
        mask: ``(H, W)`` or ``(H, W, C)`` integer mask over the whole image
        patch: ``[x0, y0, x1, y1]`` in image pixels (may extend outside)
        image_size: ``(width, height)`` of the image

    Returns:
        the cut mask, same dtype and channels, ``(h, w[, C])`` in mask pixels
    """
    m = np.asarray(mask)
    iw, ih = image_size
    mh, mw = m.shape[:2]
    sx, sy = mw / iw, mh / ih
    x0, y0, x1, y1 = patch
    c0, c1 = int(math.floor(x0 * sx + 0.5)), int(math.floor(x1 * sx + 0.5))
    r0, r1 = int(math.floor(y0 * sy + 0.5)), int(math.floor(y1 * sy + 0.5))
    out = np.zeros((max(r1 - r0, 1), max(c1 - c0, 1), *m.shape[2:]), dtype=m.dtype)
    rr0, rr1 = max(r0, 0), min(r1, mh)
    cc0, cc1 = max(c0, 0), min(c1, mw)
    if rr1 > rr0 and cc1 > cc0:
        out[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = m[rr0:rr1, cc0:cc1]
    return out


def segmentation_class(crop: np.ndarray, targets: dict[Any, str] | None, min_coverage: float,
                       background: str) -> tuple[str, float]:
    """The patch class from a cut segmentation mask.

    Value 0 (or black for RGB masks) is background. The non-background value
    covering the most pixels wins if its share is at least ``min_coverage``.

    Args:
        crop: the cut mask (:func:`crop_segmentation`)
        targets: FiftyOne mask targets (value -> class name; for RGB masks,
            ``"#rrggbb"`` -> name), or None (the value as text)
        min_coverage: the least share for a class to win
        background: the label of a patch no class covers enough

    Returns:
        ``(label, share of the best value)``
    """
    m = np.asarray(crop)
    if m.ndim == 3:
        flat = m[..., :3].astype(np.int64)
        codes = (flat[..., 0] << 16) | (flat[..., 1] << 8) | flat[..., 2]
    else:
        codes = m.astype(np.int64)
    values, counts = np.unique(codes, return_counts=True)
    keep = values != 0
    if not np.any(keep):
        return background, 0.0
    values, counts = values[keep], counts[keep]
    k = int(np.argmax(counts))
    share = float(counts[k]) / float(codes.size)
    value = int(values[k])
    key: Any = f"#{value:06x}" if m.ndim == 3 else value
    name = (targets or {}).get(key)
    if name is None and m.ndim == 3:
        name = (targets or {}).get(key.upper())
    if share < min_coverage:
        return background, share
    return str(name if name is not None else key), share
