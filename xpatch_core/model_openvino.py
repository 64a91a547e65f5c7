"""The forward pass on OpenVINO's CPU runtime (``engine="openvino"``).

Rules:

-   Only the forward pass of the Keras parts runs here: the input to the
    target layer's activations (and the fuse layer's, and the head's logits
    where the model has them), as one OpenVINO model. Maps, fusion,
    normalisation and gradients stay in TensorFlow: the gradient methods
    differentiate the head in TensorFlow on OpenVINO's activations.
-   The Keras graph, kept in float32, is converted once per loaded model
    (``ov.convert_model`` on a ``tf.function``, weights copied so that
    TensorFlow keeps its own) and compiled for the CPU with the latency
    hint. OpenVINO computes in bfloat16 only where the run's precision asks
    for it and the CPU has it natively; the precision it reports is the one
    recorded.
-   A model OpenVINO cannot convert or compile, or an OpenVINO install that
    cannot be imported, raises :class:`ModelError`;
    :func:`xpatch_core.load_model` then keeps TensorFlow for ``"auto"``.
-   One inference request per call: calls from several threads are safe,
    and the GIL is released while OpenVINO computes.
-   OpenVINO's model converter sends usage telemetry to Google Analytics
    by default and writes a client id under ``~/intel``;
    :func:`import_openvino` imports it with its telemetry package hidden, so
    that it binds its own no-op stub (for this process only; a user's
    consent file is never read or written).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from xpatch_core.errors import ModelError

#: OpenVINO's names of the precisions.
_HINTS = {"float32": "f32", "mixed_bfloat16": "bf16"}
#: The telemetry modules hidden while OpenVINO is first imported.
_TELEMETRY = ("openvino_telemetry", "openvino_telemetry.backend", "openvino_telemetry.backend.backend_ga4")
_IMPORT_LOCK = threading.Lock()


def import_openvino() -> Any:
    """Imports OpenVINO with its usage telemetry off (see the module's rules).

    Returns:
        the ``openvino`` module
    """
    with _IMPORT_LOCK:
        if "openvino" in sys.modules or any(m in sys.modules for m in _TELEMETRY):
            import openvino  # already imported (by us, or by the user with their own consent)

            return openvino
        for name in _TELEMETRY:
            sys.modules[name] = None  # import fails: OpenVINO falls back to its no-op stub
        try:
            import openvino
        finally:
            for name in _TELEMETRY:
                sys.modules.pop(name, None)
        return openvino


class OpenVinoForward:
    """A model's forward pass compiled by OpenVINO; call it on a float32
    ``(B, H, W, 3)`` batch.

    Attributes:
        outputs: the names of what a call returns, among ``"acts"`` (target
            layer), ``"fine"`` (fuse layer) and ``"logits"``
        precision: the precision OpenVINO computes in, ``"float32"`` or
            ``"mixed_bfloat16"``
    """

    def __init__(self, compiled: Any, outputs: tuple[str, ...], precision: str):
        self._compiled = compiled
        self.outputs = outputs
        self.precision = precision

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Runs one batch.

        Args:
            x: float32 ``(B, H, W, 3)`` network input

        Returns:
            a dict of float32 arrays, one per name in :attr:`outputs`
        """
        request = self._compiled.create_infer_request()
        out = request.infer({0: np.ascontiguousarray(x, np.float32)})
        return {k: np.asarray(out[self._compiled.outputs[i]], np.float32) for i, k in enumerate(self.outputs)}


def compile_forward(parts: dict[str, Any], input_size: tuple[int, int], precision: str,
                    name: str) -> OpenVinoForward:
    """Converts the forward pass to OpenVINO and compiles it for the CPU.

    Args:
        parts: the model's parts: ``"fused"`` (input to ``[target,
            fine]``), ``"backbone"`` (input to the target layer), ``"head"``
            (target activations to logits) and ``"joint"`` (input to
            ``[target, logits]``, where the head cannot be split off), each
            a Keras model or None
        input_size: ``(height, width)`` of the network input
        precision: ``"float32"`` or ``"mixed_bfloat16"``
        name: the model's name, for messages

    Returns:
        an :class:`OpenVinoForward`

    Raises:
        ModelError: if OpenVINO cannot convert or compile the model
    """
    import tensorflow as tf

    try:
        ov = import_openvino()
    except Exception as e:  # noqa: BLE001 - a broken install (native library, NumPy ABI)
        raise ModelError(f"OpenVINO cannot be imported ({type(e).__name__}: {str(e)[:300]}); "
                         "use engine='tensorflow' or reinstall openvino") from e
    h, w = input_size
    outputs, fn = _graph(parts)
    spec = tf.TensorSpec([None, h, w, 3], tf.float32)
    try:
        concrete = tf.function(fn, input_signature=[spec]).get_concrete_function()
        converted = ov.convert_model(concrete, share_weights=False)
        compiled = ov.Core().compile_model(converted, "CPU", {
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": _HINTS.get(precision, "f32"),
        })
        bf16 = compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    except Exception as e:  # noqa: BLE001 - any conversion failure is the model's matter
        raise ModelError(f"OpenVINO cannot run model {name!r} ({type(e).__name__}: {str(e)[:300]}); "
                         "use engine='tensorflow'") from e
    return OpenVinoForward(compiled, outputs, "mixed_bfloat16" if bf16 else "float32")


def _graph(parts: dict[str, Any]) -> tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]:
    """The Keras forward to convert, and the names of its outputs: the fused
    model (and the head) where the head splits off or there is none, else
    the joint model (no fine layer: a fusion then stays in TensorFlow)."""
    import tensorflow as tf

    fused, backbone, head, joint = (parts.get(k) for k in ("fused", "backbone", "head", "joint"))
    if joint is not None and head is None:
        def fn(x: Any) -> tuple[Any, ...]:
            return tuple(tf.cast(t, tf.float32) for t in joint(x, training=False))

        return ("acts", "logits"), fn
    outputs = ("acts",) + (("fine",) if fused is not None else ()) + (("logits",) if head is not None else ())

    def fn(x: Any) -> tuple[Any, ...]:  # noqa: F811 - one of the two graphs
        out = list(fused(x, training=False)) if fused is not None else [backbone(x, training=False)]
        if head is not None:
            out.append(head(out[0], training=False))
        return tuple(tf.cast(t, tf.float32) for t in out)

    return outputs, fn


