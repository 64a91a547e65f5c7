"""The FiftyOne data layer: xpatch runs on sample collections.

Every call is a FiftyOne run keyed by its output field (as FiftyOne Brain's
methods are), recording the model and weights, method, layer, every
parameter, the seed, the package version, counts, failures and time. All
kinds of run share one lifecycle (:mod:`~xpatch_core.runs.lifecycle`); see
``docs/architecture.md`` for the map of the package and the path of a run.

| module | what |
| --- | --- |
| :mod:`~xpatch_core.runs.progress` | progress events, summaries, :func:`drive` |
| :mod:`~xpatch_core.runs.collections` | images behind a view, field checks, sizes, tags |
| :mod:`~xpatch_core.runs.records` | typed run configs, run records and results |
| :mod:`~xpatch_core.runs.locks` | per-field (or per-range) write locks in the database |
| :mod:`~xpatch_core.runs.heatmap_files` | heatmap PNG files, written atomically |
| :mod:`~xpatch_core.runs.lifecycle` | the one lifecycle: validate, todo, setup, lock, loop, finish |
| :mod:`~xpatch_core.runs.saliency_run` | saliency runs (``fo.Heatmap``) |
| :mod:`~xpatch_core.runs.patches_run` | patch runs (``fo.Detections``) |
| :mod:`~xpatch_core.runs.embeddings_run` | embedding runs (each detection's ``embedding``) |
| :mod:`~xpatch_core.runs.manage` | run info, views, deletion |
| :mod:`~xpatch_core.runs.shards` | sharded runs over delegated operations |
| :mod:`~xpatch_core.runs.estimate` | before a run: samples to process, estimated time, advice |
| :mod:`~xpatch_core.runs.rates` | speeds measured on this machine |

The functions come in pairs: ``iter_*`` generators yield
:class:`Progress` events and return a :class:`RunSummary` (for the App's
progress bar), and the plain functions run them to completion, optionally
with a progress bar.
"""

from __future__ import annotations

from xpatch_core.errors import ImageDecodeError
from xpatch_core.heatmaps import read_heatmap
from xpatch_core.runs.collections import (
    FAILED_TAG,
    check_image_collection,
    images_of,
    validate_field_name,
)
from xpatch_core.runs.embeddings_run import iter_run_embeddings, run_embeddings
from xpatch_core.runs.estimate import RunPlan, count_todo, plan_run, run_kind
from xpatch_core.runs.lifecycle import LocalRecorder, Outcome, RunKind, execute, select_todo
from xpatch_core.runs.locks import acquire_lock, release_lock
from xpatch_core.runs.manage import delete_run, failures_of, get_run_info, load_run_view, patches_view
from xpatch_core.runs.patches_run import check_patch_parameters, detection_son, iter_run_patches, run_patches
from xpatch_core.runs.progress import Progress, RunSummary, drive
from xpatch_core.runs.records import list_runs, update_run_results
from xpatch_core.runs.saliency_run import heatmap_son, iter_run_saliency, run_saliency

__all__ = [
    "FAILED_TAG",
    "ImageDecodeError",
    "LocalRecorder",
    "Outcome",
    "Progress",
    "RunKind",
    "RunPlan",
    "RunSummary",
    "acquire_lock",
    "check_image_collection",
    "check_patch_parameters",
    "count_todo",
    "delete_run",
    "detection_son",
    "drive",
    "execute",
    "failures_of",
    "heatmap_son",
    "get_run_info",
    "images_of",
    "iter_run_embeddings",
    "iter_run_patches",
    "iter_run_saliency",
    "list_runs",
    "load_run_view",
    "patches_view",
    "plan_run",
    "read_heatmap",
    "release_lock",
    "run_embeddings",
    "run_patches",
    "run_kind",
    "run_saliency",
    "select_todo",
    "update_run_results",
    "validate_field_name",
]
