"""Models and target layers.

:func:`load_model` returns a :class:`SaliencyModel`: a Keras classifier split
at its target layer into a *backbone* (input to target activations) and a
*head* (target activations to logits), so that saliency methods pay for one
forward pass and keep the backbone outside the gradient tape.

Supported models:

-   any ``keras.applications`` CNN by name (``"xception"``, ``"resnet50"``,
    ``"efficientnetb0"``, ``"mobilenetv2"``, ...), each with its own
    preprocessing, with ImageNet weights from Keras' cache or a weights file
-   a user's saved classifier (``.keras`` or ``.h5``), loaded with Keras' safe
    mode, including a backbone nested as a sub-model
"""

from __future__ import annotations

import difflib
import json
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xpatch_core._tfsetup import setup_tensorflow
from xpatch_core.errors import ModelError, ParameterError

# name -> (constructor, preprocessing module, default input size)
_APPLICATIONS: dict[str, tuple[str, str, int]] = {
    "xception": ("Xception", "xception", 299),
    "vgg16": ("VGG16", "vgg16", 224),
    "vgg19": ("VGG19", "vgg19", 224),
    "resnet50": ("ResNet50", "resnet", 224),
    "resnet101": ("ResNet101", "resnet", 224),
    "resnet152": ("ResNet152", "resnet", 224),
    "resnet50v2": ("ResNet50V2", "resnet_v2", 224),
    "resnet101v2": ("ResNet101V2", "resnet_v2", 224),
    "resnet152v2": ("ResNet152V2", "resnet_v2", 224),
    "inceptionv3": ("InceptionV3", "inception_v3", 299),
    "inceptionresnetv2": ("InceptionResNetV2", "inception_resnet_v2", 299),
    "mobilenet": ("MobileNet", "mobilenet", 224),
    "mobilenetv2": ("MobileNetV2", "mobilenet_v2", 224),
    "mobilenetv3small": ("MobileNetV3Small", "mobilenet_v3", 224),
    "mobilenetv3large": ("MobileNetV3Large", "mobilenet_v3", 224),
    "densenet121": ("DenseNet121", "densenet", 224),
    "densenet169": ("DenseNet169", "densenet", 224),
    "densenet201": ("DenseNet201", "densenet", 224),
    "nasnetmobile": ("NASNetMobile", "nasnet", 224),
    "nasnetlarge": ("NASNetLarge", "nasnet", 331),
    "efficientnetb0": ("EfficientNetB0", "efficientnet", 224),
    "efficientnetb1": ("EfficientNetB1", "efficientnet", 240),
    "efficientnetb2": ("EfficientNetB2", "efficientnet", 260),
    "efficientnetb3": ("EfficientNetB3", "efficientnet", 300),
    "efficientnetb4": ("EfficientNetB4", "efficientnet", 380),
    "efficientnetb5": ("EfficientNetB5", "efficientnet", 456),
    "efficientnetb6": ("EfficientNetB6", "efficientnet", 528),
    "efficientnetb7": ("EfficientNetB7", "efficientnet", 600),
    "efficientnetv2b0": ("EfficientNetV2B0", "efficientnet_v2", 224),
    "efficientnetv2b1": ("EfficientNetV2B1", "efficientnet_v2", 240),
    "efficientnetv2b2": ("EfficientNetV2B2", "efficientnet_v2", 260),
    "efficientnetv2b3": ("EfficientNetV2B3", "efficientnet_v2", 300),
    "efficientnetv2s": ("EfficientNetV2S", "efficientnet_v2", 384),
    "convnexttiny": ("ConvNeXtTiny", "convnext", 224),
    "convnextsmall": ("ConvNeXtSmall", "convnext", 224),
    "convnextbase": ("ConvNeXtBase", "convnext", 224),
    "regnetx002": ("RegNetX002", "regnet", 224),
    "regnety002": ("RegNetY002", "regnet", 224),
}

