"""TensorFlow set-up from the environment, done once before first use.

Environment variables (all optional):

- ``XPATCH_TF_INTRA_THREADS``: threads inside one op (TensorFlow's intra-op pool)
- ``XPATCH_TF_INTER_THREADS``: ops run in parallel (inter-op pool)
- ``XPATCH_GPU_MEMORY_GROWTH``: ``1`` (default) to let GPU memory grow as needed
- ``TF_CPP_MIN_LOG_LEVEL``: defaults to ``2`` (TensorFlow's info logs off)
"""

from __future__ import annotations

import os
import threading

_DONE = False
_LOCK = threading.Lock()


def setup_tensorflow() -> None:
    """Configures TensorFlow threads and GPU memory growth once per process."""
    global _DONE
    with _LOCK:
        if _DONE:
            return
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        intra = os.environ.get("XPATCH_TF_INTRA_THREADS")
        inter = os.environ.get("XPATCH_TF_INTER_THREADS")
        try:
            if intra:
                tf.config.threading.set_intra_op_parallelism_threads(int(intra))
            if inter:
                tf.config.threading.set_inter_op_parallelism_threads(int(inter))
        except RuntimeError:
            pass  # TensorFlow already initialised by the caller: keep its settings
        if os.environ.get("XPATCH_GPU_MEMORY_GROWTH", "1") == "1":
            for gpu in tf.config.list_physical_devices("GPU"):
                try:
                    tf.config.experimental.set_memory_growth(gpu, True)
                except RuntimeError:
                    pass
        _DONE = True
