"""Big runs in the App: the plan a form shows, the recommendation of background
execution, a foreground run closed by the App server, and distributed
execution through FiftyOne's own delegated-operation executor.

Everything runs on the session's embedded database with real operators;
patch runs on synthetic heatmaps keep it fast (no model is needed).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import fiftyone as fo
import fiftyone.core.odm as foodm
import numpy as np
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import (
    ExecutionContext,
    ExecutionRunState,
    execute_or_delegate_operator,
    resolve_execution_options,
    resolve_type,
)
from fiftyone.operators.registry import OperatorRegistry

from xpatch_core import runs
from xpatch_core.defaults import SCALE

PATCHES_URI = "@xpatch/xpatch/sample_patches"
SALIENCY_URI = "@xpatch/xpatch/compute_saliency"
PATCH_PARAMS = {"heatmap_field": "hm", "field": "pp", "n": 3, "size_mode": "pixels", "size": 32, "seed": 5,
                "mode": "random", "open_view": False}


def _heat_dataset(count: int) -> fo.Dataset:
    rng = np.random.default_rng(0)
    ds = fo.Dataset()
    ds.add_samples([
        fo.Sample(filepath=f"/nonexistent/xpatch-big/{i:05d}.jpg",
                  hm=fo.Heatmap(map=rng.random((12, 12)).astype(np.float32), range=[0.0, 1.0], width=160,
                                height=120))
        for i in range(count)
    ])
    return ds


@pytest.fixture()
def heat_ds():
    ds = _heat_dataset(600)
    yield ds
    ds.delete()


@pytest.fixture()
def rate_cache(tmp_path, monkeypatch):
    """A private file of measured speeds, so speeds recorded by other tests do not count."""
    monkeypatch.setenv("XPATCH_RATES", str(tmp_path / "cache" / "rates.json"))
    return tmp_path / "cache"


def _request(ds, params, view=None):
    view = ds.view() if view is None else view
    return {"dataset_name": ds.name, "view": view._serialize(), "params": dict(params)}


def _lock_count(ds, field):
    from xpatch_core.runs.locks import collection

    return collection().count_documents({"dataset": ds.name, "field": field})


# -- the plan ----------------------------------------------------------------------


def test_plan_counts_are_what_the_run_then_processes(heat_ds, rate_cache):
    ds = heat_ds
    first = ds.values("id")[:100]
    runs.run_patches(ds, "hm", "pp", n=3, size=32, seed=5, sample_ids=first)
    run = runs.run_kind("patches", heatmap_field="hm", field="pp", n=3, size=32, seed=5)
    assert runs.count_todo(run, ds) == (500, 100)
    # a view that hides both fields still counts from the dataset, as the run does
    assert runs.count_todo(run, ds.exclude_fields(["pp", "hm"])) == (500, 100)
    plan = runs.plan_run(run, ds)
    assert (plan.todo, plan.done) == (500, 100)
    # the first run's speed is in the dataset's records: the estimate uses it
    info = runs.get_run_info(ds, "pp")["results"]
    assert plan.images_per_s == pytest.approx(info["images_per_s"]) and "run 'pp'" in plan.source
    assert plan.seconds == pytest.approx(500 / info["images_per_s"], rel=1e-3)
    text = " ".join(plan.lines())
    assert "500 of 600 samples to process (100 already done)" in text and "samples/s" in text
    summary = runs.run_patches(ds, "hm", "pp", n=3, size=32, seed=5)
    assert (summary.processed, summary.skipped) == (500, 100)
    assert runs.count_todo(run, ds) == (0, 600)
    assert runs.plan_run(run, ds).lines() == ["Nothing to process: all 600 samples already have a result."]


def test_speed_sources_machine_record_then_probe(heat_ds, rate_cache):
    from xpatch_core.runs import rates

    ds = heat_ds
    run = runs.run_kind("patches", heatmap_field="hm", field="fresh", n=3, size=32)
    probed = runs.plan_run(run, ds)  # nothing recorded: a few samples are timed, nothing written
    assert probed.images_per_s and probed.images_per_s > 0 and "measured now" in probed.source
    assert "fresh" not in ds.get_field_schema() and not rate_cache.exists()
    rates.record_rate(run.rate_key(), 12.5, 3.0, 400)
    recorded = runs.plan_run(run, ds)
    assert recorded.images_per_s == 12.5 and "on this machine" in recorded.source
    assert recorded.seconds == pytest.approx(3.0 + 600 / 12.5)
    # a saliency run that was never timed gets no estimate and is judged by its count
    sal = runs.run_kind("saliency", field="sal", model="mobilenetv2", method="activation")
    plan = runs.plan_run(sal, ds)
    assert plan.seconds is None and plan.todo == 600
    assert plan.background == (600 > SCALE["background_above_samples"])
    assert "No time estimate yet" in " ".join(plan.lines())


def test_form_and_options_recommend_background_above_the_threshold(heat_ds, rate_cache, monkeypatch):
    ds = heat_ds
    registry = OperatorRegistry()
    params = {"model": "mobilenetv2", "method": "activation", "field": "sal"}

    async def options(p):
        return await resolve_execution_options(registry, SALIENCY_URI, _request(ds, p))

    monkeypatch.setitem(SCALE, "background_above_samples", 100)
    big = asyncio.run(options(params))
    assert big.allow_immediate_execution and big.allow_delegated_execution and big.default_choice_to_delegated
    assert big.recommended_distributed_tasks == max(SCALE["min_tasks"], -(-600 // SCALE["samples_per_task"]))
    form = asyncio.run(resolve_type(registry, SALIENCY_URI, {**_request(ds, params), "target": "inputs"}))
    plan = form.to_json()["type"]["properties"]["plan"]["view"]
    assert plan["label"] == "600 of 600 samples to process (0 already done)."
    assert "Recommended: schedule it" in plan["description"] and plan["name"] == "Warning"
    # a small selection: run it now
    small = asyncio.run(resolve_execution_options(registry, SALIENCY_URI, _request(ds, params, ds.limit(50))))
    assert not small.default_choice_to_delegated
    # the Python API's delegate= still forces the choice
    forced = asyncio.run(options({**params, "delegate": True}))
    assert forced.allow_delegated_execution and not forced.allow_immediate_execution


# -- a foreground run that the App server closes -------------------------------------


def _progress(message) -> float | None:
    body = message.body
    params = getattr(body, "params", None) or (body.get("params") if isinstance(body, dict) else None) or {}
    uri = getattr(body, "operator_uri", None) or (body.get("operator_uri") if isinstance(body, dict) else None)
    return params.get("progress") if uri == "set_progress" else None


def test_closed_foreground_run_stops_at_a_chunk_and_resumes(heat_ds, rate_cache):
    ds = heat_ds
    result = asyncio.run(execute_or_delegate_operator(PATCHES_URI, _request(ds, PATCH_PARAMS)))
    gen = result.result
    assert result.is_generator
    seen = []
    for message in gen:  # what the App server streams
        p = _progress(message)
        if p is not None:
            seen.append(p)
            if 0 < p < 1:
                break  # the first chunk is written: the browser goes away
    gen.close()  # what the server does with the generator of a closed request
    info = runs.get_run_info(ds, "pp")["results"]
    assert info["status"] == "interrupted" and info["processed"] == 256
    assert ds.count("pp") == 256 and _lock_count(ds, "pp") == 0
    # a rerun resumes: the first chunk is not redone
    again = asyncio.run(execute_or_delegate_operator(PATCHES_URI, _request(ds, PATCH_PARAMS), exhaust=True))
    assert again.error is None
    info = runs.get_run_info(ds, "pp")["results"]
    assert (info["status"], info["processed"], info["skipped"]) == ("completed", 344, 256)
    runs.run_patches(ds, "hm", "ref", n=3, size=32, seed=5)
    for a, b in zip(ds.values("pp"), ds.values("ref")):
        assert [d.bounding_box for d in a.detections] == [d.bounding_box for d in b.detections]


# -- distributed execution ----------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _schedule_distributed(ds, params, num_tasks):
    """What FiftyOne Enterprise does for a distributed execution, with the
    open-source service: a scheduled (parent) operation and one child
    operation per task, each with its batch as the view (interleaved here,
    so the batches' id spans overlap)."""
    svc = DelegatedOperationService()
    ctx = ExecutionContext(request_params={**_request(ds, params), "num_distributed_tasks": num_tasks})
    parent = svc.queue_operation(operator=PATCHES_URI, label="scheduled", context=ctx)
    svc.set_running(parent.id)  # stands for the scheduled operation: no worker takes it
    ids = ds.values("id")
    children = []
    for k in range(num_tasks):
        batch = ds.select(ids[k::num_tasks])
        rp = {**_request(ds, params, batch), "num_distributed_tasks": num_tasks, "delegated": True}
        child = svc.queue_operation(operator=PATCHES_URI, label=f"task {k}",
                                    context=ExecutionContext(request_params=rp))
        # the orchestrator links its tasks to the scheduled operation (the document's parent_id)
        foodm.get_db_conn()["delegated_ops"].update_one({"_id": child.id}, {"$set": {"parent_id": parent.id}})
        children.append(child)
    return svc, parent, children


def test_distributed_tasks_share_one_run_and_recover_a_dead_task(heat_ds, rate_cache):
    from xpatch_core.runs import shards
    from xpatch_core.runs.distributed import task_run_id

    ds = heat_ds
    svc, parent, children = _schedule_distributed(ds, PATCH_PARAMS, 3)
    try:
        first = svc.execute_operation(svc.get(children[0].id))
        assert first is None or not getattr(first, "error", None), first
        info = runs.get_run_info(ds, "pp")
        assert info["config"]["sharding"]["run_id"] == task_run_id(str(parent.id))
        assert info["results"]["status"] == "running" and info["results"]["num_shards"] == 3
        assert ds.count("pp") == 200
        # task 1 dies like a killed worker: its operation RUNNING, its record claimed by a dead process
        svc.set_running(children[1].id)
        shards.collection().insert_one({
            "_id": f"{task_run_id(str(parent.id))}:1", "run_id": task_run_id(str(parent.id)),
            "dataset_id": str(ds._doc.id), "run_key": "pp", "index": 1, "num_shards": 3, "lo": None, "hi": None,
            "status": "running", "attempts": 1, "requeues": 0, "op_id": str(children[1].id), "owner": "dead",
            "pid": _dead_pid(), "host": __import__("socket").gethostname(), "heartbeat": 0.0, "created_at": 0.0,
            "current": {}, "committed": {}, "pending": None})
        assert shards.requeue_stale(ds, "pp") == [1]
        assert svc.get(children[1].id).run_state == ExecutionRunState.QUEUED
        for child in children[1:]:
            svc.execute_operation(svc.get(child.id))
        for child in children:
            assert svc.get(child.id).run_state == ExecutionRunState.COMPLETED, svc.get(child.id).result
        res = runs.get_run_info(ds, "pp")["results"]
        assert (res["status"], res["processed"], res["failed"]) == ("completed", 600, 0)
        assert res["patches"] == 3 * 600 and [s["attempts"] for s in res["shards"]] == [1, 2, 1]
        assert _lock_count(ds, "pp") == 0
        # the same boxes as a plain run: results do not depend on the split
        runs.run_patches(ds, "hm", "ref", n=3, size=32, seed=5)
        for a, b in zip(ds.values("pp"), ds.values("ref")):
            assert [d.bounding_box for d in a.detections] == [d.bounding_box for d in b.detections]
    finally:
        for op in [parent, *children]:
            svc.delete_operation(op.id)
        runs.delete_run(ds, "pp")


def test_distributed_options_are_dropped_for_immediate_runs(heat_ds, rate_cache):
    ds = heat_ds
    res = asyncio.run(execute_or_delegate_operator(
        PATCHES_URI, {**_request(ds, PATCH_PARAMS), "num_distributed_tasks": 4}, exhaust=True))
    assert res.error is None
    info = runs.get_run_info(ds, "pp")
    assert "sharding" not in info["config"] and info["results"]["processed"] == 600


def test_progress_is_whole_in_the_app_and_on_a_narrow_terminal(heat_ds, rate_cache, capsys, monkeypatch):
    labels = []
    runs.run_patches(heat_ds, "hm", "pp", n=3, size=32, progress=lambda p: labels.append(p.message))
    assert labels[0] == "sampling patches on 600 samples"
    assert labels[-1] == "600 of 600 samples done, 0 failed, 1,800 patches"
    # the command line: the first line is printed whole above the bar, whatever the width
    monkeypatch.setenv("COLUMNS", "50")
    runs.run_patches(heat_ds, "hm", "pp2", n=3, size=32, progress=True)
    err = capsys.readouterr().err
    assert "sampling patches on 600 samples" in err.splitlines()[0]



def _triggers(messages, name):
    out = []
    for m in messages:
        body = m.body.to_json() if hasattr(m.body, "to_json") else m.body
        if isinstance(body, dict) and body.get("operator_uri") == name:
            out.append(body["params"])
    return out


def test_operators_return_a_short_result_with_next_steps(heat_ds, rate_cache):
    ds = heat_ds
    params = {**PATCH_PARAMS, "open_view": True}
    result = asyncio.run(execute_or_delegate_operator(PATCHES_URI, _request(ds, params)))
    messages = list(result.result)
    assert _triggers(messages, "set_view"), "the patches view opens"
    (shown,) = _triggers(messages, "show_output")
    text = shown["results"]["result"]
    assert text.startswith("**Patches in 'pp'**")
    assert "600 processed, 0 already done, 0 failed; 1,800 patches" in text and "The patches view of 'pp' is open" in text
    assert len(text) < 400
    buttons = {k: v["view"] for k, v in shown["outputs"]["type"]["properties"].items() if k.startswith("next_")}
    targets = {v["operator"] if "operator" in v else v.get("on_click") for v in buttons.values()}
    assert {"@xpatch/xpatch/export_patches", "@xpatch/xpatch/evaluate_patches"} <= targets, buttons
    # a rerun with nothing to do says so
    result = asyncio.run(execute_or_delegate_operator(PATCHES_URI, _request(ds, params)))
    (shown,) = _triggers(list(result.result), "show_output")
    assert shown["results"]["result"].startswith("**Nothing to do: all 600 samples already have patches in 'pp'")


def test_supported_range_is_declared_the_same_everywhere_and_met():
    import re

    import fiftyone.plugins as fop
    import yaml
    from packaging.version import Version

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "fiftyone.yml")) as f:
        manifest = yaml.safe_load(f)
    with open(os.path.join(root, "pyproject.toml")) as f:
        pyproject = f.read()
    with open(os.path.join(root, ".ci", "oldest.txt")) as f:
        oldest = dict(line.strip().split("==") for line in f if "==" in line)
    lower = re.search(r'"fiftyone>=([0-9.]+)"', pyproject).group(1)
    assert manifest["fiftyone"]["version"] == f">={lower}"
    assert Version(oldest["fiftyone"]) >= Version(lower) and oldest["fiftyone"].startswith(lower)
    for pkg in ("tensorflow", "keras"):
        assert f'"{pkg}>={oldest[pkg]}"' in pyproject
    fop.ensure_plugin_compatibility("@xpatch/xpatch", error_level=0)  # the running FiftyOne is in range
    assert Version(fo.__version__) >= Version(lower)


def test_the_oldest_mongodb_notice_is_dropped_and_other_warnings_stay(caplog):
    import logging

    from xpatch_core.quiet import quiet_third_party

    quiet_third_party()
    quiet_third_party()  # once per process, however often called
    logger = logging.getLogger("fiftyone.core.odm.database")
    assert sum(type(f).__name__ == "_DropNotice" for f in logger.filters) == (fo.config.database_uri is None)
    with caplog.at_level(logging.WARNING, logger="fiftyone.core.odm.database"):
        logger.warning("You are running the oldest supported major version of MongoDB. Please refer to ...")
        logger.warning("Your MongoDB server version is more than 1 ahead of your database's feature compatibility")
    messages = [r.getMessage() for r in caplog.records]
    assert any("more than 1 ahead" in m for m in messages)
    assert any("oldest supported" in m for m in messages) == (fo.config.database_uri is not None)