#: Preprocessing by name, for saved models: ``"tf"`` maps to [-1, 1],
#: ``"caffe"`` to BGR minus the ImageNet mean, ``"torch"`` to ImageNet
#: standardisation, ``"none"`` leaves [0, 255]; an application name uses
#: that application's own preprocessing.
PREPROCESS_MODES = ("auto", "tf", "caffe", "torch", "none", "unit")

_CACHE: dict[tuple, SaliencyModel] = {}
_CACHE_LOCK = threading.Lock()


def _norm(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "").replace(" ", "")


def list_applications() -> list[str]:
    """Returns the ``keras.applications`` names :func:`load_model` accepts.

    Returns:
        a sorted list of names
    """
    return sorted(_APPLICATIONS)


def is_application(name: str) -> bool:
    """Whether ``name`` names a ``keras.applications`` model.

    Args:
        name: a model name such as ``"ResNet50"``

    Returns:
        True or False
    """
    return _norm(name) in _APPLICATIONS


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


def _imagenet_class_names(model: SaliencyModel | None = None) -> list[str]:
    import keras

    try:
        path = keras.utils.get_file(
            "imagenet_class_index.json",
            "https://storage.googleapis.com/download.tensorflow.org/data/imagenet_class_index.json",
            cache_subdir="models",
            file_hash="c2c37ea517e94d9795004a39431a14cb",
        )
    except Exception as e:  # noqa: BLE001
        raise ModelError(
            "the ImageNet class index is not cached and cannot be downloaded; place "
            "imagenet_class_index.json in ~/.keras/models/"
        ) from e
    with open(path) as f:
        index = json.load(f)
    names = [index[str(i)][1] for i in range(len(index))]
    if model is not None:
        model.source["wnids"] = [index[str(i)][0] for i in range(len(index))]
    return names


def _as_functional(m: Any) -> Any:
    import keras

    if isinstance(m, keras.Sequential):
        f = getattr(m, "_functional", None)
        if f is None:
            raise ModelError(f"Sequential model {m.name!r} has no defined input; build it with keras.Input")
        return f
    if not hasattr(m, "_run_through_graph"):
        raise ModelError(
            f"model {getattr(m, 'name', m)!r} is a subclassed model; only functional and "
            "Sequential models (and ones nesting them) expose their layers"
        )
    return m


