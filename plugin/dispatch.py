"""How an operator runs a library run: plainly, as the parent of shards, or
as one shard.

-   ``num_shards`` missing or 1: the plain run;
-   ``num_shards > 1`` without ``shard_run``: the parent, which registers
    the run and queues one delegated operation per shard (of the same
    operator);
-   ``shard_run`` present: one shard (a child operation), which resumes its
    id range and then re-queues the shards of dead workers.

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


__all__ = ["num_shards", "operator_run"]
