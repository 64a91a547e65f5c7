"""Models and target layers.

:func:`load_model` returns a :class:`SaliencyModel`: a Keras classifier split
at its target layer into a *backbone* (input to target activations) and a
*head* (target activations to logits), so that saliency methods pay for one
forward pass and keep the backbone outside the gradient tape.

Supported models:

-   any ``keras.applications`` CNN by name (``"xception"``, ``"resnet50"``,
    ``"efficientnetb0"``, ``"mobilenetv2"``, ...), each with its own
    preprocessing, with ImageNet weights from Keras' cache or a weights file
-   a user's saved classifier (``.keras`` or ``.h5``), checked before it is
    deserialised (:mod:`xpatch_core.model_files`) and loaded with Keras' safe
    mode, including a backbone nested as a sub-model; custom layers come from
    ``custom_objects`` (a dict or a module path)
-   a Keras model in memory (never modified: copied when its precision must
    change)

Precision: ``"auto"`` (the default) computes the backbone in bfloat16 where
the hardware has it natively and in float32 elsewhere
(:func:`xpatch_core.hardware.auto_precision`); the target layer and the head
always compute in float32, so features, logits and gradients are float32.
The same mechanism (each layer's Keras dtype policy, weights kept in float32)
serves applications, saved models and nested backbones. With the OpenVINO
engine (:mod:`xpatch_core.model_openvino`) the Keras parts stay float32 and
OpenVINO computes the forward pass in the precision asked for.

Loaded models are kept per process in a bounded cache
(:mod:`xpatch_core.model_cache`), keyed by the arguments and by the identity
of the files loaded (size, mtime, inode and SHA-256), so that a model
retrained and saved to the same path is loaded again.
"""

from __future__ import annotations

import difflib
import os
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xpatch_core import settings
from xpatch_core._tfsetup import setup_tensorflow
from xpatch_core.applications import APPLICATIONS as _APPLICATIONS
from xpatch_core.applications import (
    application_constructor,
    check_model_name,
    is_application,
    list_applications,
)
from xpatch_core.applications import normalize_name as _norm
from xpatch_core.defaults import SALIENCY
from xpatch_core.errors import ModelError, ParameterError
from xpatch_core.hardware import resolve_engine, resolve_precision
from xpatch_core.input_size import model_input_size, normalize_input_size, parse_input_size
from xpatch_core.model_cache import ModelCache, parameter_bytes
from xpatch_core.model_files import (
    FileIdentity,
    check_weights_file,
    file_identity,
    load_saved_model,
    weights_have_top,
)
from xpatch_core.model_graph import (
    apply_precision_plan,
    check_fusion,
    find_target_layer,
    is_model,
    layer_candidates,
    precision_plan,
    resolve_layer,
    split_model,
    trace,
)
from xpatch_core.model_openvino import attach_forward
from xpatch_core.offline import imagenet_class_names as _imagenet_class_names

#: Preprocessing by name, for saved models: ``"tf"`` maps to [-1, 1],
#: ``"caffe"`` to BGR minus the ImageNet mean, ``"torch"`` to ImageNet
#: standardisation, ``"none"`` leaves [0, 255]; an application name uses
#: that application's own preprocessing.
PREPROCESS_MODES = ("auto", "tf", "caffe", "torch", "none", "unit")

_CACHE = ModelCache()


def _preprocess_fn(mode: str) -> Callable[[np.ndarray], np.ndarray]:
    """Returns a NumPy preprocessing function for a mode or application."""
    if mode == "none":
        return lambda x: x
    if mode == "unit":
        return lambda x: x / np.float32(255.0)
    if mode == "tf":
        return lambda x: x / np.float32(127.5) - np.float32(1.0)
    if mode == "caffe":
        mean = np.array([103.939, 116.779, 123.68], dtype=np.float32)
        return lambda x: x[..., ::-1] - mean
    if mode == "torch":
        mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
        std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
        return lambda x: (x / np.float32(255.0) - mean) / std
    key = _norm(mode)
    modules = {m for _, m, _ in _APPLICATIONS.values()}
    if key in _APPLICATIONS or mode in modules:
        import keras

        module = getattr(keras.applications, mode if mode in modules else _APPLICATIONS[key][1])
        fn = module.preprocess_input
        return lambda x: np.asarray(fn(np.array(x, dtype=np.float32, copy=True)), dtype=np.float32)
    raise ParameterError(
        f"unknown preprocessing {mode!r}; use one of {', '.join(PREPROCESS_MODES)} "
        "or a keras.applications name"
    )


