"""The plugin's operators on the real embedded database, real photos, real Xception weights."""

from __future__ import annotations

import os
import subprocess
import sys

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from fiftyone.operators.executor import ExecutionError

from xpatch_core import runs
from xpatch_core.errors import ParameterError, XpatchError
from xpatch_core.heatmaps import decode_network_map, display_size

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPERATORS = ["compute_saliency", "sample_patches", "get_xpatch_run_info", "load_xpatch_run_view",
             "delete_xpatch_run"]


def _op(name):
    return foo.get_operator(f"@xpatch/xpatch/{name}")


@pytest.fixture()
def photos_ds(kitchen):
    from xpatch_core.offline import kitchenware_images

    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=p) for p in kitchenware_images()[:8]])
    yield ds
    ds.delete()


def test_listing_operators_does_not_import_tensorflow():
    code = (
        "import sys, fiftyone.operators as foo\n"
        "uris = [o.uri for o in foo.list_operators()]\n"
        "import fiftyone.plugins.context as fop\n"
        "ctx = [c for c in fop.build_plugin_contexts() if c.name == '@xpatch/xpatch']\n"
        "assert ctx and not ctx[0].errors, ctx and ctx[0].errors\n"
        "print(' '.join(u for u in uris if 'xpatch' in u))\n"
        "print('TF' if 'tensorflow' in sys.modules else 'NOTF')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(),
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    listed, tf_state = out.stdout.strip().splitlines()[-2:]
    for name in OPERATORS:
        assert f"@xpatch/xpatch/{name}" in listed.split()
    assert tf_state == "NOTF"


def test_manifest_lists_every_registered_operator():
    import yaml

    with open(os.path.join(ROOT, "fiftyone.yml")) as f:
        manifest = yaml.safe_load(f)
    assert manifest["name"] == "@xpatch/xpatch" and manifest["type"] == "plugin"
    assert manifest["py_entry"].startswith("plugin/")
    registered = {o.uri.split("/")[-1] for o in foo.list_operators() if o.uri.startswith("@xpatch/xpatch/")}
    assert registered and registered <= set(manifest["operators"]) | set(manifest.get("panels") or [])
    assert set(OPERATORS) <= registered


def test_compute_and_sample_through_operators(photos_ds, xception_weights):
    ds = photos_ds
    result = _op("compute_saliency")(ds, field="saliency", model="xception", weights=xception_weights,
                                     method="eigencam", batch_size=4)
    assert result.error is None
    schema = ds.get_field_schema()
    assert schema["saliency"].document_type is fo.Heatmap
    assert ds.count("saliency") == len(ds)
    for hm in ds.values("saliency"):
        # stored at display size (issue 14), the network's 19x19 map kept as provenance
        assert (hm.map.shape[1], hm.map.shape[0]) == display_size((hm.width, hm.height))
        assert hm.map.dtype == np.uint8 and list(hm.range) == [0, 255] and hm.map.max() == 255
        assert decode_network_map(hm.network_map).shape == (19, 19)
        assert hm.width > 0 and hm.height > 0 and hm.method == "eigencam"
    info = runs.get_run_info(ds, "saliency")
    cfg = info["config"]
    assert cfg["method"] == "eigencam" and cfg["layer"] == "block14_sepconv2_act*block13_sepconv1_act"
    assert cfg["model_source"]["weights"] == xception_weights and cfg["xpatch_version"]
    assert info["results"]["processed"] == len(ds) and info["results"]["status"] == "completed"

    result = _op("sample_patches")(ds, heatmap_field="saliency", field="patches", n=6, size=64, seed=3,
                                   label="object")
    assert result.error is None
    assert ds.get_field_schema()["patches"].document_type is fo.Detections
    widths, heights, dets = ds.values(["saliency.width", "saliency.height", "patches.detections"])
    assert sum(len(d) for d in dets) == 6 * len(ds)
    for w, h, ds_ in zip(widths, heights, dets):
        for d in ds_:
            x, y, bw, bh = d.bounding_box
            assert 0 <= x and 0 <= y and x + bw <= 1 + 1e-9 and y + bh <= 1 + 1e-9
            assert round(bw * w) == 64 and round(bh * h) == 64
            assert 0.0 <= d.confidence <= 1.0 and d.score == d.confidence and d.label == "object"
            assert d.seed == 3 and 1 <= d.rank <= 6
    pinfo = runs.get_run_info(ds, "patches")
    assert pinfo["config"]["n"] == 6 and pinfo["config"]["seed"] == 3
    assert pinfo["results"]["patches"] == 6 * len(ds)
    view = runs.load_run_view(ds, "patches")
    scores = view.values("patches.confidence")
    assert len(view) == 6 * len(ds) and scores == sorted(scores, reverse=True)

    result = _op("get_xpatch_run_info")(ds, run_key="patches")
    assert result.result["info"]["config"]["heatmap_field"] == "saliency"


def test_resume_overwrite_and_new_key(photos_ds, xception_weights):
    ds = photos_ds
    first = runs.run_saliency(ds.limit(3), "saliency", "xception", "activation", weights=xception_weights)
    assert first.processed == 3
    before = {i: hm.map.copy() for i, hm in zip(*ds.limit(3).values(["id", "saliency"]))}
    resumed = runs.run_saliency(ds, "saliency", "xception", "activation", weights=xception_weights)
    assert (resumed.processed, resumed.skipped) == (len(ds) - 3, 3)
    assert ds.count("saliency") == len(ds)
    for i, hm in zip(*ds.limit(3).values(["id", "saliency"])):
        np.testing.assert_array_equal(hm.map, before[i])
    again = runs.run_saliency(ds, "saliency", "xception", "activation", weights=xception_weights,
                              overwrite=True)
    assert (again.processed, again.skipped) == (len(ds), 0)
    with pytest.raises(ParameterError, match="other parameters"):
        runs.run_saliency(ds, "saliency", "xception", "eigencam", weights=xception_weights)
    other = runs.run_saliency(ds, "saliency_eigen", "xception", "eigencam", weights=xception_weights)
    assert other.processed == len(ds)
    assert set(runs.list_runs(ds)) == {"saliency", "saliency_eigen"}
    assert ds.count("saliency") == ds.count("saliency_eigen") == len(ds)


def test_png_storage_and_delete_removes_fields_and_files(photos_ds, xception_weights, tmp_path):
    ds = photos_ds
    maps = tmp_path / "maps"
    _op("compute_saliency")(ds, field="heat", weights=xception_weights, method="activation",
                            map_dir=str(maps))
    files = sorted(os.listdir(maps / "heat"))
    assert len(files) == len(ds) and all(f.endswith(".png") for f in files)
    for hm in ds.values("heat"):
        assert hm.map is None and os.path.isfile(hm.map_path) and list(hm.range) == [0, 255]
        m = runs.read_heatmap(hm)
        assert (m.shape[1], m.shape[0]) == display_size((hm.width, hm.height)) and m.max() == pytest.approx(1.0)
    runs.run_patches(ds, "heat", "boxes", n=4, size=0.2)
    _op("delete_xpatch_run")(ds, run_key="heat")
    assert "heat" not in ds.get_field_schema() and not os.path.exists(maps / "heat")
    assert "heat" not in ds.list_runs()
    _op("delete_xpatch_run")(ds, run_key="boxes")
    assert "boxes" not in ds.get_field_schema() and runs.list_runs(ds) == []


def test_field_names_are_validated_and_never_clobbered(photos_ds, xception_weights):
    ds = photos_ds
    ds.add_sample_field("notes", fo.StringField)
    ds.set_values("ground_truth", [fo.Classification(label="cup")] * len(ds))
    for bad, match in (("notes", "already exists"), ("ground_truth", "already exists"),
                       ("filepath", "built-in"), ("bad name", "invalid field name"), ("1x", "invalid")):
        with pytest.raises(ExecutionError, match=match):
            _op("compute_saliency")(ds, field=bad, weights=xception_weights)
    assert ds.values("notes") == [None] * len(ds)
    assert ds.count_values("ground_truth.label") == {"cup": len(ds)}
    runs.run_saliency(ds, "sal", "xception", "activation", weights=xception_weights)
    with pytest.raises(ParameterError, match="not written by an xpatch patches run|already exists"):
        runs.run_patches(ds, "sal", "sal2" if False else "ground_truth", n=2, size=32)
    with pytest.raises(ParameterError, match="must differ"):
        runs.run_patches(ds, "sal", "sal", n=2, size=32)
    schema_before = set(ds.get_field_schema())
    for kwargs, match in ((dict(n=0), "n"), (dict(size=-3), "size"), (dict(size=100000), "larger than every"),
                          (dict(temperature=float("nan")), "temperature"), (dict(mode="spiral"), "mode")):
        args = dict(n=4, size=32)
        args.update(kwargs)
        with pytest.raises((ParameterError, XpatchError), match=match):
            runs.run_patches(ds, "sal", "pp", **args)
    assert set(ds.get_field_schema()) == schema_before and "pp" not in ds.list_runs()


def test_target_field_gives_per_sample_classes(kitchen, kitchen_model):
    from xpatch_core.offline import kitchenware_images

    ds = fo.Dataset()
    try:
        paths = kitchenware_images()[:4]
        labels = ["cup", "knife", "plate", "spoon"]
        ds.add_samples([fo.Sample(filepath=p, gt=fo.Classification(label=lab)) for p, lab in zip(paths, labels)])
        summary = runs.run_saliency(ds, "grad", kitchen_model, "gradcam", target_field="gt")
        assert summary.processed == 4
        assert ds.values("grad.target") == labels
        ds.set_values("gt", [fo.Classification(label="teapot")] * 4)
        with pytest.raises(ParameterError, match="unknown class name"):
            runs.run_saliency(ds, "grad2", kitchen_model, "gradcam", target_field="gt")
        assert "grad2" not in ds.get_field_schema()
    finally:
        ds.delete()


def test_patches_view_targets_map_back_to_images(photos_ds, xception_weights):
    ds = photos_ds
    runs.run_saliency(ds, "sal", "xception", "activation", weights=xception_weights)
    runs.run_patches(ds, "sal", "pp", n=3, size=48)
    pv = ds.to_patches("pp")
    assert len(runs.images_of(pv)) == len(ds)
    some = pv.limit(4)
    expected = len(set(some.values("sample_id")))
    assert len(runs.images_of(some)) == expected


def test_concurrent_run_on_same_field_is_refused(photos_ds):
    lock = runs.acquire_lock(photos_ds, "busy")
    try:
        runs.locks.collection().update_one({"_id": lock}, {"$set": {"pid": os.getppid()}})
        with pytest.raises(XpatchError, match="being written by another run"):
            runs.acquire_lock(photos_ds, "busy")
    finally:
        runs.locks.collection().delete_one({"_id": lock})
    # a lock left by a dead process is taken over
    runs.locks.collection().insert_one({"_id": f"{photos_ds._doc.id}:stale", "pid": 2**22 + 12345,
                              "host": __import__("socket").gethostname(), "heartbeat": 0})
    lock = runs.acquire_lock(photos_ds, "stale")
    runs.release_lock(lock)


def test_detection_son_is_what_fiftyone_stores():
    kw = dict(label="cup", bounding_box=[0.1, 0.2, 0.3, 0.4], confidence=0.5, score=0.5, prob=1e-4, rank=2,
              scale=1.0, aspect_ratio=2.0, width_px=96, height_px=48, flagged=False, degenerate=True, seed=7)
    son = runs.detection_son(**kw)
    doc = fo.Detection(**kw).to_mongo().to_dict()
    assert set(son) == set(doc)
    for key in kw:
        assert son[key] == doc[key] and type(son[key]) is type(doc[key]), key
    assert fo.Detection.from_dict(son).to_mongo().to_dict()["_id"] == son["_id"]


def test_heatmap_son_is_what_fiftyone_stores():
    """The stored form FiftyOne itself would write (bar zlib's level), and an array that reads back."""
    shown = np.random.default_rng(3).integers(1, 256, size=(37, 50), dtype=np.uint8)
    attrs = dict(method="eigencam", degenerate=False, width=500, height=370, network_map="abc", confidence=0.25)
    son = runs.heatmap_son(shown, **attrs)
    doc = fo.Heatmap(map=shown, range=[0, 255], **attrs).to_mongo().to_dict()
    assert set(son) == set(doc)
    for key in set(doc) - {"_id", "map"}:
        assert son[key] == doc[key] and type(son[key]) is type(doc[key]), key
    assert type(son["map"]) is type(doc["map"])
    back = fo.Heatmap.from_dict(son)
    assert back.map.dtype == np.uint8 and np.array_equal(back.map, shown)
    assert back.range == [0.0, 255.0]
    on_disk = runs.heatmap_son(map_path="/x/y.png", method="eigencam")
    assert on_disk == {**fo.Heatmap(map_path="/x/y.png", range=[0, 255], method="eigencam").to_mongo().to_dict(),
                       "_id": on_disk["_id"]}


def test_downloaded_plugin_finds_its_library(tmp_path):
    """As after `fiftyone plugins download`: the repository's files in a plugins folder, with
    xpatch_core not installed (no site processing, so the editable install is invisible)."""
    import shutil
    import sysconfig

    plugins = tmp_path / "plugins"
    dest = plugins / "xpatch-xpatch"
    dest.mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "fiftyone.yml"), dest)
    for folder in ("plugin", "xpatch_core"):
        shutil.copytree(os.path.join(ROOT, folder), dest / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        "import sys, fiftyone.operators as foo\n"
        "uris = [o.uri for o in foo.list_operators() if o.uri.startswith('@xpatch/')]\n"
        "import xpatch_core\n"
        "print(len(uris), xpatch_core.__file__, 'tensorflow' in sys.modules)\n"
    )
    env = dict(os.environ, FIFTYONE_PLUGINS_DIR=str(plugins),
               PYTHONPATH=sysconfig.get_paths()["purelib"])
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env,
                         cwd=str(tmp_path), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    count, path, tf_loaded = out.stdout.split()[-3:]
    assert int(count) >= len(OPERATORS)
    assert path.startswith(str(dest)) and tf_loaded == "False"
