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
    "precision": "float32",
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

#: Patch embeddings (:func:`xpatch_core.embeddings.iter_patch_embeddings`,
#: :func:`xpatch_core.runs.run_embeddings`, the *Compute patch embeddings*
#: form). Layer and pooling chosen by ``benchmarks/bench_embeddings.py`` on the
#: shared COCO subset (see ``docs/curation.md``).
EMBEDDINGS: dict[str, Any] = {
    "patches_field": "patches",
    "attribute": "embedding",
    "model": "xception",
    "fine_layer": "auto",
    "pooling": "align",
    "sampling_ratio": 2,
    "border": "pad",
    "batch_size": 16,
}

#: Curation (:mod:`xpatch_core.curation`, the curation operators).
CURATION: dict[str, Any] = {
    "duplicate_threshold": 0.1,
    "duplicate_tag": "xpatch:duplicate",
    "keep_by": "confidence",
    "same_image": False,
    "diverse_count": 100,
    "diverse_tag": "xpatch:diverse",
    "seed": 0,
    "similarity_key": None,
    "visualization_key": None,
    "visualization_method": "pca",
}

#: Choices offered for the enumerated parameters.
CHOICES: dict[str, tuple[str, ...]] = {
    "mode": ("random", "topk", "grid"),
    "score": ("center", "mean"),
    "border": ("error", "pad", "clip"),
    "on_degenerate": ("uniform", "error"),
    "precision": ("float32", "bfloat16", "mixed_bfloat16"),
    "storage": ("database", "png"),
    "pooling": ("align", "area"),
    "visualization_method": ("pca", "tsne", "umap"),
}

#: Models offered first in the App's model menu (any ``keras.applications``
#: name works).
MODEL_MENU: tuple[tuple[str, str], ...] = (
    ("xception", "Xception (ImageNet)"),
    ("resnet50", "ResNet50 (ImageNet)"),
    ("efficientnetb0", "EfficientNetB0 (ImageNet)"),
    ("mobilenetv2", "MobileNetV2 (ImageNet)"),
)


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


__all__ = ["CHOICES", "CURATION", "EMBEDDINGS", "MODEL_MENU", "PATCHES", "SALIENCY", "gradient_methods",
           "method_choices"]