@dataclass
class SaliencyModel:
    """A classifier split at its target layer.

    Attributes:
        name: a short name (``"xception"`` or the file name)
        keras_model: the full model, ending in logits where it has a head
        backbone: model from the input to the target layer's activations
        head: model from the target activations to the logits, or None when
            the model has no classifier head or the head cannot be split off
        joint: model from the input to ``[activations, logits]``, used when
            the head cannot be split off (or None without a head)
        target_layer: the target layer's path, ``"outer/inner"`` for nested
            layers
        input_size: ``(height, width)`` the network is fed
        preprocess: NumPy function from RGB ``[0, 255]`` float32 batches to
            network input
        source: a JSON-serialisable description of the model for run records
        fuse_layer: a second, finer layer whose map multiplies the target
            layer's map (activation and EigenCAM), or None
        fused: model from the input to ``[target, fuse]`` activations
        ov_forward: the forward pass compiled by OpenVINO
            (:class:`xpatch_core.model_openvino.OpenVinoForward`) when the
            engine is ``"openvino"``, else None
    """

    name: str
    keras_model: Any
    backbone: Any
    head: Any | None
    joint: Any | None
    target_layer: str
    input_size: tuple[int, int]
    preprocess: Callable[[np.ndarray], np.ndarray]
    source: dict[str, Any]
    fuse_layer: str | None = None
    fused: Any | None = None
    ov_forward: Any | None = None
    _class_names: list[str] | None = None
    _class_loader: Callable[[], list[str]] | None = None
    _compiled: dict[str, Any] = field(default_factory=dict, repr=False)
    lock: Any = field(default_factory=threading.Lock, repr=False)

    @property
    def has_head(self) -> bool:
        """Whether the model ends in a classifier (needed by Grad-CAM)."""
        return self.head is not None or self.joint is not None

    @property
    def num_classes(self) -> int | None:
        """The number of output classes, or None without a head."""
        return self.source.get("num_classes")

    @property
    def class_names(self) -> list[str] | None:
        """The class names, loaded on first use, or None if unknown."""
        if self._class_names is None and self._class_loader is not None:
            self._class_names = self._class_loader()
        return self._class_names

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """``(h, w, channels)`` of the target activations."""
        shape = self.backbone.outputs[0].shape
        return int(shape[1]), int(shape[2]), int(shape[3])

    def backbone_for(self, height: int, width: int) -> SaliencyModel:
        """This model at another input size, with the same layers and weights.

        The split (backbone, fused layers, head or joint model) is re-traced
        on a new ``keras.Input`` of that size; the result is cached per size
        (the model's own size returns the model itself). Convolutional
        backbones, ``keras.applications`` models and a saved classifier's
        nested backbone take any size their layers accept. A classifier head
        is kept where it accepts features of the new size (a pooling head);
        otherwise ``head`` and ``joint`` are None and
        ``source["head_error"]`` says why, so gradient methods refuse it.

        Args:
            height: input height in pixels (>= 32)
            width: input width in pixels (>= 32)

        Returns:
            a :class:`SaliencyModel` for ``(height, width)`` inputs

        Raises:
            ParameterError: for a size under 32 pixels
            ModelError: if the backbone's layers cannot take that size
        """
        h, w = int(height), int(width)
        if min(h, w) < 32:
            raise ParameterError(f"input size must be at least 32x32, got {h}x{w}")
        if (h, w) == tuple(self.input_size):
            return self
        with self.lock:
            cached = self._compiled.get(("size", h, w))
        if cached is not None:
            return cached
        sized = self._retraced(h, w)
        with self.lock:
            return self._compiled.setdefault(("size", h, w), sized)

    def _retraced(self, h: int, w: int) -> SaliencyModel:
        """This model's parts traced again on a ``(h, w)`` input (see
        :meth:`backbone_for`), on TensorFlow."""
        import dataclasses

        import keras

        inp = keras.Input((h, w, 3), dtype=self.backbone.inputs[0].dtype, name="xpatch_input")
        try:
            if self.fused is not None:
                feat, fine = trace(self.fused, inp, [], strip=False)[0]
                fused = keras.Model(inp, [feat, fine], name="xpatch_fused")
            else:
                feat = trace(self.backbone, inp, [], strip=False)[0]
                fused = None
            for t in fused.outputs if fused is not None else [feat]:
                if None in t.shape[1:3] or min(t.shape[1:3]) < 1:
                    raise ValueError(f"features of shape {tuple(t.shape)}")
        except Exception as e:  # noqa: BLE001 - any layer that cannot take the size
            built = ("" if None in tuple(self.backbone.inputs[0].shape[1:3])
                     else f" were built for {self.input_size[0]}x{self.input_size[1]}")
            raise ModelError(
                f"model {self.name!r} cannot take a {h}x{w} input (its layers up to {self.target_layer!r}"
                f"{built}: {type(e).__name__}: {e})"
            ) from e
        backbone = keras.Model(inp, feat, name="xpatch_backbone")
        head = joint = None
        source = dict(self.source, input_size=[h, w], feature_shape=[int(d) for d in feat.shape[1:]])
        try:
            if self.head is not None:
                fin = keras.Input(tuple(feat.shape[1:]), dtype=feat.dtype, name="xpatch_features")
                head = keras.Model(fin, trace(self.head, fin, [], strip=False)[0], name="xpatch_head")
            elif self.joint is not None:
                joint = keras.Model(inp, trace(self.joint, inp, [], strip=False)[0], name="xpatch_joint")
        except Exception as e:  # noqa: BLE001 - e.g. a Flatten + Dense head
            head = joint = None
            source["head_error"] = (f"the classifier head of {self.name!r} does not take "
                                    f"{tuple(feat.shape[1:3])} features ({type(e).__name__})")
        return dataclasses.replace(
            self, backbone=backbone, head=head, joint=joint, fused=fused, input_size=(h, w),
            source=dict(source, engine="tensorflow"), ov_forward=None, _compiled={}, lock=threading.Lock(),
        )

    def class_index(self, target: int | str) -> int:
        """Resolves a class index or name to an index.

        Names match case-insensitively with spaces and underscores treated
        alike; ImageNet WordNet ids (``"n02123045"``) are accepted too.

        Args:
            target: an int index or a class name

        Returns:
            the class index

        Raises:
            ParameterError: if the class is unknown or out of range
        """
        n = self.num_classes
        if isinstance(target, (bool, np.bool_)):
            raise ParameterError(f"invalid target class {target!r}")
        if isinstance(target, (int, np.integer)):
            t = int(target)
            if n is None or not 0 <= t < n:
                raise ParameterError(f"target class {t} is out of range for a model with {n} classes")
            return t
        if not isinstance(target, str):
            raise ParameterError(f"target must be an int or a class name, got {type(target).__name__}")
        if target.strip().lstrip("-").isdigit():
            return self.class_index(int(target))
        names = self.class_names
        if not names:
            raise ParameterError(
                f"class name {target!r} given but the model has no class names; "
                "pass class_names= to load_model or use an index"
            )
        key = target.strip().lower().replace(" ", "_")
        for i, nm in enumerate(names):
            if nm.lower().replace(" ", "_") == key:
                return i
        wnids = self.source.get("wnids")
        if wnids and target in wnids:
            return wnids.index(target)
        close = difflib.get_close_matches(key, [nm.lower() for nm in names], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ParameterError(f"unknown class name {target!r}{hint}")


def _resolve_weights(name: str, weights: str | None) -> tuple[str, str]:
    """Returns ``(weights, source)`` for an application."""
    if weights is None:
        env = settings.weights_file()
        if env and _norm(name) == "xception":
            return env, "env:XPATCH_WEIGHTS"
        return "imagenet", "keras:imagenet"
    if weights == "imagenet":
        return weights, "keras:imagenet"
    if weights in ("none", "random"):
        return "random", "random"
    return weights, "file"


def _construct(ctor: Any, size: tuple[int, int], default: int, w: str) -> tuple[Any, list[str]]:
    """Builds an application with or without its top; returns the model (or
    None) and the errors of the forms tried (the form a weights file holds
    first: building the other one costs about a second)."""
    errors = []
    tops = (True, False) if w != "random" else (True,)
    if w not in ("random", "imagenet") and weights_have_top(w) is False:
        tops = (False, True)
    for include_top in tops:
        if include_top and size != (default, default) and w != "random":
            continue
        try:
            kw = {"input_shape": (size[0], size[1], 3), "include_top": include_top,
                  "weights": None if w == "random" else w}
            if include_top:
                kw["classifier_activation"] = None
            with warnings.catch_warnings():
                # Weights saved from a nested sub-model carry an empty container group.
                warnings.filterwarnings("ignore", message="Skipping nested container")
                return ctor(**kw), errors
        except Exception as e:  # noqa: BLE001 - try the other form of the weights file
            errors.append(f"include_top={include_top}: {e}")
    return None, errors


def _build_application(
    name: str, weights: str | None, input_size: tuple[int, int] | None
) -> tuple[Any, dict]:
    """Builds a ``keras.applications`` model in float32 with its weights."""
    import keras

    ctor_name, module, default = _APPLICATIONS[_norm(name)]
    w, source = _resolve_weights(name, weights)
    if source in ("file", "env:XPATCH_WEIGHTS"):
        check_weights_file(w)
    size = tuple(input_size) if input_size else (default, default)
    model, errors = _construct(getattr(keras.applications, ctor_name), size, default, w)
    if model is None:
        if source == "keras:imagenet":
            raise ModelError(
                f"could not load ImageNet weights for {ctor_name}: Keras could not download them "
                "(no internet?). Pass weights=PATH to a weights file, or place Keras' file in "
                f"~/.keras/models/. Details: {'; '.join(errors)}"
            )
        raise ModelError(f"could not load {ctor_name} weights from {w} (a file for another model or input "
                         f"size?): {'; '.join(e[:300] + (' ...' if len(e) > 300 else '') for e in errors)}")
    info = {
        "kind": "application",
        "model": ctor_name,
        "weights": w if source != "file" else os.path.abspath(w),
        "weights_source": source,
        "include_top": len(model.outputs[0].shape) == 2,
        "preprocess": module,
    }
    return model, info


def _guess_preprocess(model: Any) -> str:
    import keras

    for _path, layer in layer_candidates(model)[:8]:
        if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)):
            return "none"
    for _path, layer in layer_candidates(model):
        if is_model(layer):
            key = _norm(layer.name.split("_1.")[0])
            if key in _APPLICATIONS:
                return key
    return "tf"


