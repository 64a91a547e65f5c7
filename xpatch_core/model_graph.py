"""A Keras classifier's layer graph: finding the target layer, and splitting
the model there into a backbone (input to activations) and a head
(activations to logits), with the compute precision of each part.

Works for functional and Sequential models and for sub-models nested in
them (a fine-tuned classifier around a ``keras.applications`` base): nested
graphs are traced through, so the backbone and head are flat graphs of the
original layers (they share weights with the loaded model).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from xpatch_core.errors import ModelError


def as_functional(m: Any) -> Any:
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


def is_model(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def layer_candidates(model: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """All layers, depth first in graph order, with their paths."""
    out = []
    for layer in model.layers:
        path = prefix + (layer.name,)
        if is_model(layer):
            out.extend(layer_candidates(layer, path))
        out.append((path, layer))
    return out


def output_shape(layer: Any) -> tuple | None:
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
    for path, layer in layer_candidates(model):
        if is_model(layer) or isinstance(layer, keras.layers.InputLayer):
            continue
        shape = output_shape(layer)
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
    candidates = layer_candidates(model)
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
    shape = output_shape(target)
    if is_model(target) or shape is None or len(shape) != 4:
        raise ModelError(f"layer {'/'.join(path)!r} has output shape {shape}; a 4-D (N, H, W, C) layer is needed")
    return path


def linear_version(op: Any) -> Any:
    """Returns a callable computing ``op``'s pre-softmax output."""
    import keras

    act = getattr(op, "activation", None)
    act_name = getattr(act, "__name__", "")
    if isinstance(op, keras.layers.Softmax) or (
        isinstance(op, keras.layers.Activation) and act_name in ("softmax", "sigmoid")
    ):
        return lambda x, *a, **k: x
    if act_name in ("softmax", "sigmoid") and isinstance(op, keras.layers.Layer) and not is_model(op):
        cfg = op.get_config()
        cfg["activation"] = "linear"
        cfg["name"] = f"{op.name}_logits"
        new = op.__class__.from_config(cfg)
        new.build(op.input.shape)
        new.set_weights(op.get_weights())
        return new
    return op


def trace(model: Any, inputs: Any, paths: Sequence[tuple[str, ...]], strip: bool) -> tuple[Any, list[Any]]:
    """Re-runs a functional graph on new symbolic inputs.

    Returns the outputs (with a final softmax removed when ``strip``) and the
    tensors of the layers at ``paths`` (None for a path not on the graph).
    """
    model = as_functional(model)
    captured: list[Any] = [None] * len(paths)
    out_ops = {id(t._keras_history[0]) for t in model.outputs} if strip else set()

    def operation_fn(op: Any) -> Any:
        matching = [(i, p) for i, p in enumerate(paths) if p and p[0] == op.name]
        if matching:
            leaves = [i for i, p in matching if len(p) == 1]
            deeper = [(i, p[1:]) for i, p in matching if len(p) > 1]
            if deeper:

                def descend(*args: Any, **kwargs: Any) -> Any:
                    out, feats = trace(op, args[0], [p for _, p in deeper], strip=id(op) in out_ops)
                    for (i, _), feat in zip(deeper, feats):
                        captured[i] = feat
                    return out

                return descend
            fn = linear_version(op) if id(op) in out_ops else op

            def capture(*args: Any, **kwargs: Any) -> Any:
                out = fn(*args, **kwargs)
                for i in leaves:
                    captured[i] = out
                return out

            return capture
        if id(op) in out_ops:
            if is_model(op):
                return lambda *a, **k: trace(op, a[0], [], strip=True)[0]
            return linear_version(op)
        return op

    outputs = model._run_through_graph(inputs, operation_fn=operation_fn)
    return outputs, captured


