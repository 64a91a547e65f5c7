"""Saliency methods: one base owns the model call and normalisation; each
method is a small subclass that turns activations (and gradients) into a map.

Rules:

-   Maps are float32 in ``[0, 1]`` at the target layer's resolution; a
    constant or non-finite map comes back as all ones with
    ``degenerate=True``.
-   Gradient methods differentiate logits (never the softmax), with the
    backbone outside the gradient tape, in float32.
-   A fused map (Xception's default) is the geometric mean of the target
    layer's and the finer layer's normalised maps, computed on the device.
-   With the OpenVINO engine (``model.ov_forward``), OpenVINO computes the
    activations (and logits); maps, fusion and gradients are computed from
    them here, by the same TensorFlow functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from xpatch_core.defaults import SALIENCY
from xpatch_core.errors import ModelError, ParameterError

#: A map is constant when its span is at most this share of its largest
#: magnitude: float32 rounds at about 1e-7 relative, so a constant image's
#: map whose convolutions round a little differently per position (a span
#: of ~3e-8 on values of ~1) is constant, not a map of rounding noise; a map
#: of tiny values (small gradients) with real structure is not.
_REL_EPS = 1e-5


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
        maps that were constant (to float32's rounding, :data:`_REL_EPS`)
        or held NaN/inf (returned as all ones)
    """
    m = np.asarray(maps, dtype=np.float64)
    finite = np.isfinite(m).all(axis=(1, 2))
    safe = np.where(np.isfinite(m), m, 0.0)
    lo = safe.min(axis=(1, 2), keepdims=True)
    hi = safe.max(axis=(1, 2), keepdims=True)
    span = hi - lo
    size = np.maximum(np.abs(hi[:, 0, 0]), np.abs(lo[:, 0, 0]))
    degenerate = (~finite) | (span[:, 0, 0] <= _REL_EPS * size)
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

            elif key.startswith("maps_from:"):
                fn = self._maps_from_fn()
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
        ov = model.ov_forward
        if ov is not None and (not self.needs_gradients or model.head is not None) and (
                "fine" in ov.outputs or not self.uses_fusion):
            return self._run_openvino(ov, x, t)
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

    def _maps_from_fn(self) -> Any:
        """A compiled function from the target and fine activations to fused
        maps and degenerate flags (the OpenVINO engine's second half)."""
        import tensorflow as tf

        combine = self.combine_tf
        fh, fw, fc = self.model.feature_shape
        fine_shape = [int(d) for d in self.model.fused.outputs[1].shape[1:]]

        @tf.function(input_signature=[tf.TensorSpec([None, fh, fw, fc], tf.float32),
                                      tf.TensorSpec([None, *fine_shape], tf.float32)])
        def fn(acts, fine):
            return fuse_maps_tf(combine(acts), combine(fine))

        return fn

    def _run_openvino(self, ov: Any, x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        """:meth:`run_batch` with the activations (and logits) from OpenVINO."""
        out = ov(x)
        logits, used = out.get("logits"), None
        if self.uses_fusion:
            maps, degenerate = self._fn(f"maps_from:{self.name}")(out["acts"], out["fine"])
            return np.asarray(maps), np.asarray(degenerate), self._info(logits, None)
        grads = None
        if self.needs_gradients:
            feats = out["acts"].astype(self.model.backbone.outputs[0].dtype, copy=False)
            logits, used, grads = self._fn("head_grad")(feats, t)
            grads = np.asarray(grads, dtype=np.float32)
        maps, degenerate = normalize_maps(self.combine(out["acts"], grads))
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
        h, w, c = acts.shape[1:4]
        if None in (h, w, c):
            x = tf.reshape(tf.cast(acts, tf.float32), [shape[0], shape[1] * shape[2], shape[3]])
            side = "positions"
        else:  # static sizes: the smaller Gram matrix can be chosen
            x = tf.reshape(tf.cast(acts, tf.float32), [-1, h * w, c])
            side = _gram_side(h * w, c)
        return tf.reshape(_first_component_tf(x, self.iterations, side), shape[:3])


def _gram_side(n: int, c: int) -> str:
    """Which Gram matrix EigenCAM iterates on: ``"positions"`` (``n x n``)
    unless the layer has more positions than channels, then ``"channels"``
    (``c x c``): a 112x112 layer of 16 channels would otherwise need a
    12544 x 12544 matrix (630 MB) per image."""
    return "channels" if n > c else "positions"


def _first_component_tf(x: Any, iterations: int, side: str = "positions") -> Any:
    """First principal component scores of each ``(n, c)`` matrix of a
    batch (TensorFlow ops), unit length, signed to correlate positively with
    the channel mean.

    ``side="positions"`` iterates on the ``(n, n)`` Gram matrix of the
    centred rows, ``"channels"`` on the ``(c, c)`` one and projects the rows
    on its top vector: the same component (scores ``X u = sigma v``), from
    the smaller matrix."""
    import tensorflow as tf

    # Block (subspace) iteration with a Rayleigh-Ritz step: the top
    # vector converges like (lambda_{k+1} / lambda_1) ** iterations,
    # robust where the first two components are nearly tied.
    xc = x - tf.reduce_mean(x, axis=1, keepdims=True)
    mean_map = tf.reduce_mean(x, axis=2)
    v0 = mean_map - tf.reduce_mean(mean_map, axis=1, keepdims=True)
    if side == "channels":
        gram = tf.matmul(xc, xc, transpose_a=True)
        start = tf.einsum("bnc,bn->bc", xc, v0)  # the mean map, carried into channel space
    else:
        gram = tf.matmul(xc, xc, transpose_b=True)
        start = v0
    gram = gram / (tf.reduce_max(tf.abs(gram), axis=(1, 2), keepdims=True) + 1e-30)
    m = tf.shape(gram)[1]
    idx = tf.cast(tf.range(m), x.dtype)
    probes = tf.stack([tf.cos(idx * (0.7 + 0.9 * j)) for j in range(_BLOCK - 1)], axis=1)
    basis = tf.concat([start[:, :, None], tf.broadcast_to(probes[None], [tf.shape(x)[0], m, _BLOCK - 1])], axis=2)
    q, _ = tf.linalg.qr(basis)
    for _ in range(iterations):
        q, _ = tf.linalg.qr(tf.matmul(gram, q))
    small = tf.matmul(q, tf.matmul(gram, q), transpose_a=True)
    _, vecs = tf.linalg.eigh(small)
    v = tf.einsum("bmk,bk->bm", q, vecs[:, :, -1])
    if side == "channels":
        v = tf.einsum("bnc,bc->bn", xc, v)
        v = v / (tf.norm(v, axis=1, keepdims=True) + 1e-30)
    sign = tf.where(tf.reduce_sum(v * v0, axis=1, keepdims=True) < 0, -1.0, 1.0)
    return v * sign


def _first_component(x: np.ndarray, iterations: int) -> np.ndarray:
    """:func:`_first_component_tf` on a NumPy batch, on TensorFlow's threads."""
    import tensorflow as tf

    side = _gram_side(x.shape[1], x.shape[2])
    fn = _POWER.get((iterations, side))
    if fn is None:
        fn = _POWER[(iterations, side)] = tf.function(lambda x: _first_component_tf(x, iterations, side),
                                                      reduce_retracing=True)
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
    size = tf.maximum(tf.abs(hi[:, 0, 0]), tf.abs(lo[:, 0, 0]))
    degenerate = ~tf.reduce_all(ok, axis=(1, 2)) | (span[:, 0, 0] <= _REL_EPS * size)
    out = (safe - lo) / tf.where(span > 0, span, 1.0)
    return tf.where(degenerate[:, None, None], 1.0, out), degenerate


_POWER: dict[tuple[int, str], Any] = {}


_BLOCK = 6


def eigencam_reference(acts: np.ndarray) -> np.ndarray:
    """EigenCAM by a full (thin) singular value decomposition (float64), for tests.

    Args:
        acts: ``(B, h, w, C)`` activations

    Returns:
        ``(B, h, w)`` raw maps, signed like :class:`EigenCAM`
    """
    b, h, w, c = acts.shape
    x = acts.reshape(b, h * w, c).astype(np.float64)
    xc = x - x.mean(axis=1, keepdims=True)
    u, sv, _ = np.linalg.svd(xc, full_matrices=False)  # thin SVD: no (hw, hw) matrix
    proj = u[:, :, 0] * sv[:, :1]
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


__all__ = ["ActivationMap", "EigenCAM", "GradCAM", "GradCAMPlusPlus", "METHODS", "SaliencyItem", "SaliencyMethod", "eigencam_reference", "fuse_maps_tf", "get_method", "gradient_methods", "method_choices", "normalize_maps", "normalize_maps_tf", "resolve_targets"]
