"""Patch embeddings at the cost of one forward pass per image.

The usual way to embed image patches (FiftyOne's
``compute_patch_embeddings``) crops every patch, resizes it to the network's
input and runs the network once per patch. Here the network runs once per
image and each patch's embedding is pooled from the feature map inside the
patch's box.

Geometry
--------

The image is resized (squashed) to the network's input, so a feature map of
``h x w`` cells covers the whole image: cell column ``j`` covers the image
pixels ``[j * W / w, (j + 1) * W / w)`` (rows likewise), the convention the
patch sampler uses (:mod:`xpatch_core.sampler`). A pixel box ``[x0, y0, x1,
y1]`` (continuous coordinates, ``x1 - x0`` is its width) maps to the cell
interval ``[x0 * w / W, x1 * w / W)``.

Pooling
-------

Both poolings are exact, separable weighted sums of the feature cells:

-   ``"align"`` (RoI Align with one output bin, the default): a regular grid
    of ``ceil(sampling_ratio * extent)`` points per axis (``extent`` in
    cells, at least one point) at ``a + (k + 0.5) * (b - a) / s``; each point
    reads the map by bilinear interpolation between cell centres (clamped to
    the border cells, as in Detectron2's ``aligned=True``), and the points
    are averaged.
-   ``"area"``: the mean of the piecewise-constant map over the box, each
    cell weighted by the share of the box it covers (fractional at the
    edges).

The default (layer and pooling) was chosen by ``benchmarks/bench_embeddings.py``
on the shared COCO subset; see ``docs/curation.md``.

With two layers (a coarse target layer and a finer one, as the saliency
fusion uses), each layer's pooled vector is L2-normalised, the two are
concatenated and the result is divided by ``sqrt(2)``, so both layers weigh
the same and every embedding has unit L2 norm (cosine similarity is a dot
product).

Bad input
---------

-   A box partly outside the image: ``border="pad"`` (or ``"clip"``) pools
    the part inside the image only (a padded box and its clipped form give
    the same vector) and sets ``clipped``; ``border="error"`` fails that
    patch with a reason.
-   A box smaller than one feature cell: pooled like any other (``"align"``
    reads at least one bilinear sample at its centre; ``"area"`` weights the
    one or two cells it touches).
-   An empty box (width or height <= 0), non-finite coordinates, or a box
    wholly outside the image: that patch fails with a reason; its row is NaN
    and ``valid`` is False. The other patches of the image are kept.
-   Boxes that are not an ``(n, 4)`` array, or an image that cannot be
    decoded: the image fails with a reason; the others go on.
-   A model without a spatial layer, a layer with a ``1 x 1`` output, an
    unknown pooling or border: :class:`~xpatch_core.errors.ModelError` or
    :class:`~xpatch_core.errors.ParameterError` before any image is read.
"""

from __future__ import annotations

import collections
import math
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xpatch_core.defaults import CHOICES, EMBEDDINGS, SALIENCY
from xpatch_core.errors import ModelError, ParameterError
from xpatch_core.images import iter_decoded_batches

__all__ = [
    "PatchEmbedder",
    "PatchEmbeddings",
    "axis_weights",
    "compute_patch_embeddings",
    "iter_patch_embeddings",
    "load_embedder",
    "pool_boxes",
    "prepare_boxes",
    "relative_to_pixels",
]


