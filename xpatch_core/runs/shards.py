"""Sharded background runs: one run split into N delegated operations.

A saliency or patch run over a large view is split by sample id into
``num_shards`` half-open ranges (:func:`shard_ranges`); each range becomes
one delegated operation of the same operator, which any ``fiftyone delegated
launch`` worker connected to the same database can pick up. The pieces:

-   the *parent* (the operator called with ``num_shards > 1``) validates the
    parameters, registers the run once (its config gains a ``sharding``
    entry with a fresh ``run_id`` and the ranges), creates one record per
    shard in the ``xpatch_shards`` collection and queues the child
    operations;
-   each *child* processes only the samples of its range that have no
    result yet (so it is resumable), under a lock of its own range, and
    writes its progress and failures to its own shard record with atomic
    ``$set`` updates (no read-modify-write on the shared run results);
-   :func:`xpatch_core.runs.get_run_info` adds the shard records up
    (:func:`aggregate`): processed, failed, failures, patches, and a status
    that is ``completed`` when every shard is;
-   :func:`requeue_stale` puts back in the queue the shards whose worker
    died (a killed worker leaves its delegated operation ``RUNNING``), or
    whose operation failed; another worker then finishes them. A child that
    finishes its shard also re-queues the stale shards of its run.

Counts are exact across a crash: a child records the ids of the chunk it is
about to write before writing it, so the next attempt credits the samples
that reached the database and redoes the others.

Results do not depend on the number of shards or workers: heatmaps are
computed per image and patch boxes depend only on ``(seed, sample id)``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

from xpatch_core import settings
from xpatch_core.errors import ParameterError, XpatchError
from xpatch_core.runs import collections as colls
from xpatch_core.runs import records
from xpatch_core.runs.locks import pid_alive
from xpatch_core.runs.progress import RunSummary

#: The collection of per-shard records (in FiftyOne's database).
COLLECTION = "xpatch_shards"

_HEX = re.compile(r"^[0-9a-f]{24}$")
_COUNTS = ("processed", "failed", "patches", "degenerate", "elapsed")
_SHARD_PARAMS = ("shard_run", "shard_index", "num_shards", "shard_lo", "shard_hi", "parent")


def _now() -> float:
    return time.time()


def collection() -> Any:
    """The collection of shard records (in FiftyOne's database)."""
    import fiftyone.core.odm as foo

    return foo.get_db_conn()[COLLECTION]


def _zero() -> dict[str, Any]:
    return {"processed": 0, "failed": 0, "patches": 0, "degenerate": 0, "elapsed": 0.0, "failures": []}


# -- ranges ------------------------------------------------------------------------


def shard_ranges(sample_collection: Any, num_shards: int) -> list[tuple[str | None, str | None]]:
    """Splits a collection into contiguous ranges of sample ids.

    The boundaries are quantiles of the sorted ObjectIds of the collection's
    samples, so the ranges hold about the same number of samples. Ranges
    are half-open, ``lo <= _id < hi``; the first has ``lo = None`` and the
    last ``hi = None``, so every id, including that of a sample added later,
    falls into exactly one range. Fewer ranges than asked are returned when
    the collection has fewer samples than ``num_shards`` (at least one).

    Args:
        sample_collection: a FiftyOne collection (a patches view is replaced
            by its images)
        num_shards: the number of ranges wanted, ``>= 1``

    Returns:
        a list of ``(lo, hi)`` pairs of hex ids or None

    Raises:
        ParameterError: if ``num_shards`` is not a positive integer
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ParameterError(f"num_shards must be a positive integer, got {num_shards!r}")
    view = colls.images_of(sample_collection)
    ids = sorted(view.values("id"))
    n = max(1, min(num_shards, len(ids)))
    bounds = [ids[(k * len(ids)) // n] for k in range(1, n)]
    return list(zip([None, *bounds], [*bounds, None]))


# -- the parent: register once, queue N children -----------------------------------


class ShardPlan:
    """The parent's role in :func:`xpatch_core.runs.iter_run_saliency` /
    :func:`xpatch_core.runs.iter_run_patches` (their ``shard`` argument):
    validate, register the run once with its shard ranges, create the shard
    records, and stop before processing anything.

    Args:
        num_shards: the number of shards wanted
    """

    register_only = True
    may_skip = False
    id_range = None
    checks_parameters = True

    def __init__(self, num_shards: int) -> None:
        self.num_shards = num_shards
        self.run_id = uuid.uuid4().hex
        self.ranges: list[tuple[str | None, str | None]] = []
        self.dataset: Any = None
        self.run_key: str | None = None

    def check(self, dataset: Any, run_key: str, config: records.RunConfig, overwrite: bool) -> None:
        """Refuses other parameters on an existing run (before the lock)."""
        records.check_rerun(dataset, run_key, config, overwrite)

    def start(self, view: Any, run: Any, config: records.RunConfig) -> None:
        """Registers the run and creates the shard records."""
        self.ranges = shard_ranges(view, self.num_shards)
        self.dataset, self.run_key = view._dataset, run.run_key
        sharding = {"run_id": self.run_id, "num_shards": len(self.ranges), "ranges": [list(r) for r in self.ranges]}
        previous = records.start_run(view, run.run_key, config, run.overwrite, extra={"sharding": sharding})
        field = config.field
        if run.overwrite and colls.field_exists(view._dataset, field):
            # children always resume; "redo every sample" is a cleared field
            view.clear_sample_field(field)
        ds_id = str(view._dataset._doc.id)
        coll = collection()
        coll.delete_many({"dataset_id": ds_id, "run_key": run.run_key})
        now = _now()
        coll.insert_many([
            {"_id": f"{self.run_id}:{i}", "run_id": self.run_id, "dataset_id": ds_id, "run_key": run.run_key,
             "field": field, "kind": config.kind, "index": i, "num_shards": len(self.ranges), "lo": lo, "hi": hi,
             "status": "queued", "attempts": 0, "requeues": 0, "op_id": None, "owner": None, "pid": None,
             "host": None, "heartbeat": None, "created_at": now, "updated_at": now, "total": None,
             "skipped": None, "current": _zero(), "committed": _zero(), "pending": None}
            for i, (lo, hi) in enumerate(self.ranges)
        ])
        summary = RunSummary(run_key=run.run_key, field=field, type=config.kind, total=len(view))
        records.save_results(view, run.run_key, summary, "queued",
                             {"num_shards": len(self.ranges), "run_id": self.run_id}, previous=previous)

    def save(self, view: Any, run_key: str, summary: Any, status: str, extra: dict) -> None:
        """Saves the run results (only reached on an error in the parent)."""
        records.save_results(view, run_key, summary, status, extra)

    def pending(self, ids: Sequence[str]) -> None:  # noqa: ARG002
        """Unused: the parent writes no samples."""

    def queue(self, request_params: dict[str, Any], operator_uri: str) -> list[str]:
        """Queues one delegated operation per shard.

        Args:
            request_params: the parent's ``ctx.request_params``
            operator_uri: the operator to queue (the parent's own)

        Returns:
            the delegated operation ids
        """
        base = _child_request(request_params, self.dataset)
        collection().update_many({"run_id": self.run_id},
                            {"$set": {"request": json.dumps(base, default=str), "operator": operator_uri}})
        ids = []
        for doc in collection().find({"run_id": self.run_id}).sort("index", 1):
            op_id = _queue_child(doc)
            if op_id:
                ids.append(op_id)
        return ids


def _child_request(request_params: dict[str, Any], dataset: Any) -> dict[str, Any]:
    base = {k: v for k, v in request_params.items()
            if k not in ("run_doc", "results", "target", "request_delegation", "dataset_id")}
    base["params"] = {k: v for k, v in (request_params.get("params") or {}).items() if k not in _SHARD_PARAMS}
    base["dataset_name"] = dataset.name
    base["delegated"] = True
    return json.loads(json.dumps(base, default=str))


def _queue_child(doc: dict[str, Any]) -> str | None:
    """Queues the delegated operation of a shard record that has none."""
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionContext

    claim = collection().find_one_and_update({"_id": doc["_id"], "op_id": None}, {"$set": {"op_id": "queueing"}})
    if claim is None:
        return None
    rp = json.loads(doc["request"])
    rp["params"] = {**rp["params"], "shard_run": doc["run_id"], "shard_index": doc["index"],
                    "num_shards": doc["num_shards"], "shard_lo": doc["lo"], "shard_hi": doc["hi"],
                    "parent": False, "overwrite": False, "delegate": True}
    label = f"xpatch {doc['kind']} {doc['field']}: shard {doc['index'] + 1}/{doc['num_shards']}"
    try:
        op = DelegatedOperationService().queue_operation(
            operator=doc["operator"], label=label, context=ExecutionContext(request_params=rp),
            metadata={"inputs_schema": None, "outputs_schema": None}, rerunnable=True,
        )
    except Exception:
        collection().update_one({"_id": doc["_id"], "op_id": "queueing"}, {"$set": {"op_id": None}})
        raise
    collection().update_one({"_id": doc["_id"]}, {"$set": {"op_id": str(op.id), "queued_at": _now()}})
    return str(op.id)


# -- a child: one range ------------------------------------------------------------


class ShardWorker:
    """A child's role in the ``iter_run_*`` functions (their ``shard``
    argument): process one id range, without registering the run, writing
    progress to the shard record.

    Args:
        dataset: the dataset
        run_key: the run key
        run_id: the sharded run's id (from the run's config)
        index: the shard's index
        lo: the range's lower bound (hex id) or None
        hi: the range's upper bound (hex id) or None
    """

    register_only = False
    may_skip = False
    #: :meth:`start` compares with the registered run instead
    checks_parameters = False

    def __init__(self, dataset: Any, run_key: str, run_id: str, index: int, lo: str | None,
                 hi: str | None) -> None:
        self.dataset = dataset
        self.run_key = run_key
        self.run_id = run_id
        self.index = int(index)
        self.id_range = colls.check_range((lo, hi))
        self.doc_id = f"{run_id}:{self.index}"
        self.owner = uuid.uuid4().hex
        self.first = True
        self.tally: Any = None
        self.field: str | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any], dataset: Any, run_key: str) -> ShardWorker:
        """Builds the worker of a child operation from its parameters."""
        run_id = params.get("shard_run")
        index = params.get("shard_index")
        if not isinstance(run_id, str) or not re.fullmatch(r"[0-9a-f]{32}", run_id):
            raise ParameterError(f"invalid shard run id {run_id!r}")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ParameterError(f"invalid shard index {index!r}")
        return cls(dataset, run_key, run_id, index, params.get("shard_lo"), params.get("shard_hi"))

    def _filter(self) -> dict[str, Any]:
        return {"_id": self.doc_id, "owner": self.owner}

    def claim(self) -> None:
        """Marks the shard as taken by this process (before the model loads).

        Raises:
            XpatchError: if the shard record is gone (its run was replaced)
        """
        doc = collection().find_one_and_update(
            {"_id": self.doc_id, "run_id": self.run_id},
            {"$set": {"status": "starting", "owner": self.owner, "pid": os.getpid(),
                      "host": socket.gethostname(), "heartbeat": _now(), "updated_at": _now()}},
        )
        if doc is None:
            raise XpatchError(f"shard {self.index} of run {self.run_id} no longer exists "
                              f"(run {self.run_key!r} was deleted or started again)")

    def check(self, dataset: Any, run_key: str, config: records.RunConfig, overwrite: bool) -> None:
        """Nothing to check before the lock: :meth:`start` compares with the
        registered run."""

    def start(self, view: Any, run: Any, config: records.RunConfig) -> None:
        """Checks that the run is still this one, then starts an attempt,
        crediting what an earlier attempt of this shard wrote."""
        self.tally, self.field = run.tally, config.field
        dataset = view._dataset
        registered = records.run_config(dataset, run.run_key)
        if (registered.get("sharding") or {}).get("run_id") != self.run_id:
            raise XpatchError(f"run {run.run_key!r} was started again since shard {self.index} was queued; "
                              "this shard is obsolete")
        diff = config.differences(registered)
        if diff:
            raise ParameterError(f"shard {self.index} would compute with other parameters than the "
                                 f"registered run ({', '.join(diff)}): check the worker's files and models")
        before = collection().find_one_and_update(
            self._filter(),
            {"$inc": {"attempts": 1},
             "$set": {"status": "running", "pid": os.getpid(), "host": socket.gethostname(),
                      "heartbeat": _now(), "updated_at": _now(), "started_at": _now()}},
        )
        if before is None:
            raise XpatchError(f"shard {self.index} was taken over by another worker")
        self.first = int(before.get("attempts") or 0) == 0
        if not self.first:
            self._reconcile(dataset, before)

    def _reconcile(self, dataset: Any, before: dict[str, Any]) -> None:
        committed = {**_zero(), **(before.get("committed") or {})}
        current = before.get("current") or {}
        for k in ("processed", "patches", "degenerate", "elapsed"):
            committed[k] += current.get(k) or 0
        pending = before.get("pending") or []
        if pending:
            written = dataset.select(pending).exists(self.field)
            values = written.values(self.field)
            committed["processed"] += len(values)
            for k, v in self.tally(values).items():
                committed[k] += v
        committed["failures"] = []
        collection().update_one(self._filter(), {"$set": {"committed": committed, "current": _zero(),
                                                     "pending": None}})

    def pending(self, ids: Sequence[str]) -> None:
        """Records the ids of the chunk about to be written."""
        collection().update_one(self._filter(), {"$set": {"pending": list(ids), "heartbeat": _now()}})

    def save(self, view: Any, run_key: str, summary: Any, status: str, extra: dict) -> None:  # noqa: ARG002
        """Writes this attempt's progress to the shard record (atomic ``$set``)."""
        current = {k: getattr(summary, k) for k in _COUNTS}
        current["failures"] = list(summary.failures[: records.MAX_FAILURES_KEPT])
        update: dict[str, Any] = {"current": records.jsonable(current), "status": status, "pending": None,
                                  "heartbeat": _now(), "updated_at": _now()}
        if self.first:
            update["total"] = summary.total
            update["skipped"] = summary.skipped
        if status in ("completed", "failed"):
            update["finished_at"] = _now()
        collection().update_one(self._filter(), {"$set": update})


