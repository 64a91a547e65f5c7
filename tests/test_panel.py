"""The xpatch panel: what it shows, read from real run records on the
embedded database, and the panel itself run through FiftyOne's executor."""

from __future__ import annotations

import os

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from PIL import Image

from xpatch_core import overview, runs
from xpatch_core.metrics import evaluate_patches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PANEL_URI = "@xpatch/xpatch/xpatch_runs"
N_PATCHES = 5


def _box(x0, y0, x1, y1, w=64, h=48):
    return [x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h]


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """Six photos-like images (one unreadable), a real saliency run with a
    tiny Keras model, a patch run, and ground truth of two classes."""
    from tests.test_reliability import _tiny_keras

    root = tmp_path_factory.mktemp("panel")
    rng = np.random.default_rng(0)
    samples = []
    for k in range(6):
        p = str(root / f"im{k}.png")
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(p)
        gt = [fo.Detection(label="cup", bounding_box=_box(8, 8, 40, 40))]
        if k % 2:
            gt.append(fo.Detection(label="plate", bounding_box=_box(30, 10, 60, 44)))
        samples.append(fo.Sample(filepath=p, gt=fo.Detections(detections=gt)))
    with open(samples[-1].filepath, "wb") as f:
        f.write(b"not an image")  # one failure, with its reason
    d = fo.Dataset()
    d.add_samples(samples)
    model = _tiny_keras(str(root / "tiny.keras"))
    runs.run_saliency(d, "sal", model, "activation")
    runs.run_patches(d, "sal", "patches", n=N_PATCHES, size=16, seed=3)
    evaluate_patches(d, "patches", "gt")
    runs.run_embeddings(d, "patches", model=model, fine_layer=None)
    yield d
    d.delete()


def test_the_panel_is_registered_and_declared():
    import yaml

    panel = foo.get_operator(PANEL_URI)
    assert isinstance(panel, foo.Panel) and panel.config.name == "xpatch_runs"
    assert PANEL_URI in [p.uri for p in foo.list_operators(type="panel")]
    with open(os.path.join(ROOT, "fiftyone.yml")) as f:
        manifest = yaml.safe_load(f)
    assert manifest["panels"] == ["xpatch_runs"]
    import fiftyone.plugins.context as fopc

    ctx = [c for c in fopc.build_plugin_contexts() if c.name == "@xpatch/xpatch"]
    assert ctx and not ctx[0].errors, ctx and ctx[0].errors


def test_rows_and_details_are_the_run_records(ds):
    content = overview.panel_content(ds)
    by_run = {r["run"]: r for r in content["rows"]}
    assert set(by_run) == {"sal", "patches", "patches_embedding"}
    for key, row in by_run.items():
        res = runs.get_run_info(ds, key)["results"]
        assert (row["processed"], row["failed"], row["skipped"], row["status"]) == (
            res["processed"], res["failed"], res["skipped"], res["status"])
    assert by_run["sal"]["failed"] == 1 and by_run["sal"]["processed"] == 5
    assert by_run["sal"]["samples"] == "5 (1 failed)" and by_run["patches"]["samples"] == "5"
    assert by_run["patches"]["patches"] == runs.get_run_info(ds, "patches")["results"]["patches"] == 5 * N_PATCHES
    assert [r["run"] for r in content["rows"]] == ["sal", "patches", "patches_embedding"]  # oldest first
    # the latest patch run is detailed by default
    assert content["run_key"] == "patches"
    md = content["details"]
    assert "**Run `patches`**: patches in `patches`, completed." in md
    assert f" n `{N_PATCHES}` " in md and " seed `3` " in md and "heatmap_field `sal`" in md
    sal = overview.panel_content(ds, "sal")
    assert "1 failed" in sal["details"] and "im5.png" in sal["details"]  # the failure and its reason
    reason = runs.failures_of(ds, "sal")[0]["reason"]
    assert reason in sal["details"]
    assert "model `tiny.keras`" in sal["details"] and "method `activation`" in sal["details"]
    assert sal["hits"] is None and sal["scores"] is None
    assert [s["operator"] for s in sal["steps"]] == ["load_xpatch_run_view", "sample_patches"]


def test_hit_rate_figure_is_the_stored_evaluation(ds):
    content = overview.panel_content(ds)
    ev = runs.get_run_info(ds, "patches")["results"]["evaluation"]
    fig = content["hits"]
    names = [t["name"] for t in fig["data"]]
    assert names == [name for _, name in overview.HIT_TRACES]
    classes = [c["label"] for c in ev["per_class"]]
    assert classes == ["cup", "plate"]  # cup on every image evaluated, plate on every other
    for trace, (key, _) in zip(fig["data"], overview.HIT_TRACES):
        assert trace["x"] == ["all", *classes]
        assert trace["y"] == [ev[key], *(c[key] for c in ev["per_class"])]
    assert fig["data"][0]["customdata"] == [ev["images_evaluated"], *(c["images"] for c in ev["per_class"])]
    assert fig["classes_left_out"] == 0 and overview.hit_rate_figure(ev, max_classes=1)["classes_left_out"] == 1
    assert content["evaluation"]["hit_rate"] == ev["hit_rate"]
    # no stored evaluation, no figure
    assert overview.evaluation_of({"results": {}}) is None


