"""Distributed execution: one scheduled run split into tasks by the orchestrator.

FiftyOne Enterprise runs an operator that declares
``allow_distributed_execution`` as several tasks of one scheduled
(delegated) operation: each task executes the operator once with its own
``ctx.view``, a batch of the target view, and no step runs before or after
the tasks. xpatch maps these tasks onto its sharded runs
(:mod:`xpatch_core.runs.shards`), with the same records, counting and
recovery as ``num_shards``:

-   the tasks of one scheduled operation share one run id, derived from the
    scheduled (parent) operation;
-   each task is a shard whose id range is its batch's (from its smallest
    sample id to just past its largest); it takes that range's lock and
    writes its progress to its own shard record ``<run_id>:<index>``, where
    ``index`` is its place among the operation's tasks, so a task that runs
    again (a retry, :func:`~xpatch_core.runs.shards.requeue_stale`) resumes
    its own record and its counts stay exact;
-   the first task to start registers the run (its config gains a
    ``sharding`` entry with the run id, the number of tasks and
    ``orchestrator: "fiftyone"``), elected by an atomic insert; the others
    wait for that registration and check their parameters against it;
-   :func:`xpatch_core.runs.get_run_info` adds the records up (a task that
    has not started yet counts as queued); a dead task's delegated operation
    is put back in the queue by :func:`~xpatch_core.runs.shards.requeue_stale`
    and runs again on the same batch.

With ``overwrite``, each task redoes every sample of its batch on its first
attempt only (a retry resumes), so counts stay exact.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from xpatch_core import settings
from xpatch_core.errors import ParameterError, XpatchError
from xpatch_core.runs import records
from xpatch_core.runs.progress import RunSummary
from xpatch_core.runs.shards import ShardWorker, collection

#: Seconds between checks while waiting for another task to register the run.
POLL_S = 0.5


def task_run_id(scheduled_op_id: str) -> str:
    """The run id shared by the tasks of one scheduled operation.

    Args:
        scheduled_op_id: the id of the scheduled (parent) delegated operation

    Returns:
        32 hex digits
    """
    return uuid.uuid5(uuid.NAMESPACE_OID, f"xpatch:{scheduled_op_id}").hex


def batch_range(ids: Sequence[str]) -> tuple[str | None, str | None]:
    """The id range of a batch: its smallest id to just past its largest.

    Args:
        ids: hex sample ids

    Returns:
        ``(lo, hi)``; ``(None, None)`` for an empty batch
    """
    if not ids:
        return None, None
    lo, top = min(ids), max(ids)
    return lo, f"{int(top, 16) + 1:024x}"


class DistributedTask(ShardWorker):
    """One task of a distributed execution: the ``shard`` role of the
    ``iter_run_*`` functions (see the module docstring).

    Args:
        dataset: the dataset
        run_key: the run key
        run_id: the run id of the scheduled operation (:func:`task_run_id`)
        index: the task's place among the operation's tasks
        num_tasks: the number of tasks
        ids: the sample ids of the task's batch
        op_id: the task's own delegated operation id (for re-queueing)
    """

    def __init__(self, dataset: Any, run_key: str, run_id: str, index: int, num_tasks: int,
                 ids: Sequence[str], op_id: str | None = None) -> None:
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ParameterError(f"invalid number of tasks {num_tasks!r}")
        lo, hi = batch_range(list(ids))
        super().__init__(dataset, run_key, run_id, index, lo, hi)
        self.num_tasks = num_tasks
        self.op_id = op_id
        self.first_attempt = True

    def claim(self) -> None:
        """Creates the task's shard record on its first run, then marks it
        taken by this process; :attr:`first_attempt` tells whether an
        earlier attempt of this task ran."""
        ds_id = str(self.dataset._doc.id)
        now = time.time()
        zero = {"processed": 0, "failed": 0, "patches": 0, "degenerate": 0, "elapsed": 0.0, "failures": []}
        before = collection().find_one_and_update(
            {"_id": self.doc_id},
            {"$setOnInsert": {
                "run_id": self.run_id, "dataset_id": ds_id, "run_key": self.run_key, "field": None, "kind": None,
                "index": self.index, "num_shards": self.num_tasks, "lo": self.id_range[0], "hi": self.id_range[1],
                "status": "queued", "attempts": 0, "requeues": 0, "owner": None, "pid": None, "host": None,
                "heartbeat": None, "created_at": now, "total": None, "skipped": None, "current": zero,
                "committed": dict(zero), "pending": None, "orchestrator": "fiftyone"},
             "$set": {"op_id": self.op_id, "updated_at": now}},
            upsert=True,
        )
        self.first_attempt = before is None or int(before.get("attempts") or 0) == 0
        super().claim()

    def start(self, view: Any, run: Any, config: records.RunConfig) -> None:
        """Registers the run (the first task) or waits for its registration,
        then starts this task's attempt as a shard."""
        collection().update_one({"_id": self.doc_id}, {"$set": {"field": config.field, "kind": config.kind}})
        self._register(view, run, config)
        super().start(view, run, config)

    def _registered(self, dataset: Any, run_key: str) -> bool:
        return (records.run_config(dataset, run_key).get("sharding") or {}).get("run_id") == self.run_id

    def _register(self, view: Any, run: Any, config: records.RunConfig) -> None:
        import pymongo.errors

        dataset = view._dataset
        plan_id = f"{self.run_id}:plan"
        deadline = time.monotonic() + settings.lock_ttl()
        while not self._registered(dataset, run.run_key):
            now = time.time()
            try:
                collection().insert_one({"_id": plan_id, "plan_of": self.run_id, "dataset_id": str(dataset._doc.id),
                                         "run_key": run.run_key, "at": now})
                won = True
            except pymongo.errors.DuplicateKeyError:  # another task registers; take over if it died
                won = collection().find_one_and_update(
                    {"_id": plan_id, "at": {"$lt": now - settings.lock_ttl()}}, {"$set": {"at": now}}) is not None
            if won:
                try:
                    self._register_now(view, run, config)
                except BaseException:
                    collection().delete_one({"_id": plan_id})  # the next task tries (and reports) again
                    raise
                return
            if time.monotonic() > deadline:
                raise XpatchError(f"the distributed run {run.run_key!r} was not registered by its first task "
                                  f"within {settings.lock_ttl():.0f} s")
            time.sleep(POLL_S)

    def _register_now(self, view: Any, run: Any, config: records.RunConfig) -> None:
        sharding = {"run_id": self.run_id, "num_shards": self.num_tasks, "ranges": None, "orchestrator": "fiftyone"}
        previous = records.start_run(view, run.run_key, config, run.overwrite, extra={"sharding": sharding})
        summary = RunSummary(run_key=run.run_key, field=config.field, type=config.kind)
        records.save_results(view, run.run_key, summary, "running",
                             {"num_shards": self.num_tasks, "run_id": self.run_id}, previous=previous)


__all__ = ["DistributedTask", "batch_range", "task_run_id"]