@dataclass
class PatchEmbeddings:
    """The patch embeddings of one image.

    Attributes:
        index: position of the image in the input
        embeddings: float32 ``(n, d)`` array, one L2-normalised row per box
            in input order (NaN rows where ``valid`` is False), or None when
            the whole image failed
        valid: ``(n,)`` bool, False for patches that failed
        reasons: ``n`` entries, the reason a patch failed or None
        clipped: ``(n,)`` bool, True for boxes partly outside the image,
            pooled on the part inside
        image_size: displayed ``(width, height)`` of the image
        error: the reason the whole image failed, or None
        source: the input as given (a path), or None for in-memory images
    """

    index: int
    embeddings: np.ndarray | None
    valid: np.ndarray | None = None
    reasons: list[str | None] = field(default_factory=list)
    clipped: np.ndarray | None = None
    image_size: tuple[int, int] | None = None
    error: str | None = None
    source: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the image was processed (some patches may still fail)."""
        return self.error is None


def relative_to_pixels(rel_boxes: Any, image_size: tuple[int, int]) -> np.ndarray:
    """Converts FiftyOne boxes ``[x, y, w, h]`` (relative) to pixel boxes.

    Args:
        rel_boxes: ``(n, 4)`` relative ``[x, y, width, height]``
        image_size: ``(width, height)`` of the image

    Returns:
        a float64 ``(n, 4)`` array of ``[x0, y0, x1, y1]`` in pixels
    """
    b = np.asarray(rel_boxes, dtype=np.float64).reshape(-1, 4)
    w, h = float(image_size[0]), float(image_size[1])
    return np.stack([b[:, 0] * w, b[:, 1] * h, (b[:, 0] + b[:, 2]) * w, (b[:, 1] + b[:, 3]) * h], axis=1)


def prepare_boxes(
    boxes: Any, image_size: tuple[int, int], border: str = "pad"
) -> tuple[np.ndarray, np.ndarray, list[str | None], np.ndarray]:
    """Checks pixel boxes against an image and cuts them to it.

    Args:
        boxes: ``(n, 4)`` pixel boxes ``[x0, y0, x1, y1]``
        image_size: ``(width, height)``
        border: ``"pad"`` or ``"clip"`` (a box partly outside is cut to the
            image and flagged), or ``"error"`` (it fails)

    Returns:
        ``(cut, valid, reasons, clipped)``: float64 boxes cut to the image,
        a bool mask of usable boxes, one reason (or None) per box, and a
        bool mask of the boxes that were cut
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    W, H = float(image_size[0]), float(image_size[1])
    n = b.shape[0]
    reasons: list[str | None] = [None] * n
    finite = np.isfinite(b).all(axis=1)
    safe = np.where(np.isfinite(b), b, 0.0)
    cut = np.stack([np.clip(safe[:, 0], 0, W), np.clip(safe[:, 1], 0, H),
                    np.clip(safe[:, 2], 0, W), np.clip(safe[:, 3], 0, H)], axis=1)
    empty = (safe[:, 2] <= safe[:, 0]) | (safe[:, 3] <= safe[:, 1])
    outside = ~empty & ((cut[:, 2] <= cut[:, 0]) | (cut[:, 3] <= cut[:, 1]))
    clipped = finite & ~empty & ~outside & (np.abs(cut - safe) > 0).any(axis=1)
    for k in range(n):
        if not finite[k]:
            reasons[k] = "box has a NaN or infinite coordinate"
        elif empty[k]:
            reasons[k] = "empty box (width or height <= 0)"
        elif outside[k]:
            reasons[k] = "box lies wholly outside the image"
        elif clipped[k] and border == "error":
            reasons[k] = "box extends outside the image (border='error')"
    valid = np.array([r is None for r in reasons], dtype=bool)
    return cut, valid, reasons, clipped & valid