def test_score_histogram_is_the_patch_confidences(ds):
    hist = overview.score_histogram(ds, "patches", bins=7)
    scores = np.array([d.confidence for dets in ds.values("patches.detections") for d in dets or []])
    assert len(scores) == 5 * N_PATCHES
    edges = np.asarray(hist["edges"])
    assert len(edges) == 8 and edges[0] == scores.min() and scores.max() < edges[-1] < scores.max() + 1e-5
    np.testing.assert_allclose(np.diff(edges), (edges[-1] - edges[0]) / 7)
    expected, _ = np.histogram(scores, bins=edges)
    assert hist["counts"] == expected.tolist() and sum(hist["counts"]) == len(scores)
    assert hist["data"][0]["y"] == hist["counts"]
    np.testing.assert_allclose(hist["data"][0]["x"], (edges[:-1] + edges[1:]) / 2)
    assert overview.score_histogram(ds, "nope") is None and overview.score_histogram(ds, "gt") is None


def test_sample_again_is_the_run_with_a_new_seed_and_field(ds):
    from plugin.patches_ops import patch_params

    info = runs.get_run_info(ds, "patches")
    steps = {s["name"]: s for s in overview.next_steps(info, ds)}
    assert list(steps) == ["open_patches", "sample_again", "export", "patch_dataset", "evaluate", "embed"]
    assert steps["open_patches"]["params"] == {"run_key": "patches"} and not steps["open_patches"]["prompt"]
    assert steps["patch_dataset"]["params"] == {"patches_field": "patches"}
    again = patch_params(steps["sample_again"]["params"])  # what the form's server side makes of them
    assert again.pop("field") == "patches_2" and again.pop("seed") == 4
    cfg = info["config"]
    for key, value in again.items():
        if key in ("overwrite",):
            assert value is False  # nothing of the run is replaced
            continue
        stored = cfg[key]
        assert (list(value) if isinstance(value, tuple) else value) == stored, key


def test_the_panel_runs_through_fiftyones_executor(ds):
    """on_load then render, as the App calls them: the state and data it
    sends are the overview's, and the rendered panel has the plots and the
    next steps."""
    from fiftyone.operators.executor import ExecutionContext, Executor

    panel = foo.get_operator(PANEL_URI)
    executor = Executor()
    ctx = ExecutionContext(request_params={
        "dataset_name": ds.name, "params": {"__method__": "on_load", "panel_id": "p1", "state": {}}},
        executor=executor)
    panel.execute(ctx)
    requests = executor.to_json()["requests"]
    by_op = {}
    for r in requests:
        by_op.setdefault(r["operator_uri"].split("/")[-1], []).append(r["params"])
    state = by_op["patch_panel_state"][0]["state"]
    data = by_op["patch_panel_data"][0]["data"]
    content = overview.panel_content(ds)
    assert state["rows"] == content["rows"] and state["run_key"] == "patches"
    assert data["hits"] == content["hits"]["data"] and data["scores"] == content["scores"]["data"]
    output = by_op["show_panel_output"][0]["output"]
    props = output["type"]["properties"]
    assert {"rows_table", "run_key", "details", "hits", "evaluation_note", "scores", "steps", "refresh"} <= set(props)
    assert props["hits"]["view"]["name"] == props["scores"]["view"]["name"] == "PlotlyView"
    assert props["hits"]["view"]["layout"] == content["hits"]["layout"]
    text = str(output)
    assert "@xpatch/xpatch/make_patch_dataset" in text and "@xpatch/xpatch/export_patches" in text


def test_the_run_table_is_markdown_that_wraps(ds):
    from plugin.runs_panel import runs_table_markdown

    rows = overview.panel_content(ds)["rows"]
    md = runs_table_markdown(ds.name, rows + [{**rows[0], "run": "a|b", "time": ""}])
    lines = md.splitlines()
    assert lines[2] == "| Run | Kind | Status | Samples | Patches | Time |"
    assert lines[4].startswith("| sal | saliency | completed | 5 (1 failed) | 0 |")
    assert lines[5].startswith(f"| patches | patches | completed | 5 | {5 * N_PATCHES} |")
    assert lines[7].startswith("| a\\|b |") and lines[7].endswith("| - |")  # escaped; empty cells show "-"


def test_an_embedding_run_offers_the_curation_steps(ds):
    content = overview.panel_content(ds, "patches_embedding")
    info = runs.get_run_info(ds, "patches_embedding")
    assert content["run_key"] == "patches_embedding" and content["hits"] is None and content["scores"] is None
    assert "patches_field `patches`" in content["details"] and "attribute `embedding`" in content["details"]
    assert f"dim `{info['config']['dim']}`" in content["details"]
    ops = [s["operator"] for s in content["steps"]]
    assert ops == ["build_patch_similarity", "tag_duplicate_patches", "select_diverse_patches", "compute_patch_map"]
    assert all(s["params"] == {"patches_field": "patches", "attribute": "embedding"} for s in content["steps"])


def test_choosing_another_run_in_the_panel(ds):
    """The Run menu's on_change: the panel details the chosen run."""
    from fiftyone.operators.executor import ExecutionContext, Executor

    panel = foo.get_operator(PANEL_URI)
    executor = Executor()
    ctx = ExecutionContext(request_params={"dataset_name": ds.name, "params": {
        "__method__": "on_select_run", "panel_id": "p1", "state": {"run_key": "patches"}, "value": "sal"}},
        executor=executor)
    panel.execute(ctx)
    state = next(r["params"]["state"] for r in executor.to_json()["requests"]
                 if r["operator_uri"].endswith("patch_panel_state"))
    assert state["run_key"] == "sal" and state["kind"] == "saliency" and state["hits_layout"] is None
    assert state["details"] == overview.panel_content(ds, "sal")["details"]
    assert [s["operator"] for s in state["steps"]] == ["load_xpatch_run_view", "sample_patches"]
