"""A saliency run gives its field a value colormap in the App, never clobbering the user's colours."""

from __future__ import annotations

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from tests.test_reliability import _tiny_keras
from xpatch_core import runs
from xpatch_core.defaults import HEATMAP


@pytest.fixture()
def ds(tmp_path):
    paths = []
    for k in range(2):
        p = str(tmp_path / f"im{k}.png")
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    d = fo.Dataset()
    d.add_samples([fo.Sample(filepath=p) for p in paths])
    yield d
    d.delete()


def test_a_new_dataset_gets_a_value_colormap(ds, tmp_path):
    model = _tiny_keras(str(tmp_path / "t.keras"))
    runs.run_saliency(ds, "sal", model, "activation")
    ds.reload()
    scheme = ds.app_config.color_scheme
    assert scheme.color_by == "value" and scheme.opacity == HEATMAP["opacity"]
    assert [dict(c) for c in scheme.colorscales] == [{"path": "sal", "name": HEATMAP["colorscale"]}]


def test_the_users_colours_are_kept(ds, tmp_path):
    model = _tiny_keras(str(tmp_path / "t.keras"))
    ds.app_config.color_scheme = fo.ColorScheme(color_by="field", opacity=0.3,
                                                colorscales=[{"path": "sal", "name": "hsv"}])
    ds.save()
    runs.run_saliency(ds, "sal", model, "activation")
    runs.run_saliency(ds, "other", model, "activation")
    ds.reload()
    scheme = ds.app_config.color_scheme
    assert scheme.color_by == "field" and scheme.opacity == 0.3  # nothing of theirs changed
    scales = {c["path"]: c["name"] for c in scheme.colorscales}
    assert scales == {"sal": "hsv", "other": HEATMAP["colorscale"]}  # theirs kept, the new field added


def _ctx(ds):
    from fiftyone.operators.executor import ExecutionContext, Executor

    executor = Executor()
    return ExecutionContext(request_params={"dataset_name": ds.name, "params": {}}, executor=executor), executor


def test_the_app_is_told_the_new_scheme_right_away(ds, tmp_path, monkeypatch):
    """The App reads a saved scheme only when it opens a dataset: after a run
    that changed it, the operator triggers the App's set_color_scheme."""
    from plugin.colours import colour_scheme_event, saved_scheme

    model = _tiny_keras(str(tmp_path / "t.keras"))
    ctx, executor = _ctx(ds)
    before = saved_scheme(ctx)
    assert before is None
    runs.run_saliency(ds, "sal", model, "activation")
    colour_scheme_event(ctx, before)
    (req,) = executor.to_json()["requests"]
    assert req["operator_uri"] == "set_color_scheme"
    assert req["params"] == {"colorscales": [{"path": "sal", "name": HEATMAP["colorscale"], "list": None}],
                             "color_by": "value", "opacity": HEATMAP["opacity"]}

    # a second field: the colorscales only (the colour mode and opacity are the user's)
    ctx, executor = _ctx(ds)
    before = saved_scheme(ctx)
    runs.run_saliency(ds, "other", model, "activation")
    colour_scheme_event(ctx, before)
    (req,) = executor.to_json()["requests"]
    assert [c["path"] for c in req["params"]["colorscales"]] == ["sal", "other"] and "color_by" not in req["params"]

    # nothing changed (a rerun): nothing sent; an App without the operator: nothing sent
    ctx, executor = _ctx(ds)
    assert colour_scheme_event(ctx, saved_scheme(ctx)) is None and not executor.to_json()["requests"]
    monkeypatch.setattr(fo, "__version__", "1.11.0")
    assert colour_scheme_event(ctx, None) is None
