"""Geometry of the sampler: box shapes, legal positions, axes and map cells.

The conventions are those of the package (see :mod:`xpatch_core.sampler`):

-   Boxes are half-open pixel boxes; a box of length ``p`` on an axis of
    length ``m`` has the ``m - p + 1`` legal positions ``0 .. m - p``.
-   The centre pixel of a box at ``x0`` is ``x0 + p // 2``.
-   Pixel ``x`` of an axis of ``m`` pixels lies in map cell
    ``((2 * x + 1) * ncell) // (2 * m)`` (pixel centres); cell ``j`` starts
    at pixel ``ceil((2 * m * j - ncell) / (2 * ncell))``, clipped to
    ``[0, m]``.
-   Box shapes are ``round(size * s * sqrt(r))`` by
    ``round(size * s / sqrt(r))`` (half up, at least 1) for scale ``s`` and
    aspect ratio ``r``, in the order ``scale_idx * len(aspect_ratios) +
    aspect_idx``.
-   A box longer than the image along an axis (``border="pad"`` or
    ``"clip"``) has one position on that axis and its other coordinate
    follows the map's marginal; ``border="error"`` refuses it and
    ``border="drop"`` leaves its shape out (:func:`usable_shapes`).

Axis geometries and cell edges are cached (:func:`functools.lru_cache`) and
returned read-only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from xpatch_core.errors import ParameterError
from xpatch_core.sampler.checks import check_image_size, check_positive_seq, check_size

__all__ = [
    "Axis",
    "axis_geometry",
    "box_shapes",
    "cell_edges",
    "cell_index",
    "cell_of",
    "legal_positions",
    "nominal_shapes",
    "usable_shapes",
]


def legal_positions(m: int, p: int) -> int:
    """Number of legal positions of a box of length ``p`` on an axis of ``m``.

    Args:
        m: the axis length in pixels
        p: the box length in pixels

    Returns:
        ``m - p + 1`` (top-left positions ``0 .. m - p``), or 0 if ``p > m``
    """
    return max(int(m) - int(p) + 1, 0)


def _round_half_up(x: float) -> int:
    return max(1, int(math.floor(x + 0.5)))


def nominal_shapes(base: int, scales: tuple[float, ...], aspects: tuple[float, ...]) -> np.ndarray:
    """Box shapes of checked arguments, see :func:`box_shapes`.

    Args:
        base: the box size in pixels
        scales: checked scales
        aspects: checked aspect ratios

    Returns:
        a ``(len(scales) * len(aspects), 2)`` int64 array of ``(width, height)``
    """
    rows = []
    for s in scales:
        for r in aspects:
            q = math.sqrt(r)
            rows.append((_round_half_up(base * s * q), _round_half_up(base * s / q)))
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def box_shapes(
    image_size: tuple[int, int],
    size: int | float,
    scales: Sequence[float] = (1.0,),
    aspect_ratios: Sequence[float] = (1.0,),
) -> np.ndarray:
    """Nominal box shapes for a size, scales and aspect ratios.

    ``size`` is pixels (int) or a fraction in ``(0, 1]`` of the image's short
    side (float, rounded half up, at least 1). For scale ``s`` and aspect
    ratio ``r`` (width / height) the box is ``round(size * s * sqrt(r))``
    wide and ``round(size * s / sqrt(r))`` high (half up, at least 1).

    Args:
        image_size: ``(width, height)``
        size: the box size in pixels or as a fraction of the short side
        scales: multipliers of ``size``
        aspect_ratios: width / height ratios

    Returns:
        a ``(len(scales) * len(aspect_ratios), 2)`` int64 array of
        ``(width, height)``, row ``scale_idx * len(aspect_ratios) +
        aspect_idx``

    Raises:
        ParameterError: for an invalid argument
    """
    W, H = check_image_size(image_size)
    base = check_size(size, W, H)
    sc = check_positive_seq(scales, "scales")
    ar = check_positive_seq(aspect_ratios, "aspect_ratios")
    return nominal_shapes(base, sc, ar)


def usable_shapes(shapes: np.ndarray, W: int, H: int, border: str) -> tuple[int, ...]:
    """The indices of the box shapes that a border policy samples.

    Args:
        shapes: ``(K, 2)`` nominal ``(width, height)``
        W: the image width
        H: the image height
        border: ``"pad"`` and ``"clip"`` keep every shape; ``"error"`` keeps
            every shape if all fit; ``"drop"`` keeps the shapes that fit

    Returns:
        the shape indices, increasing

    Raises:
        ParameterError: with ``"error"`` if a shape does not fit (naming the
            first), with ``"drop"`` if none fits
    """
    if border in ("pad", "clip"):
        return tuple(range(shapes.shape[0]))
    bad = (shapes[:, 0] > W) | (shapes[:, 1] > H)
    if border == "drop" and not bad.all():
        return tuple(np.flatnonzero(~bad).tolist())
    if bad.any():
        bw, bh = shapes[int(np.flatnonzero(bad)[0])]
        also = ", and so is every other box shape" if border == "drop" and bad.size > 1 else ""
        raise ParameterError(
            f"patch {bw}x{bh} is larger than the image {W}x{H}{also}; "
            "use a smaller size or border='pad' / border='clip'"
        )
    return tuple(range(shapes.shape[0]))


@lru_cache(maxsize=256)
def cell_edges(m: int, ncell: int) -> np.ndarray:
    """First pixel of each map cell (``ncell + 1`` values, last is ``m``).

    Args:
        m: the axis length in pixels
        ncell: the number of map cells along the axis

    Returns:
        a read-only int64 array
    """
    j = np.arange(ncell + 1, dtype=np.int64)
    e = -((ncell - 2 * m * j) // (2 * ncell))  # ceil((2 m j - ncell) / (2 ncell))
    e = np.clip(e, 0, m)
    e.flags.writeable = False
    return e


def cell_of(c: np.ndarray, m: int, ncell: int) -> np.ndarray:
    """Map cell of pixel indices ``c`` (pixel-centre convention).

    Args:
        c: pixel indices along an axis of ``m`` pixels
        m: the axis length in pixels
        ncell: the number of map cells along the axis

    Returns:
        the cell index of each pixel
    """
    return ((2 * c + 1) * ncell) // (2 * m)


class Axis:
    """Sampling geometry of one box length along one image axis.

    Attributes:
        m: the axis length
        p: the nominal box length
        box_len: the box length as drawn (``m`` for a clipped box)
        half: ``p // 2`` (0 for an oversized box)
        base: the first position (``0``, or the one position of an oversized
            box)
        npos: the number of legal positions
        c0: the first map cell holding a legal centre
        c1: one past the last such cell
        start: first legal position in each cell ``c0 .. c1 - 1``
        count: legal positions in each of those cells
        countf: ``count`` as float64
        wcount: pixels per cell (marginal weights) for an oversized box, else
            ``None``
        fixed: True for an oversized box (one position)
        unit: True if every cell holds one position
        flagged: True for an oversized (padded or clipped) box
    """

    __slots__ = (
        "m",
        "p",
        "box_len",
        "half",
        "base",
        "npos",
        "c0",
        "c1",
        "start",
        "count",
        "countf",
        "wcount",
        "fixed",
        "unit",
        "flagged",
    )


def _oversized(a: Axis, e: np.ndarray, m: int, p: int, ncell: int, border: str) -> None:
    a.fixed = True
    a.flagged = True
    a.box_len = m if border == "clip" else p
    a.base = 0 if border == "clip" else (m - p) // 2
    a.half = 0
    a.npos = 1
    a.c0, a.c1 = 0, ncell
    a.start = np.array([a.base], dtype=np.int64)
    a.count = np.ones(1, dtype=np.int64)
    a.wcount = np.diff(e).astype(np.float64)  # pixels per cell: marginal weights
    a.unit = True


def _fitting(a: Axis, e: np.ndarray, m: int, p: int) -> None:
    a.fixed = False
    a.flagged = False
    a.box_len = p
    a.half = p // 2
    a.base = 0
    a.npos = m - p + 1
    lo, hi = a.half, m - p + a.half  # legal centre pixels (inclusive)
    lo_c = np.maximum(e[:-1], lo)
    hi_c = np.minimum(e[1:], hi + 1)
    cnt = np.maximum(hi_c - lo_c, 0)
    nz = np.flatnonzero(cnt)
    a.c0, a.c1 = int(nz[0]), int(nz[-1]) + 1
    a.start = (lo_c[a.c0 : a.c1] - a.half).astype(np.int64)
    a.count = cnt[a.c0 : a.c1].astype(np.int64)
    a.wcount = None
    a.unit = bool(np.all(a.count == 1))


@lru_cache(maxsize=1024)
def axis_geometry(m: int, ncell: int, p: int, border: str) -> Axis:
    """The sampling geometry of a box length on an axis (cached, read-only).

    Args:
        m: the axis length in pixels
        ncell: the number of map cells along the axis
        p: the box length in pixels
        border: ``"pad"`` or ``"clip"`` for a box longer than the axis

    Returns:
        an :class:`Axis`
    """
    a = Axis()
    a.m, a.p = m, p
    e = cell_edges(m, ncell)
    if p > m:  # oversized: one position, the box covers the whole axis
        _oversized(a, e, m, p, ncell, border)
    else:
        _fitting(a, e, m, p)
    a.countf = a.count.astype(np.float64)
    for arr in (a.start, a.count, a.countf, a.wcount):
        if arr is not None:
            arr.flags.writeable = False
    return a


def cell_index(ax: Axis, pos: np.ndarray, ncell: int) -> np.ndarray:
    """Index (within the axis' sampling slice) of the cell of positions.

    Args:
        ax: the axis geometry
        pos: legal positions (box starts)
        ncell: the number of map cells along the axis

    Returns:
        the index of each position's centre cell, counted from ``ax.c0``
    """
    if ax.fixed:
        return np.zeros(pos.shape, dtype=np.int64)
    return cell_of(pos + ax.half, ax.m, ncell) - ax.c0
