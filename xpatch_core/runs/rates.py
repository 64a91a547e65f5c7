"""Speeds measured on this machine, kept between processes.

Every run that processes at least :data:`MIN_SAMPLES` samples records its
speed when it completes: samples per second of its loop and the time of its
setup (loading the model), under the run's *rate key*
(:meth:`xpatch_core.runs.RunKind.rate_key`: the kind, the model and the
method for a saliency run), in ``rates.json`` of the xpatch cache folder
(``XPATCH_CACHE``). The App's forms read it to estimate how long a run will
take (:mod:`xpatch_core.runs.estimate`). The file is small, rewritten
atomically, and losing it only loses estimates; a run never fails because
it cannot be written.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from xpatch_core import settings

#: Runs that processed fewer samples record no speed (too noisy).
MIN_SAMPLES = 8
_KEEP = 200


def rates_path() -> str:
    """The file of measured speeds (``XPATCH_RATES``, default ``<XPATCH_CACHE>/rates.json``)."""
    return settings.rates_file()


def _read() -> dict[str, Any]:
    try:
        with open(rates_path()) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def machine_rate(key: str) -> dict[str, Any] | None:
    """The last speed recorded on this machine under a rate key.

    Args:
        key: a rate key

    Returns:
        ``{"images_per_s", "setup_s", "samples", "at"}`` or None
    """
    entry = _read().get(key)
    if not isinstance(entry, dict) or not float(entry.get("images_per_s") or 0) > 0:
        return None
    return entry


def record_rate(key: str, images_per_s: float, setup_s: float, samples: int) -> bool:
    """Records a measured speed under a rate key (best effort).

    Args:
        key: the rate key
        images_per_s: samples per second of the run's loop
        setup_s: seconds of the run's setup (loading its model)
        samples: the samples the speed was measured on

    Returns:
        whether it was recorded
    """
    if samples < MIN_SAMPLES or not images_per_s > 0:
        return False
    data = _read()
    data[key] = {"images_per_s": float(images_per_s), "setup_s": float(setup_s), "samples": int(samples),
                 "at": time.time()}
    if len(data) > _KEEP:
        for old in sorted(data, key=lambda k: data[k].get("at", 0))[: len(data) - _KEEP]:
            data.pop(old)
    folder = os.path.dirname(rates_path())
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".rates.", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, rates_path())
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        return False
    return True


__all__ = ["MIN_SAMPLES", "machine_rate", "rates_path", "record_rate"]
