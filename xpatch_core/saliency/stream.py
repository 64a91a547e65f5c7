"""The entry points: saliency maps streamed over images, one per image.

Rules:

-   Images are decoded by a thread pool ahead of the model
    (:func:`xpatch_core.images.iter_decoded_batches`); a bad image yields an
    item with ``error`` set and does not stop the others.
-   ``map_resolution="high"`` adds an aspect-kept pass at a higher
    resolution (:mod:`xpatch_core.saliency.highres`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from xpatch_core.defaults import CHOICES, SALIENCY
from xpatch_core.errors import ImageDecodeError, ParameterError
from xpatch_core.images import iter_decoded_batches
from xpatch_core.saliency.batches import batch_targets, failed_item, run_arrays, source_name
from xpatch_core.saliency.methods import SaliencyItem, get_method, resolve_targets


def iter_saliency(
    images: Iterable[Any],
    model: Any = SALIENCY["model"],
    method: str = SALIENCY["method"],
    target: Any = None,
    batch_size: int = SALIENCY["batch_size"],
    *,
    weights: str | None = None,
    layer: str | None = None,
    fuse_layer: str | None = SALIENCY["fuse_layer"],
    num_workers: int | None = None,
    max_pixels: int | None = None,
    precision: str = SALIENCY["precision"],
    map_resolution: str = SALIENCY["map_resolution"],
    engine: str = SALIENCY["engine"],
    input_size: Any = None,
    clock: Callable[[str, float], None] | None = None,
) -> Iterator[SaliencyItem]:
    """Computes saliency maps, streaming one :class:`SaliencyItem` per image.

    Images are decoded by a thread pool ahead of the batch that runs on the
    model (:func:`xpatch_core.images.iter_decoded_batches`). A bad image
    yields an item with ``error`` set and does not stop the others.

    Args:
        images: an iterable of paths, PIL images or arrays
        model: a model name, a path, a Keras model or a loaded
            :class:`SaliencyModel`
        method: one of :data:`METHODS`
        target: None/``"predicted"``, a class index or name, or one per image
        batch_size: images per model call
        weights: weights for a named model (see :func:`load_model`)
        layer: target layer override
        fuse_layer: a finer layer fused with the target layer (see
            :func:`xpatch_core.load_model`)
        num_workers: decoding threads (default ``XPATCH_DECODE_WORKERS``)
        max_pixels: refuse images with more pixels than this
        precision: ``"float32"``, ``"bfloat16"`` or ``"mixed_bfloat16"``
        map_resolution: ``"standard"`` (the image squashed to the network's
            input size) or ``"high"`` (fused with a map of the image at 1.5x
            that size with its aspect ratio kept, about 4x the compute; see
            :mod:`xpatch_core.highres`)
        engine: what runs the forward pass, ``"auto"``, ``"tensorflow"`` or
            ``"openvino"`` (see :func:`xpatch_core.load_model`)
        input_size: the network's input, an int or ``(height, width)``, for
            a model that takes any size (see :func:`xpatch_core.load_model`)
        clock: called as ``clock(stage, seconds)``, from worker threads (it
            must be thread-safe): ``"decode"`` after each image decoded,
            ``"inference"`` after each batch through the model (input
            preparation, forward pass, maps); or None

    Returns:
        an iterator of :class:`SaliencyItem`, in input order

    Raises:
        ParameterError: for a bad parameter, before any image is read
        ModelError: if the model cannot do what is asked (e.g. a gradient
            method at high resolution with a head that needs a fixed size)
    """
    from xpatch_core.models import load_model

    method_cls = get_method(method)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
    if map_resolution not in CHOICES["map_resolution"]:
        raise ParameterError(f"map_resolution must be one of {', '.join(CHOICES['map_resolution'])}, "
                             f"got {map_resolution!r}")
    count = len(images) if hasattr(images, "__len__") else None
    sm = load_model(model, weights=weights, layer=layer, fuse_layer=fuse_layer, precision=precision, engine=engine,
                    input_size=input_size)
    runner = method_cls(sm)
    targets = resolve_targets(sm, target, count)
    if map_resolution == "high":
        from xpatch_core.saliency.highres import iter_high_resolution

        yield from iter_high_resolution(images, runner, targets, batch_size, workers=num_workers,
                                        max_pixels=max_pixels, clock=clock)
        return
    h, w = sm.input_size
    batches = iter_decoded_batches(images, (w, h), batch_size, workers=num_workers, max_pixels=max_pixels,
                                   clock=clock)
    for items in _one_batch_ahead(batches, lambda batch: _batch_items(batch, runner, targets, clock)):
        yield from items


def _batch_items(batch: list[tuple[int, Any, Any]], runner: Any, targets: Any,
                 clock: Callable[[str, float], None] | None = None) -> list[SaliencyItem]:
    """One decoded batch through the model: its items, in input order."""
    results: dict[int, SaliencyItem] = {}
    good = []
    for i, src, d in batch:
        if isinstance(d, Exception):
            results[i] = failed_item(i, src, d)
        else:
            good.append((i, src, d))
    if good:
        t = time.perf_counter()
        found = run_arrays(runner, [d.array for _, _, d in good], batch_targets(targets, [i for i, _, _ in good]))
        if clock is not None:
            clock("inference", time.perf_counter() - t)
        for (i, src, d), r in zip(good, found):
            results[i] = SaliencyItem(index=i, image_size=d.size, source=source_name(src), **r)
    return [results[i] for i, _, _ in batch]


def _one_batch_ahead(batches: Iterator[Any], run: Any) -> Iterator[Any]:
    """Runs the model on the next batch (on one worker thread; TensorFlow
    releases the GIL) while the caller handles the current batch's items
    (maps to store, database writes), so the model does not wait for them."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="xpatch-model") as pool:
        pending = None
        for batch in batches:
            nxt = pool.submit(run, batch)
            if pending is not None:
                yield pending.result()
            pending = nxt
        if pending is not None:
            yield pending.result()