@dataclass
class _Request:
    """The normalised arguments of one :func:`load_model` call."""

    model: Any
    weights: str | None
    layer: str | tuple[str, ...] | None
    fuse_layer: str | None
    input_size: tuple[int, int] | None
    class_names: list[str] | None
    preprocess: str | Callable[[np.ndarray], np.ndarray]
    precision: str
    precision_requested: str
    precision_reason: str
    allow_unsafe: bool
    custom_objects: Any
    engine: str = "tensorflow"
    engine_requested: str = "tensorflow"
    engine_reason: str = ""
    identity: FileIdentity | None = None


def _request(model: Any, weights: str | None, layer: Any, fuse_layer: str | None, input_size: Any,
             class_names: Sequence[str] | None, preprocess: Any, precision: str, allow_unsafe: bool,
             custom_objects: Any, engine: str) -> _Request:
    """Validates and normalises the arguments (no TensorFlow, no file reads)."""
    resolved, reason = resolve_precision(precision)
    engine_used, engine_reason = resolve_engine(engine, resolved)
    if engine == "auto" and settings.engine_override():
        engine = settings.engine_override()  # the variable's choice is a request: failures raise
    elif engine == "auto" and engine_used == "openvino" and not isinstance(model, str):
        # a model in memory is not cached: converting it on every call would cost more than it saves
        engine_used, engine_reason = "tensorflow", ("a Keras model in memory stays on TensorFlow under 'auto' "
                                                    "(load it once with engine='openvino' to convert it)")
    input_size = normalize_input_size(input_size) if input_size is not None else None
    if isinstance(layer, str) and not layer.strip():
        layer = None
    if isinstance(layer, (list, tuple)):
        layer = tuple(layer)
    if custom_objects is not None and not isinstance(custom_objects, (str, Mapping, list, tuple)):
        raise ParameterError(f"custom_objects must be a dict or a module path, got {type(custom_objects).__name__}")
    return _Request(model, weights, layer, fuse_layer, tuple(input_size) if input_size else None,
                    [str(c) for c in class_names] if class_names is not None else None, preprocess,
                    resolved, precision, reason, bool(allow_unsafe), custom_objects,
                    engine_used, engine, engine_reason)


