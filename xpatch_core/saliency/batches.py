"""Helpers shared by the standard and the high-resolution pass: running
decoded arrays through a method, per-image targets, failed items, resizing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from xpatch_core.errors import ParameterError
from xpatch_core.saliency.methods import SaliencyItem, SaliencyMethod


def source_name(src: Any) -> str | None:
    """The path of an input, or None for an in-memory image.

    Args:
        src: a path, a Pillow image or an array

    Returns:
        the path as a string, or None
    """
    return os.fspath(src) if isinstance(src, (str, os.PathLike)) else None


def failed_item(index: int, src: Any, error: Exception) -> SaliencyItem:
    """The item of an image that could not be decoded.

    Args:
        index: the image's position in the input
        src: the input as given
        error: the decoding error

    Returns:
        a :class:`SaliencyItem` with ``error`` set
    """
    return SaliencyItem(index, None, error=getattr(error, "reason", str(error)), source=source_name(src))


def batch_targets(targets: Any, indices: Sequence[int]) -> np.ndarray:
    """The target class of each image of a batch.

    Args:
        targets: what :func:`resolve_targets` returned
        indices: the images' positions in the input

    Returns:
        an int32 array, -1 for the predicted class

    Raises:
        ParameterError: if a per-image target list is too short
    """
    if isinstance(targets, list):
        if max(indices) >= len(targets):
            raise ParameterError(f"{len(targets)} targets given for more images")
        return np.array([targets[i] for i in indices], np.int32)
    return np.full(len(indices), targets, np.int32)


def run_arrays(runner: SaliencyMethod, arrays: Sequence[np.ndarray], targets: np.ndarray) -> list[dict[str, Any]]:
    """Runs decoded images of one size through a method, as one batch.

    Args:
        runner: a :class:`SaliencyMethod`
        arrays: float32 ``(H, W, 3)`` RGB arrays in ``[0, 255]`` at the
            model's input size
        targets: int32 class indices, -1 for the predicted class

    Returns:
        one dict per image with the :class:`SaliencyItem` fields ``map``,
        ``degenerate``, ``target``, ``predicted`` and ``confidence``
    """
    sm = runner.model
    x = np.asarray(sm.preprocess(np.stack(arrays)), dtype=np.float32)
    maps, degenerate, info = runner.run_batch(x, targets)
    probs = None
    if info["logits"] is not None:
        z = info["logits"] - info["logits"].max(axis=1, keepdims=True)
        e = np.exp(z)
        probs = e / e.sum(axis=1, keepdims=True)
    out = []
    for k in range(len(arrays)):
        pred = None if info["predicted"] is None else int(info["predicted"][k])
        out.append({
            "map": maps[k],
            "degenerate": bool(degenerate[k]),
            "target": None if info["targets"] is None else int(info["targets"][k]),
            "predicted": pred,
            "confidence": None if probs is None else float(probs[k, pred]),
        })
    return out


def upsample(saliency: np.ndarray, size: tuple[int, int], method: str = "bilinear") -> np.ndarray:
    """Resizes a map to ``(height, width)``.

    Args:
        saliency: a 2-D map
        size: ``(height, width)``
        method: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``

    Returns:
        a float32 ``(height, width)`` map, clipped to the input's range
    """
    m = np.asarray(saliency, dtype=np.float32)
    if m.ndim != 2:
        raise ParameterError(f"saliency must be 2-D, got shape {m.shape}")
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ParameterError(f"size must be positive, got {size}")
    resample = {
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "nearest": Image.Resampling.NEAREST,
    }.get(method)
    if resample is None:
        raise ParameterError(f"unknown upsampling method {method!r}")
    out = np.asarray(Image.fromarray(m, mode="F").resize((width, height), resample), dtype=np.float32)
    return np.clip(out, float(np.nanmin(m)), float(np.nanmax(m)))


__all__ = ["batch_targets", "failed_item", "run_arrays", "source_name", "upsample"]
