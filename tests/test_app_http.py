"""The plugin against the real App server, over HTTP, as the App calls it.

``fiftyone app launch`` runs in its own process group on a persistent dataset
of the 18 kitchenware photos; the tests post to the routes the App uses
(``/operators``, ``/operators/resolve-type``, ``/operators/execute/generator``)
with the request body the App sends, and check the database afterwards.
"""

from __future__ import annotations

import os

import pytest

from tests.app_server import PLUGIN, ROOT, kitchen_dataset, post_json, request_body, saliency_form, shared_app
from tests.app_server import stream_json_lines as stream

DATASET = "xpatch-app-http"
N_PATCHES = 4


def _plugin_operators() -> list[str]:
    """The operator names ``fiftyone.yml`` declares."""
    names, inside = [], False
    with open(os.path.join(ROOT, "fiftyone.yml")) as f:
        for line in f:
            if line.startswith("operators:"):
                inside = True
            elif inside and line.lstrip().startswith("- "):
                names.append(line.split("-", 1)[1].strip().strip("\"'"))
            elif inside and line.strip() and not line.startswith(" "):
                inside = False
    return names


@pytest.fixture(scope="module")
def dataset(kitchen):  # noqa: ARG001 - skips when the kitchenware package is absent
    ds = kitchen_dataset(DATASET)
    yield ds
    if not ds.deleted:
        ds.delete()


@pytest.fixture(scope="module")
def app(request, dataset):
    return shared_app(request, dataset.name)


def _uris(messages: list[dict]) -> list[str]:
    return [m["body"].get("operator_uri") for m in messages if isinstance(m.get("body"), dict)]


def _check_success(messages: list[dict]) -> None:
    bad = [m for m in messages if "SUCCESS" not in str(m.get("type"))]
    assert not bad, f"the operator streamed errors: {bad}"


def test_lists_every_operator_without_errors(app, dataset):
    answer = post_json(f"{app.url}/operators", {"dataset_name": dataset.name})
    assert answer["errors"] == [], f"plugin loading errors: {answer['errors']}"
    listed = {op["uri"]: op for op in answer["operators"]}
    declared = _plugin_operators()
    assert {"compute_saliency", "sample_patches", "get_xpatch_run_info", "load_xpatch_run_view",
            "delete_xpatch_run"} <= set(declared)
    missing = [name for name in declared if f"{PLUGIN}/{name}" not in listed]
    assert not missing, f"operators declared in fiftyone.yml but not served: {missing}"
    for name in declared:
        config = listed[f"{PLUGIN}/{name}"]["config"]
        assert config["can_execute"], name
    for name in ("compute_saliency", "sample_patches"):
        config = listed[f"{PLUGIN}/{name}"]["config"]
        assert config["execute_as_generator"] and config["allow_delegated_execution"], name


def test_form_resolves_for_a_saved_model(app, dataset, kitchen):
    body = request_body(dataset.name, "compute_saliency",
                        {"model": "saved", "model_path": kitchen.model_path, "method": "gradcam"},
                        target="inputs")
    answer = post_json(f"{app.url}/operators/resolve-type", body)
    props = answer["type"]["properties"]
    assert {"model", "model_path", "class_names", "method", "target_mode", "field", "batch_size"} <= set(props)
    assert "weights" not in props  # only offered for keras.applications models


