"""The three ways of choosing positions: random draws, top-k and a grid.

Every mode works on the list of per-shape samplers of one image (the shapes
that are sampled, in shape order) and returns :class:`Picked`: a local
shape index, the top-left corner and the probability of each box, in
acceptance order, and the number of candidates drawn or examined.

Rules:

-   ``random``: each candidate picks a shape uniformly (one
    ``rng.integers`` draw per candidate, skipped for a single shape), then
    a position from that shape's distribution. Without replacement a
    duplicate of an earlier box (same effective size and position) is
    rejected; under overlap control candidates are accepted greedily in
    draw order. Candidates are drawn in batches sized from the acceptance
    rate so far, at most ``max_tries`` in all (default
    ``10_000 + 20 * n``).
-   ``topk``: deterministic. Map cells are ranked by per-position weight
    (ties by shape index, then cell raster order), each cell's legal
    positions follow in raster order; under overlap control candidates are
    accepted greedily in that order, in growing chunks, at most
    ``max_tries`` examined.
-   ``grid``: tiles at ``0, stride, 2 * stride, ...`` plus a last tile flush
    with the right/bottom edge when not already there (one tile on an
    oversized axis), shapes in order, raster order; ``max_tries`` caps the
    tiles examined and ``n`` the tiles kept.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from xpatch_core.sampler.checks import SampleParams
from xpatch_core.sampler.geometry import Axis
from xpatch_core.sampler.maps import ShapeSampler
from xpatch_core.sampler.overlap import compatible, greedy

__all__ = [
    "Picked",
    "RankedCells",
    "draw_shapes",
    "grid_positions",
    "sample_grid",
    "sample_random",
    "sample_topk",
]


class Picked(NamedTuple):
    """Boxes chosen by a mode, in acceptance order.

    Attributes:
        kk: int64 local shape index of each box (into the sampler list)
        x0: int64 left edges
        y0: int64 top edges
        probs: float64 probability of each position under its shape
        n_draws: candidates drawn (random) or examined (topk, grid)
    """

    kk: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    probs: np.ndarray
    n_draws: int


def _boxes(
    kk: np.ndarray, x0: np.ndarray, y0: np.ndarray, widths: np.ndarray, heights: np.ndarray
) -> np.ndarray:
    return np.stack([x0, y0, x0 + widths[kk], y0 + heights[kk]], axis=1).astype(np.float64)


def _concat(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    return tuple(np.concatenate(z) for z in zip(*parts, strict=True))


# ---------------------------------------------------------------------------
# random


def draw_shapes(
    samplers: list[ShapeSampler], rng: np.random.Generator, c: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draws ``c`` boxes, each of a shape picked uniformly.

    Args:
        samplers: the per-shape samplers
        rng: the image's generator
        c: the number of boxes

    Returns:
        ``(kk, x0, y0, probs)``
    """
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


class _BoxKeys:
    """An int64 key per box: equal keys iff equal boxes (same effective
    size and position)."""

    def __init__(self, widths: np.ndarray, heights: np.ndarray, image_wh: tuple[int, int]):
        _, eff = np.unique(np.stack([widths, heights], axis=1), axis=0, return_inverse=True)
        self.eff = eff.reshape(-1).astype(np.int64)
        self.off = int(max(widths.max(), heights.max())) + 1
        self.span = 2 * self.off + int(max(widths.max(), heights.max(), image_wh[0], image_wh[1]))

    def __call__(self, kk: np.ndarray, x0: np.ndarray, y0: np.ndarray) -> np.ndarray:
        return (self.eff[kk] * self.span + (y0 + self.off)) * self.span + (x0 + self.off)


