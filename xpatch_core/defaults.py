"""One table of defaults and choices, read by the library, the CLI and the App.

Every default that a user can see (a keyword argument, a CLI flag, an App
form field) is defined here once; the library's signatures, the CLI's
``argparse`` defaults and the plugin's forms read it from here.
``python -m xpatch_core.tools.check_structure`` fails when a parameter named
in this table gets a literal default anywhere else.

The quality defaults (fusion, temperature, max IoU, stored map size) were chosen by
``benchmarks/bench_quality.py`` on the shared COCO subset; see
``docs/quality.md``. Saliency method names and which need gradients come from
:mod:`xpatch_core.saliency` (:func:`~xpatch_core.saliency.method_choices`),
so the plugin never keeps its own list. This module imports nothing.
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
    "engine": "auto",
    "map_resolution": "standard",
}

#: Stored heatmaps (:func:`xpatch_core.heatmaps.display_map`): the network's
#: map smoothly upsampled to this long side (never more than the image's),
#: aspect ratio kept, as uint8 with ``range=[0, 255]``. Chosen by
#: ``benchmarks/bench_quality.py`` (``docs/quality.md``): no block edges in
#: the App's modal at 1000 px (bicubic: no creases along the network's
#: cells either), about 40 kB per 640x480 photo in the database, 27 kB as PNG.
HEATMAP: dict[str, Any] = {
    "long_side": 512,
    "upsample": "bicubic",
    # zlib level of maps stored in the database (FiftyOne's own default is 6):
    # 4 is 2.2x faster for about 6% more bytes on display maps
    "zlib_level": 4,
    # the App's colour scheme for a new heatmap field (a plotly colorscale) and
    # the opacity set with it when the dataset has no colour scheme yet
    "colorscale": "viridis",
    "opacity": 0.6,
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
    "temperature": 8.0,
    "epsilon": 0.0,
    "replace": False,
    "max_iou": 0.7,
    "min_distance": None,
    "min_distance_form": 32.0,
    "score": "center",
    "mode": "random",
    "seed": 0,
    "label": "predicted",
    "border": "drop",
    # the most patches per image (a bound, not a default: larger n took minutes per image, or memory)
    "max_n": 100_000,
}

#: Patch datasets (:func:`xpatch_core.patch_dataset.make_patch_dataset`,
#: ``xpatch patch-dataset``, the *Make patch dataset* form). ``min_area_ratio``
#: is SAHI's default (``sahi.slicing.slice_image`` / ``slice_coco``).
PATCH_DATASET: dict[str, Any] = {
    "min_area_ratio": 0.1,
    "min_coverage": 0.5,
    "background_label": "background",
    "label_field": "label",
    "image_format": "auto",
    "jpeg_quality": 95,
    "fill": 0,
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

#: Big runs (:mod:`xpatch_core.runs.estimate`, the App's forms): when to
#: recommend running in the background, and how to split a run over tasks.
SCALE: dict[str, Any] = {
    # recommend (pre-select) background execution above this estimate ...
    "background_above_s": 120.0,
    # ... or, when no speed is known yet, above this many samples to process
    "background_above_samples": 1000,
    # samples timed before a patch run to estimate its speed
    "probe_samples": 16,
    # recommended distributed tasks: one per this many samples, within the bounds
    "samples_per_task": 2000,
    "min_tasks": 2,
    "max_tasks": 32,
}

#: Choices offered for the enumerated parameters.
CHOICES: dict[str, tuple[str, ...]] = {
    "mode": ("random", "topk", "grid"),
    "score": ("center", "mean"),
    "border": ("error", "pad", "clip", "drop"),
    "on_degenerate": ("uniform", "error"),
    "precision": ("auto", "float32", "mixed_bfloat16"),
    "engine": ("auto", "tensorflow", "openvino"),
    "storage": ("database", "png"),
    "map_resolution": ("standard", "high"),
    "patch_image_format": ("auto", "jpg", "png"),
    "patch_export": ("imagefolder", "coco", "yolov5", "fiftyone", "fiftyone-classification"),
    "pooling": ("align", "area"),
    "embedding_border": ("pad", "clip", "error"),
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


#: The xpatch panel in the App (:mod:`xpatch_core.overview`).
PANEL: dict[str, Any] = {
    # classes shown in the hit-rate figure (those on most images)
    "max_classes": 12,
    # bins of the patch-score histogram
    "score_bins": 20,
    # failures listed for a run
    "failures_shown": 5,
}

__all__ = ["CHOICES", "CURATION", "EMBEDDINGS", "HEATMAP", "MODEL_CACHE", "MODEL_FILE_LIMITS", "MODEL_MENU",
           "PANEL", "PATCHES", "PATCH_DATASET", "SALIENCY", "SCALE"]
