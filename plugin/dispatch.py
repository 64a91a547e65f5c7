"""How an operator runs a library run: plainly, as the parent of shards, as
one shard, or as one task of a distributed execution.

-   ``num_shards`` missing or 1: the plain run;
-   ``num_shards > 1`` without ``shard_run``: the parent, which registers
    the run and queues one delegated operation per shard (of the same
    operator);
-   ``shard_run`` present: one shard (a child operation), which resumes its
    id range and then re-queues the shards of dead workers;
-   a task of a distributed execution (:func:`distributed_task`: FiftyOne
    split one scheduled operation into tasks, each with its batch as
    ``ctx.view``): the shard of its batch, registered by the first task
    (:mod:`xpatch_core.runs.distributed`); ``num_shards`` is then ignored.

The shard roles themselves (records, ranges, re-queueing) are the library's
(:mod:`xpatch_core.runs.shards`); only the reading of the operator's
parameters and context is here.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any


def num_shards(params: dict[str, Any]) -> int:
    """Reads and validates the ``num_shards`` parameter.

    Args:
        params: ``ctx.params``

    Returns:
        an int in ``[1, 1000]``

    Raises:
        xpatch_core.errors.ParameterError: for anything else
    """
    from xpatch_core.errors import ParameterError

    v = params.get("num_shards", 1)
    if v is None or v == "":
        return 1
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1000:
        raise ParameterError(f"num_shards must be an integer in [1, 1000], got {v!r}")
    return v


def _requested_tasks(ctx: Any) -> int:
    """The number of distributed tasks FiftyOne reports for this execution."""
    n = getattr(ctx, "num_distributed_tasks", None) or ctx.request_params.get("num_distributed_tasks")
    pipeline = getattr(ctx, "pipeline", None)
    if not n and pipeline is not None:
        n = getattr(pipeline, "num_distributed_tasks", None)
    try:
        return int(n or 0)
    except (TypeError, ValueError):
        return 0


def distributed_task(ctx: Any) -> dict[str, Any] | None:
    """Whether this execution is one task of a distributed execution, and which.

    A task is a delegated execution for which FiftyOne reports several
    distributed tasks (``ctx.num_distributed_tasks``, the request's
    ``num_distributed_tasks`` or the pipeline stage's) and whose delegated
    operation has a parent (the scheduled operation); the tasks are the
    parent's children of this operator, in id order.

    Args:
        ctx: the execution context

    Returns:
        ``{"run_id", "index", "num_tasks", "op_id"}``, or None
    """
    if not ctx.delegated or _requested_tasks(ctx) < 2 or not ctx.request_params.get("run_doc"):
        return None
    from bson import ObjectId
    from fiftyone.operators.delegated import DelegatedOperationService

    from xpatch_core.runs.distributed import task_run_id

    op_id = str(ctx.request_params["run_doc"])
    svc = DelegatedOperationService()
    doc = svc.get(ObjectId(op_id))
    parent = getattr(doc, "parent_id", None) if doc is not None else None
    if parent is None:
        return None
    tasks = sorted(str(o.id) for o in svc.list_operations(parent_id=parent, operator=doc.operator))
    if op_id not in tasks:
        return None
    return {"run_id": task_run_id(str(parent)), "index": tasks.index(op_id),
            "num_tasks": max(len(tasks), _requested_tasks(ctx)), "op_id": op_id}


def operator_run(ctx: Any, iter_run: Callable[..., Any], view: Any, kwargs: dict[str, Any],
                 operator_uri: str) -> Generator[Any, None, Any]:
    """The run an operator drives (see the module docstring).

    Args:
        ctx: the operator's execution context
        iter_run: the library's run generator (``runs.iter_run_saliency``,
            ``runs.iter_run_patches``, ...), taking ``shard=``
        view: the images to process
        kwargs: the run's keyword arguments
        operator_uri: the operator's URI (for queueing the children)

    Returns:
        a generator of :class:`xpatch_core.runs.Progress` whose return value
        is the :class:`xpatch_core.runs.RunSummary`
    """
    from xpatch_core.runs import Progress
    from xpatch_core.runs.shards import ShardPlan, ShardWorker, requeue_stale

    params = ctx.params
    task = distributed_task(ctx)
    if task is not None:
        from xpatch_core.runs.distributed import DistributedTask

        run_key = kwargs.get("run_key") or kwargs["field"]
        worker = DistributedTask(view._dataset, run_key, task["run_id"], task["index"], task["num_tasks"],
                                 view.values("id"), op_id=task["op_id"])
        worker.claim()
        overwrite = bool(kwargs.get("overwrite")) and worker.first_attempt  # a retry resumes
        return (yield from iter_run(view, **{**kwargs, "overwrite": overwrite}, shard=worker))
    if params.get("shard_run") is not None:
        run_key = kwargs.get("run_key") or kwargs["field"]
        shard = ShardWorker.from_params(params, view._dataset, run_key)
        shard.claim()
        summary = yield from iter_run(view, **{**kwargs, "overwrite": False}, shard=shard)
        try:
            requeue_stale(view._dataset, run_key, include_failed=False)
        except Exception:  # noqa: BLE001 - helping dead peers is best effort
            pass
        return summary
    num = num_shards(params)
    if num <= 1:
        return (yield from iter_run(view, **kwargs))
    plan = ShardPlan(num)
    summary = yield from iter_run(view, **kwargs, shard=plan)
    ops = plan.queue(ctx.request_params, operator_uri)
    yield Progress(1, 1, 0, f"queued {len(ops)} shards of run {summary.run_key!r}")
    return summary


__all__ = ["distributed_task", "num_shards", "operator_run"]
