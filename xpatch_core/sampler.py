"""Patch boxes whose centres follow a saliency map.

:func:`sample_patches` turns a saliency map (at any resolution: the network's
coarse map, e.g. ``10x10``, or a full-resolution map) into patch *boxes* for an
image of a given size. It never touches pixels and imports only NumPy.

Geometry and conventions
------------------------

-   ``image_size`` is ``(width, height)`` as in PIL. Boxes are half-open integer
    pixel boxes ``[x0, y0, x1, y1]`` with ``x1 - x0`` equal to the box width.
-   A box of length ``p`` along an axis of length ``m`` has exactly
    ``m - p + 1`` legal positions ``x0 = 0, ..., m - p`` (see
    :func:`legal_positions`); the last one is flush with the border.
-   **Centre convention**: the centre pixel of a box is ``x0 + p // 2`` (and
    ``y0 + q // 2``). A position is weighted by the density at its centre
    pixel, so legal centres are ``p // 2, ..., m - p + p // 2``.
-   **Map to image**: the map is assumed to cover the whole image. Map column
    ``j`` of a map ``w`` cells wide covers the image pixels whose *pixel
    centre* ``x + 0.5`` lies in ``[j * W / w, (j + 1) * W / w)``, i.e. pixel
    ``x`` belongs to column ``((2 * x + 1) * w) // (2 * W)`` (rows likewise).
    This is nearest-neighbour upsampling by pixel centres; the density over
    image pixels is piecewise constant per map cell. A map with the image's
    own shape is the case where every cell is one pixel.

Sampling is exact for coarse maps without building a full-resolution map: per
axis the legal centre pixels form an interval, each map cell overlaps it in
some count of pixels, a cell is drawn with a float64 CDF (``searchsorted``
with ``side="right"`` on uniform draws in ``[0, total)``, so zero-weight cells
are never drawn) using the weight ``value * count_x * count_y``, and the
position is drawn uniformly among the legal pixels of that cell.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from xpatch_core.errors import ParameterError, XpatchError

__all__ = [
    "DegenerateMapError",
    "PatchSet",
    "box_shapes",
    "image_rng",
    "legal_positions",
    "sample_patches",
    "stable_key_hash",
]

_MODES = ("random", "topk", "grid")
_SCORES = ("center", "mean")
_BORDERS = ("error", "pad", "clip")
_ON_DEGENERATE = ("uniform", "error")

# above this many draws, searchsorted runs on sorted keys (same result, far
# fewer cache misses on big CDFs)
_SORTED_SEARCH_MIN = 4096


class DegenerateMapError(XpatchError):
    """The saliency map is unusable and ``on_degenerate="error"`` was given."""


@dataclass(frozen=True, eq=False)
class PatchSet:
    """Patch boxes sampled for one image.

    All arrays have one row per box, in acceptance order (draw order for
    ``mode="random"``, rank order for ``"topk"``, raster order for
    ``"grid"``).

    Attributes:
        boxes: ``(N, 4)`` int64 pixel boxes ``[x0, y0, x1, y1]``, half-open,
            ``x1 - x0`` is the box width. With ``border="pad"`` coordinates
            may lie outside the image; with ``border="clip"`` the box is cut
            to the image. Both cases are marked in ``flags``
        rel_boxes: ``(N, 4)`` float64 FiftyOne boxes ``[x, y, w, h]``
            relative to the image width and height
        scores: ``(N,)`` float64 saliency of each box on the cleaned map
            divided by its maximum (so in ``[0, 1]``): the value at the centre
            pixel (``score="center"``) or the exact mean over the box's pixels
            inside the image (``score="mean"``). Temperature is not applied
        probs: ``(N,)`` float64 probability of the box's position under the
            sampling distribution of its shape (conditional on its scale and
            aspect ratio, epsilon mix included); for ``replace=False`` and
            overlap control this is the per-draw probability, not the
            inclusion probability
        scale_idx: ``(N,)`` int64 index into ``scales``
        aspect_idx: ``(N,)`` int64 index into ``aspect_ratios``
        flags: ``(N,)`` bool, True for padded or clipped boxes
        shapes: ``(K, 2)`` int64 nominal ``(width, height)`` of each box
            shape, ``K = len(scales) * len(aspect_ratios)``, row
            ``scale_idx * len(aspect_ratios) + aspect_idx``
        image_size: ``(width, height)`` of the image
        requested: the number of boxes asked for (``None`` for a full grid);
            fewer may be returned under overlap control or without
            replacement when the constraint cannot be met within
            ``max_tries``
        n_draws: candidates drawn (random mode) or examined (topk/grid)
        degenerate: True if the map needed repair or carries no information
            (NaN/inf values, negative values, all zero, constant, or no
            positive weight at any legal centre)
        uniform_fallback: True if at least one box shape was sampled
            uniformly over its legal positions because the map had no usable
            weight for it
        reason: human-readable description of every problem found, or
            ``None`` for a clean map
    """

    boxes: np.ndarray
    rel_boxes: np.ndarray
    scores: np.ndarray
    probs: np.ndarray
    scale_idx: np.ndarray
    aspect_idx: np.ndarray
    flags: np.ndarray
    shapes: np.ndarray
    image_size: tuple[int, int]
    requested: int | None
    n_draws: int
    degenerate: bool = False
    uniform_fallback: bool = False
    reason: str | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def complete(self) -> bool:
        """Whether as many boxes as requested were returned."""
        return self.requested is None or len(self) >= self.requested


# ---------------------------------------------------------------------------
# small public helpers


def legal_positions(m: int, p: int) -> int:
    """Number of legal positions of a box of length ``p`` on an axis of ``m``.

    Args:
        m: the axis length in pixels
        p: the box length in pixels

    Returns:
        ``m - p + 1`` (top-left positions ``0 .. m - p``), or 0 if ``p > m``
    """
    return max(int(m) - int(p) + 1, 0)


def stable_key_hash(key: Any) -> int:
    """A 64-bit hash of a sample key that is stable across processes.

    Python's :func:`hash` is salted per process, so it is never used.

    Args:
        key: ``None``, a ``str`` (e.g. a FiftyOne sample id or a filepath),
            ``bytes`` or an ``int``

    Returns:
        an int in ``[0, 2**64)``
    """
    if key is None:
        data = b"n:"
    elif isinstance(key, str):
        data = b"s:" + key.encode("utf-8", "surrogatepass")
    elif isinstance(key, (bytes, bytearray)):
        data = b"b:" + bytes(key)
    elif isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        data = b"i:" + str(int(key)).encode()
    else:
        raise ParameterError(f"key must be None, str, bytes or int, got {type(key).__name__}")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def image_rng(seed: int = 0, key: Any = None) -> np.random.Generator:
    """The random generator used for one image.

    It depends only on ``(seed, key)``, so results do not depend on call
    order, batch size or the number of workers.

    Args:
        seed: a non-negative int
        key: the sample key, see :func:`stable_key_hash`

    Returns:
        ``Generator(PCG64(SeedSequence([seed, stable_key_hash(key)])))``
    """
    return _rng(_check_seed(seed), stable_key_hash(key))


def _rng(seed: int, key_hash: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, key_hash])))


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
    """
    W, H = _check_image_size(image_size)
    base = _check_size(size, W, H)
    sc = _check_positive_seq(scales, "scales")
    ar = _check_positive_seq(aspect_ratios, "aspect_ratios")
    return _shapes(base, sc, ar)


