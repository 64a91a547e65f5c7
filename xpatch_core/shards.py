"""Sharded runs: moved to :mod:`xpatch_core.runs.shards`; this name stays
importable so that code written for earlier versions keeps working."""

from __future__ import annotations

from xpatch_core.runs.collections import range_name, restrict
from xpatch_core.runs.shards import (
    COLLECTION,
    ShardPlan,
    ShardWorker,
    aggregate,
    collection,
    forget,
    requeue_stale,
    shard_docs,
    shard_ranges,
    wait,
)

__all__ = ["COLLECTION", "ShardPlan", "ShardWorker", "aggregate", "collection", "forget", "range_name", "requeue_stale",
           "restrict", "shard_docs", "shard_ranges", "wait"]
