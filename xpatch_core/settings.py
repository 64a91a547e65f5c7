"""Settings read from the environment, in one place.

Every ``XPATCH_*`` variable the library honours is read here, when it is
used (not at import), so a worker can change them between runs:

| variable | meaning | default |
| --- | --- | --- |
| ``XPATCH_WEIGHTS`` | weights file for the default Xception | unset (Keras' cache) |
| ``XPATCH_BATCH_SIZE`` | overrides a run's batch size on this worker | unset |
| ``XPATCH_DECODE_WORKERS`` | image decoding threads | the usable cores, at most 16 |
| ``XPATCH_WRITE_CHUNK`` | samples per bulk database write | 64 |
| ``XPATCH_LOCK_TTL`` | seconds after which a silent lock or shard counts as dead | 120 |
| ``XPATCH_MAX_PIXELS`` | images with more pixels are refused from the header | 178,956,970 |
| ``XPATCH_CACHE`` | where offline material is extracted | ``~/.cache/xpatch`` |
| ``XPATCH_RATES`` | this machine's measured run speeds (for time estimates) | ``<XPATCH_CACHE>/rates.json`` |
| ``XPATCH_TF_INTRA_THREADS`` / ``XPATCH_TF_INTER_THREADS`` | TensorFlow's thread pools | TensorFlow's |
| ``XPATCH_GPU_MEMORY_GROWTH`` | ``1`` lets GPU memory grow as needed | 1 |
| ``XPATCH_TF_VERBOSE`` | ``1`` shows TensorFlow's start-up logs | 0 |
| ``XPATCH_MODEL_CACHE`` | models kept loaded per process (0: none) | 3 |
| ``XPATCH_MODEL_CACHE_MB`` | parameter memory of the kept models, in MiB | 2048 |
| ``XPATCH_ENGINE`` | what ``engine="auto"`` means: ``tensorflow`` or ``openvino`` | chosen per machine |
| ``XPATCH_OPENVINO_CACHE`` | folder of converted OpenVINO models (``off``: convert on every load) | ``<XPATCH_CACHE>/openvino`` |

Read here too, because they decide what hardware xpatch uses:
``CUDA_VISIBLE_DEVICES`` (``""`` or ``-1`` hides the GPUs) and
``TF_ENABLE_ONEDNN_OPTS`` (``0`` turns TensorFlow's oneDNN CPU kernels, and
so native bfloat16 on the CPU, off).
"""

from __future__ import annotations

import os

from xpatch_core.defaults import MODEL_CACHE
from xpatch_core.errors import ParameterError


def _int(name: str, default: int | None, *, lo: int = 1) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ParameterError(f"{name} must be an integer, got {raw!r}") from None
    if value < lo:
        raise ParameterError(f"{name} must be >= {lo}, got {value}")
    return value


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ParameterError(f"{name} must be a number, got {raw!r}") from None
    if not value > 0:
        raise ParameterError(f"{name} must be > 0, got {value}")
    return value


def weights_file() -> str | None:
    """``XPATCH_WEIGHTS``: the default Xception's weights file, or None."""
    return os.environ.get("XPATCH_WEIGHTS") or None


def batch_size_override() -> int | None:
    """``XPATCH_BATCH_SIZE``: this worker's batch size, or None."""
    return _int("XPATCH_BATCH_SIZE", None)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, else the count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def decode_workers() -> int:
    """``XPATCH_DECODE_WORKERS``: decoding threads (default: the usable
    cores, at most 16; Pillow decodes and resizes without the GIL)."""
    return _int("XPATCH_DECODE_WORKERS", min(16, usable_cores()))


def write_chunk() -> int:
    """``XPATCH_WRITE_CHUNK``: samples per bulk write (default 64)."""
    return _int("XPATCH_WRITE_CHUNK", 64)


def lock_ttl() -> float:
    """``XPATCH_LOCK_TTL``: seconds after which a silent lock is dead (120)."""
    return _float("XPATCH_LOCK_TTL", 120.0)