# ---------------------------------------------------------------------------
# validation


def _check_image_size(image_size: Any) -> tuple[int, int]:
    try:
        W, H = image_size
    except (TypeError, ValueError):
        raise ParameterError(f"image_size must be (width, height), got {image_size!r}") from None
    if not (_is_int(W) and _is_int(H)) or W < 1 or H < 1:
        raise ParameterError(f"image_size must be two positive ints (width, height), got {image_size!r}")
    return int(W), int(H)


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _check_seed(seed: Any) -> int:
    if not _is_int(seed) or seed < 0:
        raise ParameterError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _check_size(size: Any, W: int, H: int) -> int:
    if _is_int(size):
        if size < 1:
            raise ParameterError(f"size must be >= 1 pixel, got {size}")
        return int(size)
    if _is_real(size):
        s = float(size)
        if not (0.0 < s <= 1.0):
            raise ParameterError(
                "a float size is a fraction of the image's short side and must "
                f"be in (0, 1], got {size!r}; pass an int for pixels"
            )
        return max(1, int(math.floor(s * min(W, H) + 0.5)))
    raise ParameterError(f"size must be an int (pixels) or a float fraction, got {size!r}")


def _check_positive_seq(values: Any, name: str) -> tuple[float, ...]:
    if _is_real(values):
        values = (values,)
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ParameterError(f"{name} must be a sequence of positive numbers, got {values!r}")
    out = []
    for v in values:
        if not _is_real(v) or not (math.isfinite(v) and v > 0):
            raise ParameterError(f"{name} must contain finite numbers > 0, got {v!r}")
        out.append(float(v))
    if not out:
        raise ParameterError(f"{name} must not be empty")
    return tuple(out)


def _round_half_up(x: float) -> int:
    return max(1, int(math.floor(x + 0.5)))


def _shapes(base: int, scales: tuple[float, ...], aspects: tuple[float, ...]) -> np.ndarray:
    rows = []
    for s in scales:
        for r in aspects:
            q = math.sqrt(r)
            rows.append((_round_half_up(base * s * q), _round_half_up(base * s / q)))
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


# ---------------------------------------------------------------------------
# geometry


