"""What the xpatch panel shows: a dataset's runs, one run's parameters,
counts, failures and timings, its evaluation and score distribution as
plotly figures, and the next steps.

Rules:

-   Run records are read only through :mod:`xpatch_core.runs`
    (:func:`~xpatch_core.runs.list_runs`, :func:`~xpatch_core.runs.get_run_info`);
    the patch scores through one FiftyOne aggregation
    (``histogram_values``). Nothing here loads a model, reads an image or
    loops over samples in Python: the panel shows what the runs recorded.
-   The hit rates are those :func:`xpatch_core.metrics.evaluate_patches`
    stored with the patch run, as they were stored: pooled ("all") and per
    ground-truth class (the classes on most images first).
-   Everything returned is JSON-serialisable (the App gets it as is).
"""

from __future__ import annotations

import math
from typing import Any

from xpatch_core.defaults import PANEL

#: Trace names of the hit-rate figure, in order: (results key, name).
HIT_TRACES = [
    ("hit_rate", "xpatch patches"),
    ("uniform_expected", "uniform placement (expected)"),
    ("center_prior_rate", "centre prior"),
]
_BOOKKEEPING = {"type", "method", "xpatch_type", "xpatch_version", "started_at", "request", "model_source",
                "field", "sharding", "cls"}
_SHOWN = {
    "saliency": ["method", "layer", "target", "target_field", "fuse_layer", "map_resolution", "input_size",
                 "batch_size", "precision_used", "engine_used", "storage", "map_dir"],
    "patches": ["heatmap_field", "n", "size", "scales", "aspect_ratios", "mode", "score", "temperature",
                "epsilon", "max_iou", "min_distance", "replace", "border", "seed", "label"],
    "embeddings": ["patches_field", "attribute", "layers", "pooling", "sampling_ratio", "border", "batch_size",
                   "input_size", "dim", "precision_used"],
}


def _num(v: Any, default: float = 0.0) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else default


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return ""
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def run_infos(sample_collection: Any) -> list[dict[str, Any]]:
    """The dataset's xpatch runs, oldest first.

    Args:
        sample_collection: a FiftyOne collection (its dataset's runs are read)

    Returns:
        a list of :func:`xpatch_core.runs.get_run_info` dicts
    """
    from xpatch_core.runs import get_run_info, list_runs

    dataset = sample_collection._dataset
    infos = [get_run_info(dataset, key) for key in list_runs(dataset)]
    return sorted(infos, key=lambda i: (str(i["config"].get("started_at") or i.get("timestamp") or ""), i["key"]))


def run_row(info: dict[str, Any], dataset: Any = None) -> dict[str, Any]:
    """One row of the panel's run table.

    A run's record holds the counts of its last part (a resumed run's
    ``processed`` are the samples of that part, and its ``skipped`` only
    those of the view it was given). With ``dataset``, a saliency or patch
    run's ``done`` (and ``samples``) are the samples its field holds a
    value for, ``failed`` the samples tagged as failed in it, and a patch
    run's ``patches`` the detections in its field; without, they are the
    record's (``done = processed + skipped``).

    Args:
        info: a :func:`xpatch_core.runs.get_run_info` dict
        dataset (None): the dataset, to count a patch run's patches

    Returns:
        ``{"run", "kind", "field", "status", "processed", "skipped",
        "failed", "done", "samples", "patches", "time", "speed",
        "started"}`` (counts as integers, the rest as text; ``samples`` is
        the ``done`` count with the failures)
    """
    cfg, res = info["config"], info["results"]
    elapsed = _num(res.get("elapsed"))
    speed = _num(res.get("images_per_s"))
    done = int(_num(res.get("processed"))) + int(_num(res.get("skipped")))
    failed = int(_num(res.get("failed")))
    patches = int(_num(res.get("patches")))
    field = str(cfg.get("field") or "")
    if dataset is not None and info.get("type") in ("saliency", "patches") and field:
        from xpatch_core.runs.collections import FAILED_TAG

        try:
            done = int(dataset.exists(field).count())
            failed = int(dataset.count_sample_tags().get(FAILED_TAG.format(field=field), 0))
            if info.get("type") == "patches":
                patches = int(dataset.count(f"{field}.detections"))
        except Exception:  # noqa: BLE001 - a field renamed or of another type: the record's counts
            pass
    return {
        "run": info["key"],
        "kind": str(info.get("type") or ""),
        "field": field,
        "status": str(res.get("status") or "registered"),
        "processed": int(_num(res.get("processed"))),
        "skipped": int(_num(res.get("skipped"))),
        "failed": failed,
        "done": done,
        "samples": f"{done:,}" + (f" ({failed:,} failed)" if failed else ""),
        "patches": patches,
        "time": _duration(elapsed),
        "speed": f"{speed:.1f}/s" if speed > 0 else "",
        "started": str(cfg.get("started_at") or "")[:19].replace("T", " "),
    }


