"""The entry point :func:`sample_patches` and its result, :class:`PatchSet`.

One call runs four steps, each a function of its own:

1.  checking every parameter and the box shapes against the image, before
    any work (:func:`~xpatch_core.sampler.checks.check_params`,
    :func:`~xpatch_core.sampler.geometry.usable_shapes`);
2.  preparing the map: cleaning, weights, one sampler per sampled shape
    (:func:`prepare`);
3.  choosing positions with the mode (:func:`pick`);
4.  assembling boxes, relative boxes, scores, shape indices and flags
    (:func:`assemble`).

Rules: shape indices (``scale_idx``, ``aspect_idx``) always index the full
``scales`` and ``aspect_ratios``, also when ``border="drop"`` leaves shapes
out; ``degenerate`` is about the map only, ``reason`` also names the shapes
left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from xpatch_core.sampler.checks import SampleParams, check_params
from xpatch_core.sampler.geometry import axis_geometry, nominal_shapes, usable_shapes
from xpatch_core.sampler.maps import DegenerateMapError, ShapeSampler, as_map, clean_map, weight_map
from xpatch_core.sampler.modes import Picked, sample_grid, sample_random, sample_topk
from xpatch_core.sampler.scoring import box_scores, center_scores
from xpatch_core.sampler.seeding import seeded_rng

__all__ = ["PatchSet", "Prepared", "assemble", "pick", "prepare", "sample_patches"]


@dataclass(frozen=True, eq=False)
class PatchSet:
    """Patch boxes sampled for one image.

    All arrays have one row per box, in acceptance order (draw order for
    ``mode="random"``, rank order for ``"topk"``, raster order for
    ``"grid"``).

    Attributes:
        boxes: ``(N, 4)`` int64 pixel boxes ``[x0, y0, x1, y1]``, half-open,
            ``x1 - x0`` is the box width. With ``border="pad"`` coordinates
            may lie outside the image; with ``border="clip"`` the box is cut
            to the image. Both cases are marked in ``flags``
        rel_boxes: ``(N, 4)`` float64 FiftyOne boxes ``[x, y, w, h]``
            relative to the image width and height
        scores: ``(N,)`` float64 saliency of each box on the cleaned map
            divided by its maximum (so in ``[0, 1]``): the value at the centre
            pixel (``score="center"``) or the exact mean over the box's pixels
            inside the image (``score="mean"``). Temperature is not applied
        probs: ``(N,)`` float64 probability of the box's position under the
            sampling distribution of its shape (conditional on its scale and
            aspect ratio, epsilon mix included); for ``replace=False`` and
            overlap control this is the per-draw probability, not the
            inclusion probability
        scale_idx: ``(N,)`` int64 index into ``scales``
        aspect_idx: ``(N,)`` int64 index into ``aspect_ratios``
        flags: ``(N,)`` bool, True for padded or clipped boxes
        shapes: ``(K, 2)`` int64 nominal ``(width, height)`` of each box
            shape, ``K = len(scales) * len(aspect_ratios)``, row
            ``scale_idx * len(aspect_ratios) + aspect_idx`` (dropped shapes
            included)
        image_size: ``(width, height)`` of the image
        requested: the number of boxes asked for (``None`` for a full grid);
            fewer may be returned under overlap control or without
            replacement when the constraint cannot be met within
            ``max_tries``
        n_draws: candidates drawn (random mode) or examined (topk/grid)
        degenerate: True if the map needed repair or carries no information
            (NaN/inf values, negative values, all zero, constant, or no
            positive weight at any legal centre)
        uniform_fallback: True if at least one box shape was sampled
            uniformly over its legal positions because the map had no usable
            weight for it
        reason: human-readable description of every problem found and of
            the shapes dropped, or ``None`` when there is neither
        dropped_shapes: indices into ``shapes`` of the box shapes left out
            because they are larger than the image (``border="drop"``);
            empty otherwise
    """

    boxes: np.ndarray
    rel_boxes: np.ndarray
    scores: np.ndarray
    probs: np.ndarray
    scale_idx: np.ndarray
    aspect_idx: np.ndarray
    flags: np.ndarray
    shapes: np.ndarray
    image_size: tuple[int, int]
    requested: int | None
    n_draws: int
    degenerate: bool = False
    uniform_fallback: bool = False
    reason: str | None = None
    dropped_shapes: tuple[int, ...] = ()

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def complete(self) -> bool:
        """Whether as many boxes as requested were returned."""
        return self.requested is None or len(self) >= self.requested


class Prepared(NamedTuple):
    """A cleaned map and one sampler per sampled shape.

    Attributes:
        v: the cleaned map (scores use it)
        vmax: its maximum
        samplers: one :class:`~xpatch_core.sampler.maps.ShapeSampler` per
            sampled shape, in shape order
        keep: the full shape index of each sampler (Python ints)
        widths: box width of each sampler's shape, as drawn
        heights: box height of each sampler's shape, as drawn
        flagged: whether each sampler's boxes are padded or clipped
        problems: the map's problems, for ``reason``
        no_info: whether the map carries no information
    """

    v: np.ndarray
    vmax: float
    samplers: list[ShapeSampler]
    keep: tuple[int, ...]
    widths: np.ndarray
    heights: np.ndarray
    flagged: np.ndarray
    problems: list[str]
    no_info: bool


def prepare(saliency: Any, shapes: np.ndarray, keep: tuple[int, ...], p: SampleParams) -> Prepared:
    """Cleans the map and builds the samplers of the shapes ``keep``.

    Args:
        saliency: the map, as given
        shapes: ``(K, 2)`` nominal shapes
        keep: the indices of the shapes to sample
        p: the checked parameters

    Returns:
        a :class:`Prepared`

    Raises:
        ParameterError: for an invalid map
        DegenerateMapError: for an unusable map with ``on_degenerate="error"``
    """
    v, vmax, problems, no_info = clean_map(as_map(saliency), p.on_degenerate)
    vt = weight_map(v, vmax, p.temperature, no_info)
    h, w = v.shape
    samplers = []
    for k in keep:
        gx = axis_geometry(p.W, w, int(shapes[k, 0]), p.border)
        gy = axis_geometry(p.H, h, int(shapes[k, 1]), p.border)
        samplers.append(ShapeSampler(vt, gx, gy, no_info, p.epsilon))
    widths = np.array([s.gx.box_len for s in samplers], dtype=np.int64)
    heights = np.array([s.gy.box_len for s in samplers], dtype=np.int64)
    flagged = np.array([s.gx.flagged or s.gy.flagged for s in samplers])
    if not no_info:
        for k, s in zip(keep, samplers, strict=True):
            s.build(cdf=p.mode == "random")
            if s.fallback:
                msg = f"no positive saliency at any legal centre for {shapes[k, 0]}x{shapes[k, 1]} boxes"
                if p.on_degenerate == "error":
                    raise DegenerateMapError(msg)
                problems.append(msg + "; sampled uniformly over legal positions")
    return Prepared(v, vmax, samplers, keep, widths, heights, flagged, problems, no_info)


def pick(prep: Prepared, p: SampleParams) -> Picked:
    """Chooses the positions with the mode of ``p``.

    Args:
        prep: the prepared map and samplers
        p: the checked parameters

    Returns:
        a :class:`~xpatch_core.sampler.modes.Picked` (local shape indices)
    """
    if p.mode == "random":
        rng = seeded_rng(p.seed, p.key_hash)
        return sample_random(prep.samplers, p, prep.widths, prep.heights, rng)
    if p.mode == "topk":
        return sample_topk(prep.samplers, p, prep.widths, prep.heights)
    return sample_grid(prep.samplers, p, prep.widths, prep.heights)


def _dropped_note(shapes: np.ndarray, dropped: tuple[int, ...], p: SampleParams) -> str:
    na = len(p.aspect_ratios)
    sc, ar = p.scales, p.aspect_ratios
    parts = [
        f"{shapes[k, 0]}x{shapes[k, 1]} (scale {sc[k // na]:g}, aspect ratio {ar[k % na]:g})" for k in dropped
    ]
    return f"left out box shapes larger than the image {p.W}x{p.H}: " + ", ".join(parts)


def assemble(prep: Prepared, picked: Picked, shapes: np.ndarray, p: SampleParams) -> PatchSet:
    """Builds the :class:`PatchSet` of the chosen positions.

    Args:
        prep: the prepared map and samplers
        picked: the chosen positions
        shapes: ``(K, 2)`` nominal shapes (all of them)
        p: the checked parameters

    Returns:
        a :class:`PatchSet`
    """
    W, H, na = p.W, p.H, len(p.aspect_ratios)
    kk, x0, y0 = picked.kk, picked.x0, picked.y0
    widths, heights, flagged, keep = prep.widths, prep.heights, prep.flagged, prep.keep
    K = shapes.shape[0]
    single = len(keep) == 1
    m = kk.size
    xywh = np.empty((m, 4), dtype=np.int64)
    xywh[:, 0] = x0
    xywh[:, 1] = y0
    if single:
        xywh[:, 2] = widths[0]
        xywh[:, 3] = heights[0]
        scale_idx = np.zeros(m, dtype=np.int64)
        aspect_idx = np.zeros(m, dtype=np.int64)
        if keep[0]:  # border="drop" left out the shapes before it
            scale_idx += keep[0] // na
            aspect_idx += keep[0] % na
        flags = np.ones(m, dtype=bool) if flagged[0] else np.zeros(m, dtype=bool)
    else:
        xywh[:, 2] = widths[kk]
        xywh[:, 3] = heights[kk]
        scale_idx, aspect_idx = np.divmod(kk if len(keep) == K else np.asarray(keep)[kk], na)
        flags = flagged[kk]
    rel = xywh / np.array([W, H, W, H], dtype=np.float64)
    boxes = xywh
    boxes[:, 2:] += boxes[:, :2]
    v, vmax = prep.v, prep.vmax
    if p.score == "center" and single and not flagged[0] and vmax > 0:
        # fitting boxes: the centre pixel is x0 + w // 2, inside the image
        s0 = prep.samplers[0]
        scores = center_scores(x0 + s0.gx.half, y0 + s0.gy.half, v, vmax, W, H)
    else:
        scores = box_scores(boxes, v, vmax, W, H, p.score)
    dropped = () if len(keep) == K else tuple(k for k in range(K) if k not in keep)
    notes = prep.problems + ([_dropped_note(shapes, dropped, p)] if dropped else [])
    return PatchSet(
        boxes=boxes,
        rel_boxes=rel,
        scores=scores,
        probs=picked.probs,
        scale_idx=scale_idx,
        aspect_idx=aspect_idx,
        flags=flags,
        shapes=shapes,
        image_size=(W, H),
        requested=p.n,
        n_draws=int(picked.n_draws),
        degenerate=bool(prep.problems),
        uniform_fallback=prep.no_info or any(s.fallback for s in prep.samplers),
        reason="; ".join(notes) if notes else None,
        dropped_shapes=dropped,
    )


def sample_patches(
    saliency: Any,
    image_size: tuple[int, int],
    n: int | None,
    size: int | float,
    *,
    seed: int = 0,
    key: Any = None,
    scales: Sequence[float] = (1.0,),
    aspect_ratios: Sequence[float] = (1.0,),
    temperature: float = 1.0,
    epsilon: float = 0.0,
    replace: bool = True,
    max_iou: float | None = None,
    min_distance: float | None = None,
    score: str = "center",
    mode: str = "random",
    border: str = "error",
    on_degenerate: str = "uniform",
    max_tries: int | None = None,
    stride: int | tuple[int, int] | None = None,
) -> PatchSet:
    """Draws patch boxes whose centres follow a saliency map.

    Positions are weighted by the map's value at the box's centre pixel
    ``(x0 + w // 2, y0 + h // 2)``, restricted to legal positions (every box
    is full size and inside the image), see :mod:`xpatch_core.sampler` for
    the map-to-image convention. Coarse maps are sampled exactly without
    building a full-resolution map.

    Degenerate maps are never handled silently. With
    ``on_degenerate="uniform"``: NaN/inf values are treated as 0, negative
    values are clipped to 0 (the map's scores use the cleaned map too), and
    an all-zero or constant map (or one with no
    positive weight at any legal centre of a box shape) is replaced by the
    uniform distribution over legal positions; ``degenerate``,
    ``uniform_fallback`` and ``reason`` on the result say what happened. With
    ``on_degenerate="error"`` each of these raises
    :class:`DegenerateMapError` (a ``ValueError``) naming the problem.

    Args:
        saliency: a 2-D real array ``(h, w)`` at any resolution covering the
            whole image (e.g. a ``10x10`` network map or a full-size map)
        image_size: ``(width, height)`` of the image, as in PIL
        n: number of boxes. In ``mode="grid"`` it caps the number of tiles
            (first ``n`` in raster order) and ``None`` means all tiles; other
            modes need an int ``>= 1``
        size: box size in pixels (int) or as a fraction in ``(0, 1]`` of the
            image's short side (float)
        seed: a non-negative int; with ``key`` it seeds this image's
            generator, see :func:`image_rng`
        key: a stable sample key (str, bytes, int or None), e.g. a FiftyOne
            sample id
        scales: size multipliers; each random box picks a ``(scale,
            aspect)`` pair uniformly at random (among the shapes sampled)
        aspect_ratios: width / height ratios, see :func:`box_shapes`
        temperature: exponent applied to the normalised map before sampling
            (``weights = map ** temperature``); ``> 1`` sharpens, ``< 1``
            flattens, ``0`` is uniform. Finite and ``>= 0``
        epsilon: probability in ``[0, 1]`` of drawing a box uniformly over the
            legal positions instead of from the map (exact mixture
            ``(1 - epsilon) * p_map + epsilon * p_uniform``)
        replace: if False, no two returned boxes are identical (successive
            sampling: duplicates of earlier draws are rejected)
        max_iou: if given, greedy non-maximum suppression in draw (or rank)
            order: a box is accepted only if its IoU with every accepted box
            is ``<= max_iou``
        min_distance: if given, a box is accepted only if its centre is at
            least this many pixels from every accepted box's centre
        score: ``"center"`` (map value at the centre pixel) or ``"mean"``
            (exact mean of the map over the box's pixels inside the image)
        mode: ``"random"`` (draws), ``"topk"`` (deterministic: positions by
            decreasing weight; ties by shape index, then map-cell raster
            order, then position raster order) or ``"grid"`` (tiles at ``0, stride,
            2 * stride, ...`` plus a last tile flush with the right/bottom
            edge when not already there; shapes in order, raster order)
        border: what to do with a box larger than the image along an axis:
            ``"error"`` raises, ``"drop"`` leaves that box shape out for this
            image (recorded in ``dropped_shapes`` and ``reason``; raises if
            no shape fits), ``"clip"`` cuts it to the image (the box
            covers the whole axis), ``"pad"`` keeps its full size centred on
            the image (``x0 = (W - w) // 2``, coordinates go outside it).
            Padded and clipped boxes have one position on that axis, are
            flagged, and their other coordinate follows the map's marginal
            (mean over the covered axis)
        on_degenerate: ``"uniform"`` or ``"error"``, see above
        max_tries: the most candidates drawn (random mode) or examined
            (topk/grid) under ``replace=False`` or overlap control; default
            ``10_000 + 20 * n`` for random mode and unlimited otherwise.
            Fewer than ``n`` boxes may come back; ``requested`` records ``n``
        stride: grid step in pixels, an int or ``(x, y)``; default: the box
            size

    Returns:
        a :class:`PatchSet`

    Raises:
        ParameterError: (a ``ValueError``) for an invalid parameter or a box
            larger than the image with ``border="error"`` (every box shape
            with ``border="drop"``), before any work
        DegenerateMapError: for an unusable map with
            ``on_degenerate="error"``
    """
    p = check_params(
        image_size, n, size, seed=seed, key=key, scales=scales, aspect_ratios=aspect_ratios,
        temperature=temperature, epsilon=epsilon, replace=replace, max_iou=max_iou,
        min_distance=min_distance, score=score, mode=mode, border=border,
        on_degenerate=on_degenerate, max_tries=max_tries, stride=stride,
    )
    shapes = nominal_shapes(p.base, p.scales, p.aspect_ratios)
    keep = usable_shapes(shapes, p.W, p.H, p.border)
    prep = prepare(saliency, shapes, keep, p)
    return assemble(prep, pick(prep, p), shapes, p)
