"""Saliency methods over a batch API, at the cost of one forward pass.

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
aspect-kept pass at 1.5x the input size (:mod:`xpatch_core.highres`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from xpatch_core.defaults import CHOICES, SALIENCY
from xpatch_core.errors import ImageDecodeError, ModelError, ParameterError
from xpatch_core.images import iter_decoded_batches

_EPS = 1e-12


@dataclass
class SaliencyItem:
    """The saliency result of one image.

    Attributes:
        index: position of the image in the input
        map: float32 ``(h, w)`` map in ``[0, 1]``, or None on failure
        degenerate: True if the raw map was constant or not finite (the map
            is then uniform)
        image_size: displayed ``(width, height)`` of the image
        target: the class index explained (gradient methods), or None
        predicted: the model's top-1 class index, or None without a head
        confidence: softmax probability of ``predicted``
        error: the failure reason, or None
        source: the input as given (a path, or None for in-memory images)
    """

    index: int
    map: np.ndarray | None
    degenerate: bool = False
    image_size: tuple[int, int] | None = None
    target: int | None = None
    predicted: int | None = None
    confidence: float | None = None
    error: str | None = None
    source: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the image was processed."""
        return self.error is None


def normalize_maps(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min-max normalises each map of a batch to ``[0, 1]``.

    Args:
        maps: ``(B, h, w)`` raw maps

    Returns:
        ``(maps, degenerate)``: float32 maps, and a bool array that flags the
        maps that were constant or held NaN/inf (returned as all ones)
    """
    m = np.asarray(maps, dtype=np.float64)
    finite = np.isfinite(m).all(axis=(1, 2))
    safe = np.where(np.isfinite(m), m, 0.0)
    lo = safe.min(axis=(1, 2), keepdims=True)
    hi = safe.max(axis=(1, 2), keepdims=True)
    span = hi - lo
    degenerate = (~finite) | (span[:, 0, 0] <= _EPS * np.maximum(1.0, np.abs(hi[:, 0, 0])))
    out = (safe - lo) / np.where(span > 0, span, 1.0)
    out[degenerate] = 1.0
    return out.astype(np.float32), degenerate


class SaliencyMethod:
    """Base class: runs the model on a batch and normalises the maps.

    Subclasses set :attr:`name` and :attr:`needs_gradients` and implement
    :meth:`combine`.

    Args:
        model: a loaded :class:`xpatch_core.models.SaliencyModel`
    """

    name: ClassVar[str] = ""
    #: One line for menus (the App's form, ``xpatch --help``).
    label: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = False

    def __init__(self, model: Any):
        self.model = model
        if self.needs_gradients and model.fuse_layer and model.source.get("fuse_explicit"):
            raise ParameterError(
                f"layer fusion (fuse_layer={model.fuse_layer!r}) applies to 'activation' and 'eigencam'; "
                f"{self.name} explains the target layer only"
            )
        if self.needs_gradients and not model.has_head:
            raise ModelError(
                f"{self.name} needs a classifier head, but model {model.name!r} ends at a "
                f"{len(model.keras_model.outputs[0].shape)}-D output; use 'activation' or "
                "'eigencam', or a model with a classifier"
            )

    @property
    def uses_fusion(self) -> bool:
        """Whether maps fuse the target layer with a finer one."""
        return self.model.fused is not None and not self.needs_gradients

    @property
    def layer_description(self) -> str:
        """The layer(s) the maps come from, ``"a*b"`` for a fusion (their
        geometric mean)."""
        if self.uses_fusion:
            return f"{self.model.target_layer}*{self.model.fuse_layer}"
        return self.model.target_layer

    def combine(self, acts: np.ndarray, grads: np.ndarray | None) -> np.ndarray:
        """Turns activations (and gradients) into raw maps.

        Args:
            acts: ``(B, h, w, C)`` activations of the target layer
            grads: ``(B, h, w, C)`` gradients of the target logits, or None

        Returns:
            ``(B, h, w)`` raw maps
        """
        raise NotImplementedError

    def combine_tf(self, acts: Any) -> Any:
        """Turns activations into raw maps with TensorFlow ops, on the device
        (the methods that can fuse layers implement it).

        Args:
            acts: ``(B, h, w, C)`` activations, a tensor

        Returns:
            ``(B, h, w)`` float32 raw maps, a tensor
        """
        raise NotImplementedError(f"{self.name} does not fuse layers")

    # -- compiled model calls, cached on the model --------------------------------
    def _fn(self, key: str) -> Any:
        import tensorflow as tf

        model = self.model
        with model.lock:
            fn = model._compiled.get(key)
            if fn is not None:
                return fn
            h, w = model.input_size
            image_spec = tf.TensorSpec([None, h, w, 3], tf.float32)
            if key == "backbone":
                backbone = model.backbone

                @tf.function(input_signature=[image_spec])
                def fn(x):
                    return backbone(x, training=False)

            elif key.startswith("fused_maps:"):
                fused, head, combine = model.fused, model.head, self.combine_tf

                @tf.function(input_signature=[image_spec])
                def fn(x):
                    # Maps, fusion and normalisation stay on the device: only the
                    # small fused maps (and logits) come back to the host.
                    acts, fine = fused(x, training=False)
                    logits = (tf.zeros([tf.shape(x)[0], 0]) if head is None
                              else tf.cast(head(acts, training=False), tf.float32))
                    maps, degenerate = fuse_maps_tf(combine(acts), combine(fine))
                    return maps, degenerate, logits

            elif key == "head":
                head = model.head
                fh, fw, fc = model.feature_shape
                feat_spec = tf.TensorSpec([None, fh, fw, fc], model.backbone.outputs[0].dtype)

                @tf.function(input_signature=[feat_spec])
                def fn(f):
                    return head(f, training=False)

            elif key == "head_grad":
                head = model.head
                fh, fw, fc = model.feature_shape
                feat_spec = tf.TensorSpec([None, fh, fw, fc], model.backbone.outputs[0].dtype)

                @tf.function(input_signature=[feat_spec, tf.TensorSpec([None], tf.int32)])
                def fn(f, targets):
                    with tf.GradientTape() as tape:
                        tape.watch(f)
                        logits = tf.cast(head(f, training=False), tf.float32)
                        pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
                        t = tf.where(targets < 0, pred, targets)
                        score = tf.reduce_sum(tf.gather(logits, t, batch_dims=1))
                    return logits, t, tape.gradient(score, f)

            elif key == "joint":
                joint = model.joint

                @tf.function(input_signature=[image_spec])
                def fn(x):
                    return joint(x, training=False)

            elif key == "joint_grad":
                joint = model.joint

                @tf.function(input_signature=[image_spec, tf.TensorSpec([None], tf.int32)])
                def fn(x, targets):
                    with tf.GradientTape() as tape:
                        f, logits = joint(x, training=False)
                        logits = tf.cast(logits, tf.float32)
                        pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
                        t = tf.where(targets < 0, pred, targets)
                        score = tf.reduce_sum(tf.gather(logits, t, batch_dims=1))
                    return f, logits, t, tape.gradient(score, f)

            else:  # pragma: no cover - internal
                raise KeyError(key)
            model._compiled[key] = fn
            return fn

    def run_batch(
        self, x: np.ndarray, targets: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray | None]]:
        """Computes normalised maps for one preprocessed batch.

        Args:
            x: ``(B, H, W, 3)`` float32 network input (already preprocessed)
            targets: ``(B,)`` int32 class indices, -1 for the predicted class

        Returns:
            ``(maps, degenerate, info)`` where ``info`` holds ``logits``
            (or None), ``targets`` (or None) and ``predicted`` (or None)
        """
        model = self.model
        b = x.shape[0]
        t = np.full(b, -1, np.int32) if targets is None else np.asarray(targets, np.int32)
        logits = used = grads = None
        if self.uses_fusion:
            maps, degenerate, logits = self._fn(f"fused_maps:{self.name}")(x)
            logits = logits if model.head is not None else None
            return np.asarray(maps), np.asarray(degenerate), self._info(logits, None)
        if model.head is not None or model.joint is None:
            acts = self._fn("backbone")(x)
            if self.needs_gradients:
                logits, used, grads = self._fn("head_grad")(acts, t)
            elif model.head is not None:
                logits = self._fn("head")(acts)
        else:
            if self.needs_gradients:
                acts, logits, used, grads = self._fn("joint_grad")(x, t)
            else:
                acts, logits = self._fn("joint")(x)
        acts_np = np.asarray(acts, dtype=np.float32)
        grads_np = None if grads is None else np.asarray(grads, dtype=np.float32)
        raw = self.combine(acts_np, grads_np)
        maps, degenerate = normalize_maps(raw)
        return maps, degenerate, self._info(logits, used)

    @staticmethod
    def _info(logits: Any, used: Any) -> dict[str, np.ndarray | None]:
        info: dict[str, np.ndarray | None] = {"logits": None, "targets": None, "predicted": None}
        if logits is not None:
            lg = np.asarray(logits, dtype=np.float32)
            info["logits"] = lg
            info["predicted"] = lg.argmax(axis=-1)
        if used is not None:
            info["targets"] = np.asarray(used)
        return info


class ActivationMap(SaliencyMethod):
    """Channel mean of the target layer's activations (the recipe's idea,
    averaged over channels, not over space)."""

    name = "activation"
    label = "Channel-mean activation"

    def combine(self, acts: np.ndarray, grads: np.ndarray | None) -> np.ndarray:
        return acts.mean(axis=-1)

    def combine_tf(self, acts: Any) -> Any:
        import tensorflow as tf

        return tf.reduce_mean(tf.cast(acts, tf.float32), axis=-1)


class EigenCAM(SaliencyMethod):
    """First principal component of the activations (Eigen-CAM).

    Computed from the small ``(hw, hw)`` Gram matrix of the centred
    activations; the sign is chosen so that the map correlates positively
    with the channel-mean activation map.
    """

    name = "eigencam"
    label = "EigenCAM (class-agnostic, default)"

    #: Power-iteration steps; the first component of activation maps dominates
    #: (tests compare with a full eigendecomposition on real photos).
    iterations: ClassVar[int] = 16

    def combine(self, acts: np.ndarray, grads: np.ndarray | None) -> np.ndarray:
        # Power iteration on the Gram matrix, on TensorFlow's thread pool: a full
        # eigendecomposition of the (hw, hw) Gram matrix costs about a fifth of
        # the forward pass on a 19x19 layer, and NumPy's BLAS threads would
        # fight the model's threads for the same cores.
        b, h, w, c = acts.shape
        proj = _first_component(acts.reshape(b, h * w, c), self.iterations)
        return proj.reshape(b, h, w)

    def combine_tf(self, acts: Any) -> Any:
        import tensorflow as tf

        shape = tf.shape(acts)
        x = tf.reshape(tf.cast(acts, tf.float32), [shape[0], shape[1] * shape[2], shape[3]])
        return tf.reshape(_first_component_tf(x, self.iterations), shape[:3])


def _first_component_tf(x: Any, iterations: int) -> Any:
    """First principal component scores of each ``(n, c)`` matrix of a
    batch (TensorFlow ops), signed to correlate positively with the channel
    mean."""
    import tensorflow as tf

    # Block (subspace) iteration with a Rayleigh-Ritz step: the top
    # vector converges like (lambda_{k+1} / lambda_1) ** iterations,
    # robust where the first two components are nearly tied.
    xc = x - tf.reduce_mean(x, axis=1, keepdims=True)
    gram = tf.matmul(xc, xc, transpose_b=True)
    gram = gram / (tf.reduce_max(tf.abs(gram), axis=(1, 2), keepdims=True) + 1e-30)
    n = tf.shape(x)[1]
    mean_map = tf.reduce_mean(x, axis=2)
    v0 = mean_map - tf.reduce_mean(mean_map, axis=1, keepdims=True)
    idx = tf.cast(tf.range(n), x.dtype)
    probes = tf.stack([tf.cos(idx * (0.7 + 0.9 * j)) for j in range(_BLOCK - 1)], axis=1)
    basis = tf.concat([v0[:, :, None], tf.broadcast_to(probes[None], [tf.shape(x)[0], n, _BLOCK - 1])], axis=2)
    q, _ = tf.linalg.qr(basis)
    for _ in range(iterations):
        q, _ = tf.linalg.qr(tf.matmul(gram, q))
    small = tf.matmul(q, tf.matmul(gram, q), transpose_a=True)
    _, vecs = tf.linalg.eigh(small)
    v = tf.einsum("bnk,bk->bn", q, vecs[:, :, -1])
    sign = tf.where(tf.reduce_sum(v * v0, axis=1, keepdims=True) < 0, -1.0, 1.0)
    return v * sign


def _first_component(x: np.ndarray, iterations: int) -> np.ndarray:
    """:func:`_first_component_tf` on a NumPy batch, on TensorFlow's threads."""
    import tensorflow as tf

    fn = _POWER.get(iterations)
    if fn is None:
        fn = _POWER[iterations] = tf.function(lambda x: _first_component_tf(x, iterations), reduce_retracing=True)
    return fn(tf.convert_to_tensor(x, tf.float32)).numpy().astype(np.float64)


