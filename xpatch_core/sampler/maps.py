"""Map cleaning and the per-shape sampling distributions.

Rules:

-   A map is a 2-D real array; it is converted to float64 once.
-   Cleaning never hides a problem: NaN/inf become 0, negative values are
    clipped to 0, and an all-zero or constant map carries no information;
    each problem is either reported (``on_degenerate="uniform"``) or raised
    as :class:`DegenerateMapError` (``"error"``).
-   Weights are ``(map / max) ** temperature`` (the map itself at
    temperature 1 when its maximum is in a safe range: the scale does not
    change the distribution).
-   A :class:`ShapeSampler` holds one box shape's distribution over legal
    positions: the weight of a map cell is ``value * count_x * count_y``
    (legal centre pixels in the cell), a cell is drawn with a float64 CDF
    (``searchsorted`` with ``side="right"`` on uniform draws in
    ``[0, total)``, so zero-weight cells are never drawn) and the position
    uniformly among the cell's legal pixels; ``epsilon`` mixes in the
    uniform distribution exactly. A shape with no positive weight at any
    legal centre falls back to the uniform distribution.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from xpatch_core.errors import ParameterError, XpatchError
from xpatch_core.sampler.geometry import Axis, cell_index

__all__ = ["SORTED_SEARCH_MIN", "DegenerateMapError", "ShapeSampler", "as_map", "clean_map", "weight_map"]

#: Above this many draws (and CDF cells), ``searchsorted`` runs on sorted
#: keys (same result, far fewer cache misses on big CDFs).
SORTED_SEARCH_MIN = 4096


class DegenerateMapError(XpatchError):
    """The saliency map is unusable and ``on_degenerate="error"`` was given."""


def as_map(saliency: Any) -> np.ndarray:
    """Checks a saliency map and returns it as float64.

    Args:
        saliency: a 2-D real array

    Returns:
        the map, as a float64 array (the same array when already float64)

    Raises:
        ParameterError: for a non-real, non-2-D or empty array
    """
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


def clean_map(v: np.ndarray, on_degenerate: str) -> tuple[np.ndarray, float, list[str], bool]:
    """Repairs a float64 map, reporting (or raising on) every problem.

    Args:
        v: a float64 map
        on_degenerate: ``"uniform"`` (report and repair) or ``"error"``

    Returns:
        ``(cleaned map, max, problems, no_information)``

    Raises:
        DegenerateMapError: for the first problem with ``"error"``
    """
    problems: list[str] = []
    mn, mx = float(np.minimum.reduce(v, axis=None)), float(np.maximum.reduce(v, axis=None))
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


def weight_map(v: np.ndarray, vmax: float, temperature: float, no_info: bool) -> np.ndarray:
    """The sampling weights of a cleaned map.

    Args:
        v: the cleaned map
        vmax: its maximum
        temperature: the exponent, ``>= 0``
        no_info: whether the map carries no information (then unused)

    Returns:
        ``(v / vmax) ** temperature``, or ``v`` itself where that gives the
        same distribution; an integer temperature up to 64 is computed by
        repeated squaring (a few multiplications instead of ``pow`` per
        cell, 5x faster on a 512 px map; within 1e-14 relative of ``pow``)
    """
    if no_info:
        return v
    if temperature == 1.0 and 1e-150 < vmax < 1e150:
        return v  # scale is irrelevant to the distribution
    x = v / vmax  # a new array: squared in place below
    if temperature == int(temperature) and 2 <= temperature <= 64:
        n, out = int(temperature), None
        while True:
            if n & 1:
                if out is None:
                    out = x if n == 1 else x.copy()
                else:
                    out *= x
            n >>= 1
            if not n:
                return out
            x *= x
    return x ** temperature


class ShapeSampler:
    """Sampling distribution of one box shape on one (weighted) map.

    Attributes:
        gx: the x axis geometry
        gy: the y axis geometry
        pw: per-position weight of each cell of the sampling slice
        cdf: the flat CDF of cell weights (built on first draw)
        total: the total mass (0 until built)
        last: the last cell with positive weight
        fallback: True if sampled uniformly over legal positions
        npos: the number of legal positions
        wc: cells per row of the sampling slice
        ncol: map columns
        nrow: map rows
        eps: the uniform mixture weight
    """

    __slots__ = ("gx", "gy", "pw", "cdf", "total", "last", "fallback", "npos", "wc", "ncol", "nrow", "eps")

    def __init__(self, vt: np.ndarray, gx: Axis, gy: Axis, fallback: bool, eps: float):
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
        """The mass of each cell of the sampling slice (weight x positions)."""
        gx, gy = self.gx, self.gy
        if gx.unit and gy.unit:
            return self.pw
        return self.pw * (gy.countf[:, None] * gx.countf[None, :])

    def build(self, cdf: bool = True) -> None:
        """Finds the total mass (and builds the CDF if ``cdf``); switches to
        the uniform fallback if there is no mass."""
        if self.fallback or self.cdf is not None or (not cdf and self.total > 0.0):
            return
        if cdf:
            c = self.cell_weights().cumsum(dtype=np.float64)
            total = float(c[-1])
        else:
            total = float(np.add.reduce(self.cell_weights(), axis=None, dtype=np.float64))
        if not (total > 0.0 and math.isfinite(total)):
            self.fallback = True
            return
        self.total = total
        if cdf:
            self.cdf = c
            # last positive-weight cell: guards a draw rounding up to ``total``
            self.last = int(c.searchsorted(total, side="left"))

    def draw(self, rng: np.random.Generator, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draws ``c`` positions; returns ``x0, y0, probs``."""
        self.build()
        if self.fallback:
            x0, y0 = self.uniform(rng, c)
            return x0, y0, np.full(c, 1.0 / self.npos)
        eps = self.eps
        if eps > 0.0:
            is_u = rng.random(c) < eps
            iu = np.flatnonzero(is_u)
            im = np.flatnonzero(~is_u)
            cm = im.size
        else:
            cm = c
        x0, y0, p = self._draw_map(rng, cm)
        if eps == 0.0:
            return x0, y0, p
        p *= 1.0 - eps
        p += eps / self.npos
        xu, yu = self.uniform(rng, iu.size)
        X = np.empty(c, dtype=np.int64)
        Y = np.empty(c, dtype=np.int64)
        P = np.empty(c, dtype=np.float64)
        X[im], Y[im], P[im] = x0, y0, p
        X[iu], Y[iu] = xu, yu
        P[iu] = self.prob_at(xu, yu)
        return X, Y, P

    def _draw_map(self, rng: np.random.Generator, cm: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draws ``cm`` positions from the map alone (no epsilon)."""
        gx, gy = self.gx, self.gy
        u = rng.random(cm)
        u *= self.total
        if cm >= SORTED_SEARCH_MIN and self.cdf.size >= SORTED_SEARCH_MIN:
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
        return x0, y0, self.pw[i, j] / self.total

    def uniform(self, rng: np.random.Generator, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Draws ``c`` positions uniformly over the legal positions."""
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
        j = cell_index(self.gx, x0, self.ncol)
        i = cell_index(self.gy, y0, self.nrow)
        return (1.0 - self.eps) * (self.pw[i, j] / self.total) + self.eps / self.npos

    def cell_probs(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Probability of one position of cells ``(i, j)`` of the sampling
        slice (call :meth:`build` first)."""
        if self.fallback:
            return np.full(i.shape, 1.0 / self.npos)
        return (1.0 - self.eps) * (self.pw[i, j] / self.total) + self.eps / self.npos