def _identify_files(req: _Request) -> None:
    """Hashes the file the request loads (a saved model, or an application's
    weights file), once."""
    if not isinstance(req.model, str):
        return
    if is_application(req.model):
        w, source = _resolve_weights(req.model, req.weights)
        if source in ("file", "env:XPATCH_WEIGHTS"):
            check_weights_file(w)
            req.identity = file_identity(w)
        return
    check_model_name(req.model)
    req.identity = file_identity(req.model)


def _cache_key(req: _Request) -> tuple | None:
    """The cache key, or None when the request is not cacheable."""
    if not isinstance(req.model, str) or (callable(req.preprocess) and not isinstance(req.preprocess, str)):
        return None
    custom = req.custom_objects
    if isinstance(custom, Mapping):
        custom = tuple(sorted((str(k), id(v)) for k, v in custom.items()))
    elif isinstance(custom, list):
        custom = tuple(custom)
    ident = req.identity
    return (
        req.model if ident is None or is_application(req.model) else ident.path,
        req.weights if ident is None else None,
        None if ident is None else (ident.size, ident.mtime_ns, ident.inode, ident.sha256),
        req.layer, req.fuse_layer, req.input_size,
        tuple(req.class_names) if req.class_names else None,
        req.preprocess, req.precision, req.allow_unsafe, custom, req.engine, req.engine_requested,
    )