def test_compute_saliency_streams_progress_then_reload(app, dataset, kitchen):
    body = request_body(dataset.name, "compute_saliency", saliency_form(kitchen.model_path, kitchen.class_names))
    messages = list(stream(f"{app.url}/operators/execute/generator", body))
    _check_success(messages)
    uris = _uris(messages)
    assert "set_progress" in uris and "reload_dataset" in uris, uris
    assert uris.index("set_progress") < uris.index("reload_dataset")
    fractions = [m["body"]["params"]["progress"] for m in messages if m["body"]["operator_uri"] == "set_progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0

    (shown,) = [m["body"]["params"] for m in messages if m["body"]["operator_uri"] == "show_output"]
    assert shown["results"]["result"].startswith("**Heatmaps in 'saliency'**\n\n18 processed, 0 already done, 0 failed")
    dataset.reload()
    assert dataset.count("saliency") == len(dataset) == 18
    from xpatch_core.runs import get_run_info, read_heatmap

    info = get_run_info(dataset, "saliency")
    assert info["config"]["method"] == "gradcam" and info["results"]["processed"] == 18
    for sample in dataset.select_fields("saliency").limit(3):
        m = read_heatmap(sample.saliency)
        assert m is not None and m.ndim == 2 and float(m.max()) > 0


def test_sample_patches_streams_a_patches_view(app, dataset):
    if dataset.count("saliency") == 0:
        pytest.skip("compute_saliency did not run")
    params = {"heatmap_field": "saliency", "field": "patches", "n": N_PATCHES, "size_mode": "pixels",
              "size": 96, "mode": "random", "seed": 0, "open_view": True}
    messages = list(stream(f"{app.url}/operators/execute/generator",
                           request_body(dataset.name, "sample_patches", params)))
    _check_success(messages)
    uris = _uris(messages)
    assert "set_progress" in uris and "reload_dataset" in uris and "set_view" in uris, uris
    stages = next(m["body"]["params"]["view"] for m in messages if m["body"]["operator_uri"] == "set_view")
    assert stages[0]["_cls"] == "fiftyone.core.stages.ToPatches"
    assert dict(stages[0]["kwargs"])["field"] == "patches"

    dataset.reload()
    n = dataset.count("patches.detections")
    assert n == 18 * N_PATCHES
    import fiftyone.core.patches as fop
    import fiftyone.core.view as fov

    view = fov.DatasetView._build(dataset, stages)
    assert isinstance(view, fop.PatchesView) and len(view) == n
    scores = view.values("patches.confidence")
    assert scores == sorted(scores, reverse=True)


def test_a_closed_browser_stops_a_foreground_run_at_a_chunk_and_it_resumes(app):
    """The App server closes the operator's generator when the request goes
    away: the run records "interrupted" at the chunk it reached, releases its
    lock and keeps what it wrote; running it again resumes."""
    import time

    import fiftyone as fo
    import numpy as np

    from xpatch_core.runs import get_run_info
    from xpatch_core.runs.locks import collection as locks

    rng = np.random.default_rng(0)
    ds = fo.Dataset(f"xpatch-app-http-close-{os.getpid()}", persistent=True, overwrite=True)
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/xpatch-close/{i:05d}.jpg",
                              hm=fo.Heatmap(map=rng.random((24, 24)).astype(np.float32), range=[0.0, 1.0],
                                            width=320, height=240)) for i in range(4000)], progress=False)
    try:
        params = {"heatmap_field": "hm", "field": "pp", "n": 16, "size_mode": "pixels", "size": 32, "seed": 1,
                  "mode": "random", "open_view": False}
        lines = stream(f"{app.url}/operators/execute/generator", request_body(ds.name, "sample_patches", params))
        for m in lines:
            body = m.get("body") or {}
            if body.get("operator_uri") == "set_progress" and 0 < body["params"]["progress"] < 1:
                break  # the first chunk is written
        lines.close()  # the browser tab goes away: the connection closes
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ds.reload()  # the server process writes the run record
            # no status yet: the record is registered, or its results are being replaced right now
            if "pp" in ds.list_runs() and get_run_info(ds, "pp")["results"].get("status") not in (None, "running"):
                break
            time.sleep(0.5)
        res = get_run_info(ds, "pp")["results"]
        assert res["status"] == "interrupted", res
        written = ds.count("pp")
        assert 0 < written < len(ds) and written % 256 == 0 and res["processed"] == written
        assert locks().count_documents({"dataset": ds.name}) == 0
        messages = list(stream(f"{app.url}/operators/execute/generator",
                               request_body(ds.name, "sample_patches", params)))
        _check_success(messages)
        ds.reload()
        res = get_run_info(ds, "pp")["results"]
        assert (res["status"], res["skipped"], res["processed"]) == ("completed", written, len(ds) - written)
        assert ds.count("pp") == len(ds)
    finally:
        ds.delete()