def fuse_maps_tf(coarse: Any, fine: Any) -> tuple[Any, Any]:
    """Fuses two layers' raw maps on the finer grid (TensorFlow ops).

    Each map is min-max normalised, the coarse one upsampled bilinearly
    (pixel centres aligned) to the fine grid, and the fused map is their
    geometric mean ``sqrt(coarse * fine)``, normalised again: the ranking of
    the product of the two maps (which localises best, ``docs/quality.md``)
    with the contrast of a single CAM; the sampler's temperature does the
    sharpening.

    Args:
        coarse: ``(B, h, w)`` raw maps of the target layer
        fine: ``(B, H, W)`` raw maps of the finer layer

    Returns:
        ``(maps, degenerate)``: float32 ``(B, H, W)`` maps in ``[0, 1]`` and a
        bool ``(B,)`` tensor (see :func:`normalize_maps`)
    """
    import tensorflow as tf

    a, d1 = normalize_maps_tf(coarse)
    b, d2 = normalize_maps_tf(fine)
    up = tf.image.resize(a[..., None], tf.shape(b)[1:3], method="bilinear")[..., 0]
    maps, degenerate = normalize_maps_tf(tf.sqrt(tf.maximum(up, 0.0) * b))
    return maps, degenerate | (d1 & d2)