def _new_boxes(keys: np.ndarray, acc_keys: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each key not accepted before, in
    draw order."""
    _, first = np.unique(keys, return_index=True)
    first.sort()
    return first[~np.isin(keys[first], acc_keys)]


def sample_random(
    samplers: list[ShapeSampler],
    params: SampleParams,
    widths: np.ndarray,
    heights: np.ndarray,
    rng: np.random.Generator,
) -> Picked:
    """Random mode: draws until ``n`` boxes are accepted or ``max_tries``.

    Args:
        samplers: the per-shape samplers
        params: the checked parameters (``n``, ``replace``, ``max_iou``,
            ``min_distance``, ``max_tries`` and the image size are used)
        widths: box width of each sampler's shape (as drawn)
        heights: box height of each sampler's shape (as drawn)
        rng: the image's generator

    Returns:
        a :class:`Picked`
    """
    n, replace, constrained = params.n, params.replace, params.constrained
    if replace and not constrained:
        kk, x0, y0, p = draw_shapes(samplers, rng, n)
        return Picked(kk, x0, y0, p, n)
    limit = params.max_tries if params.max_tries is not None else 10_000 + 20 * n
    box_keys = None if replace else _BoxKeys(widths, heights, (params.W, params.H))
    parts: list[tuple[np.ndarray, ...]] = []
    acc_boxes = np.zeros((0, 4))
    acc_keys = np.zeros(0, dtype=np.int64)
    got = draws = 0
    while got < n and draws < limit:
        rate = got / draws if draws else 1.0
        b = int(math.ceil((n - got) / max(rate, 0.02) * 1.25))
        b = max(32, min(b, 65536, limit - draws))
        b = min(b, limit - draws)
        kk, x0, y0, p = draw_shapes(samplers, rng, b)
        draws += b
        idx = np.arange(b)
        if box_keys is not None:
            keys = box_keys(kk, x0, y0)
            idx = _new_boxes(keys, acc_keys)
        if constrained:
            cand = _boxes(kk[idx], x0[idx], y0[idx], widths, heights)
            ok = compatible(cand, acc_boxes, params.max_iou, params.min_distance)
            idx, cand = idx[ok], cand[ok]
            sel = greedy(cand, n - got, params.max_iou, params.min_distance)
            idx = idx[sel]
            acc_boxes = np.concatenate([acc_boxes, cand[sel]])
        else:
            idx = idx[: n - got]
        if box_keys is not None:
            acc_keys = np.concatenate([acc_keys, keys[idx]])
        parts.append((kk[idx], x0[idx], y0[idx], p[idx]))
        got += idx.size
    kk, x0, y0, p = _concat(parts)
    return Picked(kk, x0, y0, p, draws)


# ---------------------------------------------------------------------------
# topk


class RankedCells:
    """The sampling cells of every shape, ranked for ``mode="topk"``.

    Cells are numbered globally in (shape, cell raster) order; ``values``
    holds each cell's per-position weight (1 for a uniform fallback,
    ``-inf`` for a cell without legal positions), so a stable sort on
    ``-values`` gives the documented tie-break.
    """

    def __init__(self, samplers: list[ShapeSampler]):
        self.samplers = samplers
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
        self.values = vals[0] if len(vals) == 1 else np.concatenate(vals)
        self.offsets = np.asarray(offsets, dtype=np.int64)

    def cells(self, g: np.ndarray) -> tuple[np.ndarray, ...]:
        """Shape, first position, position counts and probability of the
        global cells ``g``: ``(k, sx, sy, cx, cy, prob)``."""
        offs = self.offsets
        k = offs.searchsorted(g, side="right") - 1
        sx, sy = np.empty_like(g), np.empty_like(g)
        cx, cy = np.empty_like(g), np.empty_like(g)
        pr = np.empty(g.size)
        for q, s in enumerate(self.samplers):
            sel = np.flatnonzero(k == q)
            if not sel.size:
                continue
            i, j = np.divmod(g[sel] - offs[q], s.wc)
            sx[sel], sy[sel] = s.gx.start[j], s.gy.start[i]
            cx[sel], cy[sel] = s.gx.count[j], s.gy.count[i]
            pr[sel] = s.cell_probs(i, j)
        return k, sx, sy, cx, cy, pr

    def positions(self, g: np.ndarray) -> tuple[np.ndarray, ...]:
        """Every legal position of the cells ``g``, cell by cell, raster
        order: ``(k, x0, y0, prob)``."""
        k, sx, sy, cx, cy, pr = self.cells(g)
        c = cx * cy
        rep = np.repeat(np.arange(g.size), c)
        off = np.arange(rep.size, dtype=np.int64) - (np.cumsum(c) - c)[rep]
        dy, dx = np.divmod(off, cx[rep])
        return k[rep], sx[rep] + dx, sy[rep] + dy, pr[rep]

    def first_positions(self, g: np.ndarray, t: int) -> tuple[tuple[np.ndarray, ...], int]:
        """The positions of the fewest leading cells of ``g`` that hold at
        least ``t`` positions (all of ``g`` if fewer), and how many cells
        that is."""
        _, _, _, cx, cy, _ = self.cells(g)
        b = int(np.searchsorted(np.cumsum(cx * cy), t, side="left")) + 1
        return self.positions(g[:b]), b

    def top(self, cand: np.ndarray | None, t: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``t`` best cells of ``cand`` (``None``: all cells; ties
        included) in rank order, without cells lacking legal positions; and
        the rest of ``cand``, unsorted."""
        allv = self.values
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