def _is_model(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _layer_candidates(model: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """All layers, depth first in graph order, with their paths."""
    out = []
    for layer in model.layers:
        path = prefix + (layer.name,)
        if _is_model(layer):
            out.extend(_layer_candidates(layer, path))
        out.append((path, layer))
    return out


def _output_shape(layer: Any) -> tuple | None:
    try:
        return tuple(layer.output.shape)
    except Exception:  # noqa: BLE001 - shared or unbuilt layers have no single output
        return None


def find_target_layer(model: Any) -> str:
    """Finds the last layer with a 4-D output and spatial size > 1.

    Looks inside nested sub-models.

    Args:
        model: a Keras model

    Returns:
        the layer's path, ``"outer/inner"`` for nested layers

    Raises:
        ModelError: if no such layer exists
    """
    import keras

    best = None
    for path, layer in _layer_candidates(model):
        if _is_model(layer) or isinstance(layer, keras.layers.InputLayer):
            continue
        shape = _output_shape(layer)
        if shape is None or len(shape) != 4:
            continue
        h, w = shape[1], shape[2]
        if (h is None or h > 1) and (w is None or w > 1):
            best = path
    if best is None:
        raise ModelError(f"model {model.name!r} has no layer with a 4-D spatial output to explain")
    return "/".join(best)


def resolve_layer(model: Any, layer: str | Sequence[str]) -> tuple[str, ...]:
    """Resolves a layer override to a path of names.

    Args:
        model: a Keras model
        layer: ``"name"`` (searched in nested sub-models too), a path
            ``"outer/inner"``, or a sequence of names; names may contain dots

    Returns:
        the path as a tuple of names

    Raises:
        ModelError: if the layer is unknown, ambiguous or not 4-D
    """
    candidates = _layer_candidates(model)
    by_path = {p: lyr for p, lyr in candidates}
    if isinstance(layer, str):
        path = tuple(layer.split("/")) if "/" in layer else None
        if path is None:
            matches = [p for p in by_path if p[-1] == layer]
            if len(matches) > 1:
                raise ModelError(
                    f"layer name {layer!r} is ambiguous: {', '.join('/'.join(m) for m in matches)}"
                )
            path = matches[0] if matches else (layer,)
    else:
        path = tuple(layer)
    if path not in by_path:
        names = ["/".join(p) for p in by_path]
        close = difflib.get_close_matches("/".join(path), names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"model {model.name!r} has no layer {'/'.join(path)!r}{hint}")
    target = by_path[path]
    shape = _output_shape(target)
    if _is_model(target) or shape is None or len(shape) != 4:
        raise ModelError(f"layer {'/'.join(path)!r} has output shape {shape}; a 4-D (N, H, W, C) layer is needed")
    return path


def _linear_version(op: Any) -> Any:
    """Returns a callable computing ``op``'s pre-softmax output."""
    import keras

    act = getattr(op, "activation", None)
    act_name = getattr(act, "__name__", "")
    if isinstance(op, keras.layers.Softmax) or (
        isinstance(op, keras.layers.Activation) and act_name in ("softmax", "sigmoid")
    ):
        return lambda x, *a, **k: x
    if act_name in ("softmax", "sigmoid") and isinstance(op, keras.layers.Layer) and not _is_model(op):
        cfg = op.get_config()
        cfg["activation"] = "linear"
        cfg["name"] = f"{op.name}_logits"
        new = op.__class__.from_config(cfg)
        new.build(op.input.shape)
        new.set_weights(op.get_weights())
        return new
    return op


def _trace(model: Any, inputs: Any, paths: Sequence[tuple[str, ...]], strip: bool) -> tuple[Any, list[Any]]:
    """Re-runs a functional graph on new symbolic inputs.

    Returns the outputs (with a final softmax removed when ``strip``) and the
    tensors of the layers at ``paths`` (None for a path not on the graph).
    """
    model = _as_functional(model)
    captured: list[Any] = [None] * len(paths)
    out_ops = {id(t._keras_history[0]) for t in model.outputs} if strip else set()

    def operation_fn(op: Any) -> Any:
        matching = [(i, p) for i, p in enumerate(paths) if p and p[0] == op.name]
        if matching:
            leaves = [i for i, p in matching if len(p) == 1]
            deeper = [(i, p[1:]) for i, p in matching if len(p) > 1]
            if deeper:

                def descend(*args: Any, **kwargs: Any) -> Any:
                    out, feats = _trace(op, args[0], [p for _, p in deeper], strip=id(op) in out_ops)
                    for (i, _), feat in zip(deeper, feats):
                        captured[i] = feat
                    return out

                return descend
            fn = _linear_version(op) if id(op) in out_ops else op

            def capture(*args: Any, **kwargs: Any) -> Any:
                out = fn(*args, **kwargs)
                for i in leaves:
                    captured[i] = out
                return out

            return capture
        if id(op) in out_ops:
            if _is_model(op):
                return lambda *a, **k: _trace(op, a[0], [], strip=True)[0]
            return _linear_version(op)
        return op

    outputs = model._run_through_graph(inputs, operation_fn=operation_fn)
    return outputs, captured


def _split(
    keras_model: Any, path: tuple[str, ...], fuse_path: tuple[str, ...] | None = None
) -> tuple[Any, Any, Any, Any, Any, dict]:
    """Builds backbone, head, joint and fused models around the target layer."""
    import keras

    model = _as_functional(keras_model)
    if len(model.inputs) != 1:
        raise ModelError(f"model {model.name!r} has {len(model.inputs)} inputs; one image input is needed")
    shape = tuple(model.inputs[0].shape[1:])
    new_input = keras.Input(shape=shape, dtype=model.inputs[0].dtype, name="xpatch_input")
    paths = [path] if fuse_path is None else [path, fuse_path]
    outputs, feats = _trace(model, new_input, paths, strip=True)
    feat = feats[0]
    if feat is None:
        raise ModelError(f"layer {'/'.join(path)!r} is not on the path from the input to the output")
    if fuse_path is not None and feats[1] is None:
        raise ModelError(f"layer {'/'.join(fuse_path)!r} is not on the path from the input to the output")
    if isinstance(outputs, (list, tuple)):
        if len(outputs) != 1:
            raise ModelError(f"model {model.name!r} has {len(outputs)} outputs; one is needed")
        outputs = outputs[0]
    info: dict[str, Any] = {}
    backbone = keras.Model(new_input, feat, name="xpatch_backbone")
    fused = keras.Model(new_input, [feat, feats[1]], name="xpatch_fused") if fuse_path is not None else None
    head = joint = None
    if len(outputs.shape) == 2 and outputs is not feat:
        info["num_classes"] = int(outputs.shape[-1])
        try:
            head = keras.Model(feat, outputs, name="xpatch_head")
        except Exception:  # noqa: BLE001 - head depends on tensors before the target
            joint = keras.Model(new_input, [feat, outputs], name="xpatch_joint")
    return model, backbone, head, joint, fused, info


def _resolve_weights(name: str, weights: str | None) -> tuple[str, str]:
    """Returns ``(weights, source)`` for an application."""
    if weights is None:
        env = os.environ.get("XPATCH_WEIGHTS")
        if env and _norm(name) == "xception":
            return env, "env:XPATCH_WEIGHTS"
        return "imagenet", "keras:imagenet"
    if weights == "imagenet":
        return weights, "keras:imagenet"
    if weights in ("none", "random"):
        return "random", "random"
    return weights, "file"


def _build_application(
    name: str,
    weights: str | None,
    input_size: tuple[int, int] | None,
    precision: str,
) -> tuple[Any, dict]:
    import keras

    key = _norm(name)
    ctor_name, module, default = _APPLICATIONS[key]
    ctor = getattr(keras.applications, ctor_name)
    w, source = _resolve_weights(name, weights)
    if source in ("file", "env:XPATCH_WEIGHTS") and not os.path.isfile(w):
        raise ModelError(f"weights file not found: {w}")
    size = tuple(input_size) if input_size else (default, default)
    kwargs = {"input_shape": (size[0], size[1], 3)}
    previous = keras.config.dtype_policy()
    if precision != "float32":
        keras.config.set_dtype_policy(precision)
    try:
        model = None
        errors = []
        tops = (True, False) if w != "random" else (True,)
        for include_top in tops:
            if include_top and size != (default, default) and w != "random":
                continue
            try:
                kw = dict(kwargs, include_top=include_top, weights=None if w == "random" else w)
                if include_top:
                    kw["classifier_activation"] = None
                with warnings.catch_warnings():
                    # Weights saved from a nested sub-model carry an empty container group.
                    warnings.filterwarnings("ignore", message="Skipping nested container")
                    model = ctor(**kw)
                break
            except Exception as e:  # noqa: BLE001 - try the other form of the weights file
                errors.append(f"include_top={include_top}: {e}")
        if model is None:
            if source == "keras:imagenet":
                raise ModelError(
                    f"could not load ImageNet weights for {ctor_name}: Keras could not download them "
                    "(no internet?). Pass weights=PATH to a weights file, or place Keras' file in "
                    f"~/.keras/models/. Details: {'; '.join(errors)}"
                )
            raise ModelError(f"could not load {ctor_name} weights from {w}: {'; '.join(errors)}")
    finally:
        keras.config.set_dtype_policy(previous)
    info = {
        "kind": "application",
        "model": ctor_name,
        "weights": w if source != "file" else os.path.abspath(w),
        "weights_source": source,
        "include_top": len(model.outputs[0].shape) == 2,
        "preprocess": module,
    }
    return model, info


def _load_saved(path: str, safe_mode: bool) -> Any:
    import keras

    if not os.path.isfile(path):
        raise ModelError(f"model file not found: {path}")
    try:
        return keras.models.load_model(path, compile=False, safe_mode=safe_mode)
    except Exception as e:  # noqa: BLE001
        msg = str(e)
        if "safe_mode" in msg or "Lambda" in msg or "unsafe" in msg.lower():
            raise ModelError(
                f"refused to load {path}: it contains code (e.g. a Lambda layer) that Keras' safe "
                "mode will not deserialize. Only if you trust this file, load it with "
                "allow_unsafe=True (CLI: --allow-unsafe-model)."
            ) from e
        raise ModelError(f"could not load model {path}: {msg}") from e


def _guess_preprocess(model: Any) -> str:
    import keras

    for _path, layer in _layer_candidates(model)[:8]:
        if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)):
            return "none"
    for _path, layer in _layer_candidates(model):
        if _is_model(layer):
            key = _norm(layer.name.split("_1.")[0])
            if key in _APPLICATIONS:
                return key
    return "tf"