def attach_forward(sm: Any, engine: str, requested: str, reason: str, precision: str) -> None:
    """Compiles a loaded model's forward pass with OpenVINO where the engine
    is ``"openvino"``; ``"auto"`` keeps TensorFlow when OpenVINO cannot run
    the model. Records the engine (and the precision OpenVINO computes in)
    in ``sm.source``.

    Args:
        sm: a :class:`xpatch_core.models.SaliencyModel`
        engine: the resolved engine
        requested: the engine asked for
        reason: why ``engine`` was chosen
        precision: the resolved precision

    Raises:
        ModelError: if ``"openvino"`` was asked for and cannot run the model
    """
    if engine == "openvino":
        parts = {"fused": sm.fused, "backbone": sm.backbone, "head": sm.head, "joint": sm.joint}
        try:
            sm.ov_forward = compile_forward(parts, sm.input_size, precision, sm.name)
        except ModelError as e:
            if requested == "openvino":
                raise
            engine, reason = "tensorflow", f"OpenVINO could not run this model: {e}"
        else:
            if sm.ov_forward.precision != precision:
                sm.source["precision"] = sm.ov_forward.precision
                sm.source["precision_reason"] = (
                    "OpenVINO found no native bfloat16 on this CPU" if precision == "mixed_bfloat16"
                    else "OpenVINO chose bfloat16")
    sm.source.update({"engine": engine, "engine_requested": requested, "engine_reason": reason})


__all__ = ["OpenVinoForward", "attach_forward", "compile_forward", "import_openvino"]
