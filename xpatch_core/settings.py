"""Settings read from the environment, in one place.

Every ``XPATCH_*`` variable the library honours is read here, when it is
used (not at import), so a worker can change them between runs:

| variable | meaning | default |
| --- | --- | --- |
| ``XPATCH_WEIGHTS`` | weights file for the default Xception | unset (Keras' cache) |
| ``XPATCH_BATCH_SIZE`` | overrides a run's batch size on this worker | unset |
| ``XPATCH_DECODE_WORKERS`` | image decoding threads | 2 |
| ``XPATCH_WRITE_CHUNK`` | samples per bulk database write | 64 |
| ``XPATCH_LOCK_TTL`` | seconds after which a silent lock or shard counts as dead | 120 |
| ``XPATCH_MAX_PIXELS`` | images with more pixels are refused from the header | 178,956,970 |
| ``XPATCH_CACHE`` | where offline material is extracted | ``~/.cache/xpatch`` |
| ``XPATCH_TF_INTRA_THREADS`` / ``XPATCH_TF_INTER_THREADS`` | TensorFlow's thread pools | TensorFlow's |
| ``XPATCH_GPU_MEMORY_GROWTH`` | ``1`` lets GPU memory grow as needed | 1 |
| ``XPATCH_TF_VERBOSE`` | ``1`` shows TensorFlow's start-up logs | 0 |
"""

from __future__ import annotations

import os

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


def decode_workers() -> int:
    """``XPATCH_DECODE_WORKERS``: decoding threads (default 2)."""
    return _int("XPATCH_DECODE_WORKERS", 2)


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


def tf_threads() -> tuple[int | None, int | None]:
    """``XPATCH_TF_INTRA_THREADS`` and ``XPATCH_TF_INTER_THREADS``, or None."""
    return _int("XPATCH_TF_INTRA_THREADS", None), _int("XPATCH_TF_INTER_THREADS", None)


def gpu_memory_growth() -> bool:
    """``XPATCH_GPU_MEMORY_GROWTH``: whether GPU memory grows as needed."""
    return os.environ.get("XPATCH_GPU_MEMORY_GROWTH", "1") == "1"


def tf_verbose() -> bool:
    """``XPATCH_TF_VERBOSE``: whether TensorFlow's start-up logs are shown."""
    return os.environ.get("XPATCH_TF_VERBOSE") == "1"


__all__ = [
    "batch_size_override",
    "cache_dir",
    "decode_workers",
    "gpu_memory_growth",
    "lock_ttl",
    "max_pixels",
    "tf_threads",
    "tf_verbose",
    "weights_file",
    "write_chunk",
]
