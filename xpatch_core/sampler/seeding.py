"""Seeds, sample keys and the per-image random generators.

Rules:

-   A seed is a non-negative int; a sample key is ``None``, a ``str``,
    ``bytes`` or an ``int`` (never a bool or a float).
-   Keys are hashed with BLAKE2b (64 bits) over their bytes tagged by type
    (so ``None`` and ``"None"`` differ), never with Python's per-process
    salted :func:`hash`.
-   One image's generator depends only on ``(seed, key)``:
    ``Generator(PCG64(SeedSequence([seed, stable_key_hash(key)])))``, so
    results do not depend on call order, batch size or the number of
    workers. The global NumPy generator is never touched.

This module imports nothing from the rest of the package.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from xpatch_core.errors import ParameterError

__all__ = ["check_seed", "image_rng", "seeded_rng", "stable_key_hash"]


def check_seed(seed: Any) -> int:
    """Checks a seed: a non-negative int.

    Args:
        seed: the value to check

    Returns:
        the seed as a Python int

    Raises:
        ParameterError: if it is not a non-negative int
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, (bool, np.bool_)) or seed < 0:
        raise ParameterError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def stable_key_hash(key: Any) -> int:
    """A 64-bit hash of a sample key that is stable across processes.

    Python's :func:`hash` is salted per process, so it is never used.

    Args:
        key: ``None``, a ``str`` (e.g. a FiftyOne sample id or a filepath),
            ``bytes`` or an ``int``

    Returns:
        an int in ``[0, 2**64)``

    Raises:
        ParameterError: for a key of any other type
    """
    if key is None:
        data = b"n:"
    elif isinstance(key, str):
        data = b"s:" + key.encode("utf-8", "surrogatepass")
    elif isinstance(key, (bytes, bytearray)):
        data = b"b:" + bytes(key)
    elif isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        data = b"i:" + str(int(key)).encode()
    else:
        raise ParameterError(f"key must be None, str, bytes or int, got {type(key).__name__}")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def seeded_rng(seed: int, key_hash: int) -> np.random.Generator:
    """The generator of a checked seed and a key's hash.

    Args:
        seed: a non-negative int (not checked)
        key_hash: :func:`stable_key_hash` of the sample key

    Returns:
        ``Generator(PCG64(SeedSequence([seed, key_hash])))``
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, key_hash])))


def image_rng(seed: int = 0, key: Any = None) -> np.random.Generator:
    """The random generator used for one image.

    It depends only on ``(seed, key)``, so results do not depend on call
    order, batch size or the number of workers.

    Args:
        seed: a non-negative int
        key: the sample key, see :func:`stable_key_hash`

    Returns:
        ``Generator(PCG64(SeedSequence([seed, stable_key_hash(key)])))``

    Raises:
        ParameterError: for a negative or non-int seed or a bad key
    """
    return seeded_rng(check_seed(seed), stable_key_hash(key))