def split_model(
    keras_model: Any, path: tuple[str, ...], fuse_path: tuple[str, ...] | None = None
) -> tuple[Any, Any, Any, Any, Any, dict]:
    """Builds backbone, head, joint and fused models around the target layer."""
    import keras

    model = as_functional(keras_model)
    if len(model.inputs) != 1:
        raise ModelError(f"model {model.name!r} has {len(model.inputs)} inputs; one image input is needed")
    shape = tuple(model.inputs[0].shape[1:])
    new_input = keras.Input(shape=shape, dtype=model.inputs[0].dtype, name="xpatch_input")
    paths = [path] if fuse_path is None else [path, fuse_path]
    outputs, feats = trace(model, new_input, paths, strip=True)
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



def _operations(model: Any | None) -> dict[int, Any]:
    """The layers a flat functional model runs (sub-layers included), by id."""
    import keras

    out: dict[int, Any] = {}
    if model is None:
        return out
    for op in model.operations:
        if isinstance(op, keras.layers.InputLayer):
            continue
        flatten = getattr(op, "_flatten_layers", None)
        for layer in flatten(include_self=True, recursive=True) if flatten else [op]:
            out[id(layer)] = layer
    return out


def _switchable(layer: Any) -> bool:
    """Whether a layer's compute dtype can change: float32 weights, float
    compute, no quantisation."""
    policy = getattr(layer, "dtype_policy", None)
    if policy is None or type(policy).__name__ == "DTypePolicyMap":
        return False
    return (
        getattr(policy, "quantization_mode", None) is None
        and policy.variable_dtype == "float32"
        and policy.compute_dtype in ("float32", "bfloat16", "float16")
    )


def precision_plan(
    backbone: Any, head: Any | None, joint: Any | None, fused: Any | None, precision: str
) -> list[tuple[Any, str]]:
    """The compute dtype changes that give the parts their precision.

    The backbone computes in ``precision``; the target (and fuse) layers,
    whose outputs the saliency methods read, and every layer of the head
    compute in float32, so that features, logits, gradients and channel
    weights are float32 (the head is small; the backbone is nearly all the
    work).

    Args:
        backbone: the backbone model (see :func:`split_model`)
        head: the head model, or None
        joint: the joint model, or None
        fused: the fused model, or None
        precision: ``"float32"`` or ``"mixed_bfloat16"``

    Returns:
        ``(layer, policy name)`` pairs for the layers whose policy differs
    """
    backbone_ops = _operations(backbone)
    backbone_ops.update(_operations(fused))
    f32_ops = _operations(head)
    f32_ops.update({k: v for k, v in _operations(joint).items() if k not in backbone_ops})
    for model in (backbone, fused):
        for t in model.outputs if model is not None else ():
            op = t._keras_history[0]
            f32_ops[id(op)] = op
    plan = []
    for key, layer in {**backbone_ops, **f32_ops}.items():
        want = "float32" if key in f32_ops or precision == "float32" else precision
        if _switchable(layer) and layer.dtype_policy.name != want:
            plan.append((layer, want))
    return plan


def apply_precision_plan(plan: Sequence[tuple[Any, str]]) -> None:
    """Sets the layers' dtype policies (their float32 weights are kept).

    Args:
        plan: what :func:`precision_plan` returned
    """
    for layer, policy in plan:
        layer.dtype_policy = policy


def check_fusion(fused: Any, fuse_path: Any) -> None:
    """Refuses a fuse layer coarser than the target layer.

    Args:
        fused: the model from the input to ``[target, fine]`` activations
        fuse_path: the fuse layer's path

    Raises:
        ModelError: if the fine layer is coarser, or of unknown size
    """
    coarse, fine = fused.outputs[0].shape[1:3], fused.outputs[1].shape[1:3]
    if None in (*coarse, *fine) or fine[0] < coarse[0] or fine[1] < coarse[1]:
        raise ModelError(f"fuse layer {'/'.join(fuse_path)!r} ({fine}) must be at least as fine as the "
                         f"target layer ({coarse})")