# -- status, re-queueing, waiting --------------------------------------------------


def _sharding(dataset: Any, run_key: str) -> dict[str, Any]:
    try:
        cfg = dataset.get_run_info(run_key).config.serialize()
    except Exception:  # noqa: BLE001
        raise ParameterError(f"no run {run_key!r} on dataset {dataset.name!r}") from None
    sharding = cfg.get("sharding")
    if not isinstance(sharding, dict) or not sharding.get("run_id"):
        raise ParameterError(f"run {run_key!r} is not a sharded run")
    return sharding


def shard_docs(sample_collection: Any, run_key: str) -> list[dict[str, Any]]:
    """Returns the shard records of a sharded run, by index.

    Args:
        sample_collection: a FiftyOne collection
        run_key: the run key

    Returns:
        a list of dicts
    """
    dataset = sample_collection._dataset
    run_id = _sharding(dataset, run_key)["run_id"]
    return list(collection().find({"run_id": run_id}).sort("index", 1))


def _is_stale(doc: dict[str, Any], ttl: float) -> bool:
    if doc.get("status") not in ("starting", "running"):
        return False
    if doc.get("host") == socket.gethostname() and doc.get("pid") and not pid_alive(int(doc["pid"])):
        return True
    return _now() - float(doc.get("heartbeat") or 0) > ttl


