"""Write locks in the database: one run per field (or per shard range) at a time.

Rules:

-   Locks live in the ``xpatch_locks`` collection of FiftyOne's database,
    taken atomically (a unique ``_id``) and written with journaling, so a
    database restart does not undo a lock.
-   A lock held by a dead process on this host, or not refreshed
    (:func:`heartbeat`, every write chunk) for ``XPATCH_LOCK_TTL`` seconds,
    is taken over.
-   The lock of a whole field conflicts with every lock of that field; the
    lock of a shard's id range conflicts with the whole-field lock and with
    the same range (see :func:`acquire_lock`).
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Sequence
from typing import Any

from xpatch_core import settings
from xpatch_core.errors import XpatchError
from xpatch_core.runs.collections import range_name


def collection() -> Any:
    """The ``xpatch_locks`` collection (journaled writes)."""
    import fiftyone.core.odm as foo
    from pymongo import WriteConcern

    # Journaled: a lock taken or released is not undone by an unclean database restart
    # (acknowledged but unjournaled writes of the last ~100 ms are lost by a crash).
    return foo.get_db_conn()["xpatch_locks"].with_options(write_concern=WriteConcern(j=True))


def pid_alive(pid: int) -> bool:
    """Whether a process of this host is alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_live(held: dict[str, Any]) -> bool:
    """Whether a lock document belongs to a live run (or to this process)."""
    same_host = held.get("host") == socket.gethostname()
    if held.get("pid") == os.getpid() and same_host:
        return True
    stale = time.time() - float(held.get("heartbeat", 0)) > settings.lock_ttl()
    dead = same_host and not pid_alive(int(held.get("pid", -1)))
    return not (stale or dead)


def acquire_lock(dataset: Any, field_name: str, *, id_range: Sequence[Any] | None = None) -> str:
    """Takes the write lock of a field, or of an id range of it, atomically,
    in the database.

    A lock held by a dead process on this host, or not refreshed for
    ``XPATCH_LOCK_TTL`` seconds, is taken over.

    The lock of a whole field (``id_range=None``, id ``<dataset>:<field>``)
    conflicts with every lock of that field; the lock of a shard's range
    (id ``<dataset>:<field>:<lo>-<hi>``) conflicts with the whole-field lock
    and with the same range, so the shards of one sharded run hold their
    locks together while an unsharded run (or a delete) of the field is
    refused. The same range is excluded by the unique ``_id``; a whole-field
    lock against range locks by *insert, then check*: each side first
    inserts its own lock, then looks for a live lock of the other kind and,
    finding one, withdraws its own and fails. Since both inserts happen
    before both checks, two conflicting runs may both back off but never
    both proceed (reads go to the primary; on a replica set use the default
    majority write concern).

    Args:
        dataset: a FiftyOne dataset
        field_name: the field to write
        id_range: ``(lo, hi)`` sample ids (None for unbounded) to lock only
            a shard's range

    Returns:
        the lock id

    Raises:
        XpatchError: if another live run holds a conflicting lock
    """
    import pymongo.errors

    coll = collection()
    base = f"{dataset._doc.id}:{field_name}"
    lock_id = base if id_range is None else f"{base}:{range_name(id_range)}"
    me = {"_id": lock_id, "pid": os.getpid(), "host": socket.gethostname(), "heartbeat": time.time(),
          "dataset": dataset.name, "field": field_name}

    def _refuse(held: dict[str, Any]) -> XpatchError:
        return XpatchError(
            f"field {field_name!r} of dataset {dataset.name!r} is being written by another run "
            f"(pid {held.get('pid')} on {held.get('host')}); wait for it to finish or choose another field"
        )

    for _ in range(3):
        try:
            coll.insert_one(me)
        except pymongo.errors.DuplicateKeyError:
            held = coll.find_one({"_id": lock_id})
            if held is None:
                continue
            if not lock_live(held):
                coll.delete_one({"_id": lock_id, "heartbeat": held.get("heartbeat")})
                continue
            raise _refuse(held) from None
        others = {"_id": {"$regex": f"^{re.escape(base)}:"}} if id_range is None else {"_id": base}
        try:
            for held in coll.find(others):
                if held["_id"] == lock_id:
                    continue
                if lock_live(held):
                    raise _refuse(held)
                coll.delete_one({"_id": held["_id"], "heartbeat": held.get("heartbeat")})
        except BaseException:
            # refused, or interrupted between the insert and the return: the caller never
            # gets this lock, so withdraw it (a lock of this process never goes stale)
            coll.delete_one({"_id": lock_id, "pid": os.getpid()})
            raise
        return lock_id
    raise XpatchError(f"could not take the lock of field {field_name!r}")


def heartbeat(lock_id: str) -> None:
    """Refreshes a lock taken by this process."""
    collection().update_one({"_id": lock_id, "pid": os.getpid()}, {"$set": {"heartbeat": time.time()}})


def release_lock(lock_id: str) -> None:
    """Releases a lock taken by this process.

    Args:
        lock_id: the id :func:`acquire_lock` returned
    """
    collection().delete_one({"_id": lock_id, "pid": os.getpid()})



__all__ = ["acquire_lock", "collection", "heartbeat", "lock_live", "pid_alive", "release_lock"]
