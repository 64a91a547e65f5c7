"""Moved to :mod:`xpatch_core.saliency.highres`; this name stays importable."""

from __future__ import annotations

from xpatch_core.saliency.highres import (
    ASPECT_BUCKETS,
    HIGH_SCALE,
    fuse_resolutions,
    high_input_size,
    iter_high_resolution,
)

__all__ = ["ASPECT_BUCKETS", "HIGH_SCALE", "fuse_resolutions", "high_input_size", "iter_high_resolution"]
