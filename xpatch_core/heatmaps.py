"""Heatmaps as they are stored, drawn and read back.

The network's map (e.g. 19x19 for the fused Xception map) is what the
saliency methods compute; the map that is stored in a ``fo.Heatmap`` and
drawn by the App is :func:`display_map`: smoothly upsampled to a display
resolution that keeps the image's aspect ratio, as ``uint8`` with
``range=[0, 255]``. The App draws a heatmap at the stored map's own
resolution, scaled without smoothing, so a coarse map shows as blocks; the
display size in :data:`xpatch_core.defaults.HEATMAP` was chosen by
``benchmarks/bench_quality.py`` (see ``docs/quality.md``) so that no block
edges show in the App's modal while a map stays small in the database.
The sampler (:func:`xpatch_core.sampler.sample_patches`) is exact at any
resolution and samples from the stored map.

The network's raw map is kept for provenance as a short text
(:func:`encode_network_map` / :func:`decode_network_map`).

:func:`read_heatmap` reads any ``fo.Heatmap`` (ours or another tool's) with
FiftyOne's conventions and raises :class:`HeatmapError` with the reason for
a map it cannot interpret.

Everything here uses NumPy and Pillow only.
"""

from __future__ import annotations

import base64
import os
import re
from typing import Any

import numpy as np
from PIL import Image

from xpatch_core import settings
from xpatch_core.defaults import HEATMAP
from xpatch_core.errors import ParameterError, XpatchError

__all__ = [
    "HeatmapError",
    "decode_network_map",
    "display_map",
    "display_size",
    "encode_network_map",
    "read_heatmap",
]

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


