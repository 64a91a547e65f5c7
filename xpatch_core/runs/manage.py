"""Managing runs: their info, their views, their deletion.

Rules:

-   :func:`get_run_info` is the one reader of a run for people and the App:
    config and results, a sharded run's shard records added up.
-   Deleting a run removes exactly what it made: its field, its failure
    tags, its heatmap files (unless another dataset's heatmaps point to
    them: a clone) and its shard records, under the field's lock (so not
    while another run writes the field).
"""

from __future__ import annotations

import time
from typing import Any

from xpatch_core.errors import ParameterError
from xpatch_core.runs import collections as colls
from xpatch_core.runs import heatmap_files, records, shards
from xpatch_core.runs.locks import acquire_lock, release_lock


def get_run_info(sample_collection: Any, run_key: str) -> dict[str, Any]:
    """Returns a run's config and results as a dict.

    Args:
        sample_collection: a FiftyOne collection
        run_key: the run key

    Returns:
        ``{"key", "type", "timestamp", "config", "results"}``

    Raises:
        ParameterError: if there is no such xpatch run
    """
    dataset = sample_collection._dataset
    if run_key not in records.list_runs(dataset):
        raise ParameterError(f"no xpatch run {run_key!r} on dataset {dataset.name!r}")
    info = dataset.get_run_info(run_key)
    cfg = records.run_config(dataset, run_key)
    results = records.load_results(dataset, run_key)
    if not results:  # FiftyOne replaces stored results by deleting, then writing: read again once
        time.sleep(0.1)
        results = records.load_results(dataset, run_key)
    if isinstance(cfg.get("sharding"), dict):
        results = {**results, **shards.aggregate(dataset, run_key, cfg)}
    return {"key": run_key, "type": cfg.get("xpatch_type"), "timestamp": str(info.timestamp), "config": cfg,
            "results": results}


def failures_of(sample_collection: Any, run_key: str) -> list[dict[str, str]]:
    """Returns a run's recorded failures.

    Args:
        sample_collection: a FiftyOne collection
        run_key: the run key

    Returns:
        ``[{"id", "filepath", "reason"}, ...]``
    """
    return list(get_run_info(sample_collection, run_key)["results"].get("failures") or [])


def patches_view(sample_collection: Any, field: str = "patches") -> Any:
    """Returns the patches view of a patch run, best score first.

    Args:
        sample_collection: a FiftyOne collection (a patches view stands for
            its images)
        field: the ``fo.Detections`` field

    Returns:
        a :class:`fiftyone.core.patches.PatchesView`
    """
    base = colls.images_of(sample_collection)
    return base.to_patches(field).sort_by(f"{field}.confidence", reverse=True)


def load_run_view(sample_collection: Any, run_key: str) -> Any:
    """Loads the view a run worked on (for a patch run, its patches view).

    Args:
        sample_collection: a FiftyOne collection
        run_key: the run key

    Returns:
        a view
    """
    info = get_run_info(sample_collection, run_key)
    fld = info["config"]["field"]
    if not colls.field_exists(sample_collection._dataset, fld):
        raise ParameterError(f"the field {fld!r} of run {run_key!r} no longer exists (renamed or deleted); "
                             "delete the run, or run it again")
    view = sample_collection._dataset.load_run_view(run_key)
    if info["type"] == "patches":
        return view.exists(fld).to_patches(fld).sort_by(f"{fld}.confidence", reverse=True)
    return view.exists(fld)


def delete_run(sample_collection: Any, run_key: str) -> dict[str, Any]:
    """Deletes a run, its field, its failure tags and any heatmap files.

    The heatmap files are kept when another dataset's heatmaps point into
    their folder (a clone shares its files).

    Args:
        sample_collection: a FiftyOne collection
        run_key: the run key

    Returns:
        ``{"field", "files_removed", "files_kept_for"}``: the datasets whose
        heatmaps kept the files
    """
    info = get_run_info(sample_collection, run_key)
    dataset = sample_collection._dataset
    fld = info["config"]["field"]
    folder = info["config"].get("map_dir")
    shared = colls.datasets_pointing_into(folder, exclude=dataset) if folder else []
    lock = acquire_lock(dataset, fld)
    try:
        removed = 0 if shared else heatmap_files.remove_map_files(folder)
        if colls.field_exists(dataset, fld):
            dataset.delete_sample_field(fld)
        tag = colls.FAILED_TAG.format(field=fld)
        tagged = dataset.match_tags(tag)
        if len(tagged):
            tagged.untag_samples(tag)
        dataset.delete_run(run_key)
        if isinstance(info["config"].get("sharding"), dict):
            shards.forget(dataset, run_key)
    finally:
        release_lock(lock)
    return {"field": fld, "files_removed": removed, "files_kept_for": shared}


__all__ = ["delete_run", "failures_of", "get_run_info", "load_run_view", "patches_view"]