def normalize_maps_tf(maps: Any) -> tuple[Any, Any]:
    """:func:`normalize_maps` with TensorFlow ops (float32).

    Args:
        maps: ``(B, h, w)`` raw maps, a tensor

    Returns:
        ``(maps, degenerate)`` tensors
    """
    import tensorflow as tf

    m = tf.cast(maps, tf.float32)
    ok = tf.math.is_finite(m)
    safe = tf.where(ok, m, 0.0)
    lo = tf.reduce_min(safe, axis=(1, 2), keepdims=True)
    hi = tf.reduce_max(safe, axis=(1, 2), keepdims=True)
    span = hi - lo
    degenerate = ~tf.reduce_all(ok, axis=(1, 2)) | (span[:, 0, 0] <= _EPS * tf.maximum(1.0, tf.abs(hi[:, 0, 0])))
    out = (safe - lo) / tf.where(span > 0, span, 1.0)
    return tf.where(degenerate[:, None, None], 1.0, out), degenerate


_POWER: dict[str, Any] = {}
_BLOCK = 6


def eigencam_reference(acts: np.ndarray) -> np.ndarray:
    """EigenCAM by a full eigendecomposition (float64), for tests.

    Args:
        acts: ``(B, h, w, C)`` activations

    Returns:
        ``(B, h, w)`` raw maps, signed like :class:`EigenCAM`
    """
    b, h, w, c = acts.shape
    x = acts.reshape(b, h * w, c).astype(np.float64)
    xc = x - x.mean(axis=1, keepdims=True)
    evals, evecs = np.linalg.eigh(xc @ np.swapaxes(xc, 1, 2))
    proj = evecs[:, :, -1] * np.sqrt(np.maximum(evals[:, -1:], 0.0))
    mean_map = x.mean(axis=2)
    mean_map = mean_map - mean_map.mean(axis=1, keepdims=True)
    sign = np.where((proj * mean_map).sum(axis=1) < 0, -1.0, 1.0)
    return (proj * sign[:, None]).reshape(b, h, w)