def axis_weights(a: np.ndarray, b: np.ndarray, n: int, pooling: str = "align",
                 sampling_ratio: int = 2) -> np.ndarray:
    """Pooling weights of the cells along one axis, for many intervals.

    Args:
        a: ``(N,)`` interval starts in cell units (``0 <= a < b <= n``)
        b: ``(N,)`` interval ends in cell units
        n: the number of cells along the axis
        pooling: ``"align"`` or ``"area"`` (see the module docstring)
        sampling_ratio: ``"align"`` sampling points per cell of extent

    Returns:
        float64 ``(N, n)`` weights, each row summing to 1
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    cells = np.arange(n, dtype=np.float64)
    if pooling == "area":
        overlap = np.clip(np.minimum(b[:, None], cells + 1) - np.maximum(a[:, None], cells), 0.0, None)
        return overlap / (b - a)[:, None]
    count = np.maximum(1, np.ceil(sampling_ratio * (b - a) - 1e-9)).astype(np.int64)
    smax = int(count.max()) if count.size else 1
    k = np.arange(smax, dtype=np.float64)
    pts = a[:, None] + (k[None] + 0.5) * ((b - a) / count)[:, None]
    use = k[None] < count[:, None]
    u = np.clip(pts - 0.5, 0.0, n - 1.0)
    lo = np.floor(u).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    t = u - lo
    w = np.zeros((a.shape[0], n), np.float64)
    rows = np.broadcast_to(np.arange(a.shape[0])[:, None], lo.shape)
    np.add.at(w, (rows[use], lo[use]), (1.0 - t)[use])
    np.add.at(w, (rows[use], hi[use]), t[use])
    return w / count[:, None]


def pool_boxes(features: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int], *,
               pooling: str = "align", sampling_ratio: int = 2) -> np.ndarray:
    """Pools a feature map inside pixel boxes (not normalised).

    Args:
        features: ``(h, w, C)`` feature map covering the whole image
        boxes: ``(N, 4)`` pixel boxes ``[x0, y0, x1, y1]`` inside the image
            (see :func:`prepare_boxes`), each with positive width and height
        image_size: ``(width, height)`` of the image
        pooling: ``"align"`` or ``"area"``
        sampling_ratio: ``"align"`` sampling points per cell of extent

    Returns:
        float32 ``(N, C)`` pooled vectors
    """
    f = np.asarray(features, dtype=np.float32)
    h, w, c = f.shape
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    if b.shape[0] == 0:
        return np.zeros((0, c), np.float32)
    sx, sy = w / float(image_size[0]), h / float(image_size[1])
    wx = axis_weights(b[:, 0] * sx, b[:, 2] * sx, w, pooling, sampling_ratio)
    wy = axis_weights(b[:, 1] * sy, b[:, 3] * sy, h, pooling, sampling_ratio)
    weights = (wy[:, :, None] * wx[:, None, :]).reshape(b.shape[0], h * w).astype(np.float32)
    return weights @ f.reshape(h * w, c)


def _check_choice(key: str, value: Any, name: str | None = None) -> None:
    if value not in CHOICES[key]:
        raise ParameterError(f"{name or key} must be one of {', '.join(CHOICES[key])}, got {value!r}")


class PatchEmbedder:
    """A loaded model and the layers and pooling that embed patches.

    Use :func:`load_embedder` to build one (it validates everything before
    any image is read).

    Attributes:
        model: the :class:`xpatch_core.models.SaliencyModel`
        layers: the pooled layers' paths, coarse first
        pooling: ``"align"`` or ``"area"``
        sampling_ratio: ``"align"`` sampling points per cell of extent
        dim: the embedding dimension
    """

    def __init__(self, model: Any, layers: tuple[str, ...], feature_model: Any, pooling: str,
                 sampling_ratio: int):
        self.model = model
        self.layers = layers
        self.pooling = pooling
        self.sampling_ratio = sampling_ratio
        self._feature_model = feature_model
        shapes = [tuple(int(d) for d in o.shape[1:]) for o in feature_model.outputs]
        self.feature_shapes = shapes
        self.dim = sum(s[2] for s in shapes)
        self._fn = None
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable description for run records.

        Returns:
            a dict with the model source, layers, pooling and dimension
        """
        return {"model": self.model.source, "layers": list(self.layers), "pooling": self.pooling,
                "sampling_ratio": self.sampling_ratio, "dim": self.dim,
                "feature_shapes": [list(s) for s in self.feature_shapes], "normalised": "l2"}

    def features(self, x: np.ndarray) -> list[np.ndarray]:
        """Runs the network on one preprocessed batch.

        Args:
            x: ``(B, H, W, 3)`` float32 network input

        Returns:
            one float32 ``(B, h, w, C)`` array per layer
        """
        ov = self.model.ov_forward
        wanted = ("acts", "fine")[: len(self.layers)]
        if ov is not None and all(k in ov.outputs for k in wanted):  # the OpenVINO engine
            out = ov(x)
            return [out[k] for k in wanted]
        import tensorflow as tf

        with self._lock:
            if self._fn is None:
                h, w = self.model.input_size
                fm = self._feature_model

                @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32)])
                def fn(t):
                    out = fm(t, training=False)
                    return list(out) if isinstance(out, (list, tuple)) else [out]

                self._fn = fn
        return [np.asarray(o, dtype=np.float32) for o in self._fn(tf.constant(x))]

    def embed_image(self, feats: Sequence[np.ndarray], boxes: np.ndarray,
                    image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Pools one image's feature maps inside its (prepared) boxes.

        Args:
            feats: one ``(h, w, C)`` map per layer
            boxes: ``(N, 4)`` pixel boxes inside the image
            image_size: ``(width, height)``

        Returns:
            ``(embeddings, nonzero)``: float32 ``(N, dim)`` unit rows, and a
            bool mask False where the features were all zero in the box
        """
        parts = []
        ok = np.ones(boxes.shape[0], dtype=bool)
        for f in feats:
            v = pool_boxes(f, boxes, image_size, pooling=self.pooling, sampling_ratio=self.sampling_ratio)
            norm = np.linalg.norm(v, axis=1, keepdims=True)
            ok &= norm[:, 0] > 0
            parts.append(v / np.where(norm > 0, norm, 1.0))
        out = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        if len(parts) > 1:
            out = out / np.float32(math.sqrt(len(parts)))
        return out.astype(np.float32, copy=False), ok


_EMBEDDERS: collections.OrderedDict[tuple, PatchEmbedder] = collections.OrderedDict()
_EMBEDDERS_LOCK = threading.Lock()


def load_embedder(
    model: Any = EMBEDDINGS["model"],
    *,
    weights: str | None = None,
    layer: str | None = None,
    fine_layer: str | None = EMBEDDINGS["fine_layer"],
    pooling: str = EMBEDDINGS["pooling"],
    sampling_ratio: int = EMBEDDINGS["sampling_ratio"],
    precision: str = SALIENCY["precision"],
    allow_unsafe: bool = False,
    engine: str = SALIENCY["engine"],
) -> PatchEmbedder:
    """Loads a model for patch embeddings and checks its layers.

    Args:
        model: a ``keras.applications`` name, a saved classifier path, a
            Keras model, or a loaded :class:`xpatch_core.models.SaliencyModel`
            (a :class:`PatchEmbedder` is returned as is)
        weights: weights for a named model (see
            :func:`xpatch_core.load_model`)
        layer: the coarse layer to pool; default the model's saliency target
            layer (the last spatial layer)
        fine_layer: a second, finer layer pooled too and concatenated;
            ``"auto"`` uses the saliency fusion layer where the model has one
            (``block13_sepconv1_act`` for the default Xception) and none
            otherwise; None pools ``layer`` only
        pooling: ``"align"`` or ``"area"``
        sampling_ratio: ``"align"`` sampling points per cell of extent (>= 1)
        precision: ``"float32"``, ``"bfloat16"`` or ``"mixed_bfloat16"``
        allow_unsafe: load saved models with Keras' safe mode off
        engine: what runs the forward pass, ``"auto"``, ``"tensorflow"`` or
            ``"openvino"`` (see :func:`xpatch_core.load_model`)

    Returns:
        a :class:`PatchEmbedder`

    Raises:
        ModelError: if the model has no spatial layer or a layer is ``1x1``
        ParameterError: for an invalid pooling or sampling ratio
    """
    from xpatch_core.models import SaliencyModel, load_model

    if isinstance(model, PatchEmbedder):
        return model
    _check_choice("pooling", pooling)
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, (int, np.integer)) or sampling_ratio < 1:
        raise ParameterError(f"sampling_ratio must be an integer >= 1, got {sampling_ratio!r}")
    if isinstance(layer, str) and not layer.strip():
        layer = None
    if isinstance(fine_layer, str) and not fine_layer.strip():
        fine_layer = None
    # Without a fine layer, load as the saliency run does (one cached model for both).
    fuse = "auto" if fine_layer is None else fine_layer
    if isinstance(model, SaliencyModel):
        sm = load_model(model, layer=layer)
    else:
        sm = load_model(model, weights=weights, layer=layer, fuse_layer=fuse, precision=precision,
                        allow_unsafe=allow_unsafe, engine=engine)
    if fine_layer is None or sm.fused is None:
        if fine_layer not in (None, "auto"):
            raise ModelError(f"model {sm.name!r} is loaded without the fine layer {fine_layer!r}; pass "
                             "the model by name or load it with load_model(..., fuse_layer=...)")
        layers, feature_model = (sm.target_layer,), sm.backbone
    else:
        if fine_layer != "auto" and not sm.fuse_layer.endswith(fine_layer):
            raise ModelError(f"model {sm.name!r} is loaded with the fine layer {sm.fuse_layer!r}, not "
                             f"{fine_layer!r}")
        layers, feature_model = (sm.target_layer, sm.fuse_layer), sm.fused
    for name, out in zip(layers, feature_model.outputs):
        h, w = out.shape[1], out.shape[2]
        if h is None or w is None or (h < 2 and w < 2):
            raise ModelError(f"layer {name!r} of model {sm.name!r} has a {h}x{w} output; pooling inside "
                             "patches needs a spatial feature map (choose an earlier layer with layer=)")
    key = (id(sm), layers, pooling, int(sampling_ratio))
    with _EMBEDDERS_LOCK:
        emb = _EMBEDDERS.get(key)
        if emb is None or emb.model is not sm:
            emb = PatchEmbedder(sm, layers, feature_model, pooling, int(sampling_ratio))
            _EMBEDDERS[key] = emb
            while len(_EMBEDDERS) > 8:
                _EMBEDDERS.popitem(last=False)
        return emb


def _paired(images: Iterable[Any], boxes: Iterable[Any] | None, queue: collections.deque) -> Iterator[Any]:
    """Yields the images, queueing each image's boxes alongside."""
    if boxes is None:  # (image, boxes) pairs
        for src, b in images:
            queue.append(b)
            yield src
        return
    sentinel = object()
    it_b = iter(boxes)
    for n, src in enumerate(images):
        b = next(it_b, sentinel)
        if b is sentinel:
            raise ParameterError(f"fewer box lists than images (no boxes for image #{n})")
        queue.append(b)
        yield src
    if next(it_b, sentinel) is not sentinel:
        raise ParameterError("more box lists than images")


def _as_boxes(raw: Any, box_format: str, size: tuple[int, int]) -> np.ndarray:
    """One image's boxes as float64 pixel boxes; ValueError if malformed."""
    if raw is None:
        return np.zeros((0, 4), np.float64)
    arr = np.asarray(raw, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must be an (n, 4) array, got shape {arr.shape}")
    return relative_to_pixels(arr, size) if box_format == "relative" else arr


def iter_patch_embeddings(
    images: Iterable[Any],
    boxes: Iterable[Any] | None,
    model: Any = EMBEDDINGS["model"],
    *,
    box_format: str = "xyxy",
    border: str = EMBEDDINGS["border"],
    batch_size: int = EMBEDDINGS["batch_size"],
    num_workers: int | None = None,
    max_pixels: int | None = None,
    **model_kwargs: Any,
) -> Iterator[PatchEmbeddings]:
    """Embeds patches, one forward pass per image, streaming one
    :class:`PatchEmbeddings` per image in input order.

    Images are decoded on a thread pool two batches ahead of the model
    (:func:`xpatch_core.images.iter_decoded_batches`), so at most three
    batches of images and their boxes are in memory. Images with no usable
    box are decoded but not sent through the network.

    Args:
        images: an iterable of paths, PIL images or arrays
        boxes: an iterable parallel to ``images``: for each image an
            ``(n, 4)`` array of boxes (``n`` may be 0); or None, when
            ``images`` yields ``(image, boxes)`` pairs
        model: a model name, a saved classifier path, a Keras model, a
            :class:`~xpatch_core.models.SaliencyModel` or a
            :class:`PatchEmbedder`
        box_format: ``"xyxy"`` for pixel boxes ``[x0, y0, x1, y1]`` in the
            displayed image (after EXIF orientation), or ``"relative"`` for
            FiftyOne's ``[x, y, width, height]`` in ``[0, 1]``
        border: ``"pad"`` / ``"clip"`` (pool the part inside the image) or
            ``"error"`` (fail a box that extends outside)
        batch_size: images per model call
        num_workers: decoding threads (default ``XPATCH_DECODE_WORKERS``)
        max_pixels: refuse images with more pixels than this
        **model_kwargs: for :func:`load_embedder` (``weights``, ``layer``,
            ``fine_layer``, ``pooling``, ``sampling_ratio``, ``precision``,
            ``allow_unsafe``)

    Returns:
        an iterator of :class:`PatchEmbeddings`

    Raises:
        ModelError: if the model has no spatial layer to pool
        ParameterError: for invalid parameters, before any image is read
    """
    _check_choice("embedding_border", border, "border")
    if box_format not in ("xyxy", "relative"):
        raise ParameterError(f"box_format must be 'xyxy' or 'relative', got {box_format!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
    if boxes is not None and hasattr(images, "__len__") and hasattr(boxes, "__len__") and len(images) != len(boxes):
        raise ParameterError(f"{len(boxes)} box lists given for {len(images)} images")
    embedder = model if isinstance(model, PatchEmbedder) else load_embedder(model, **model_kwargs)
    h, w = embedder.model.input_size
    queue: collections.deque = collections.deque()
    for batch in iter_decoded_batches(_paired(images, boxes, queue), (w, h), batch_size,
                                      workers=num_workers, max_pixels=max_pixels):
        raw = [queue.popleft() for _ in batch]
        yield from _embed_batch(embedder, batch, raw, box_format, border)


def _source_name(src: Any) -> str | None:
    return os.fspath(src) if isinstance(src, (str, os.PathLike)) else None


def _embed_batch(embedder: PatchEmbedder, batch: list[tuple[int, Any, Any]], raw_boxes: list[Any],
                 box_format: str, border: str) -> Iterator[PatchEmbeddings]:
    """Runs one decoded batch; items in input order."""
    results: dict[int, PatchEmbeddings] = {}
    work = []
    for (i, src, d), raw in zip(batch, raw_boxes):
        name = _source_name(src)
        if isinstance(d, Exception):
            results[i] = PatchEmbeddings(i, None, error=getattr(d, "reason", str(d)), source=name)
            continue
        try:
            pix = _as_boxes(raw, box_format, d.size)
        except (TypeError, ValueError) as e:
            results[i] = PatchEmbeddings(i, None, image_size=d.size, error=f"bad boxes: {e}", source=name)
            continue
        cut, valid, reasons, clipped = prepare_boxes(pix, d.size, border)
        emb = np.full((len(valid), embedder.dim), np.nan, np.float32)
        results[i] = PatchEmbeddings(i, emb, valid, reasons, clipped, d.size, source=name)
        if valid.any():
            work.append((i, d, cut))
    if work:
        x = np.asarray(embedder.model.preprocess(np.stack([d.array for _, d, _ in work])), dtype=np.float32)
        feats = embedder.features(x)
        for k, (i, d, cut) in enumerate(work):
            item = results[i]
            rows = np.flatnonzero(item.valid)
            vecs, nonzero = embedder.embed_image([f[k] for f in feats], cut[rows], d.size)
            item.embeddings[rows[nonzero]] = vecs[nonzero]
            for r in rows[~nonzero]:
                item.valid[r] = False
                item.reasons[r] = "the features are all zero inside the box"
    for i, _, _ in batch:
        yield results[i]


def compute_patch_embeddings(images: Sequence[Any], boxes: Sequence[Any], model: Any = EMBEDDINGS["model"],
                             **kwargs: Any) -> list[np.ndarray | None]:
    """Embeds patches and returns one array per image, in order.

    Args:
        images: paths, PIL images or arrays
        boxes: one ``(n, 4)`` array of boxes per image
        model: see :func:`iter_patch_embeddings`
        **kwargs: passed to :func:`iter_patch_embeddings`

    Returns:
        a list of float32 ``(n, d)`` arrays (NaN rows for failed patches),
        None for images that failed
    """
    return [item.embeddings for item in iter_patch_embeddings(images, boxes, model, **kwargs)]