def _load_keras(req: _Request) -> tuple[Any, dict, str, str, bool]:
    """Loads the Keras model; returns ``(model, info, preprocess mode,
    name, in_memory)``."""
    import keras

    model = req.model
    if isinstance(model, str) and is_application(model):
        keras_model, info = _build_application(model, req.weights, req.input_size)
        if req.identity is not None:
            info["weights_sha256"] = req.identity.sha256
        return keras_model, info, info["preprocess"], _norm(model), False
    if isinstance(model, str):
        keras_model = load_saved_model(model, req.identity, safe_mode=not req.allow_unsafe,
                                       custom_objects=req.custom_objects)
        info = {"kind": "saved", "model": req.identity.path, "weights": "embedded",
                "weights_source": "file", "safe_mode": not req.allow_unsafe,
                "sha256": req.identity.sha256, "file_size": req.identity.size}
        return keras_model, info, _guess_preprocess(keras_model), os.path.basename(model), False
    if isinstance(model, keras.Model):
        info = {"kind": "in-memory", "model": model.name, "weights": "in-memory", "weights_source": "memory"}
        return model, info, _guess_preprocess(model), model.name, True
    raise ModelError(f"model must be a name, a path or a Keras model, got {type(model).__name__}")


def _copy_model(keras_model: Any) -> Any:
    """A copy of an in-memory model with the same weights (the user's model
    is never modified)."""
    import keras

    try:
        copy = keras.models.clone_model(keras_model, recursive=True)
        copy.set_weights(keras_model.get_weights())
    except Exception as e:  # noqa: BLE001 - a model that cannot be cloned keeps float32
        raise ModelError(f"model {keras_model.name!r} could not be copied to change its precision ({e}); "
                         "pass precision='float32'") from e
    return copy


def _split(keras_model: Any, req: _Request, info: dict, in_memory: bool) -> tuple[tuple, tuple | None, tuple]:
    """Resolves the target and fuse layers, splits the model, and sets each
    layer's precision; returns ``(path, fuse_path, parts)``."""
    path = resolve_layer(keras_model, req.layer) if req.layer else tuple(find_target_layer(keras_model).split("/"))
    fuse_layer = req.fuse_layer
    if fuse_layer == "auto":
        auto = info.get("model") == "Xception" and not req.layer
        fuse_layer = "block13_sepconv1_act" if auto else None
    fuse_path = resolve_layer(keras_model, fuse_layer) if fuse_layer else None
    parts = split_model(keras_model, path, fuse_path)
    # OpenVINO converts the float32 graph and computes in the precision it is told.
    keras_precision = "float32" if req.engine == "openvino" else req.precision
    plan = precision_plan(*parts[1:5], keras_precision)
    if plan and in_memory:
        try:
            parts = split_model(_copy_model(keras_model), path, fuse_path)
        except ModelError:
            if req.precision_requested != "auto":
                raise
            req.precision, req.precision_reason = "float32", "the in-memory model could not be copied"
        plan = precision_plan(*parts[1:5], "float32" if req.engine == "openvino" else req.precision)
    apply_precision_plan(plan)
    return path, fuse_path, parts