class GradCAM(SaliencyMethod):
    """Grad-CAM on logits: channels weighted by their mean gradient."""

    name = "gradcam"
    label = "Grad-CAM (class-discriminative)"
    needs_gradients = True

    def combine(self, acts: np.ndarray, grads: np.ndarray | None) -> np.ndarray:
        weights = grads.mean(axis=(1, 2))
        return np.maximum(np.einsum("bhwc,bc->bhw", acts, weights), 0.0)


class GradCAMPlusPlus(SaliencyMethod):
    """Grad-CAM++ on logits (Chattopadhyay et al., 2018), with the usual
    exponential closed form for the higher-order derivatives."""

    name = "gradcam++"
    label = "Grad-CAM++ (class-discriminative)"
    needs_gradients = True

    def combine(self, acts: np.ndarray, grads: np.ndarray | None) -> np.ndarray:
        g2 = grads * grads
        g3 = g2 * grads
        sum_acts = acts.sum(axis=(1, 2), keepdims=True)
        denom = 2.0 * g2 + sum_acts * g3
        alpha = np.where(grads != 0, g2 / np.where(np.abs(denom) > 1e-7, denom, 1e-7), 0.0)
        weights = (alpha * np.maximum(grads, 0.0)).sum(axis=(1, 2))
        return np.maximum(np.einsum("bhwc,bc->bhw", acts, weights), 0.0)


