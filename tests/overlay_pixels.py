"""Pixel measures of a heatmap overlay in a screenshot of the App.

Two screenshots of the same sample modal, with the heatmap shown (``on``)
and hidden (``off``), give the raw image ``R`` and the composite
``O = (1 - a) R + a C`` where ``a`` is the colour scheme's opacity and ``C``
the colour the App gave each pixel (FiftyOne draws a heatmap value 0 as
transparent). From them:

-   :func:`overlay_colours`: ``C = R + (O - R) / a`` per pixel;
-   :func:`colour_by_value`: the mean ``C`` per band of the stored map's
    value (many pixels per band, so the photo's texture averages out): a
    colour-mapped overlay follows its colorscale from band to band, a
    single-colour overlay does not;
-   :func:`unexplained_jumps`: the share of neighbouring pixel pairs whose
    overlay changes by more than ``threshold`` where the raw image changes
    by less than a quarter of it: jumps the overlay adds (block edges);
-   :func:`composite`: the overlay a map would give (to measure a blocky map
    the same way);
-   :func:`value_from_colour`: the map value a colour stands for (its
    nearest colorscale entry).

NumPy, Pillow and matplotlib's colormaps only.
"""

from __future__ import annotations

import colorsys
from typing import Any

import numpy as np


def colorscale(name: str = "viridis", n: int = 256) -> np.ndarray:
    """A colorscale as an ``(n, 3)`` array of 0..255 RGB (matplotlib's
    viridis is the one plotly, and so the App, uses)."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    return np.array([cmap(i / (n - 1))[:3] for i in range(n)]) * 255.0


def load_rgb(path: str) -> np.ndarray:
    """A PNG as a float ``(H, W, 3)`` array."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64)


def image_rect(on: np.ndarray, off: np.ndarray, box: dict[str, float], min_change: float = 3.0) -> tuple[int, ...]:
    """The image's rectangle on the screen: the bounding box, inside the
    canvas ``box``, of the pixels the overlay changes.

    Returns:
        ``(x0, y0, x1, y1)``, half-open
    """
    x0, y0 = int(box["x"]), int(box["y"])
    x1, y1 = int(box["x"] + box["width"]), int(box["y"] + box["height"])
    diff = np.abs(on[y0:y1, x0:x1] - off[y0:y1, x0:x1]).max(axis=2) > min_change
    ys, xs = np.nonzero(diff)
    if not len(xs):
        raise AssertionError("the heatmap changes no pixel of the sample canvas")
    return x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1


def resize_map(values: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """A stored ``uint8`` map resized to ``(width, height)``, as 0..1 floats."""
    from PIL import Image

    im = Image.fromarray(np.asarray(values, dtype=np.uint8))
    out = im.resize(size, Image.NEAREST if nearest else Image.BILINEAR)
    return np.asarray(out, dtype=np.float64) / 255.0


def overlay_colours(on: np.ndarray, off: np.ndarray, opacity: float) -> np.ndarray:
    """The colour the App drew at each pixel: ``R + (O - R) / opacity``."""
    return off + (on - off) / float(opacity)


def fitted_opacity(on: np.ndarray, off: np.ndarray, colours: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """The opacity that best explains ``O - R = a (C - R)`` for given
    colours, by least squares, and the mean absolute residual (0..255)."""
    d, c = (on - off)[mask], (colours - off)[mask]
    a = float((d * c).sum() / (c * c).sum())
    return a, float(np.abs(d - a * c).mean())


def hue(rgb: Any) -> float:
    """The hue of an RGB colour (0..255), in degrees."""
    r, g, b = np.clip(np.asarray(rgb, dtype=np.float64), 0, 255) / 255.0
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360.0


def colour_by_value(colours: np.ndarray, values: np.ndarray, mask: np.ndarray, bands: int = 10,
                    min_pixels: int = 500) -> list[tuple[float, np.ndarray, int]]:
    """The mean drawn colour per band of map values.

    Returns:
        ``[(band centre, mean RGB, pixels)]`` for the bands with enough pixels
    """
    out = []
    for k in range(bands):
        lo, hi = k / bands, (k + 1) / bands
        sel = mask & (values >= lo) & ((values < hi) if k < bands - 1 else (values <= hi))
        n = int(sel.sum())
        if n >= min_pixels:
            out.append(((lo + hi) / 2, colours[sel].mean(axis=0), n))
    return out


def unexplained_jumps(overlay: np.ndarray, raw: np.ndarray, threshold: float = 30.0) -> float:
    """The share of neighbouring pixel pairs (horizontal and vertical) where
    the overlay jumps by more than ``threshold`` (largest channel) while the
    raw image changes by less than ``threshold / 4``."""
    def steps(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.abs(np.diff(img, axis=1)).max(axis=2), np.abs(np.diff(img, axis=0)).max(axis=2)

    ox, oy = steps(overlay)
    rx, ry = steps(raw)
    jumps = ((ox > threshold) & (rx < threshold / 4)).sum() + ((oy > threshold) & (ry < threshold / 4)).sum()
    return float(jumps) / float(ox.size + oy.size)


def large_jumps(img: np.ndarray, threshold: float = 30.0) -> float:
    """The share of neighbouring pixel pairs that differ by more than ``threshold``."""
    dx = np.abs(np.diff(img, axis=1)).max(axis=2) > threshold
    dy = np.abs(np.diff(img, axis=0)).max(axis=2) > threshold
    return float(dx.sum() + dy.sum()) / float(dx.size + dy.size)


def composite(raw: np.ndarray, values: np.ndarray, opacity: float, scale: np.ndarray) -> np.ndarray:
    """The overlay the App would draw for a map of ``values`` (0..1, one per
    pixel): the colorscale entry at opacity ``opacity``, value 0 transparent."""
    idx = np.rint(values * (len(scale) - 1)).astype(int)
    drawn = (1 - opacity) * raw + opacity * scale[idx]
    return np.where((values > 0)[..., None], drawn, raw)


def value_from_colour(colours: np.ndarray, tinted: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The map value each drawn colour stands for (its nearest colorscale
    entry, 0..1); untinted pixels (value 0, transparent) are 0."""
    flat = colours.reshape(-1, 3)
    idx = np.empty(len(flat), dtype=np.int64)
    for k in range(0, len(flat), 20_000):
        d = ((flat[k:k + 20_000, None, :] - scale[None]) ** 2).sum(axis=2)
        idx[k:k + 20_000] = d.argmin(axis=1)
    out = idx.reshape(colours.shape[:2]) / (len(scale) - 1)
    return np.where(tinted, out, 0.0)


def region(shape: tuple[int, ...], rel: tuple[float, float, float, float]) -> np.ndarray:
    """A boolean mask of a relative box ``(x0, y0, x1, y1)`` of an image."""
    h, w = shape[:2]
    m = np.zeros((h, w), dtype=bool)
    m[int(rel[1] * h):int(rel[3] * h), int(rel[0] * w):int(rel[2] * w)] = True
    return m