@lru_cache(maxsize=256)
def _edges(m: int, ncell: int) -> np.ndarray:
    """First pixel of each map cell (``ncell + 1`` values, last is ``m``)."""
    j = np.arange(ncell + 1, dtype=np.int64)
    e = -((ncell - 2 * m * j) // (2 * ncell))  # ceil((2 m j - ncell) / (2 ncell))
    e = np.clip(e, 0, m)
    e.flags.writeable = False
    return e


def _cell_of(c: np.ndarray, m: int, ncell: int) -> np.ndarray:
    """Map cell of pixel indices ``c`` (pixel-centre convention)."""
    return ((2 * c + 1) * ncell) // (2 * m)


class _Axis:
    """Sampling geometry of one box length along one image axis."""

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


@lru_cache(maxsize=1024)
def _axis(m: int, ncell: int, p: int, border: str) -> _Axis:
    a = _Axis()
    a.m, a.p = m, p
    e = _edges(m, ncell)
    if p > m:  # oversized: one position, the box covers the whole axis
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
    else:
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
    a.countf = a.count.astype(np.float64)
    for arr in (a.start, a.count, a.countf, a.wcount):
        if arr is not None:
            arr.flags.writeable = False
    return a


def _cell_index(ax: _Axis, pos: np.ndarray, ncell: int) -> np.ndarray:
    """Index (within the axis' sampling slice) of the cell of positions."""
    if ax.fixed:
        return np.zeros(pos.shape, dtype=np.int64)
    return _cell_of(pos + ax.half, ax.m, ncell) - ax.c0


# ---------------------------------------------------------------------------
# per-shape sampler


class _Shape:
    """Sampling distribution of one box shape on one (cleaned) map."""

    __slots__ = (
        "gx",
        "gy",
        "pw",
        "cdf",
        "total",
        "last",
        "fallback",
        "npos",
        "wc",
        "ncol",
        "nrow",
        "eps",
    )

    def __init__(self, vt: np.ndarray, gx: _Axis, gy: _Axis, fallback: bool, eps: float):
        self.gx, self.gy = gx, gy
        self.nrow, self.ncol = vt.shape
        self.npos = gx.npos * gy.npos
        self.eps = eps
        self.fallback = fallback
        self.cdf = None
        self.total = 0.0
        self.last = 0
        # per-position weights of the cells in the sampling slice
        pw = vt[gy.c0 : gy.c1, gx.c0 : gx.c1]
        if gx.fixed:
            pw = (pw @ gx.wcount)[:, None] / gx.m
        if gy.fixed:
            pw = (gy.wcount @ pw)[None, :] / gy.m
        self.pw = pw
        self.wc = pw.shape[1]

    def cell_weights(self) -> np.ndarray:
        gx, gy = self.gx, self.gy
        if gx.unit and gy.unit:
            return self.pw
        return self.pw * (gy.countf[:, None] * gx.countf[None, :])

    def build(self, cdf: bool = True) -> None:
        """Find the total mass (and build the CDF if ``cdf``); switch to the
        uniform fallback if there is no mass."""
        if self.fallback or self.cdf is not None or (not cdf and self.total > 0.0):
            return
        if cdf:
            c = np.cumsum(self.cell_weights(), dtype=np.float64).reshape(-1)
            total = float(c[-1])
        else:
            total = float(self.cell_weights().sum(dtype=np.float64))
        if not (total > 0.0 and math.isfinite(total)):
            self.fallback = True
            return
        self.total = total
        if cdf:
            self.cdf = c
            # last positive-weight cell: guards a draw rounding up to ``total``
            self.last = int(c.searchsorted(total, side="left"))

    def draw(self, rng: np.random.Generator, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw ``c`` positions; returns ``x0, y0, probs``."""
        self.build()
        gx, gy = self.gx, self.gy
        if self.fallback:
            x0, y0 = self._uniform(rng, c)
            return x0, y0, np.full(c, 1.0 / self.npos)
        eps = self.eps
        if eps > 0.0:
            is_u = rng.random(c) < eps
            iu = np.flatnonzero(is_u)
            im = np.flatnonzero(~is_u)
            cm = im.size
        else:
            cm = c
        u = rng.random(cm)
        u *= self.total
        if cm >= _SORTED_SEARCH_MIN and self.cdf.size >= _SORTED_SEARCH_MIN:
            order = np.argsort(u)
            idx = np.empty(cm, dtype=np.int64)
            idx[order] = self.cdf.searchsorted(u[order], side="right")
        else:
            idx = self.cdf.searchsorted(u, side="right")
        np.minimum(idx, self.last, out=idx)
        i, j = np.divmod(idx, self.wc)
        # floor(r * count) < count for r <= 1 - 2**-53 and count < 2**53
        if gx.unit:
            x0 = gx.start[j]
        else:
            x0 = gx.start[j] + (rng.random(cm) * gx.countf[j]).astype(np.int64)
        if gy.unit:
            y0 = gy.start[i]
        else:
            y0 = gy.start[i] + (rng.random(cm) * gy.countf[i]).astype(np.int64)
        p = self.pw[i, j] / self.total
        if eps == 0.0:
            return x0, y0, p
        p *= 1.0 - eps
        p += eps / self.npos
        xu, yu = self._uniform(rng, iu.size)
        X = np.empty(c, dtype=np.int64)
        Y = np.empty(c, dtype=np.int64)
        P = np.empty(c, dtype=np.float64)
        X[im], Y[im], P[im] = x0, y0, p
        X[iu], Y[iu] = xu, yu
        P[iu] = self.prob_at(xu, yu)
        return X, Y, P

    def _uniform(self, rng: np.random.Generator, c: int) -> tuple[np.ndarray, np.ndarray]:
        gx, gy = self.gx, self.gy
        if gx.npos > 1:
            x0 = gx.base + (rng.random(c) * gx.npos).astype(np.int64)
        else:
            x0 = np.full(c, gx.base, dtype=np.int64)
        if gy.npos > 1:
            y0 = gy.base + (rng.random(c) * gy.npos).astype(np.int64)
        else:
            y0 = np.full(c, gy.base, dtype=np.int64)
        return x0, y0

    def prob_at(self, x0: np.ndarray, y0: np.ndarray) -> np.ndarray:
        """Probability of legal positions under this shape's distribution."""
        self.build(cdf=False)
        if self.fallback:
            return np.full(x0.shape, 1.0 / self.npos)
        j = _cell_index(self.gx, x0, self.ncol)
        i = _cell_index(self.gy, y0, self.nrow)
        return (1.0 - self.eps) * (self.pw[i, j] / self.total) + self.eps / self.npos


# ---------------------------------------------------------------------------
# map cleaning


def _as_map(saliency: Any) -> np.ndarray:
    v = np.asarray(saliency)
    if v.dtype.kind not in "biuf":
        raise ParameterError(f"saliency must be a real-valued array, got dtype {v.dtype}")
    if v.ndim != 2:
        raise ParameterError(
            f"saliency must be a 2-D (height, width) array, got shape {v.shape}; "
            "squeeze or reduce channels first"
        )
    if v.size == 0:
        raise ParameterError(f"saliency map is empty (shape {v.shape})")
    if v.dtype != np.float64:
        v = v.astype(np.float64)
    return v


def _clean(v: np.ndarray, on_degenerate: str) -> tuple[np.ndarray, float, list[str], bool]:
    """Returns ``(cleaned map, max, problems, no_information)``."""
    problems: list[str] = []
    mn, mx = float(v.min()), float(v.max())
    if not (math.isfinite(mn) and math.isfinite(mx)):
        finite = np.isfinite(v)
        n_nan = int(np.isnan(v).sum())
        n_inf = int(v.size - finite.sum()) - n_nan
        msg = f"saliency map has {n_nan} NaN and {n_inf} infinite values"
        if on_degenerate == "error":
            raise DegenerateMapError(msg)
        problems.append(msg + " (treated as 0)")
        v = np.where(finite, v, 0.0)
        mn, mx = float(v.min()), float(v.max())
    if mn < 0.0:
        msg = f"saliency map has negative values (min {mn:.6g})"
        if on_degenerate == "error":
            raise DegenerateMapError(msg)
        problems.append(msg + " (clipped to 0)")
        v = np.maximum(v, 0.0)
        mn, mx = max(mn, 0.0), max(mx, 0.0)
    no_info = False
    if mx == 0.0:
        msg = "saliency map is all zero"
        no_info = True
    elif mn == mx:
        msg = f"saliency map is constant ({mx:.6g})"
        no_info = True
    if no_info:
        if on_degenerate == "error":
            raise DegenerateMapError(msg)
        problems.append(msg + "; sampled uniformly over legal positions")
    return v, mx, problems, no_info


# ---------------------------------------------------------------------------
# overlap control


def _conflict_matrix(
    a: np.ndarray, b: np.ndarray, max_iou: float | None, min_distance: float | None
) -> np.ndarray:
    """``(len(a), len(b))`` bool: pairs violating the constraints."""
    out = np.zeros((a.shape[0], b.shape[0]), dtype=bool)
    if max_iou is not None and max_iou < 1.0:
        iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
        ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
        inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
        area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
        area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        union = area_a[:, None] + area_b[None, :] - inter
        out |= inter > max_iou * union  # IoU > max_iou, without dividing
    if min_distance is not None and min_distance > 0.0:
        dx = (a[:, None, 0] + a[:, None, 2]) - (b[None, :, 0] + b[None, :, 2])
        dy = (a[:, None, 1] + a[:, None, 3]) - (b[None, :, 1] + b[None, :, 3])
        out |= dx * dx + dy * dy < 4.0 * min_distance * min_distance  # centres: halves
    return out


def _compatible(
    cand: np.ndarray, acc: np.ndarray, max_iou: float | None, min_distance: float | None
) -> np.ndarray:
    """Mask of candidates that conflict with none of the accepted boxes."""
    ok = np.ones(cand.shape[0], dtype=bool)
    if acc.shape[0] == 0 or cand.shape[0] == 0:
        return ok
    step = max(1, (1 << 21) // cand.shape[0])
    for s in range(0, acc.shape[0], step):
        ok &= ~_conflict_matrix(cand, acc[s : s + step], max_iou, min_distance).any(axis=1)
    return ok


def _greedy(cand: np.ndarray, need: int, max_iou: float | None, min_distance: float | None) -> np.ndarray:
    """Greedy acceptance in order; returns indices of accepted candidates."""
    keep = []
    rem = np.arange(cand.shape[0])
    while rem.size and len(keep) < need:
        c = int(rem[0])
        keep.append(c)
        rest = rem[1:]
        if rest.size:
            bad = _conflict_matrix(cand[c : c + 1], cand[rest], max_iou, min_distance)[0]
            rest = rest[~bad]
        rem = rest
    return np.asarray(keep, dtype=np.int64)


# ---------------------------------------------------------------------------
# scores


def _center_scores(cx: np.ndarray, cy: np.ndarray, v: np.ndarray, vmax: float, W: int, H: int) -> np.ndarray:
    """Map value at centre pixels ``(cx, cy)`` (inside the image) / ``vmax``."""
    h, w = v.shape
    iy = cy if h == H else _cell_of(cy, H, h)
    ix = cx if w == W else _cell_of(cx, W, w)
    out = v[iy, ix]
    if vmax != 1.0:
        out /= vmax
    return out


def _scores(boxes: np.ndarray, v: np.ndarray, vmax: float, W: int, H: int, how: str) -> np.ndarray:
    """Saliency scores of boxes on the map ``v / vmax`` (``h x w``)."""
    h, w = v.shape
    n = boxes.shape[0]
    if n == 0 or vmax <= 0:
        return np.zeros(n)
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    if how == "center":
        cx = np.clip(x0 + (x1 - x0) // 2, 0, W - 1)
        cy = np.clip(y0 + (y1 - y0) // 2, 0, H - 1)
        return _center_scores(cx, cy, v, vmax, W, H)
    # exact mean over the box's pixels (nearest-neighbour density)
    e, f = _edges(W, w), _edges(H, h)
    X0, X1 = np.clip(x0, 0, W), np.clip(x1, 0, W)
    Y0, Y1 = np.clip(y0, 0, H), np.clip(y1, 0, H)
    area = ((X1 - X0) * (Y1 - Y0)).astype(np.float64)
    ja = e.searchsorted(X0, side="right") - 1  # cells holding the first and
    jb = e.searchsorted(X1 - 1, side="right") - 1  # last pixel of each box
    ia = f.searchsorted(Y0, side="right") - 1
    ib = f.searchsorted(Y1 - 1, side="right") - 1
    ncx = jb - ja + 1
    per = ncx * (ib - ia + 1)
    if int(per.sum()) <= h * w // 2:
        # few cells under the boxes: visit them directly, weighted by overlap
        rep = np.repeat(np.arange(n), per)
        off = np.arange(rep.size, dtype=np.int64) - (np.cumsum(per) - per)[rep]
        di, dj = np.divmod(off, ncx[rep])
        cj, ci = ja[rep] + dj, ia[rep] + di
        ox = np.minimum(e[cj + 1], X1[rep]) - np.maximum(e[cj], X0[rep])
        oy = np.minimum(f[ci + 1], Y1[rep]) - np.maximum(f[ci], Y0[rep])
        sums = np.bincount(rep, weights=v[ci, cj] * (ox * oy), minlength=n)
        return np.clip(sums / area / vmax, 0.0, 1.0)
    if h == H and w == W:  # full resolution: a plain integral image
        C = np.zeros((H + 1, W + 1))
        np.cumsum(v, axis=0, out=C[1:, 1:])
        np.cumsum(C[1:, 1:], axis=1, out=C[1:, 1:])
        total = C[Y1, X1] - C[Y0, X1] - C[Y1, X0] + C[Y0, X0]
        return np.clip(total / area / vmax, 0.0, 1.0)
    # otherwise cell-level integral images with fractional end cells
    a = v / vmax
    cw, rh = np.diff(e).astype(np.float64), np.diff(f).astype(np.float64)
    C = np.zeros((h + 1, w + 1))
    C[1:, 1:] = (a * rh[:, None] * cw[None, :]).cumsum(0).cumsum(1)
    Sx = np.zeros((h + 1, w))
    Sx[1:] = (a * rh[:, None]).cumsum(0)  # full rows above, per column
    Sy = np.zeros((h, w + 1))
    Sy[:, 1:] = (a * cw[None, :]).cumsum(1)  # full columns left, per row

    def G(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        ja = np.clip(e.searchsorted(x, side="right") - 1, 0, w - 1)
        ia = np.clip(f.searchsorted(y, side="right") - 1, 0, h - 1)
        dx = (x - e[ja]).astype(np.float64)
        dy = (y - f[ia]).astype(np.float64)
        return C[ia, ja] + dx * Sx[ia, ja] + dy * Sy[ia, ja] + dx * dy * a[ia, ja]

    total = G(X1, Y1) - G(X0, Y1) - G(X1, Y0) + G(X0, Y0)
    return np.clip(total / area, 0.0, 1.0)


# ---------------------------------------------------------------------------
# main entry point


def sample_patches(
    saliency: Any,
    image_size: tuple[int, int],
    n: int | None,
    size: int | float,
    *,
    seed: int = 0,
    key: Any = None,
    scales: Sequence[float] = (1.0,),
    aspect_ratios: Sequence[float] = (1.0,),
    temperature: float = 1.0,
    epsilon: float = 0.0,
    replace: bool = True,
    max_iou: float | None = None,
    min_distance: float | None = None,
    score: str = "center",
    mode: str = "random",
    border: str = "error",
    on_degenerate: str = "uniform",
    max_tries: int | None = None,
    stride: int | tuple[int, int] | None = None,
) -> PatchSet:
    """Draws patch boxes whose centres follow a saliency map.

    Positions are weighted by the map's value at the box's centre pixel
    ``(x0 + w // 2, y0 + h // 2)``, restricted to legal positions (every box
    is full size and inside the image), see the module docstring for the
    map-to-image convention. Coarse maps are sampled exactly without building
    a full-resolution map.

    Degenerate maps are never handled silently. With
    ``on_degenerate="uniform"``: NaN/inf values are treated as 0, negative
    values are clipped to 0 (the map's scores use the cleaned map too), and
    an all-zero or constant map (or one with no
    positive weight at any legal centre of a box shape) is replaced by the
    uniform distribution over legal positions; ``degenerate``,
    ``uniform_fallback`` and ``reason`` on the result say what happened. With
    ``on_degenerate="error"`` each of these raises
    :class:`DegenerateMapError` (a ``ValueError``) naming the problem.

    Args:
        saliency: a 2-D real array ``(h, w)`` at any resolution covering the
            whole image (e.g. a ``10x10`` network map or a full-size map)
        image_size: ``(width, height)`` of the image, as in PIL
        n: number of boxes. In ``mode="grid"`` it caps the number of tiles
            (first ``n`` in raster order) and ``None`` means all tiles; other
            modes need an int ``>= 1``
        size: box size in pixels (int) or as a fraction in ``(0, 1]`` of the
            image's short side (float)
        seed: a non-negative int; with ``key`` it seeds this image's
            generator, see :func:`image_rng`
        key: a stable sample key (str, bytes, int or None), e.g. a FiftyOne
            sample id
        scales: size multipliers; each random box picks a ``(scale,
            aspect)`` pair uniformly at random
        aspect_ratios: width / height ratios, see :func:`box_shapes`
        temperature: exponent applied to the normalised map before sampling
            (``weights = map ** temperature``); ``> 1`` sharpens, ``< 1``
            flattens, ``0`` is uniform. Finite and ``>= 0``
        epsilon: probability in ``[0, 1]`` of drawing a box uniformly over the
            legal positions instead of from the map (exact mixture
            ``(1 - epsilon) * p_map + epsilon * p_uniform``)
        replace: if False, no two returned boxes are identical (successive
            sampling: duplicates of earlier draws are rejected)
        max_iou: if given, greedy non-maximum suppression in draw (or rank)
            order: a box is accepted only if its IoU with every accepted box
            is ``<= max_iou``
        min_distance: if given, a box is accepted only if its centre is at
            least this many pixels from every accepted box's centre
        score: ``"center"`` (map value at the centre pixel) or ``"mean"``
            (exact mean of the map over the box's pixels inside the image)
        mode: ``"random"`` (draws), ``"topk"`` (deterministic: positions by
            decreasing weight; ties by shape index, then map-cell raster
            order, then position raster order) or ``"grid"`` (tiles at ``0, stride,
            2 * stride, ...`` plus a last tile flush with the right/bottom
            edge when not already there; shapes in order, raster order)
        border: what to do with a box larger than the image along an axis:
            ``"error"`` raises, ``"clip"`` cuts it to the image (the box
            covers the whole axis), ``"pad"`` keeps its full size centred on
            the image (``x0 = (W - w) // 2``, coordinates go outside it).
            Such boxes have one position on that axis, are flagged, and their
            other coordinate follows the map's marginal (mean over the
            covered axis)
        on_degenerate: ``"uniform"`` or ``"error"``, see above
        max_tries: the most candidates drawn (random mode) or examined
            (topk/grid) under ``replace=False`` or overlap control; default
            ``10_000 + 20 * n`` for random mode and unlimited otherwise.
            Fewer than ``n`` boxes may come back; ``requested`` records ``n``
        stride: grid step in pixels, an int or ``(x, y)``; default: the box
            size

    Returns:
        a :class:`PatchSet`

    Raises:
        ParameterError: (a ``ValueError``) for an invalid parameter or a box
            larger than the image with ``border="error"``, before any work
        DegenerateMapError: for an unusable map with
            ``on_degenerate="error"``
    """
    # ---- validation (cheap, before any work) ----
    W, H = _check_image_size(image_size)
    if mode not in _MODES:
        raise ParameterError(f"mode must be one of {_MODES}, got {mode!r}")
    if n is None:
        if mode != "grid":
            raise ParameterError("n=None (all tiles) is only allowed with mode='grid'")
    elif not _is_int(n) or n < 1:
        raise ParameterError(f"n must be an int >= 1, got {n!r}")
    else:
        n = int(n)
    base = _check_size(size, W, H)
    seed = _check_seed(seed)
    key_hash = stable_key_hash(key)
    sc = _check_positive_seq(scales, "scales")
    ar = _check_positive_seq(aspect_ratios, "aspect_ratios")
    if not _is_real(temperature) or not (math.isfinite(temperature) and temperature >= 0):
        raise ParameterError(f"temperature must be finite and >= 0, got {temperature!r}")
    if not _is_real(epsilon) or not (0.0 <= epsilon <= 1.0):
        raise ParameterError(f"epsilon must be in [0, 1], got {epsilon!r}")
    temperature, epsilon = float(temperature), float(epsilon)
    if max_iou is not None and (not _is_real(max_iou) or not (0.0 <= max_iou <= 1.0)):
        raise ParameterError(f"max_iou must be in [0, 1] or None, got {max_iou!r}")
    if min_distance is not None and (
        not _is_real(min_distance) or not (math.isfinite(min_distance) and min_distance >= 0)
    ):
        raise ParameterError(f"min_distance must be finite and >= 0 or None, got {min_distance!r}")
    if score not in _SCORES:
        raise ParameterError(f"score must be one of {_SCORES}, got {score!r}")
    if border not in _BORDERS:
        raise ParameterError(f"border must be one of {_BORDERS}, got {border!r}")
    if on_degenerate not in _ON_DEGENERATE:
        raise ParameterError(f"on_degenerate must be one of {_ON_DEGENERATE}, got {on_degenerate!r}")
    if max_tries is not None and (not _is_int(max_tries) or max_tries < 1):
        raise ParameterError(f"max_tries must be an int >= 1 or None, got {max_tries!r}")
    if not isinstance(replace, (bool, np.bool_)):
        raise ParameterError(f"replace must be a bool, got {replace!r}")
    strides = _check_stride(stride)
    shapes = _shapes(base, sc, ar)
    if border == "error":
        bad = (shapes[:, 0] > W) | (shapes[:, 1] > H)
        if bad.any():
            bw, bh = shapes[int(np.flatnonzero(bad)[0])]
            raise ParameterError(
                f"patch {bw}x{bh} is larger than the image {W}x{H}; "
                "use a smaller size or border='pad' / border='clip'"
            )
    v = _as_map(saliency)
    max_iou = None if max_iou is None else float(max_iou)
    min_distance = None if min_distance is None else float(min_distance)
    constrained = (max_iou is not None and max_iou < 1.0) or bool(min_distance)

    # ---- map ----
    v, vmax, problems, no_info = _clean(v, on_degenerate)
    h, w = v.shape
    if no_info:
        vt = v
    elif temperature == 1.0 and 1e-150 < vmax < 1e150:
        vt = v  # scale is irrelevant to the distribution
    else:
        vt = (v / vmax) ** temperature

    K = shapes.shape[0]
    samplers = []
    for k in range(K):
        gx = _axis(W, w, int(shapes[k, 0]), border)
        gy = _axis(H, h, int(shapes[k, 1]), border)
        samplers.append(_Shape(vt, gx, gy, no_info, epsilon))
    widths = np.array([s.gx.box_len for s in samplers], dtype=np.int64)
    heights = np.array([s.gy.box_len for s in samplers], dtype=np.int64)
    flagged = np.array([s.gx.flagged or s.gy.flagged for s in samplers])

    if not no_info:
        for k, s in enumerate(samplers):
            s.build(cdf=mode == "random")
            if s.fallback:
                msg = f"no positive saliency at any legal centre for {shapes[k, 0]}x{shapes[k, 1]} boxes"
                if on_degenerate == "error":
                    raise DegenerateMapError(msg)
                problems.append(msg + "; sampled uniformly over legal positions")

    # ---- positions ----
    if mode == "random":
        kk, x0, y0, probs, n_draws = _random(
            samplers,
            n,
            replace,
            max_iou,
            min_distance,
            constrained,
            max_tries,
            widths,
            heights,
            _rng(seed, key_hash),
            (W, H),
        )
    elif mode == "topk":
        kk, x0, y0, probs, n_draws = _topk(
            samplers, n, max_iou, min_distance, constrained, max_tries, widths, heights
        )
    else:
        kk, x0, y0, probs, n_draws = _grid(
            samplers, n, strides, max_iou, min_distance, constrained, max_tries, widths, heights
        )

    # ---- assemble ----
    if K == 1:
        m = kk.size
        xywh = np.stack([x0, y0, np.full(m, widths[0]), np.full(m, heights[0])], axis=1)
        scale_idx = np.zeros(m, dtype=np.int64)
        aspect_idx = np.zeros(m, dtype=np.int64)
        flags = np.full(m, bool(flagged[0]))
    else:
        xywh = np.stack([x0, y0, widths[kk], heights[kk]], axis=1)
        scale_idx, aspect_idx = np.divmod(kk, len(ar))
        flags = flagged[kk]
    rel = xywh / np.array([W, H, W, H], dtype=np.float64)
    boxes = xywh
    boxes[:, 2:] += boxes[:, :2]
    if score == "center" and K == 1 and not flagged[0] and vmax > 0:
        # fitting boxes: the centre pixel is x0 + w // 2, inside the image
        scores = _center_scores(x0 + samplers[0].gx.half, y0 + samplers[0].gy.half, v, vmax, W, H)
    else:
        scores = _scores(boxes, v, vmax, W, H, score)
    return PatchSet(
        boxes=boxes,
        rel_boxes=rel,
        scores=scores,
        probs=probs,
        scale_idx=scale_idx,
        aspect_idx=aspect_idx,
        flags=flags,
        shapes=shapes,
        image_size=(W, H),
        requested=n,
        n_draws=int(n_draws),
        degenerate=bool(problems),
        uniform_fallback=no_info or any(s.fallback for s in samplers),
        reason="; ".join(problems) if problems else None,
    )


def _check_stride(stride: Any) -> tuple[int, int] | None:
    if stride is None:
        return None
    if _is_int(stride):
        sx = sy = stride
    else:
        try:
            sx, sy = stride
        except (TypeError, ValueError):
            raise ParameterError(f"stride must be an int or (x, y), got {stride!r}") from None
    if not (_is_int(sx) and _is_int(sy)) or sx < 1 or sy < 1:
        raise ParameterError(f"stride must be positive ints, got {stride!r}")
    return int(sx), int(sy)


# ---------------------------------------------------------------------------
# modes


def _draw(
    samplers: list[_Shape], rng: np.random.Generator, c: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    K = len(samplers)
    if K == 1:
        x0, y0, p = samplers[0].draw(rng, c)
        return np.zeros(c, dtype=np.int64), x0, y0, p
    kk = rng.integers(0, K, size=c)
    X = np.empty(c, dtype=np.int64)
    Y = np.empty(c, dtype=np.int64)
    P = np.empty(c, dtype=np.float64)
    for k, s in enumerate(samplers):
        sel = np.flatnonzero(kk == k)
        if sel.size:
            X[sel], Y[sel], P[sel] = s.draw(rng, sel.size)
    return kk.astype(np.int64), X, Y, P


def _box_keys(
    kk: np.ndarray, x0: np.ndarray, y0: np.ndarray, eff: np.ndarray, off: int, span: int
) -> np.ndarray:
    """An int64 key per box; equal keys iff equal boxes (``eff``: shape id
    per effective box size)."""
    return (eff[kk] * span + (y0 + off)) * span + (x0 + off)


def _random(
    samplers: list[_Shape],
    n: int,
    replace: bool,
    max_iou: float | None,
    min_distance: float | None,
    constrained: bool,
    max_tries: int | None,
    widths: np.ndarray,
    heights: np.ndarray,
    rng: np.random.Generator,
    image_wh: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    if replace and not constrained:
        kk, x0, y0, p = _draw(samplers, rng, n)
        return kk, x0, y0, p, n
    limit = max_tries if max_tries is not None else 10_000 + 20 * n
    if not replace:
        _, eff = np.unique(np.stack([widths, heights], axis=1), axis=0, return_inverse=True)
        eff = eff.reshape(-1).astype(np.int64)
        off = int(max(widths.max(), heights.max())) + 1
        span = 2 * off + int(max(widths.max(), heights.max(), image_wh[0], image_wh[1]))
    parts: list[tuple[np.ndarray, ...]] = []
    acc_boxes = np.zeros((0, 4))
    acc_keys = np.zeros(0, dtype=np.int64)
    got = draws = 0
    while got < n and draws < limit:
        rate = got / draws if draws else 1.0
        b = int(math.ceil((n - got) / max(rate, 0.02) * 1.25))
        b = max(32, min(b, 65536, limit - draws))
        b = min(b, limit - draws)
        kk, x0, y0, p = _draw(samplers, rng, b)
        draws += b
        idx = np.arange(b)
        if not replace:
            keys = _box_keys(kk, x0, y0, eff, off, span)
            _, first = np.unique(keys, return_index=True)
            first.sort()
            first = first[~np.isin(keys[first], acc_keys)]
            idx = first
        if constrained:
            cand = np.stack(
                [x0[idx], y0[idx], x0[idx] + widths[kk[idx]], y0[idx] + heights[kk[idx]]], axis=1
            ).astype(np.float64)
            ok = _compatible(cand, acc_boxes, max_iou, min_distance)
            idx, cand = idx[ok], cand[ok]
            sel = _greedy(cand, n - got, max_iou, min_distance)
            idx = idx[sel]
            acc_boxes = np.concatenate([acc_boxes, cand[sel]])
        else:
            idx = idx[: n - got]
        if not replace:
            acc_keys = np.concatenate([acc_keys, keys[idx]])
        parts.append((kk[idx], x0[idx], y0[idx], p[idx]))
        got += idx.size
    kk, x0, y0, p = (np.concatenate(z) for z in zip(*parts, strict=True))
    return kk, x0, y0, p, draws


def _topk(
    samplers: list[_Shape],
    n: int,
    max_iou: float | None,
    min_distance: float | None,
    constrained: bool,
    max_tries: int | None,
    widths: np.ndarray,
    heights: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    # one value per sampling cell of every shape, in (shape, cell raster) order;
    # a stable sort on -value then gives the documented tie-break
    vals, offsets = [], [0]
    for s in samplers:
        s.build(cdf=False)
        gx, gy = s.gx, s.gy
        if s.fallback:
            v = np.ones(s.pw.size)
        else:
            v = np.array(s.pw, dtype=np.float64).reshape(-1)
        if gx.count.min() == 0 or gy.count.min() == 0:  # cells without legal pixels
            v[(gy.count[:, None] * gx.count[None, :]).reshape(-1) == 0] = -np.inf
        vals.append(v)
        offsets.append(offsets[-1] + v.size)
    allv = vals[0] if len(vals) == 1 else np.concatenate(vals)
    offs = np.asarray(offsets, dtype=np.int64)

    def cells(g: np.ndarray) -> tuple[np.ndarray, ...]:
        """Shape, first position, counts and probability of global cells."""
        k = offs.searchsorted(g, side="right") - 1
        sx, sy = np.empty_like(g), np.empty_like(g)
        cx, cy = np.empty_like(g), np.empty_like(g)
        pr = np.empty(g.size)
        for q, s in enumerate(samplers):
            sel = np.flatnonzero(k == q)
            if not sel.size:
                continue
            i, j = np.divmod(g[sel] - offs[q], s.wc)
            sx[sel], sy[sel] = s.gx.start[j], s.gy.start[i]
            cx[sel], cy[sel] = s.gx.count[j], s.gy.count[i]
            if s.fallback:
                pr[sel] = 1.0 / s.npos
            else:
                pr[sel] = (1.0 - s.eps) * (s.pw[i, j] / s.total) + s.eps / s.npos
        return k, sx, sy, cx, cy, pr

    def positions(g: np.ndarray) -> tuple[np.ndarray, ...]:
        """Every legal position of the cells ``g``, cell by cell, raster order."""
        k, sx, sy, cx, cy, pr = cells(g)
        c = cx * cy
        rep = np.repeat(np.arange(g.size), c)
        off = np.arange(rep.size, dtype=np.int64) - (np.cumsum(c) - c)[rep]
        dy, dx = np.divmod(off, cx[rep])
        return k[rep], sx[rep] + dx, sy[rep] + dy, pr[rep]

    def top_cells(cand: np.ndarray | None, t: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The ``t`` best cells of ``cand`` (all ties included), sorted; and
        the rest."""
        v = allv if cand is None else allv[cand]
        if t < v.size:
            thr = np.partition(v, v.size - t)[v.size - t]
            sel = v >= thr
            take = np.flatnonzero(sel) if cand is None else cand[sel]
            rest = np.flatnonzero(~sel) if cand is None else cand[~sel]
        else:
            take = np.arange(v.size) if cand is None else cand
            rest = np.zeros(0, dtype=np.int64)
        take = take[np.argsort(-allv[take], kind="stable")]
        return take[allv[take] > -np.inf], rest

    if not constrained:
        # each cell holds >= 1 position: the n best cells hold >= n positions
        g, _ = top_cells(None, n)
        k, sx, sy, cx, cy, _ = cells(g)
        b = int(np.searchsorted(np.cumsum(cx * cy), n, side="left")) + 1
        kk, x0, y0, p = positions(g[:b])
        return kk[:n], x0[:n], y0[:n], p[:n], min(n, kk.size)

    limit = max_tries if max_tries is not None else np.iinfo(np.int64).max
    parts = []
    acc = np.zeros((0, 4))
    got = seen = 0
    rest: np.ndarray | None = None
    queue = np.zeros(0, dtype=np.int64)
    chunk = max(1024, 4 * n)
    while got < n and seen < limit:
        if queue.size == 0:
            if rest is not None and rest.size == 0:
                break
            queue, rest = top_cells(rest, chunk)
            if queue.size == 0:
                break
        _, _, _, cx, cy, _ = cells(queue)
        b = int(np.searchsorted(np.cumsum(cx * cy), chunk, side="left")) + 1
        kk, x0, y0, p = positions(queue[:b])
        queue = queue[b:]
        if kk.size > limit - seen:
            m = limit - seen
            kk, x0, y0, p = kk[:m], x0[:m], y0[:m], p[:m]
        seen += kk.size
        cand = np.stack([x0, y0, x0 + widths[kk], y0 + heights[kk]], axis=1).astype(np.float64)
        ok = np.flatnonzero(_compatible(cand, acc, max_iou, min_distance))
        sel = ok[_greedy(cand[ok], n - got, max_iou, min_distance)]
        acc = np.concatenate([acc, cand[sel]])
        parts.append((kk[sel], x0[sel], y0[sel], p[sel]))
        got += sel.size
        chunk = min(chunk * 2, 1 << 18)
    if not parts:
        e = np.zeros(0, dtype=np.int64)
        return e, e, e, np.zeros(0), seen
    kk, x0, y0, p = (np.concatenate(z) for z in zip(*parts, strict=True))
    return kk, x0, y0, p, seen


def _grid_axis(ax: _Axis, step: int) -> np.ndarray:
    if ax.fixed:
        return np.array([ax.base], dtype=np.int64)
    last = ax.m - ax.p
    pos = np.arange(0, last + 1, step, dtype=np.int64)
    if pos[-1] != last:
        pos = np.append(pos, last)
    return pos


def _grid(
    samplers: list[_Shape],
    n: int | None,
    strides: tuple[int, int] | None,
    max_iou: float | None,
    min_distance: float | None,
    constrained: bool,
    max_tries: int | None,
    widths: np.ndarray,
    heights: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    ks, xs, ys, ps = [], [], [], []
    for k, s in enumerate(samplers):
        stx, sty = strides if strides is not None else (s.gx.p, s.gy.p)
        gxs, gys = _grid_axis(s.gx, stx), _grid_axis(s.gy, sty)
        yy, xx = np.meshgrid(gys, gxs, indexing="ij")
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        ks.append(np.full(xx.size, k, dtype=np.int64))
        xs.append(xx)
        ys.append(yy)
        ps.append(s.prob_at(xx, yy))
    kk, x0, y0, p = np.concatenate(ks), np.concatenate(xs), np.concatenate(ys), np.concatenate(ps)
    if max_tries is not None:
        kk, x0, y0, p = kk[:max_tries], x0[:max_tries], y0[:max_tries], p[:max_tries]
    seen = kk.size
    if constrained:
        cand = np.stack([x0, y0, x0 + widths[kk], y0 + heights[kk]], axis=1).astype(np.float64)
        sel = _greedy(cand, kk.size if n is None else n, max_iou, min_distance)
        kk, x0, y0, p = kk[sel], x0[sel], y0[sel], p[sel]
    elif n is not None:
        kk, x0, y0, p = kk[:n], x0[:n], y0[:n], p[:n]
    return kk, x0, y0, p, seen