def _value_text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_value_text(x) for x in v)
    return str(v)


def parameters(info: dict[str, Any]) -> list[tuple[str, str]]:
    """A run's parameters for people: the model, then the settings that
    decide its results (every scalar setting for kinds without a list).

    Args:
        info: a :func:`xpatch_core.runs.get_run_info` dict

    Returns:
        a list of ``(name, value)`` texts; unset parameters are left out
    """
    cfg = info["config"]
    out: list[tuple[str, str]] = []
    source = cfg.get("model_source")
    if isinstance(source, dict):
        out.append(("model", str(source.get("name") or source.get("model") or source.get("kind"))))
        if source.get("weights"):
            out.append(("weights", str(source["weights"])))
    keys = _SHOWN.get(str(info.get("type")))
    if keys is None:
        keys = [k for k, v in cfg.items() if k not in _BOOKKEEPING and not isinstance(v, dict)]
    for key in keys:
        v = cfg.get(key)
        if v is None or v == "" or v == []:
            continue
        out.append((key, _value_text(v)))
    return out


def details_markdown(info: dict[str, Any], dataset: Any = None) -> str:
    """One run for people: what it wrote, its status, parameters, counts,
    timings and the first failures with their reasons.

    Args:
        info: a :func:`xpatch_core.runs.get_run_info` dict
        dataset (None): the dataset, to count a patch run's patches

    Returns:
        Markdown text
    """
    row = run_row(info, dataset)
    res = info["results"]
    head = f"**Run `{row['run']}`**: {row['kind']} in `{row['field']}`, {row['status']}."
    counts = (f"{row['done']:,} samples with results, {row['failed']:,} failed"
              + (f", {row['patches']:,} patches" if row["patches"] else "")
              + f"; the last run {row['processed']:,} processed, {row['skipped']:,} already done")
    if row["time"]:
        counts += f"; {row['time']}" + (f" at {row['speed'].replace('/s', ' samples/s')}" if row["speed"] else "")
    lines = [head, f"**Counts**: {counts}."]
    timings = res.get("timings") if isinstance(res.get("timings"), dict) else {}
    stages = [f"{k.replace('_', ' ')} {_num(v):.1f} s" for k, v in timings.items() if _num(v) >= 0.05]
    if stages:
        lines.append(f"**Time per stage**: {', '.join(stages)}.")
    if row["started"]:
        lines.append(f"**Started**: {row['started']} UTC.")
    params = parameters(info)
    if params:
        lines.append("**Parameters**: " + " · ".join(f"{k} `{v}`" for k, v in params) + ".")
    failures = [f for f in (res.get("failures") or []) if isinstance(f, dict)]
    shown = int(PANEL["failures_shown"])
    if failures:
        items = [f"- `{str(f.get('filepath') or f.get('id')).rsplit('/', 1)[-1]}`: {f.get('reason')}"
                 for f in failures[:shown]]
        if row["failed"] > shown:
            items.append(f"- and {row['failed'] - shown:,} more")
        lines += [f"**Failures** (tagged `xpatch:{row['field']}:failed`):", "\n".join(items)]
    return "\n\n".join(lines)


def evaluation_of(info: dict[str, Any], gt_field: str | None = None) -> dict[str, Any] | None:
    """The evaluation stored with a patch run.

    Args:
        info: a :func:`xpatch_core.runs.get_run_info` dict
        gt_field: the ground-truth field it was evaluated against (default:
            the latest evaluation)

    Returns:
        the :func:`xpatch_core.metrics.evaluate_patches` dict, or None
    """
    res = info["results"]
    if gt_field is not None:
        ev = (res.get("evaluations") or {}).get(gt_field)
    else:
        ev = res.get("evaluation")
    return ev if isinstance(ev, dict) and ev.get("patches") else None