def sample_topk(
    samplers: list[ShapeSampler], params: SampleParams, widths: np.ndarray, heights: np.ndarray
) -> Picked:
    """Top-k mode: positions by decreasing weight (see the module rules).

    Args:
        samplers: the per-shape samplers
        params: the checked parameters (``n``, ``max_iou``, ``min_distance``
            and ``max_tries`` are used)
        widths: box width of each sampler's shape (as drawn)
        heights: box height of each sampler's shape (as drawn)

    Returns:
        a :class:`Picked`
    """
    ranked = RankedCells(samplers)
    n = params.n
    if not params.constrained:
        # each cell holds >= 1 position: the n best cells hold >= n positions
        g, _ = ranked.top(None, n)
        (kk, x0, y0, p), _ = ranked.first_positions(g, n)
        return Picked(kk[:n], x0[:n], y0[:n], p[:n], min(n, kk.size))
    return _topk_constrained(ranked, params, widths, heights)


def _topk_constrained(ranked: RankedCells, params: SampleParams, widths: np.ndarray, heights: np.ndarray) -> Picked:
    n = params.n
    limit = params.max_tries if params.max_tries is not None else np.iinfo(np.int64).max
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
            queue, rest = ranked.top(rest, chunk)
            if queue.size == 0:
                break
        (kk, x0, y0, p), b = ranked.first_positions(queue, chunk)
        queue = queue[b:]
        if kk.size > limit - seen:
            m = limit - seen
            kk, x0, y0, p = kk[:m], x0[:m], y0[:m], p[:m]
        seen += kk.size
        cand = _boxes(kk, x0, y0, widths, heights)
        ok = np.flatnonzero(compatible(cand, acc, params.max_iou, params.min_distance))
        sel = ok[greedy(cand[ok], n - got, params.max_iou, params.min_distance)]
        acc = np.concatenate([acc, cand[sel]])
        parts.append((kk[sel], x0[sel], y0[sel], p[sel]))
        got += sel.size
        chunk = min(chunk * 2, 1 << 18)
    if not parts:
        e = np.zeros(0, dtype=np.int64)
        return Picked(e, e, e, np.zeros(0), seen)
    kk, x0, y0, p = _concat(parts)
    return Picked(kk, x0, y0, p, seen)


# ---------------------------------------------------------------------------
# grid


def grid_positions(ax: Axis, step: int) -> np.ndarray:
    """Tile starts along an axis: ``0, step, ...`` plus a last flush tile.

    Args:
        ax: the axis geometry
        step: the stride in pixels

    Returns:
        int64 positions (the one position of an oversized box)
    """
    if ax.fixed:
        return np.array([ax.base], dtype=np.int64)
    last = ax.m - ax.p
    pos = np.arange(0, last + 1, step, dtype=np.int64)
    if pos[-1] != last:
        pos = np.append(pos, last)
    return pos


def sample_grid(
    samplers: list[ShapeSampler], params: SampleParams, widths: np.ndarray, heights: np.ndarray
) -> Picked:
    """Grid mode: tiles of every shape in shape order, raster order.

    Args:
        samplers: the per-shape samplers
        params: the checked parameters (``n``, with ``None`` for every tile,
            ``strides``, ``max_iou``, ``min_distance`` and ``max_tries``
            are used)
        widths: box width of each sampler's shape (as drawn)
        heights: box height of each sampler's shape (as drawn)

    Returns:
        a :class:`Picked`
    """
    ks, xs, ys, ps = [], [], [], []
    strides = params.strides
    for k, s in enumerate(samplers):
        stx, sty = strides if strides is not None else (s.gx.p, s.gy.p)
        gxs, gys = grid_positions(s.gx, stx), grid_positions(s.gy, sty)
        yy, xx = np.meshgrid(gys, gxs, indexing="ij")
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        ks.append(np.full(xx.size, k, dtype=np.int64))
        xs.append(xx)
        ys.append(yy)
        ps.append(s.prob_at(xx, yy))
    kk, x0, y0, p = np.concatenate(ks), np.concatenate(xs), np.concatenate(ys), np.concatenate(ps)
    if params.max_tries is not None:
        m = params.max_tries
        kk, x0, y0, p = kk[:m], x0[:m], y0[:m], p[:m]
    seen = kk.size
    n = params.n
    if params.constrained:
        cand = _boxes(kk, x0, y0, widths, heights)
        sel = greedy(cand, kk.size if n is None else n, params.max_iou, params.min_distance)
        kk, x0, y0, p = kk[sel], x0[sel], y0[sel], p[sel]
    elif n is not None:
        kk, x0, y0, p = kk[:n], x0[:n], y0[:n], p[:n]
    return Picked(kk, x0, y0, p, seen)
