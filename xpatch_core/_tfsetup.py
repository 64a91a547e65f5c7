"""TensorFlow set-up from the environment, done once before first use.

The settings come from :mod:`xpatch_core.settings` (all optional):

- ``XPATCH_TF_INTRA_THREADS``: threads inside one op (TensorFlow's intra-op pool)
- ``XPATCH_TF_INTER_THREADS``: ops run in parallel (inter-op pool)
- ``XPATCH_GPU_MEMORY_GROWTH``: ``1`` (default) to let GPU memory grow as needed
- ``XPATCH_TF_VERBOSE``: ``1`` shows TensorFlow's start-up logs
- ``TF_CPP_MIN_LOG_LEVEL``: defaults to ``2`` (TensorFlow's info logs off)
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from xpatch_core import settings

_DONE = False
_LOCK = threading.Lock()


def _quiet_import() -> Any:
    """Imports TensorFlow with its C++ start-up chatter (oneDNN, CUDA probes)
    kept off stderr; set ``XPATCH_TF_VERBOSE=1`` to see it. Python errors
    still propagate."""
    if settings.tf_verbose() or "tensorflow" in sys.modules:
        import tensorflow as tf

        return tf
    try:
        saved = os.dup(2)
    except OSError:
        saved = None
    if saved is not None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # the CUDA probe prints here, once
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
    return tf


def setup_tensorflow() -> None:
    """Configures TensorFlow threads and GPU memory growth once per process.

    Raises:
        ParameterError: if a thread-count setting is not a positive integer
    """
    global _DONE
    with _LOCK:
        if _DONE:
            return
        settings.set_tf_log_level()
        intra, inter = settings.tf_threads()
        tf = _quiet_import()
        try:
            if intra:
                tf.config.threading.set_intra_op_parallelism_threads(intra)
            if inter:
                tf.config.threading.set_inter_op_parallelism_threads(inter)
        except RuntimeError:
            pass  # TensorFlow already initialised by the caller: keep its settings
        if settings.gpu_memory_growth():
            for gpu in tf.config.list_physical_devices("GPU"):
                try:
                    tf.config.experimental.set_memory_growth(gpu, True)
                except RuntimeError:
                    pass
        _DONE = True
