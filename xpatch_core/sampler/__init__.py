"""Patch boxes whose centres follow a saliency map.

:func:`sample_patches` turns a saliency map (at any resolution: the network's
coarse map, e.g. ``10x10``, or a full-resolution map) into patch *boxes* for an
image of a given size. It never touches pixels and imports only NumPy.

Geometry and conventions
------------------------

-   ``image_size`` is ``(width, height)`` as in PIL. Boxes are half-open integer
    pixel boxes ``[x0, y0, x1, y1]`` with ``x1 - x0`` equal to the box width.
-   A box of length ``p`` along an axis of length ``m`` has exactly
    ``m - p + 1`` legal positions ``x0 = 0, ..., m - p`` (see
    :func:`legal_positions`); the last one is flush with the border.
-   **Centre convention**: the centre pixel of a box is ``x0 + p // 2`` (and
    ``y0 + q // 2``). A position is weighted by the density at its centre
    pixel, so legal centres are ``p // 2, ..., m - p + p // 2``.
-   **Map to image**: the map is assumed to cover the whole image. Map column
    ``j`` of a map ``w`` cells wide covers the image pixels whose *pixel
    centre* ``x + 0.5`` lies in ``[j * W / w, (j + 1) * W / w)``, i.e. pixel
    ``x`` belongs to column ``((2 * x + 1) * w) // (2 * W)`` (rows likewise).
    This is nearest-neighbour upsampling by pixel centres; the density over
    image pixels is piecewise constant per map cell. A map with the image's
    own shape is the case where every cell is one pixel.

Sampling is exact for coarse maps without building a full-resolution map: per
axis the legal centre pixels form an interval, each map cell overlaps it in
some count of pixels, a cell is drawn with a float64 CDF (``searchsorted``
with ``side="right"`` on uniform draws in ``[0, total)``, so zero-weight cells
are never drawn) using the weight ``value * count_x * count_y``, and the
position is drawn uniformly among the legal pixels of that cell.

Modules
-------

| module | concern |
| --- | --- |
| :mod:`~xpatch_core.sampler.checks` | argument checks, before any work |
| :mod:`~xpatch_core.sampler.seeding` | per-image generators, stable key hashes |
| :mod:`~xpatch_core.sampler.geometry` | box shapes, legal positions, axes, map cells, border policy |
| :mod:`~xpatch_core.sampler.maps` | map cleaning, weights, the per-shape samplers |
| :mod:`~xpatch_core.sampler.overlap` | IoU / centre-distance conflicts, greedy acceptance |
| :mod:`~xpatch_core.sampler.modes` | the ``random``, ``topk`` and ``grid`` modes |
| :mod:`~xpatch_core.sampler.scoring` | ``center`` and ``mean`` box scores |
| :mod:`~xpatch_core.sampler.core` | :func:`sample_patches` and :class:`PatchSet` |

The enumerated parameters (``mode``, ``score``, ``border``,
``on_degenerate``) take the values listed in
:data:`xpatch_core.defaults.CHOICES`.
"""

from __future__ import annotations

from xpatch_core.sampler.core import PatchSet, sample_patches
from xpatch_core.sampler.geometry import box_shapes, legal_positions
from xpatch_core.sampler.maps import DegenerateMapError
from xpatch_core.sampler.scoring import box_scores
from xpatch_core.sampler.seeding import image_rng, stable_key_hash

__all__ = [
    "DegenerateMapError",
    "PatchSet",
    "box_scores",
    "box_shapes",
    "image_rng",
    "legal_positions",
    "sample_patches",
    "stable_key_hash",
]