#: Saliency methods by name.
METHODS: dict[str, type[SaliencyMethod]] = {
    cls.name: cls for cls in (ActivationMap, EigenCAM, GradCAM, GradCAMPlusPlus)
}


def get_method(name: str) -> type[SaliencyMethod]:
    """Returns the saliency method class for a name.

    Args:
        name: one of :data:`METHODS` (``"gradcampp"`` is accepted for
            ``"gradcam++"``)

    Returns:
        the class

    Raises:
        ParameterError: for an unknown name
    """
    key = str(name).lower().replace("_", "").replace("-", "")
    key = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++", "eigen": "eigencam"}.get(key, key)
    if key not in METHODS:
        raise ParameterError(f"unknown saliency method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[key]


def method_choices() -> list[tuple[str, str, bool]]:
    """The saliency methods for menus, as ``(name, label, needs_gradients)``.

    Returns:
        a list of tuples, the default method first
    """
    out = [(name, cls.label or name, bool(cls.needs_gradients)) for name, cls in METHODS.items()]
    out.sort(key=lambda t: t[0] != SALIENCY["method"])
    return out


def gradient_methods() -> tuple[str, ...]:
    """The names of the methods that need a classifier head and gradients.

    Returns:
        a tuple of names
    """
    return tuple(name for name, _, grad in method_choices() if grad)


def resolve_targets(model: Any, target: Any, count: int | None) -> Any:
    """Validates a target specification before any work.

    Args:
        model: a :class:`SaliencyModel`
        target: None or ``"predicted"`` (top-1), a class index or name, or a
            sequence of them, one per image (None entries mean predicted)
        count: the number of images, if known

    Returns:
        -1 (predicted), a class index, or a list of indices (-1 = predicted)

    Raises:
        ParameterError: for unknown classes or a length mismatch
    """
    def _predicted(t: Any) -> bool:
        return (t is None or (isinstance(t, str) and t.lower() == "predicted")
                or (isinstance(t, (int, np.integer)) and not isinstance(t, bool) and t == -1))

    if _predicted(target):
        return -1
    if isinstance(target, (str, int, np.integer)):
        return model.class_index(target)
    if isinstance(target, Sequence) or isinstance(target, np.ndarray):
        targets = [
            -1 if _predicted(t) else model.class_index(t)
            for t in target
        ]
        if count is not None and len(targets) != count:
            raise ParameterError(f"{len(targets)} targets given for {count} images")
        return targets
    raise ParameterError(f"invalid target {target!r}")


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
    sm = load_model(model, weights=weights, layer=layer, fuse_layer=fuse_layer, precision=precision)
    runner = method_cls(sm)
    targets = resolve_targets(sm, target, count)
    if map_resolution == "high":
        from xpatch_core.highres import iter_high_resolution

        yield from iter_high_resolution(images, runner, targets, batch_size, workers=num_workers,
                                        max_pixels=max_pixels)
        return
    h, w = sm.input_size
    for batch in iter_decoded_batches(images, (w, h), batch_size, workers=num_workers, max_pixels=max_pixels):
        results: dict[int, SaliencyItem] = {}
        good = []
        for i, src, d in batch:
            if isinstance(d, Exception):
                results[i] = failed_item(i, src, d)
            else:
                good.append((i, src, d))
        if good:
            found = run_arrays(runner, [d.array for _, _, d in good], batch_targets(targets, [i for i, _, _ in good]))
            for (i, src, d), r in zip(good, found):
                results[i] = SaliencyItem(index=i, image_size=d.size, source=source_name(src), **r)
        for i, _, _ in batch:
            yield results[i]


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
            ``fuse_layer``, ``num_workers``, ``max_pixels``, ``precision``,
            ``map_resolution``)

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