def max_pixels() -> int:
    """``XPATCH_MAX_PIXELS``: the largest image accepted, in pixels."""
    return _int("XPATCH_MAX_PIXELS", 178_956_970)


def cache_dir() -> str:
    """``XPATCH_CACHE``: where offline material is extracted."""
    return os.environ.get("XPATCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "xpatch")


def rates_file() -> str:
    """``XPATCH_RATES``: the file of this machine's measured run speeds
    (default ``rates.json`` in :func:`cache_dir`)."""
    return os.environ.get("XPATCH_RATES") or os.path.join(cache_dir(), "rates.json")


def tf_threads() -> tuple[int | None, int | None]:
    """``XPATCH_TF_INTRA_THREADS`` and ``XPATCH_TF_INTER_THREADS``, or None."""
    return _int("XPATCH_TF_INTRA_THREADS", None), _int("XPATCH_TF_INTER_THREADS", None)


def gpu_memory_growth() -> bool:
    """``XPATCH_GPU_MEMORY_GROWTH``: whether GPU memory grows as needed."""
    return os.environ.get("XPATCH_GPU_MEMORY_GROWTH", "1") == "1"


def tf_verbose() -> bool:
    """``XPATCH_TF_VERBOSE``: whether TensorFlow's start-up logs are shown."""
    return os.environ.get("XPATCH_TF_VERBOSE") == "1"


def model_cache_count() -> int:
    """``XPATCH_MODEL_CACHE``: models kept loaded per process (default 3)."""
    return _int("XPATCH_MODEL_CACHE", MODEL_CACHE["count"], lo=0)


def model_cache_bytes() -> int:
    """``XPATCH_MODEL_CACHE_MB``: parameter bytes of the kept models (2 GiB)."""
    return _int("XPATCH_MODEL_CACHE_MB", MODEL_CACHE["megabytes"], lo=0) << 20


def engine_override() -> str | None:
    """``XPATCH_ENGINE``: the engine ``engine="auto"`` stands for, or None.

    Raises:
        ParameterError: for a value other than ``tensorflow``, ``openvino``
            or ``auto``
    """
    value = os.environ.get("XPATCH_ENGINE", "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("tensorflow", "openvino"):
        raise ParameterError(f"XPATCH_ENGINE must be tensorflow, openvino or auto, got {value!r}")
    return value


def openvino_cache_dir() -> str | None:
    """``XPATCH_OPENVINO_CACHE``: the folder of converted OpenVINO models
    (default ``openvino`` in :func:`cache_dir`), or None when set to
    ``off`` (or ``0``)."""
    value = os.environ.get("XPATCH_OPENVINO_CACHE", "").strip()
    if value.lower() in ("off", "0", "none", "false"):
        return None
    return value or os.path.join(cache_dir(), "openvino")


def gpus_hidden() -> bool:
    """Whether ``CUDA_VISIBLE_DEVICES`` hides every GPU (``""`` or ``-1``)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return value is not None and value.strip() in ("", "-1")


def onednn_disabled() -> bool:
    """Whether ``TF_ENABLE_ONEDNN_OPTS=0`` turns TensorFlow's oneDNN CPU kernels off."""
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip() == "0"


def set_tf_log_level() -> None:
    """Sets ``TF_CPP_MIN_LOG_LEVEL`` to 2 (TensorFlow's info logs off) unless set."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


__all__ = [
    "batch_size_override",
    "cache_dir",
    "decode_workers",
    "gpu_memory_growth",
    "gpus_hidden",
    "lock_ttl",
    "openvino_cache_dir",
    "max_pixels",
    "rates_file",
    "model_cache_bytes",
    "model_cache_count",
    "onednn_disabled",
    "set_tf_log_level",
    "tf_threads",
    "tf_verbose",
    "usable_cores",
    "weights_file",
    "write_chunk",
]
