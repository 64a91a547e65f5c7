"""Saliency methods over a batch API, at the cost of one forward pass.

| module | what |
| --- | --- |
| :mod:`~xpatch_core.saliency.methods` | the methods over one base, targets, fusion |
| :mod:`~xpatch_core.saliency.batches` | arrays through a method, targets per batch, resizing |
| :mod:`~xpatch_core.saliency.stream` | :func:`iter_saliency`, :func:`compute_saliency` |
| :mod:`~xpatch_core.saliency.highres` | ``map_resolution="high"``: the aspect-kept pass |

One base class, :class:`SaliencyMethod`, owns the batch loop, the model call,
the target classes and the normalisation; each method is a small subclass
that only says how it turns activations (and gradients) into a map:

| name | class | needs a classifier head |
| --- | --- | --- |
| ``activation`` | :class:`ActivationMap` | no |
| ``eigencam`` | :class:`EigenCAM` | no |
| ``gradcam`` | :class:`GradCAM` | yes |
| ``gradcam++`` | :class:`GradCAMPlusPlus` | yes |

Maps are float32 in ``[0, 1]`` at the target layer's resolution; use
:func:`upsample` for any other size, and
:func:`xpatch_core.heatmaps.display_map` for the map a run stores. A
constant or non-finite map comes back as all ones (uniform) with
``degenerate=True``.

With a fuse layer (Xception's default), ``activation`` and ``eigencam`` maps
are the geometric mean of the target layer's and the finer layer's
normalised maps (:func:`fuse_maps_tf`), computed on the device so that only
the small maps come back to the host. ``map_resolution="high"`` adds an
aspect-kept pass at 1.5x the input size (:mod:`xpatch_core.saliency.highres`).
"""

from __future__ import annotations

from xpatch_core.saliency.batches import (
    batch_targets,
    failed_item,
    run_arrays,
    source_name,
    upsample,
)
from xpatch_core.saliency.methods import (
    METHODS,
    ActivationMap,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    SaliencyItem,
    SaliencyMethod,
    eigencam_reference,
    fuse_maps_tf,
    get_method,
    gradient_methods,
    method_choices,
    normalize_maps,
    normalize_maps_tf,
    resolve_targets,
)
from xpatch_core.saliency.stream import compute_saliency, iter_saliency

__all__ = [
    "ActivationMap",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "METHODS",
    "SaliencyItem",
    "SaliencyMethod",
    "batch_targets",
    "compute_saliency",
    "eigencam_reference",
    "failed_item",
    "fuse_maps_tf",
    "get_method",
    "gradient_methods",
    "iter_saliency",
    "method_choices",
    "normalize_maps",
    "normalize_maps_tf",
    "resolve_targets",
    "run_arrays",
    "source_name",
    "upsample",
]