def aggregate(sample_collection: Any, run_key: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Adds up the shard records of a sharded run into run results.

    Status: ``completed`` when every shard is; ``running`` while a shard
    runs (or some are done and others queued); ``queued`` before any
    starts; ``stalled`` when the only unfinished shards have a dead worker
    (see :func:`requeue_stale`); ``failed`` otherwise.

    Args:
        sample_collection: a FiftyOne collection
        run_key: the run key
        config: the run's config (read when None)

    Returns:
        ``{"status", "total", "processed", "skipped", "failed", "failures",
        "patches", "degenerate", "elapsed", "images_per_s", "num_shards",
        "shards": [...]}``
    """
    dataset = sample_collection._dataset
    sharding = (config or {}).get("sharding") or _sharding(dataset, run_key)
    docs = list(collection().find({"run_id": sharding["run_id"]}).sort("index", 1))
    out: dict[str, Any] = {"total": 0, "processed": 0, "skipped": 0, "failed": 0, "failures": [],
                           "patches": 0, "degenerate": 0, "num_shards": len(docs), "run_id": sharding["run_id"]}
    shards, states = [], []
    started = True
    op_states = _op_states([d.get("op_id") for d in docs if d.get("status") != "completed"])
    for d in docs:
        com = {**_zero(), **(d.get("committed") or {})}
        cur = {**_zero(), **(d.get("current") or {})}
        processed = int(com["processed"]) + int(cur["processed"])
        out["processed"] += processed
        out["failed"] += int(cur["failed"])
        out["patches"] += int(com["patches"]) + int(cur["patches"])
        out["degenerate"] += int(com["degenerate"]) + int(cur["degenerate"])
        if d.get("total") is None:
            started = False
        out["total"] += int(d.get("total") or 0)
        out["skipped"] += int(d.get("skipped") or 0)
        room = records.MAX_FAILURES_KEPT - len(out["failures"])
        out["failures"].extend((cur.get("failures") or [])[: max(room, 0)])
        state = d.get("status")
        if _is_stale(d, settings.lock_ttl()):
            state = "stalled"
        elif state != "completed" and op_states.get(d.get("op_id")) == "failed":
            state = "failed"
        states.append(state)
        shards.append({"index": d["index"], "lo": d.get("lo"), "hi": d.get("hi"), "status": state,
                       "attempts": d.get("attempts", 0), "requeues": d.get("requeues", 0),
                       "processed": processed, "failed": int(cur["failed"]), "host": d.get("host"),
                       "pid": d.get("pid"), "op_id": d.get("op_id")})
    missing = max(0, int(sharding.get("num_shards") or 0) - len(docs))
    if missing:  # distributed tasks create their records when they start
        states.extend(["queued"] * missing)
        out["num_shards"] = len(docs) + missing
        started = False
    if states and all(s == "completed" for s in states):
        status = "completed"
    elif any(s in ("running", "starting") for s in states):
        status = "running"
    elif any(s == "queued" for s in states):
        status = "running" if any(s == "completed" for s in states) else "queued"
    elif any(s == "stalled" for s in states):
        status = "stalled"
    else:
        status = "failed"
    starts = [d["created_at"] for d in docs if d.get("created_at")]
    ends = [d.get("finished_at") or d.get("updated_at") for d in docs]
    ends = [e for e in ends if e]
    elapsed = (max(ends) - min(starts)) if starts and ends else 0.0
    out.update(status=status, shards=shards, elapsed=elapsed,
               images_per_s=out["processed"] / elapsed if elapsed > 0 else 0.0)
    if ends:
        out["updated_at"] = _dt.datetime.fromtimestamp(max(ends), _dt.UTC).isoformat()
    if not started:  # totals are known once every shard has started
        out.pop("total")
        out.pop("skipped")
    return out


def _op_states(op_ids: Sequence[str | None]) -> dict[str, str]:
    """Run states of delegated operations, by id (one query)."""
    from bson import ObjectId
    from fiftyone.operators.delegated import DelegatedOperationService

    ids = [ObjectId(i) for i in op_ids if isinstance(i, str) and _HEX.match(i)]
    if not ids:
        return {}
    ops = DelegatedOperationService().list_operations(_id={"$in": ids})
    return {str(op.id): str(op.run_state) for op in ops}


def requeue_stale(sample_collection: Any, run_key: str, *, stale_after: float | None = None,
                  include_failed: bool = True) -> list[int]:
    """Puts back in the queue the shards of a run whose worker died.

    A worker killed mid-shard leaves its delegated operation ``RUNNING``
    and its shard record ``running``. A shard is *stale* when its worker
    process is gone (same host) or its heartbeat (refreshed every chunk) is
    older than ``stale_after``; its operation is then set back to
    ``QUEUED`` (atomically, only if still ``RUNNING``) and the next free
    worker resumes it where it stopped. Failed operations are re-queued
    too when ``include_failed``, and shards whose operation was never
    queued (a parent that died while queueing) are queued.

    Args:
        sample_collection: a FiftyOne collection
        run_key: the sharded run's key
        stale_after: seconds without a heartbeat after which a worker on
            another host is presumed dead (default ``XPATCH_LOCK_TTL``, 120)
        include_failed: also re-queue shards whose operation failed

    Returns:
        the indices of the shards re-queued
    """
    from bson import ObjectId
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionRunState

    dataset = sample_collection._dataset
    ttl = float(stale_after if stale_after is not None else settings.lock_ttl())
    run_id = _sharding(dataset, run_key)["run_id"]
    svc = DelegatedOperationService()
    requeued = []
    for doc in collection().find({"run_id": run_id, "status": {"$ne": "completed"}}).sort("index", 1):
        op_id = doc.get("op_id")
        if op_id is None or op_id == "queueing":
            if doc.get("request") and _now() - float(doc.get("created_at") or 0) > ttl:
                if op_id == "queueing":
                    collection().update_one({"_id": doc["_id"], "op_id": "queueing"}, {"$set": {"op_id": None}})
                if _queue_child({**doc, "op_id": None}):
                    requeued.append(doc["index"])
            continue
        op = svc.get(ObjectId(op_id))
        if op is None:
            continue
        state = op.run_state
        if state == ExecutionRunState.RUNNING:
            if doc.get("status") in ("starting", "running"):
                stale = _is_stale(doc, ttl)
            else:  # claimed by a worker that never reached the shard
                started = op.started_at or op.updated_at
                stale = started is None or (_dt.datetime.utcnow() - started).total_seconds() > ttl
            if not stale:
                continue
        elif not (state == ExecutionRunState.FAILED and include_failed):
            continue
        # mark the shard only if it has not moved since it was read (another caller
        # re-queued it and a worker took it, say); then the operation, only if its state
        # is still the one seen (a worker takes only QUEUED operations)
        seen = {k: doc.get(k) for k in ("owner", "status", "heartbeat", "updated_at")}
        marked = collection().find_one_and_update(
            {"_id": doc["_id"], **seen},
            {"$set": {"status": "queued", "owner": None, "updated_at": _now()}, "$inc": {"requeues": 1}})
        if marked is None:
            continue
        if svc.set_queued(op.id, required_state=state) is None:
            collection().update_one({"_id": doc["_id"], "owner": None, "status": "queued"},
                               {"$set": {"status": seen["status"], "owner": seen["owner"]},
                                "$inc": {"requeues": -1}})
            continue
        requeued.append(doc["index"])
    return requeued


def wait(sample_collection: Any, run_key: str, *, timeout: float = 3600.0, poll: float = 1.0,
         requeue: bool = True, stale_after: float | None = None) -> dict[str, Any]:
    """Waits for a sharded run to finish, re-queueing stale shards.

    Args:
        sample_collection: a FiftyOne collection
        run_key: the run key
        timeout: seconds to wait at most
        poll: seconds between checks
        requeue: call :func:`requeue_stale` at every check
        stale_after: passed to :func:`requeue_stale`

    Returns:
        the aggregated results (:func:`aggregate`)

    Raises:
        TimeoutError: if the run is not completed or failed in time
    """
    end = time.monotonic() + timeout
    while True:
        if requeue:
            requeue_stale(sample_collection, run_key, stale_after=stale_after, include_failed=False)
        res = aggregate(sample_collection, run_key)
        if res["status"] in ("completed", "failed"):
            return res
        if time.monotonic() > end:
            raise TimeoutError(f"run {run_key!r} not finished after {timeout:.0f}s: "
                               f"{[(s['index'], s['status']) for s in res['shards']]}")
        time.sleep(poll)


def forget(dataset: Any, run_key: str) -> int:
    """Deletes the shard records of a run key (when the run is deleted).

    Args:
        dataset: a FiftyOne dataset
        run_key: the run key

    Returns:
        the number of records deleted
    """
    return collection().delete_many({"dataset_id": str(dataset._doc.id), "run_key": run_key}).deleted_count


__all__ = [
    "COLLECTION",
    "collection",
    "ShardPlan",
    "ShardWorker",
    "aggregate",
    "forget",
    "requeue_stale",
    "shard_docs",
    "shard_ranges",
    "wait",
]
