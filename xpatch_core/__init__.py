"""xpatch: turn what a CNN looks at into patch datasets.

The package is importable without TensorFlow or FiftyOne: heavy modules are
loaded on first use of the functions that need them.

| function | module |
| --- | --- |
| :func:`load_model` | :mod:`xpatch_core.models` |
| :func:`compute_saliency`, :func:`iter_saliency`, :func:`upsample` | :mod:`xpatch_core.saliency` |
| :func:`sample_patches` | :mod:`xpatch_core.sampler` |
| :func:`load_image` | :mod:`xpatch_core.images` |
| :func:`run_saliency`, :func:`run_patches` | :mod:`xpatch_core.runs` (FiftyOne) |
| :func:`export_patches` | :mod:`xpatch_core.export` (FiftyOne) |
| :func:`make_patch_dataset`, :func:`iter_make_patch_dataset` | :mod:`xpatch_core.patch_dataset` (FiftyOne) |
| :func:`evaluate_patches` | :mod:`xpatch_core.metrics` (FiftyOne) |
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": "xpatch_core.models",
    "SaliencyModel": "xpatch_core.models",
    "list_applications": "xpatch_core.models",
    "compute_saliency": "xpatch_core.saliency",
    "iter_saliency": "xpatch_core.saliency",
    "upsample": "xpatch_core.saliency",
    "METHODS": "xpatch_core.saliency",
    "SaliencyItem": "xpatch_core.saliency",
    "sample_patches": "xpatch_core.sampler",
    "PatchSet": "xpatch_core.sampler",
    "load_image": "xpatch_core.images",
    "export_patches": "xpatch_core.export",
    "make_patch_dataset": "xpatch_core.patch_dataset",
    "iter_make_patch_dataset": "xpatch_core.patch_dataset",
    "evaluate_patches": "xpatch_core.metrics",
    "run_saliency": "xpatch_core.runs",
    "run_patches": "xpatch_core.runs",
    "ImageDecodeError": "xpatch_core.errors",
    "XpatchError": "xpatch_core.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xpatch_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