def hit_rate_figure(evaluation: dict[str, Any], max_classes: int = PANEL["max_classes"]) -> dict[str, Any]:
    """The object-hit rate against uniform placement and the centre prior,
    pooled and per class, as a grouped plotly bar chart.

    Args:
        evaluation: an :func:`xpatch_core.metrics.evaluate_patches` dict
        max_classes: the most classes shown (those on most images)

    Returns:
        ``{"data": [three bar traces], "layout": {...}, "title": str,
        "classes_left_out": int}``;
        the first category is ``"all"``; a rate that could not be measured
        is None (no bar)
    """
    classes = [c for c in (evaluation.get("per_class") or []) if isinstance(c, dict)]
    shown = classes[:max_classes]
    rows = [{"label": "all", **evaluation}, *shown]
    x = [str(r["label"]) for r in rows]
    images = [int(_num(r.get("images_evaluated", r.get("images")))) for r in rows]
    data = []
    for key, name in HIT_TRACES:
        data.append({
            "type": "bar", "name": name, "x": x, "y": [r.get(key) for r in rows],
            "customdata": images,
            "hovertemplate": "%{x}: %{y:.1%} (%{customdata} images)<extra>" + name + "</extra>",
        })
    layout = {
        "barmode": "group",
        "showlegend": True,
        "yaxis": {"title": {"text": "hit rate"}, "range": [0, 1], "tickformat": ".0%"},
        "legend": {"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},
        "margin": {"t": 40, "b": 80, "l": 50, "r": 10},
        "autosize": True,
        "height": 340,
    }
    title = f"Patch centres on a '{evaluation.get('gt_field')}' object, against uniform placement and the centre prior"
    return {"data": data, "layout": layout, "title": title, "classes_left_out": max(0, len(classes) - len(shown))}


def score_histogram(sample_collection: Any, field: str, bins: int = PANEL["score_bins"]) -> dict[str, Any] | None:
    """The distribution of a patch field's scores (``confidence``) over the
    dataset, from FiftyOne's ``histogram_values`` aggregation.

    Args:
        sample_collection: a FiftyOne collection (its dataset is counted)
        field: the ``fo.Detections`` field of a patch run
        bins: the number of bins

    Returns:
        ``{"data": [one bar trace], "layout": {...}, "title", "counts", "edges"}``,
        or None when the field holds no scores
    """
    dataset = sample_collection._dataset
    if field not in dataset.get_field_schema():
        return None
    path = f"{field}.detections.confidence"
    if not dataset.count(path):
        return None
    # FiftyOne's own edges: from the lowest score to just above the highest
    counts, edges, _ = dataset.histogram_values(path, bins=int(bins))
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    data = [{"type": "bar", "name": "patches", "x": centres, "y": [int(c) for c in counts],
             "width": [b - a for a, b in zip(edges[:-1], edges[1:])],
             "hovertemplate": "score %{x:.3f}: %{y} patches<extra></extra>"}]
    layout = {
        "xaxis": {"title": {"text": "score (confidence)"}},
        "yaxis": {"title": {"text": "patches"}},
        "bargap": 0.02,
        "margin": {"t": 10, "b": 50, "l": 50, "r": 10},
        "autosize": True,
        "height": 260,
    }
    return {"data": data, "layout": layout, "title": f"Patch scores in '{field}' ({int(sum(counts)):,} patches)",
            "counts": [int(c) for c in counts], "edges": [float(e) for e in edges]}


def _free_field(dataset: Any, base: str) -> str:
    schema = dataset.get_field_schema()
    k = 2
    while f"{base}_{k}" in schema:
        k += 1
    return f"{base}_{k}"


def sample_again_params(info: dict[str, Any], dataset: Any) -> dict[str, Any]:
    """The *Sample patches* form filled with a patch run's parameters, a
    new seed and a new field (nothing of the run is replaced).

    Args:
        info: a patch run's :func:`xpatch_core.runs.get_run_info` dict
        dataset: its dataset

    Returns:
        the form's parameters
    """
    cfg = info["config"]
    size = cfg.get("size")
    params: dict[str, Any] = {"heatmap_field": cfg.get("heatmap_field"), "field": _free_field(dataset, cfg["field"])}
    if isinstance(size, float) and size <= 1:
        params.update(size_mode="fraction", size_fraction=size)
    elif size is not None:
        params.update(size_mode="pixels", size=int(size))
    for key in ("n", "temperature", "epsilon", "mode", "score", "border"):
        if cfg.get(key) is not None:
            params[key] = cfg[key]
    for key in ("scales", "aspect_ratios"):
        if cfg.get(key):
            params[key] = ", ".join(_value_text(v) for v in cfg[key])
    if cfg.get("min_distance") is not None:
        params.update(overlap="distance", min_distance=cfg["min_distance"])
    elif cfg.get("max_iou") is not None:
        params.update(overlap="iou", max_iou=cfg["max_iou"])
    else:
        params["overlap"] = "none"
    label = cfg.get("label")
    if label in (None, "predicted"):
        params["label_mode"] = "predicted"
    else:
        params.update(label_mode="text", label=label)
    params["seed"] = int(_num(cfg.get("seed"))) + 1
    return params


def next_steps(info: dict[str, Any], dataset: Any) -> list[dict[str, Any]]:
    """The next steps after a run, as the panel's buttons.

    Args:
        info: a :func:`xpatch_core.runs.get_run_info` dict
        dataset: its dataset

    Returns:
        ``[{"name", "label", "operator", "params", "prompt"}]``: the operator
        is a name of this plugin; ``prompt`` opens its form filled with
        ``params``, otherwise it runs at once
    """
    key, field = info["key"], info["config"].get("field")
    kind = info.get("type")
    if kind == "patches":
        return [
            {"name": "open_patches", "label": "Open the patches view", "operator": "load_xpatch_run_view",
             "params": {"run_key": key}, "prompt": False},
            {"name": "sample_again", "label": "Sample again", "operator": "sample_patches",
             "params": sample_again_params(info, dataset), "prompt": True},
            {"name": "export", "label": "Export", "operator": "export_patches",
             "params": {"field": field}, "prompt": True},
            {"name": "patch_dataset", "label": "Make a patch dataset", "operator": "make_patch_dataset",
             "params": {"patches_field": field}, "prompt": True},
            {"name": "evaluate", "label": "Evaluate", "operator": "evaluate_patches",
             "params": {"patches_field": field}, "prompt": True},
            {"name": "embed", "label": "Compute embeddings", "operator": "compute_patch_embeddings",
             "params": {"patches_field": field}, "prompt": True},
        ]
    if kind == "embeddings":
        params = {"patches_field": info["config"].get("patches_field"), "attribute": info["config"].get("attribute")}
        return [{"name": name, "label": label, "operator": op, "params": dict(params), "prompt": True}
                for name, label, op in (("similarity", "Similarity index", "build_patch_similarity"),
                                        ("duplicates", "Tag near-duplicates", "tag_duplicate_patches"),
                                        ("diverse", "Select diverse patches", "select_diverse_patches"),
                                        ("map", "Patch map", "compute_patch_map"))]
    steps = [{"name": "open_view", "label": "Open the run's view", "operator": "load_xpatch_run_view",
              "params": {"run_key": key}, "prompt": False}]
    if kind == "saliency":
        steps.append({"name": "sample", "label": "Sample patches", "operator": "sample_patches",
                      "params": {"heatmap_field": field}, "prompt": True})
    return steps


def panel_content(sample_collection: Any, run_key: str | None = None) -> dict[str, Any]:
    """Everything the panel shows for a dataset and a chosen run.

    Args:
        sample_collection: a FiftyOne collection (its dataset's runs)
        run_key: the run to detail (default: the latest patch run, else the
            latest run)

    Returns:
        ``{"rows", "run_key", "details", "hits", "scores", "evaluation",
        "steps"}``: the table rows, the chosen run, its Markdown, the
        hit-rate figure (None without an evaluation), the score histogram
        (None but for patch runs), the evaluation's headline figures and
        the next steps
    """
    dataset = sample_collection._dataset
    infos = run_infos(dataset)
    out: dict[str, Any] = {"rows": [run_row(i, dataset) for i in infos], "run_key": None, "details": "", "hits": None,
                           "scores": None, "evaluation": None, "steps": []}
    if not infos:
        return out
    by_key = {i["key"]: i for i in infos}
    if run_key not in by_key:
        patches = [i for i in infos if i.get("type") == "patches"]
        run_key = (patches or infos)[-1]["key"]
    info = by_key[run_key]
    out.update(run_key=run_key, details=details_markdown(info, dataset), steps=next_steps(info, dataset))
    if info.get("type") == "patches":
        out["scores"] = score_histogram(dataset, info["config"]["field"])
        ev = evaluation_of(info)
        if ev is not None:
            out["hits"] = hit_rate_figure(ev)
            out["evaluation"] = {k: ev.get(k) for k in ("gt_field", "hit_rate", "uniform_expected",
                                                         "center_prior_rate", "pointing_game", "patches",
                                                         "images_evaluated", "evaluated_at")}
    return out


__all__ = [
    "HIT_TRACES",
    "evaluation_of",
    "details_markdown",
    "hit_rate_figure",
    "next_steps",
    "panel_content",
    "parameters",
    "run_infos",
    "run_row",
    "sample_again_params",
    "score_histogram",
]
