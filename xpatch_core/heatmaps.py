"""Reading stored heatmaps (``fo.Heatmap``) as maps in ``[0, 1]``."""

from __future__ import annotations

from typing import Any

import numpy as np


def read_heatmap(heatmap: Any) -> np.ndarray | None:
    """Reads a stored heatmap as a float32 map in ``[0, 1]``.

    Args:
        heatmap: a ``fo.Heatmap`` (in the database or with ``map_path``)

    Returns:
        the map, or None if missing or unreadable
    """
    if heatmap is None:
        return None
    lo, hi = (heatmap.range or [0.0, 1.0])[:2] if heatmap.range else (0.0, 1.0)
    m = heatmap.map
    if m is None and heatmap.map_path:
        from PIL import Image

        try:
            with Image.open(heatmap.map_path) as img:
                m = np.asarray(img.convert("L"), dtype=np.float32)
        except (OSError, ValueError):
            return None
    if m is None:
        return None
    m = np.asarray(m, dtype=np.float32)
    if m.ndim == 3:
        m = m[..., 0]
    span = float(hi - lo) or 1.0
    return np.clip((m - lo) / span, 0.0, 1.0)


__all__ = ["read_heatmap"]