def _assemble(req: _Request, keras_model: Any, info: dict, pre_mode: str, name: str,
              in_memory: bool) -> SaliencyModel:
    """Splits the loaded model and builds the :class:`SaliencyModel`."""
    if req.preprocess == "auto":
        preprocess_fn, pre_name = _preprocess_fn(pre_mode), pre_mode
    elif callable(req.preprocess):
        preprocess_fn, pre_name = req.preprocess, getattr(req.preprocess, "__name__", "callable")
    else:
        preprocess_fn, pre_name = _preprocess_fn(req.preprocess), req.preprocess
    path, fuse_path, (full, backbone, head, joint, fused, split_info) = _split(keras_model, req, info, in_memory)
    size = model_input_size(backbone, name, req.input_size)
    any_size = None in tuple(backbone.inputs[0].shape[1:3])
    if fused is not None and not any_size:
        check_fusion(fused, fuse_path)
    info.update(split_info)
    info.update({
        "name": name, "layer": "/".join(path), "input_size": list(size), "preprocess": pre_name,
        "precision": req.precision, "precision_requested": req.precision_requested,
        "precision_reason": req.precision_reason,
        "fuse_layer": "/".join(fuse_path) if fuse_path else None,
        "fuse_explicit": req.fuse_layer not in (None, "auto", ""),
        "has_head": head is not None or joint is not None, "head_split": head is not None,
        "feature_shape": None if any_size else [int(d) for d in backbone.outputs[0].shape[1:]],
    })
    n = info.get("num_classes")
    if req.class_names is not None and n is not None and len(req.class_names) != n:
        raise ParameterError(f"{len(req.class_names)} class names given for a model with {n} classes")
    sm = SaliencyModel(
        name=name, keras_model=full, backbone=backbone, head=head, joint=joint, target_layer="/".join(path),
        fuse_layer="/".join(fuse_path) if fuse_path else None, fused=fused, input_size=size,
        preprocess=preprocess_fn, source=info, _class_names=list(req.class_names) if req.class_names else None,
    )
    if any_size:  # a model that takes any size: every part fixed at the size asked for
        sm = sm._retraced(*size)  # a head that cannot be retraced is dropped, with source["head_error"]
        if sm.fused is not None:
            check_fusion(sm.fused, fuse_path)
    if info.get("include_top") and n == 1000 and not req.class_names:
        sm._class_loader = lambda: _imagenet_class_names(sm)
    attach_forward(sm, req.engine, req.engine_requested, req.engine_reason, req.precision)
    return sm


def _check_loaded(model: SaliencyModel, layer: Any) -> SaliencyModel:
    """Returns an already loaded model if it explains the requested layer."""
    if layer is not None and not (isinstance(layer, str) and not layer.strip()):
        wanted = "/".join(resolve_layer(model.keras_model, layer))  # ModelError if unknown
        if wanted != model.target_layer:
            raise ModelError(
                f"model {model.name!r} is already loaded for layer {model.target_layer!r}; to explain "
                f"layer {wanted!r}, load it with load_model(..., layer={wanted!r}) or pass its name or path"
            )
    return model