class HeatmapError(XpatchError):
    """A heatmap cannot be interpreted; ``reason`` says why in a few words."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def display_size(image_size: tuple[int, int], long_side: int | None = None) -> tuple[int, int]:
    """The ``(width, height)`` of the display map of an image.

    The long side is ``long_side`` (never more than the image's own), the
    short side follows the image's aspect ratio (at least 1 pixel).

    Args:
        image_size: ``(width, height)`` of the image
        long_side: the display map's long side (default
            ``HEATMAP["long_side"]``)

    Returns:
        ``(width, height)``

    Raises:
        ParameterError: for a non-positive size
    """
    long_side = HEATMAP["long_side"] if long_side is None else long_side
    try:
        W, H = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ParameterError(f"image_size must be (width, height), got {image_size!r}") from None
    if W < 1 or H < 1:
        raise ParameterError(f"image_size must be positive, got {image_size!r}")
    if not isinstance(long_side, (int, np.integer)) or long_side < 1:
        raise ParameterError(f"long_side must be a positive integer, got {long_side!r}")
    side = min(int(long_side), max(W, H))
    if W >= H:
        return side, max(1, round(side * H / W))
    return max(1, round(side * W / H)), side


def display_map(
    net_map: np.ndarray,
    image_size: tuple[int, int],
    long_side: int | None = None,
    *,
    method: str | None = None,
) -> np.ndarray:
    """Turns a network map into the map that is stored and drawn.

    The map, assumed to cover the whole image (as the network saw it), is
    upsampled with pixel centres aligned to :func:`display_size`, clipped to
    its own range, and quantised to ``uint8`` (store it with
    ``range=[0, 255]``; 0 is drawn transparent by the App).

    Args:
        net_map: a 2-D float map in ``[0, 1]`` (e.g. 19x19)
        image_size: ``(width, height)`` of the image
        long_side: the display map's long side (default
            ``HEATMAP["long_side"]``)
        method: ``"bicubic"``, ``"bilinear"`` or ``"nearest"`` (default
            ``HEATMAP["upsample"]``)

    Returns:
        a ``uint8`` ``(height, width)`` array

    Raises:
        ParameterError: for a map that is not 2-D or not finite, or bad sizes
    """
    m = np.asarray(net_map, dtype=np.float32)
    if m.ndim != 2 or m.size == 0:
        raise ParameterError(f"net_map must be a non-empty 2-D array, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ParameterError("net_map holds NaN or inf")
    resample = _RESAMPLE.get(method or HEATMAP["upsample"])
    if resample is None:
        raise ParameterError(f"unknown upsampling method {method!r}; choose one of {', '.join(_RESAMPLE)}")
    w, h = display_size(image_size, long_side)
    lo, hi = float(m.min()), float(m.max())
    up = np.asarray(Image.fromarray(m, mode="F").resize((w, h), resample), dtype=np.float32)
    up = np.clip(up, max(lo, 0.0), min(hi, 1.0))
    # 1, not 0, at the bottom: the App draws 0 as transparent, which would cut the
    # colour scale's lowest colour out of the overlay with a visible edge
    return np.maximum(np.rint(up * 255.0), 1).astype(np.uint8)


def encode_network_map(net_map: np.ndarray) -> str:
    """Encodes a network map in ``[0, 1]`` compactly, for provenance.

    Stored as 8 bits per cell (``round(255 * value)``), base64: a 19x19 map
    takes 493 characters.

    Args:
        net_map: a 2-D map in ``[0, 1]``

    Returns:
        a string ``"u8:<height>x<width>:<base64>"``

    Raises:
        ParameterError: for a map that is not 2-D or not finite
    """
    m = np.asarray(net_map, dtype=np.float64)
    if m.ndim != 2 or m.size == 0 or not np.isfinite(m).all():
        raise ParameterError(f"net_map must be a finite, non-empty 2-D array, got shape {m.shape}")
    q = np.rint(np.clip(m, 0.0, 1.0) * 255.0).astype(np.uint8)
    return f"u8:{m.shape[0]}x{m.shape[1]}:{base64.b64encode(q.tobytes()).decode('ascii')}"


def decode_network_map(text: str) -> np.ndarray:
    """Decodes :func:`encode_network_map`'s text.

    Args:
        text: the encoded map

    Returns:
        a float32 ``(height, width)`` map in ``[0, 1]``

    Raises:
        HeatmapError: if the text is not such an encoding
    """
    found = re.fullmatch(r"u8:(\d+)x(\d+):([A-Za-z0-9+/=]*)", str(text))
    if not found:
        raise HeatmapError("network map text is not 'u8:<h>x<w>:<base64>'")
    h, w = int(found.group(1)), int(found.group(2))
    raw = base64.b64decode(found.group(3))
    if len(raw) != h * w or h < 1 or w < 1:
        raise HeatmapError(f"network map text holds {len(raw)} values for a {h}x{w} map")
    return np.frombuffer(raw, np.uint8).reshape(h, w).astype(np.float32) / np.float32(255.0)


# -- reading fo.Heatmap -------------------------------------------------------------


def read_heatmap(heatmap: Any) -> np.ndarray | None:
    """Reads a ``fo.Heatmap`` as a float32 map in ``[0, 1]``, with FiftyOne's
    conventions.

    -   ``range=[lo, hi]`` given: values are read relative to it; values below
        ``lo`` are background (0, as the App draws them transparent) and
        values above ``hi`` are clipped to 1 (the App draws them in the top
        colour). ``hi`` must exceed ``lo``.
    -   no range: a float ``map`` is ``[0, 1]``, an integer ``map`` (any
        integer dtype, as in FiftyOne's ``Heatmap`` docs and the App)
        ``[0, 255]``; a ``map_path`` image has the range of its dtype
        (``[0, 255]`` for 8-bit, ``[0, 65535]`` for 16-bit PNGs). A map
        whose values exceed this implied maximum cannot be read the way the
        user meant (a ``uint16`` map of 0..65535, a float map of 0..255): it
        raises, with the range to set.
    -   multi-channel maps and images (RGB, RGBA, grey + alpha) are read from
        their first channel, as the App draws them.
    -   NaN counts as background; a map with no finite value raises.

    Args:
        heatmap: a ``fo.Heatmap`` (or any object with ``map``,
            ``map_path`` and ``range``), or None

    Returns:
        the map, or None when ``heatmap`` is None or holds neither ``map``
        nor ``map_path``

    Raises:
        HeatmapError: for a map that cannot be interpreted, with the reason
    """
    if heatmap is None:
        return None
    m = getattr(heatmap, "map", None)
    path = getattr(heatmap, "map_path", None)
    rng = getattr(heatmap, "range", None)
    if m is None and not path:
        return None
    if m is not None:
        arr = np.asarray(m)
        implied = (0.0, 1.0) if arr.dtype.kind == "f" else (0.0, 255.0)
        where = "map"
    else:
        arr = _read_map_file(os.fspath(path))
        implied = (0.0, 65535.0) if arr.dtype.itemsize == 2 else (0.0, 255.0)
        where = f"map_path {os.path.basename(os.fspath(path))}"
    arr = _first_channel(arr, where)
    lo, hi = _range(rng) if rng is not None else implied
    return _scale(arr, lo, hi, explicit=rng is not None, where=where)


def _read_map_file(path: str) -> np.ndarray:
    """Reads a heatmap image file, keeping 16-bit values."""
    if not os.path.exists(path):
        raise HeatmapError(f"heatmap file not found: {path}")
    try:
        with Image.open(path) as img:
            # from the header, before decoding: Pillow's own bomb check is a process-wide
            # setting that other libraries switch off (SAHI's image reader does)
            limit = settings.max_pixels()
            if img.size[0] * img.size[1] > limit:
                raise HeatmapError(
                    f"cannot read heatmap file {os.path.basename(path)}: {img.size[0]}x{img.size[1]} pixels "
                    f"exceeds the limit of {limit:,} (a decompression bomb, or set XPATCH_MAX_PIXELS)")
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                return np.asarray(img, dtype=np.uint16)
            if img.mode in ("I", "F"):
                arr = np.asarray(img)
                if img.mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
                    return arr.astype(np.uint16)
                raise HeatmapError(f"heatmap file {os.path.basename(path)} has 32-bit {img.mode} pixels; "
                                   "FiftyOne reads 8- and 16-bit images")
            if img.mode == "P":
                img = img.convert("RGBA")
            return np.asarray(img)
    except HeatmapError:
        raise
    except Exception as e:  # noqa: BLE001 - a file replaced behind our back (a decompression bomb,
        # a truncated or foreign file) is unreadable, whatever Pillow raises
        raise HeatmapError(f"cannot read heatmap file {os.path.basename(path)}: {e}") from e


def _first_channel(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise HeatmapError(f"heatmap {where} has dtype {arr.dtype}, not numbers")
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[:, :, 0]
    elif arr.ndim == 3 and arr.shape[2] == 2 and not where.startswith("map_path"):
        raise HeatmapError(f"heatmap {where} has 2 channels; FiftyOne draws 1-, 3- or 4-channel maps")
    elif arr.ndim == 3 and arr.shape[2] == 2:
        arr = arr[:, :, 0]  # grey + alpha image
    if arr.ndim != 2:
        raise HeatmapError(f"heatmap {where} has shape {arr.shape}; a 2-D (height, width) map is needed")
    if arr.size == 0:
        raise HeatmapError(f"heatmap {where} is empty (shape {arr.shape})")
    return arr


def _range(rng: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in rng)
    except (TypeError, ValueError):
        raise HeatmapError(f"heatmap range {rng!r} is not [min, max]") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        raise HeatmapError(f"heatmap range {list(rng)!r} is empty: max must exceed min")
    return lo, hi


def _scale(arr: np.ndarray, lo: float, hi: float, *, explicit: bool, where: str) -> np.ndarray:
    """Maps ``[lo, hi]`` to ``[0, 1]`` with FiftyOne's clipping."""
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.dtype == np.uint8:
        # one table lookup, the same values as the general path below
        top = float(arr.max())
        if not explicit and top > hi + 1e-3 * (hi - lo):
            raise HeatmapError(
                f"heatmap {where} (uint8) has values up to {top:.6g}, above the range [{lo:g}, {hi:g}] "
                f"FiftyOne assumes without a range; set the heatmap's range (e.g. [0, 255])"
            )
        lut = np.clip((np.arange(256, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
        return lut[arr]
    a = arr.astype(np.float64, copy=False)
    finite = np.isfinite(a)
    if not finite.any():
        raise HeatmapError(f"heatmap {where} holds no finite value")
    top = float(np.max(a, where=finite, initial=-np.inf))
    if not explicit and top > hi + 1e-3 * (hi - lo):
        hint = "[0, 65535]" if top <= 65535 and arr.dtype.kind in "iu" else f"[0, {top:.6g}]"
        raise HeatmapError(
            f"heatmap {where} ({arr.dtype}) has values up to {top:.6g}, above the range [{lo:g}, {hi:g}] "
            f"FiftyOne assumes without a range; set the heatmap's range (e.g. {hint})"
        )
    a = np.where(np.isnan(a), lo, a)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
