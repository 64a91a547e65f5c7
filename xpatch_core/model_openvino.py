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
-   A converted model is kept on disk (``XPATCH_OPENVINO_CACHE``, the
    :data:`KEEP` most recently used), keyed by a digest of everything the
    conversion depends on: the parts' Keras configs, every weight's bytes,
    the outputs, the input size and the versions of xpatch, Keras and
    OpenVINO. A later load of the same model reads it (tracing and
    converting Xception takes about 2 s; the digest 0.4 s). An entry is
    written to a private temporary folder and renamed into place, so
    concurrent loads never read half an entry; one that cannot be read is
    converted again and replaced; the cache holds nothing but its entries.
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

from xpatch_core import settings
from xpatch_core.errors import ModelError

#: Converted models kept on disk (each about the size of the model's weights).
KEEP = 4
#: The files of one cached entry.
_ENTRY_FILES = ("model.xml", "model.bin")
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
        cache: how the conversion was had (see the module's rules)
    """

    def __init__(self, compiled: Any, outputs: tuple[str, ...], precision: str):
        self._compiled = compiled
        self.outputs = outputs
        self.precision = precision
        #: ``"read"`` (from the disk cache), ``"stored"`` (converted, then
        #: cached), ``"not stored"`` (the cache could not be written) or
        #: ``"off"`` (converted; no cache)
        self.cache = "off"

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
    folder = settings.openvino_cache_dir()
    key = _digest(parts, outputs, (h, w), ov) if folder else None
    converted = _read_cached(ov, folder, key) if key else None
    cache_state = "off" if key is None else "read" if converted is not None else "stored"
    try:
        if converted is None:
            concrete = tf.function(fn, input_signature=[spec]).get_concrete_function()
            converted = ov.convert_model(concrete, share_weights=False)
            if key and not _store(ov, converted, folder, key):
                cache_state = "not stored"
        compiled = ov.Core().compile_model(converted, "CPU", {
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": _HINTS.get(precision, "f32"),
        })
        bf16 = compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    except Exception as e:  # noqa: BLE001 - any conversion failure is the model's matter
        raise ModelError(f"OpenVINO cannot run model {name!r} ({type(e).__name__}: {str(e)[:300]}); "
                         "use engine='tensorflow'") from e
    forward = OpenVinoForward(compiled, outputs, "mixed_bfloat16" if bf16 else "float32")
    forward.cache = cache_state
    return forward


def _digest(parts: dict[str, Any], outputs: tuple[str, ...], size: tuple[int, int], ov: Any) -> str | None:
    """The cache key of a conversion (see the module's rules), or None if
    a part's config cannot be written out (the model is then converted)."""
    import hashlib
    import json

    import keras
    import tensorflow as tf

    from xpatch_core import __version__

    digest = hashlib.blake2b(digest_size=20)
    digest.update(json.dumps([__version__, keras.__version__, tf.__version__, ov.__version__, list(outputs),
                              list(size)]).encode())
    fused, backbone, head, joint = (parts.get(k) for k in ("fused", "backbone", "head", "joint"))
    used = {"joint": joint} if joint is not None and head is None else {
        "fused" if fused is not None else "backbone": fused if fused is not None else backbone, "head": head}
    try:
        for name, model in used.items():  # the parts :func:`_graph` converts
            digest.update(name.encode())
            if model is None:
                continue
            digest.update(_canonical(json.dumps(model.get_config(), sort_keys=True)).encode())
            for v in model.weights:  # in the graph's order (their paths hold process-wide names)
                a = np.ascontiguousarray(keras.ops.convert_to_numpy(v.value))
                digest.update(f"{a.dtype}|{a.shape}".encode())
                digest.update(a.view(np.uint8).reshape(-1))
    except Exception:  # noqa: BLE001 - an odd custom layer's config: no cache for this model
        return None
    return digest.hexdigest()


def _canonical(config: str) -> str:
    """A model config (JSON) with the names Keras numbers process-wide
    (``conv2d_4``, ``keras_tensor_17``: other in every load of a model)
    renamed in order of appearance: the same graph gives the same text."""
    import re

    names: dict[str, str] = {}
    for found in re.finditer(r'"name": "([^"\\]*)"|"(keras_tensor_\d+)', config):
        names.setdefault(found[1] or found[2], f"n{len(names)}")
    return re.sub(r'"([^"\\]*)"', lambda m: f'"{names[m[1]]}"' if m[1] in names else m[0],
                  re.sub(r"keras_tensor_\d+", lambda m: names.get(m[0], m[0]), config))


def _read_cached(ov: Any, folder: str, key: str) -> Any:
    """The cached conversion of ``key``, or None (absent, or unreadable:
    that entry is then removed, to be written again)."""
    import os
    import shutil

    entry = os.path.join(folder, key)
    if not all(os.path.isfile(os.path.join(entry, f)) for f in _ENTRY_FILES):
        return None
    try:
        model = ov.Core().read_model(os.path.join(entry, "model.xml"))
        os.utime(entry)  # most recently used
        return model
    except Exception:  # noqa: BLE001 - a damaged entry is converted again
        if _ours(entry):
            shutil.rmtree(entry, ignore_errors=True)
        return None


def _store(ov: Any, converted: Any, folder: str, key: str) -> bool:
    """Writes a conversion into the cache (atomically: a private folder
    renamed into place) and keeps the :data:`KEEP` most recent entries.
    Returns whether the entry is there (a full disk, a read-only folder:
    the run goes on without it)."""
    import os
    import shutil
    import tempfile

    try:
        os.makedirs(folder, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=folder)
        try:
            ov.save_model(converted, os.path.join(tmp, "model.xml"), compress_to_fp16=False)
            os.replace(tmp, os.path.join(folder, key))
        except OSError:
            if not os.path.isdir(os.path.join(folder, key)):
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # a rename lost to a concurrent writer
        _evict(folder)
        return True
    except Exception:  # noqa: BLE001 - a cache that cannot be written is not an error
        return False


def _ours(path: str) -> bool:
    """Whether a folder holds nothing but a cache entry's files (a folder of
    anyone else's, in a cache path set to a shared place, is never removed)."""
    import os

    try:
        return set(os.listdir(path)) <= set(_ENTRY_FILES)
    except OSError:
        return False


def _evict(folder: str) -> None:
    """Removes all but the :data:`KEEP` most recently used entries (and
    temporary folders older than an hour: a writer that died); only folders
    named as entries are and holding only an entry's files."""
    import os
    import re
    import shutil
    import time

    entries, now = [], time.time()
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if not os.path.isdir(path) or os.path.islink(path) or not _ours(path):
            continue
        if name.startswith(".tmp-"):
            if now - os.path.getmtime(path) > 3600:
                shutil.rmtree(path, ignore_errors=True)
        elif re.fullmatch(r"[0-9a-f]{40}", name):
            entries.append((os.path.getmtime(path), path))
    for _, path in sorted(entries, reverse=True)[KEEP:]:
        shutil.rmtree(path, ignore_errors=True)


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
            sm.source["openvino_cache"] = sm.ov_forward.cache
            if sm.ov_forward.precision != precision:
                sm.source["precision"] = sm.ov_forward.precision
                sm.source["precision_reason"] = (
                    "OpenVINO found no native bfloat16 on this CPU" if precision == "mixed_bfloat16"
                    else "OpenVINO chose bfloat16")
    sm.source.update({"engine": engine, "engine_requested": requested, "engine_reason": reason})


__all__ = ["OpenVinoForward", "attach_forward", "compile_forward", "import_openvino"]
