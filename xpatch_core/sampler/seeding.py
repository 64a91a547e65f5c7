"""Per-image random generators that do not depend on call order.

Rules:

-   One image's generator depends only on ``(seed, key)``: results do not
    depend on call order, batch size or the number of workers.
-   Sample keys are hashed with BLAKE2b (64 bits, tagged by type, see
    :func:`~xpatch_core.sampler.checks.check_key`), never with Python's
    per-process salted :func:`hash`.
-   The global NumPy generator is never touched.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from xpatch_core.sampler.checks import check_key, check_seed

__all__ = ["image_rng", "stable_key_hash"]


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
    return int.from_bytes(hashlib.blake2b(check_key(key), digest_size=8).digest(), "little")


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
    seq = np.random.SeedSequence([check_seed(seed), stable_key_hash(key)])
    return np.random.Generator(np.random.PCG64(seq))