def load_model(
    model: str | Any = "xception",
    *,
    weights: str | None = None,
    layer: str | Sequence[str] | None = None,
    fuse_layer: str | None = "auto",
    input_size: int | tuple[int, int] | None = None,
    class_names: Sequence[str] | None = None,
    preprocess: str | Callable[[np.ndarray], np.ndarray] = "auto",
    precision: str = "float32",
    allow_unsafe: bool = False,
    cache: bool = True,
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
        precision: ``"float32"``, ``"bfloat16"`` or ``"mixed_bfloat16"``
            (applications only)
        allow_unsafe: load saved models with Keras' safe mode off; only for
            files you trust
        cache: reuse a model already loaded in this process with the same
            arguments

    Returns:
        a :class:`SaliencyModel`

    Raises:
        ModelError: if the model cannot be loaded or has no usable layer
        ParameterError: for invalid arguments
    """
    if isinstance(model, SaliencyModel):
        if layer is not None and not (isinstance(layer, str) and not layer.strip()):
            wanted = "/".join(resolve_layer(model.keras_model, layer))  # ModelError if unknown
            if wanted != model.target_layer:
                raise ModelError(
                    f"model {model.name!r} is already loaded for layer {model.target_layer!r}; to explain "
                    f"layer {wanted!r}, load it with load_model(..., layer={wanted!r}) or pass its name or path"
                )
        return model
    if precision not in ("float32", "bfloat16", "mixed_bfloat16"):
        raise ParameterError(f"precision must be float32, bfloat16 or mixed_bfloat16, got {precision!r}")
    if isinstance(input_size, (int, np.integer)):
        input_size = (int(input_size), int(input_size))
    if input_size is not None and (len(input_size) != 2 or min(input_size) < 8):
        raise ParameterError(f"input_size must be >= 8 pixels, got {input_size!r}")
    if isinstance(layer, str) and not layer.strip():
        layer = None
    key = None
    if cache and isinstance(model, str) and (not callable(preprocess) or isinstance(preprocess, str)):
        key = (
            model,
            weights,
            os.environ.get("XPATCH_WEIGHTS") if weights is None else None,
            tuple(layer) if isinstance(layer, (list, tuple)) else layer,
            fuse_layer,
            tuple(input_size) if input_size else None,
            tuple(class_names) if class_names else None,
            preprocess,
            precision,
            allow_unsafe,
        )
        with _CACHE_LOCK:
            if key in _CACHE:
                return _CACHE[key]

    setup_tensorflow()
    import keras

    class_loader = None
    if isinstance(model, str) and is_application(model):
        keras_model, info = _build_application(model, weights, input_size, precision)
        pre_mode = info["preprocess"]
        name = _norm(model)
        if info["include_top"] and int(keras_model.outputs[0].shape[-1]) == 1000 and not class_names:
            class_loader = _imagenet_class_names
    elif isinstance(model, str):
        if os.path.splitext(model)[1].lower() not in (".keras", ".h5", ".hdf5"):
            raise ModelError(
                f"unknown model {model!r}: not a keras.applications name (e.g. "
                f"{', '.join(['xception', 'resnet50', 'efficientnetb0', 'mobilenetv2'])}) "
                "nor a .keras/.h5 file"
            )
        if precision != "float32":
            raise ParameterError("bfloat16 precision is available for keras.applications models only")
        keras_model = _load_saved(model, safe_mode=not allow_unsafe)
        name = os.path.basename(model)
        pre_mode = _guess_preprocess(keras_model)
        info = {"kind": "saved", "model": os.path.abspath(model), "weights": "embedded",
                "weights_source": "file", "safe_mode": not allow_unsafe}
    elif isinstance(model, keras.Model):
        keras_model = model
        name = model.name
        pre_mode = _guess_preprocess(keras_model)
        info = {"kind": "in-memory", "model": model.name, "weights": "in-memory", "weights_source": "memory"}
    else:
        raise ModelError(f"model must be a name, a path or a Keras model, got {type(model).__name__}")

    if preprocess == "auto":
        preprocess_fn, pre_name = _preprocess_fn(pre_mode), pre_mode
    elif callable(preprocess):
        preprocess_fn, pre_name = preprocess, getattr(preprocess, "__name__", "callable")
    else:
        preprocess_fn, pre_name = _preprocess_fn(preprocess), preprocess

    path = resolve_layer(keras_model, layer) if layer else tuple(find_target_layer(keras_model).split("/"))
    fuse_explicit = fuse_layer not in (None, "auto", "")
    if fuse_layer == "auto":
        auto = info.get("model") == "Xception" and not layer
        fuse_layer = "block13_sepconv1_act" if auto else None
    fuse_path = resolve_layer(keras_model, fuse_layer) if fuse_layer else None
    full, backbone, head, joint, fused, split_info = _split(keras_model, path, fuse_path)
    if fused is not None:
        coarse, fine = fused.outputs[0].shape[1:3], fused.outputs[1].shape[1:3]
        if None in (*coarse, *fine) or fine[0] < coarse[0] or fine[1] < coarse[1]:
            raise ModelError(f"fuse layer {'/'.join(fuse_path)!r} ({fine}) must be at least as fine as the "
                             f"target layer ({coarse})")
    in_shape = tuple(backbone.inputs[0].shape[1:3])
    if None in in_shape:
        if input_size is None:
            raise ParameterError(f"model {name!r} accepts any input size; pass input_size=")
        size = tuple(input_size)
    else:
        size = (int(in_shape[0]), int(in_shape[1]))
        if input_size is not None and tuple(input_size) != size:
            raise ParameterError(f"model {name!r} takes {size} inputs; input_size={input_size} differs")
    info.update(split_info)
    info.update(
        {
            "name": name,
            "layer": "/".join(path),
            "input_size": list(size),
            "preprocess": pre_name,
            "precision": precision,
            "fuse_layer": "/".join(fuse_path) if fuse_path else None,
            "fuse_explicit": bool(fuse_explicit),
            "has_head": head is not None or joint is not None,
            "head_split": head is not None,
            "feature_shape": [int(d) for d in backbone.outputs[0].shape[1:]],
        }
    )
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        n = info.get("num_classes")
        if n is not None and len(class_names) != n:
            raise ParameterError(f"{len(class_names)} class names given for a model with {n} classes")
    sm = SaliencyModel(
        name=name,
        keras_model=full,
        backbone=backbone,
        head=head,
        joint=joint,
        target_layer="/".join(path),
        fuse_layer="/".join(fuse_path) if fuse_path else None,
        fused=fused,
        input_size=size,
        preprocess=preprocess_fn,
        source=info,
        _class_names=list(class_names) if class_names else None,
    )
    if class_loader is not None:
        sm._class_loader = lambda: _imagenet_class_names(sm)
    if key is not None:
        with _CACHE_LOCK:
            _CACHE[key] = sm
    return sm


def clear_cache() -> None:
    """Forgets the models loaded in this process."""
    with _CACHE_LOCK:
        _CACHE.clear()
