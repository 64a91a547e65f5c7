"""Third-party notices that are not the user's concern, kept off the screen.

Only notices about choices xpatch made for the user are dropped, each by its
exact text, at its source (a logging filter on the logger that emits it);
every other warning and every error still shows:

-   FiftyOne's "You are running the oldest supported major version of
    MongoDB" notice, when FiftyOne runs its own embedded database (the
    ``mongod`` that ``make install`` pins); with a ``database_uri`` of the
    user's, the notice is theirs and stays.

TensorFlow's start-up lines (oneDNN, CUDA probes) are kept off stderr where
TensorFlow is imported (:mod:`xpatch_core._tfsetup`).
"""

from __future__ import annotations

import logging

_DB_LOGGER = "fiftyone.core.odm.database"
_OLDEST_MONGODB = "You are running the oldest supported major version of MongoDB"


class _DropNotice(logging.Filter):
    """Drops log records whose message starts with one text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.text)


def quiet_third_party() -> None:
    """Installs the filters (once per process; see the module docstring)."""
    import fiftyone as fo

    logger = logging.getLogger(_DB_LOGGER)
    if fo.config.database_uri is None and not any(isinstance(f, _DropNotice) for f in logger.filters):
        logger.addFilter(_DropNotice(_OLDEST_MONGODB))


__all__ = ["quiet_third_party"]
