"""Saliency scores of boxes on a cleaned map.

Rules:

-   Scores are on the cleaned map divided by its maximum, so in ``[0, 1]``;
    temperature is never applied.
-   ``"center"``: the map value at the box's centre pixel
    ``(x0 + w // 2, y0 + h // 2)``, clipped into the image (for padded
    boxes).
-   ``"mean"``: the exact mean of the map over the box's pixels inside the
    image, with the map upsampled by pixel centres (nearest neighbour, see
    :mod:`xpatch_core.sampler.geometry`). Three exact paths: visiting the
    cells under the boxes when they are few, a plain integral image at full
    resolution, and cell-level integral images with fractional end cells
    otherwise.
"""

from __future__ import annotations

import numpy as np

from xpatch_core.sampler.geometry import cell_edges, cell_of

__all__ = ["box_scores", "center_scores"]


def center_scores(cx: np.ndarray, cy: np.ndarray, v: np.ndarray, vmax: float, W: int, H: int) -> np.ndarray:
    """Map value at centre pixels ``(cx, cy)`` (inside the image) / ``vmax``.

    Args:
        cx: centre pixel columns
        cy: centre pixel rows
        v: the cleaned ``h x w`` map
        vmax: its maximum
        W: the image width
        H: the image height

    Returns:
        a float64 array of scores
    """
    h, w = v.shape
    iy = cy if h == H else cell_of(cy, H, h)
    ix = cx if w == W else cell_of(cx, W, w)
    out = v[iy, ix]
    if vmax != 1.0:
        out /= vmax
    return out


def box_scores(boxes: np.ndarray, v: np.ndarray, vmax: float, W: int, H: int, how: str) -> np.ndarray:
    """Saliency scores of boxes on the map ``v / vmax``.

    Args:
        boxes: ``(N, 4)`` int boxes ``[x0, y0, x1, y1]`` (may extend past
            the image)
        v: the cleaned ``h x w`` map
        vmax: its maximum
        W: the image width
        H: the image height
        how: ``"center"`` or ``"mean"``

    Returns:
        an ``(N,)`` float64 array in ``[0, 1]`` (zeros for an all-zero map)
    """
    h, w = v.shape
    n = boxes.shape[0]
    if n == 0 or vmax <= 0:
        return np.zeros(n)
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    if how == "center":
        cx = np.clip(x0 + (x1 - x0) // 2, 0, W - 1)
        cy = np.clip(y0 + (y1 - y0) // 2, 0, H - 1)
        return center_scores(cx, cy, v, vmax, W, H)
    # exact mean over the box's pixels (nearest-neighbour density)
    e, f = cell_edges(W, w), cell_edges(H, h)
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
    return _mean_by_cells(v / vmax, e, f, X0, Y0, X1, Y1, area)


def _mean_by_cells(
    a: np.ndarray,
    e: np.ndarray,
    f: np.ndarray,
    X0: np.ndarray,
    Y0: np.ndarray,
    X1: np.ndarray,
    Y1: np.ndarray,
    area: np.ndarray,
) -> np.ndarray:
    """Window means from cell-level integral images with fractional end cells
    (``a`` is the normalised map, ``e``/``f`` the column/row cell edges)."""
    h, w = a.shape
    cw, rh = np.diff(e).astype(np.float64), np.diff(f).astype(np.float64)
    C = np.zeros((h + 1, w + 1))
    C[1:, 1:] = (a * rh[:, None] * cw[None, :]).cumsum(0).cumsum(1)
    Sx = np.zeros((h + 1, w))
    Sx[1:] = (a * rh[:, None]).cumsum(0)  # full rows above, per column
    Sy = np.zeros((h, w + 1))
    Sy[:, 1:] = (a * cw[None, :]).cumsum(1)  # full columns left, per row

    def integral(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        ja = np.clip(e.searchsorted(x, side="right") - 1, 0, w - 1)
        ia = np.clip(f.searchsorted(y, side="right") - 1, 0, h - 1)
        dx = (x - e[ja]).astype(np.float64)
        dy = (y - f[ia]).astype(np.float64)
        return C[ia, ja] + dx * Sx[ia, ja] + dy * Sy[ia, ja] + dx * dy * a[ia, ja]

    total = integral(X1, Y1) - integral(X0, Y1) - integral(X1, Y0) + integral(X0, Y0)
    return np.clip(total / area, 0.0, 1.0)
