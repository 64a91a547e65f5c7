"""One table of defaults and choices, read by the library, the CLI and the App.

Every default that a user can see (a keyword argument, a CLI flag, an App
form field) is defined here once; the library's signatures, the CLI's
``argparse`` defaults and the plugin's forms read it from here.
``python -m xpatch_core.tools.check_structure`` fails when a parameter named
in this table gets a literal default anywhere else.

The quality defaults (fusion, temperature, max IoU) were chosen by
``benchmarks/bench_quality.py`` on the shared COCO subset; see
``docs/quality.md``. Saliency method names and which need gradients come from
:mod:`xpatch_core.saliency` (:func:`method_choices`), so the plugin never
keeps its own list. This module imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

#: Saliency runs (:func:`xpatch_core.runs.run_saliency`, ``xpatch run``, the
#: *Compute saliency* form).
SALIENCY: dict[str, Any] = {
    "field": "saliency",
    "model": "xception",
    "method": "eigencam",
    "batch_size": 16,
    "fuse_layer": "auto",
    "precision": "auto",
}

#: Patch runs (:func:`xpatch_core.runs.run_patches`, ``xpatch run``, the
#: *Sample patches* form).
PATCHES: dict[str, Any] = {
    "field": "patches",
    "heatmap_field": "saliency",
    "n": 16,
    "size": 96,
    "size_fraction": 0.25,
    "scales": (1.0,),
    "aspect_ratios": (1.0,),
    "temperature": 4.0,
    "epsilon": 0.0,
    "replace": False,
    "max_iou": 0.7,
    "min_distance": None,
    "min_distance_form": 32.0,
    "score": "mean",
    "mode": "random",
    "seed": 0,
    "label": "predicted",
    "border": "error",
}

#: Choices offered for the enumerated parameters.
CHOICES: dict[str, tuple[str, ...]] = {
    "mode": ("random", "topk", "grid"),
    "score": ("center", "mean"),
    "border": ("error", "pad", "clip"),
    "on_degenerate": ("uniform", "error"),
    "precision": ("auto", "float32", "mixed_bfloat16"),
    "storage": ("database", "png"),
}

#: Models offered first in the App's model menu (any ``keras.applications``
#: name works).
MODEL_MENU: tuple[tuple[str, str], ...] = (
    ("xception", "Xception (ImageNet)"),
    ("resnet50", "ResNet50 (ImageNet)"),
    ("efficientnetb0", "EfficientNetB0 (ImageNet)"),
    ("mobilenetv2", "MobileNetV2 (ImageNet)"),
)

#: Models kept loaded per process (least recently used evicted first):
#: at most ``count`` models and about ``megabytes`` of parameters.
#: Overridden by ``XPATCH_MODEL_CACHE`` and ``XPATCH_MODEL_CACHE_MB``.
MODEL_CACHE: dict[str, int] = {
    "count": 3,
    "megabytes": 2048,
}

#: Bounds a model file must respect before it is deserialised
#: (:mod:`xpatch_core.model_files`): archive members, their uncompressed
#: size and compression ratio (checked above ``ratio_floor_bytes``), and the
#: size of the model's JSON configuration.
MODEL_FILE_LIMITS: dict[str, int] = {
    "max_members": 10_000,
    "max_member_bytes": 16 << 30,
    "max_ratio": 100,
    "ratio_floor_bytes": 1 << 20,
    "max_config_bytes": 64 << 20,
}

#: Rows written to the database per bulk write.
WRITE_CHUNK = 64


def method_choices() -> list[tuple[str, str, bool]]:
    """The saliency methods, as ``(name, description, needs_gradients)``.

    Imports :mod:`xpatch_core.saliency` (NumPy and Pillow only, no
    TensorFlow).

    Returns:
        a list of tuples, the default method first
    """
    from xpatch_core.saliency import METHODS

    out = [(name, cls.label or name, bool(cls.needs_gradients))
           for name, cls in METHODS.items()]
    out.sort(key=lambda t: t[0] != SALIENCY["method"])
    return out


def gradient_methods() -> tuple[str, ...]:
    """The names of the methods that need a classifier head and gradients.

    Returns:
        a tuple of names
    """
    return tuple(name for name, _, grad in method_choices() if grad)


__all__ = [
    "CHOICES",
    "MODEL_CACHE",
    "MODEL_FILE_LIMITS",
    "MODEL_MENU",
    "PATCHES",
    "SALIENCY",
    "WRITE_CHUNK",
    "gradient_methods",
    "method_choices",
]
