"""The loaded models a process keeps: bounded, least recently used first out.

A long process (the App server, a delegated worker) loads models on demand;
keeping them saves the load on the next run, but without a bound every model
ever used stays in memory. The cache holds at most
:func:`xpatch_core.settings.model_cache_count` models and about
:func:`xpatch_core.settings.model_cache_bytes` of parameters (a model larger
than that is not kept), and evicts the least recently used. Keys carry the
model file's identity (size, mtime, inode and content hash), so a model
retrained and saved to the same path is a new key, and the stale entry for
that path is dropped when the new one is stored.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from xpatch_core import settings


@dataclass
class CacheEntry:
    """One kept model.

    Attributes:
        value: the loaded model
        nbytes: the estimate of its parameter memory
        name: a short name for people
        paths: the files it was loaded from (model or weights)
    """

    value: Any
    nbytes: int
    name: str
    paths: tuple[str, ...] = ()


class ModelCache:
    """A thread-safe LRU cache of loaded models, bounded by count and bytes."""

    def __init__(self) -> None:
        self._entries: OrderedDict[Any, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any | None:
        """Returns the kept model for a key (and marks it recently used).

        Args:
            key: a hashable key

        Returns:
            the model, or None
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry.value

    def put(self, key: Any, value: Any, nbytes: int, name: str, paths: tuple[str, ...] = ()) -> bool:
        """Keeps a model, evicting the least recently used beyond the bounds.

        Entries loaded from any of ``paths`` under another key (an older
        version of the file) are dropped first.

        Args:
            key: a hashable key
            value: the model
            nbytes: its parameter memory estimate
            name: a short name for people
            paths: the files it was loaded from

        Returns:
            whether the model was kept (False when it alone exceeds the
            memory bound or the cache is off)
        """
        max_count, max_bytes = settings.model_cache_count(), settings.model_cache_bytes()
        with self._lock:
            for k in [k for k, e in self._entries.items() if k != key and set(e.paths) & set(paths)]:
                del self._entries[k]
            if max_count < 1 or nbytes > max_bytes:
                self._entries.pop(key, None)
                return False
            self._entries[key] = CacheEntry(value, int(nbytes), name, tuple(paths))
            self._entries.move_to_end(key)
            total = sum(e.nbytes for e in self._entries.values())
            while len(self._entries) > max_count or total > max_bytes:
                _, old = self._entries.popitem(last=False)
                total -= old.nbytes
            return True

    def clear(self) -> None:
        """Forgets every kept model."""
        with self._lock:
            self._entries.clear()

    def entries(self) -> list[CacheEntry]:
        """The kept models, least recently used first.

        Returns:
            a list of :class:`CacheEntry`
        """
        with self._lock:
            return list(self._entries.values())


def parameter_bytes(keras_model: Any) -> int:
    """Estimates a Keras model's parameter memory (each variable once).

    Args:
        keras_model: a Keras model

    Returns:
        bytes
    """
    import numpy as np

    seen: dict[int, int] = {}
    for v in keras_model.weights:
        seen[id(v)] = int(np.prod(v.shape)) * np.dtype(str(v.dtype).replace("bfloat16", "float16")).itemsize
    return sum(seen.values())


__all__ = ["CacheEntry", "ModelCache", "parameter_bytes"]