def load_model(
    model: str | Any = SALIENCY["model"],
    *,
    weights: str | None = None,
    layer: str | Sequence[str] | None = None,
    fuse_layer: str | None = SALIENCY["fuse_layer"],
    input_size: int | tuple[int, int] | None = None,
    class_names: Sequence[str] | None = None,
    preprocess: str | Callable[[np.ndarray], np.ndarray] = "auto",
    precision: str = SALIENCY["precision"],
    allow_unsafe: bool = False,
    custom_objects: Mapping[str, Any] | str | Sequence[str] | None = None,
    cache: bool = True,
    engine: str = SALIENCY["engine"],
) -> SaliencyModel:
    """Loads a classifier for saliency.

    Args:
        model: a ``keras.applications`` name (default ``"xception"``), the
            path of a saved ``.keras`` / ``.h5`` classifier, a Keras model,
            or a :class:`SaliencyModel` (returned as is)
        weights: for applications: None for ImageNet through Keras' download
            and cache (or the ``XPATCH_WEIGHTS`` file for the default
            Xception), ``"imagenet"``, ``"random"``, or a weights file path,
            with or without the classifier top
        layer: the target layer (name, ``"outer/inner"`` path, or sequence);
            default: the last layer with a 4-D output and spatial size > 1
        fuse_layer: a finer layer to fuse with the target layer for the
            activation and EigenCAM methods (the two normalised maps are
            multiplied on the finer grid); ``"auto"`` uses
            ``block13_sepconv1_act`` for Xception at its default layer (the
            setting ``benchmarks/bench_quality.py`` chose) and nothing
            otherwise; None turns fusion off
        input_size: the network input size, an int or ``(height, width)``;
            default: the model's own or the application's default
        class_names: class names for a saved model (ImageNet names are
            loaded for applications)
        preprocess: ``"auto"``, a mode from :data:`PREPROCESS_MODES`, an
            application name, or a callable on RGB ``[0, 255]`` batches
        precision: ``"auto"`` (bfloat16 where the hardware computes it
            natively, see :func:`xpatch_core.hardware.auto_precision`),
            ``"float32"``, or ``"mixed_bfloat16"`` (``"bfloat16"`` is an
            alias); the backbone computes in it, the target layer and the
            head in float32 (with the OpenVINO engine, OpenVINO computes
            the whole forward pass in it). ``source["precision"]`` says what
            was used
        allow_unsafe: load saved models with Keras' safe mode off; only for
            files you trust
        custom_objects: classes a saved model needs beyond Keras' own: a
            dict of name to class, or a module path (``"my_pkg.layers"``) or
            list of them, imported to collect their Keras classes (only
            modules you trust)
        cache: reuse a model already loaded in this process with the same
            arguments from unchanged files, and keep this one (see
            :mod:`xpatch_core.model_cache`)
        engine: what runs the forward pass: ``"auto"`` (OpenVINO on a CPU
            without native bfloat16 where the ``openvino`` package is
            installed, TensorFlow elsewhere and for a Keras model in memory;
            ``XPATCH_ENGINE`` overrides it; see
            :func:`xpatch_core.hardware.resolve_engine`),
            ``"tensorflow"`` or ``"openvino"`` (the CPU; gradients still come
            from TensorFlow). ``source["engine"]`` says what was used

    Returns:
        a :class:`SaliencyModel`

    Raises:
        ModelError: if the model cannot be loaded, fails a file check, needs
            custom objects, or has no usable layer
        ParameterError: for invalid arguments
    """
    if isinstance(model, SaliencyModel):
        return _check_loaded(model, layer)
    req = _request(model, weights, layer, fuse_layer, input_size, class_names, preprocess, precision,
                   allow_unsafe, custom_objects, engine)
    _identify_files(req)
    key = _cache_key(req) if cache else None
    if key is not None:
        hit = _CACHE.get(key)
        if hit is not None:
            return hit
    setup_tensorflow()
    keras_model, info, pre_mode, name, in_memory = _load_keras(req)
    sm = _assemble(req, keras_model, info, pre_mode, name, in_memory)
    if key is not None:
        paths = (req.identity.path,) if req.identity is not None else ()
        copies = 2 if sm.ov_forward is not None else 1  # OpenVINO keeps its own copy of the weights
        _CACHE.put(key, sm, copies * parameter_bytes(sm.keras_model), name, paths)
    return sm


def clear_cache() -> None:
    """Forgets the models loaded in this process."""
    _CACHE.clear()


def cached_models() -> list[dict[str, Any]]:
    """The models this process keeps loaded, least recently used first.

    Returns:
        one dict per model: ``name``, ``megabytes`` (parameter memory
        estimate) and ``paths`` (the files it was loaded from)
    """
    return [{"name": e.name, "megabytes": round(e.nbytes / (1 << 20), 1), "paths": list(e.paths)}
            for e in _CACHE.entries()]


__all__ = [
    "PREPROCESS_MODES",
    "SaliencyModel",
    "cached_models",
    "clear_cache",
    "find_target_layer",
    "application_constructor",
    "check_model_name",
    "is_application",
    "list_applications",
    "load_model",
    "normalize_input_size",
    "parse_input_size",
    "resolve_layer",
]