def compute_saliency(
    images: Iterable[Any],
    model: Any = SALIENCY["model"],
    method: str = SALIENCY["method"],
    target: Any = None,
    batch_size: int = SALIENCY["batch_size"],
    *,
    on_error: str = "raise",
    return_items: bool = False,
    **kwargs: Any,
) -> list[Any]:
    """Computes one saliency map per image, in order.

    Args:
        images: paths, PIL images or arrays
        model: a model name (default ``"xception"``), a saved model path, a
            Keras model, or what :func:`xpatch_core.load_model` returned
        method: ``"activation"``, ``"eigencam"``, ``"gradcam"`` or
            ``"gradcam++"``
        target: None/``"predicted"`` (top-1), a class index or name, or a
            sequence with one per image
        batch_size: images per model call
        on_error: ``"raise"`` to raise the first decoding error, or
            ``"none"`` to put None in place of images that failed
        return_items: return :class:`SaliencyItem` objects (with predicted
            class, degenerate flag and errors) instead of bare maps
        **kwargs: passed to :func:`iter_saliency` (``weights``, ``layer``,
            ``fuse_layer``, ``num_workers``, ``max_pixels``, ``precision``, ``engine``,
            ``map_resolution``, ``input_size``)

    Returns:
        a list of float32 ``(h, w)`` maps in ``[0, 1]`` (or of items)

    Raises:
        ImageDecodeError: if an image cannot be read and ``on_error="raise"``
    """
    if on_error not in ("raise", "none"):
        raise ParameterError(f"on_error must be 'raise' or 'none', got {on_error!r}")
    out = []
    for item in iter_saliency(images, model, method, target, batch_size, **kwargs):
        if item.error is not None and on_error == "raise":
            raise ImageDecodeError(item.source or f"image #{item.index}", item.error)
        out.append(item if return_items else item.map)
    return out


__all__ = ["compute_saliency", "iter_saliency"]
