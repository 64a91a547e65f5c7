"""A rerun with nothing to do loads no model and never imports TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from xpatch_core import runs


@pytest.fixture()
def tiny_file(tmp_path):
    """A small saved classifier (random weights: the result does not matter here)."""
    import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3)(x)
    path = str(tmp_path / "tiny.keras")
    keras.Model(inp, out).save(path)
    return path


@pytest.fixture()
def done_ds(tmp_path, tiny_file):
    rng = np.random.default_rng(0)
    ds = fo.Dataset()
    paths = []
    for i in range(5):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    ds.persistent = True
    s = runs.run_saliency(ds, "sal", tiny_file, "gradcam")
    p = runs.run_patches(ds, "sal", "pp", n=2, size=16)
    assert s.processed == 5 and p.processed == 5
    yield ds
    ds.delete()


def _add_photos(ds, folder, names, rng):
    """Adds a random 50x40 PNG per name to ``ds`` (the result does not matter)."""
    paths = []
    for name in names:
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"{name}.png")
        paths.append(str(folder / f"{name}.png"))
    ds.add_samples([fo.Sample(filepath=p) for p in paths])


_RERUN = """
import json, sys
import fiftyone as fo
from xpatch_core import runs
ds = fo.load_dataset(sys.argv[1])
s = runs.run_saliency(ds, "sal", sys.argv[2], "gradcam")
p = runs.run_patches(ds, "sal", "pp", n=2, size=16)
print(json.dumps({"tf": "tensorflow" in sys.modules, "keras": "keras" in sys.modules, "ov": "openvino" in sys.modules,
                  "saliency": [s.status, s.processed, s.skipped], "patches": [p.status, p.processed, p.skipped]}))
"""


def test_noop_rerun_imports_no_tensorflow_and_loads_no_model(done_ds, tiny_file):
    before = runs.get_run_info(done_ds, "sal")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_RERUN), done_ds.name, tiny_file],
                         capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["saliency"] == ["nothing to do", 0, 5]
    assert res["patches"] == ["nothing to do", 0, 5]
    assert res["tf"] is False and res["keras"] is False and res["ov"] is False
    after = runs.get_run_info(done_ds, "sal")
    assert after["results"]["updated_at"] == before["results"]["updated_at"]  # the record is untouched


def test_a_changed_request_with_nothing_to_do_still_checks_parameters(done_ds, tiny_file):
    from xpatch_core.errors import ParameterError

    with pytest.raises(ParameterError, match="other parameters"):
        runs.run_saliency(done_ds, "sal", tiny_file, "gradcam++")
    with pytest.raises(ParameterError, match="other parameters"):
        runs.run_patches(done_ds, "sal", "pp", n=3, size=16)
    # batch size changes no result: not a new request, still nothing to do
    s = runs.run_saliency(done_ds, "sal", tiny_file, "gradcam", batch_size=7)
    assert (s.status, s.processed, s.skipped) == ("nothing to do", 0, 5)


_OTHER_REQUESTS = """
import json, sys
import fiftyone as fo
from xpatch_core import runs
from xpatch_core.errors import ParameterError
ds = fo.load_dataset(sys.argv[1])
_, photo = sys.argv[2], sys.argv[3]
ds.add_sample(fo.Sample(filepath=photo))  # work to do: only the parameters stop these runs
refused = {}
for name, kwargs in [("method", dict(model=sys.argv[2], method="gradcam++")),
                     ("target", dict(model=sys.argv[2], method="gradcam", target=2)),
                     ("resolution", dict(model=sys.argv[2], method="gradcam", map_resolution="high")),
                     ("application", dict(model="xception", method="gradcam"))]:
    try:
        runs.run_saliency(ds, "sal", **kwargs)
        refused[name] = None
    except ParameterError as e:
        refused[name] = str(e)
print(json.dumps({"tf": "tensorflow" in sys.modules, "keras": "keras" in sys.modules, "refused": refused}))
"""


def test_a_rerun_with_another_method_or_model_is_refused_before_the_model_loads(done_ds, tiny_file, tmp_path):
    """Another method, target, map resolution or model name on a field
    holding results is refused from the stored config before any model
    loads (was: after a load of seconds); the same request runs on."""
    photo = tmp_path / "new.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(photo)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_OTHER_REQUESTS), done_ds.name, tiny_file,
                          str(photo)], capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    refused = res["refused"]
    for name, what in [("method", "method"), ("target", "target"), ("resolution", "map_resolution"),
                       ("application", "model_source")]:
        assert refused[name] and f"other parameters ({what})" in refused[name], (name, refused)
    assert res["tf"] is False and res["keras"] is False, res
    done_ds.reload()
    assert len(done_ds) == 6 and done_ds.count("sal") == 5  # nothing written by the refused runs
    # the same request computes the new sample; overwrite is never refused
    s = runs.run_saliency(done_ds, "sal", tiny_file, "gradcam")
    assert (s.processed, s.skipped) == (1, 5), s
    o = runs.run_saliency(done_ds, "sal", tiny_file, "gradcam++", overwrite=True)
    assert o.processed == 6


def test_a_loaded_model_resumes_its_run_and_is_refused_for_another_method(done_ds, tiny_file, tmp_path):
    """A model loaded once (``load_model``) and passed to each run is
    compared by what it is, not by its Python type: the same run resumes."""
    import xpatch_core as xp
    from xpatch_core.errors import ParameterError

    sm = xp.load_model(tiny_file)
    _add_photos(done_ds, tmp_path, ["late"], np.random.default_rng(6))
    with pytest.raises(ParameterError, match=r"other parameters \(method\)"):
        runs.run_saliency(done_ds, "sal", sm, "eigencam")
    s = runs.run_saliency(done_ds, "sal", sm, "gradcam", input_size=(48, 48))  # a loaded model keeps its size
    assert (s.processed, s.skipped) == (1, 5), s


def test_the_plan_a_form_shows_says_when_a_run_would_be_refused(done_ds, tiny_file):
    """The App's forms show a run's plan; a run its field's earlier run
    would refuse says so there, before it is started or scheduled (a
    scheduled one used to fail in the worker, after the model loaded)."""
    plan = runs.plan_run(runs.run_kind("saliency", field="sal", model=tiny_file, method="eigencam"), done_ds)
    assert plan.refused and "other parameters (method)" in plan.lines()[0], plan.lines()
    plan = runs.plan_run(runs.run_kind("patches", heatmap_field="sal", field="pp", n=3, size=16), done_ds)
    assert "other parameters (n)" in plan.lines()[0], plan.lines()
    # an input size as the form or a script gives it (text, a number) is read as the run reads it
    plan = runs.plan_run(runs.run_kind("saliency", field="sal", model=tiny_file, method="eigencam",
                                       input_size=32), done_ds)
    assert "other parameters (method)" in plan.refused, plan.lines()
    plan = runs.plan_run(runs.run_kind("saliency", field="sal", model=tiny_file, method="gradcam",
                                       input_size="48"), done_ds)
    assert "other parameters (input_size)" in plan.refused, plan.lines()
    # no samples: such a run does nothing, and is not said to be refused
    plan = runs.plan_run(runs.run_kind("saliency", field="sal", model=tiny_file, method="eigencam"),
                         done_ds.limit(0))
    assert not plan.refused, plan.lines()
    # the same parameters, or overwrite, are not refused
    for kind, kwargs in [("saliency", dict(field="sal", model=tiny_file, method="gradcam")),
                         ("saliency", dict(field="sal", model=tiny_file, method="gradcam", input_size="32")),
                         ("saliency", dict(field="sal", model=tiny_file, method="eigencam", overwrite=True)),
                         ("patches", dict(heatmap_field="sal", field="pp", n=2, size=16))]:
        plan = runs.plan_run(runs.run_kind(kind, **kwargs), done_ds)
        assert not plan.refused and "refused" not in " ".join(plan.lines()), (kind, kwargs, plan.lines())


def test_the_app_form_cannot_run_or_schedule_a_run_that_would_be_refused(done_ds, tiny_file):
    """The form's field input is invalid while the run would be refused, so
    FiftyOne's own validation stops it before it runs or is scheduled (a
    scheduled one used to fail later, in the worker, after the model load)."""
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionError

    op = foo.get_operator("@xpatch/xpatch/compute_saliency")
    queued = len(DelegatedOperationService().list_operations(dataset_name=done_ds.name))
    for delegate in (False, True):
        with pytest.raises(ExecutionError, match=r"Validation error. Path: field. .*other parameters \(method\); tick "
                                                 r".Recompute samples that already have a heatmap. below to redo"):
            op(done_ds, "sal", tiny_file, "eigencam", delegate=delegate)
    assert len(DelegatedOperationService().list_operations(dataset_name=done_ds.name)) == queued
    # with overwrite the form is valid, and the run redoes every sample
    result = op(done_ds, "sal", tiny_file, "eigencam", overwrite=True)
    assert result.error is None, result.error
    assert runs.get_run_info(done_ds, "sal")["config"]["method"] == "eigencam"


def test_a_forms_refusal_is_not_kept_after_the_run_it_came_from_changes(done_ds):
    """The form's plan is cached a few seconds (the App asks for the form
    and the execution options apart); a run redone or deleted since must not
    leave the form blocked by the refusal it had before."""
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext, ValidationContext

    op = foo.get_operator("@xpatch/xpatch/sample_patches")
    params = {"heatmap_field": "sal", "field": "pp", "n": 3, "size": 16}

    def form_invalid():
        ctx = ExecutionContext(request_params={"dataset_name": done_ds.name, "params": params,
                                               "view_target": "DATASET"})
        return ValidationContext(ctx, op.resolve_input(ctx), op).invalid

    assert form_invalid()  # n=3 on a field made with n=2
    runs.run_patches(done_ds, "sal", "pp", n=3, size=16, overwrite=True)
    assert not form_invalid()  # at once, not after the cache's 10 s
    params["n"] = 2
    assert form_invalid()
    runs.delete_run(done_ds, "pp")
    assert not form_invalid()


def test_a_class_index_given_as_text_resumes_a_run_given_it_as_a_number(tmp_path, tiny_file):
    """The CLI and the App's form give a target as text ("1"); a run started
    from Python with the index 1 is the same run (was: refused as other
    parameters, so the App's form stayed blocked)."""
    from xpatch_core.errors import ParameterError

    rng = np.random.default_rng(8)
    ds = fo.Dataset()
    try:
        _add_photos(ds, tmp_path, ["t0", "t1"], rng)
        assert runs.run_saliency(ds, "sal", tiny_file, "gradcam", target=1).processed == 2
        assert runs.get_run_info(ds, "sal")["config"]["target"] == 1
        for target in ("1", np.int64(1), " 1"):
            plan = runs.plan_run(runs.run_kind("saliency", field="sal", model=tiny_file, method="gradcam",
                                               target=target), ds)
            assert not plan.refused and plan.todo == 0, (target, plan.lines())
            s = runs.run_saliency(ds, "sal", tiny_file, "gradcam", target=target)
            assert s.status == "nothing to do", (target, s.status)
        _add_photos(ds, tmp_path, ["t2"], rng)
        s = runs.run_saliency(ds, "sal", tiny_file, "gradcam", target="1")
        assert (s.processed, s.skipped) == (1, 2), s
        with pytest.raises(ParameterError, match=r"other parameters \(target\)"):
            runs.run_saliency(ds, "sal", tiny_file, "gradcam", target="2")
        # a record of an older version, which stored the text, still matches (request and config)
        info = ds.get_run_info("sal")
        info.config.target, info.config.request = "1", dict(info.config.request, target="1")
        ds.update_run_config("sal", info.config)
        assert runs.get_run_info(ds, "sal")["config"]["target"] == "1"
        assert runs.run_saliency(ds, "sal", tiny_file, "gradcam", target=1).status == "nothing to do"
        _add_photos(ds, tmp_path, ["t3"], rng)
        assert runs.run_saliency(ds, "sal", tiny_file, "gradcam", target=1).processed == 1
    finally:
        ds.delete()


def test_a_run_times_loading_decoding_inference_and_writing(tmp_path, tiny_file):
    """The summary (and the run record) time each stage; decoding and
    inference run in threads that overlap the rest, and are shown apart."""
    from xpatch_core.runs.progress import RunSummary

    rng = np.random.default_rng(1)
    ds = fo.Dataset()
    try:
        _add_photos(ds, tmp_path, [f"t{i}" for i in range(6)], rng)
        s = runs.run_saliency(ds, "sal", tiny_file, "gradcam", batch_size=4)
        t = s.timings
        assert {"load_model", "compute", "decode", "inference", "write"} <= set(t), t
        assert all(v > 0 for v in t.values()), t
        assert t["inference"] <= s.elapsed and t["decode"] <= 2 * s.elapsed, (t, s.elapsed)  # <= 2 threads
        stored = runs.get_run_info(ds, "sal")["results"]
        assert {"decode", "inference"} <= set(stored["timings"]), stored
    finally:
        ds.delete()
    line = RunSummary(run_key="k", field="f", type="saliency", processed=3, elapsed=1.0, images_per_s=3.0,
                      timings={"decode": 0.4, "write": 0.2, "inference": 0.9, "compute": 1.1,
                               "load_model": 2.0}).describe()
    assert line.endswith("time: load model 2.0 s, compute 1.1 s, write 0.2 s; "
                         "in threads, overlapped: decoding 0.4 s, inference 0.9 s"), line


def test_a_bad_decode_workers_setting_fails_before_the_model_loads(tmp_path, monkeypatch):
    from xpatch_core.errors import ParameterError

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    ds = fo.Dataset()
    try:
        ds.add_sample(fo.Sample(filepath=str(tmp_path / "a.png")))
        monkeypatch.setenv("XPATCH_DECODE_WORKERS", "-3")
        with pytest.raises(ParameterError, match="XPATCH_DECODE_WORKERS must be >= 1"):
            runs.run_saliency(ds, "sal", str(tmp_path / "no-such-model.keras"))  # not loaded: no model error
        assert "sal" not in ds.list_runs() and not ds.has_sample_field("sal")  # no run left behind
    finally:
        ds.delete()


def test_a_resumed_run_keeps_the_history_of_its_earlier_parts(tmp_path, tiny_file):
    """Re-registering a run on resume dropped its stored results, so its
    history held only the last part."""
    rng = np.random.default_rng(2)
    ds = fo.Dataset()
    try:
        def add(i):
            _add_photos(ds, tmp_path, [f"h{i}"], rng)

        for i in range(3):
            add(i)
        assert runs.run_saliency(ds, "sal", tiny_file, "gradcam").processed == 3
        runs.update_run_results(ds, "sal", evaluation={"note": "kept across resumes"})
        add(3)
        assert runs.run_saliency(ds, "sal", tiny_file, "gradcam").processed == 1
        results = runs.get_run_info(ds, "sal")["results"]
        assert [h["processed"] for h in results["history"]] == [3, 1], results["history"]
        # a part run on a view: its record counts the view; the run list counts the field
        from xpatch_core import overview

        add(4)
        newest = ds.last().id
        assert runs.run_saliency(ds.select(newest), "sal", tiny_file, "gradcam").processed == 1
        info = runs.get_run_info(ds, "sal")
        assert (info["results"]["processed"], info["results"]["skipped"]) == (1, 0)
        row = overview.run_row(info, ds)
        assert (row["done"], row["failed"], row["samples"]) == (5, 0, "5")
        assert overview.run_row(info)["done"] == 1  # without the dataset: the record's
        assert results["processed"] == 1 and results["skipped"] == 3
        assert "evaluation" not in results  # an evaluation of results that changed is dropped
    finally:
        ds.delete()


_RERUN_FAILED = """
import json, sys
import fiftyone as fo
from xpatch_core import runs
ds = fo.load_dataset(sys.argv[1])
s = runs.run_saliency(ds, "sal", sys.argv[2], "gradcam")
print(json.dumps({"tf": "tensorflow" in sys.modules, "keras": "keras" in sys.modules,
                  "saliency": [s.status, s.processed, s.skipped, s.failed],
                  "reasons": sorted(f["reason"].split(" (")[0] for f in s.failures)}))
"""


def test_a_rerun_whose_samples_left_still_fail_loads_no_model(tmp_path, tiny_file):
    """Samples whose files cannot be read stay to do; a rerun used to load
    the model (seconds) only to fail them again. Files still broken fail
    again from a decode, without the model; a file mended since is computed."""
    rng = np.random.default_rng(3)
    good = tmp_path / "good.png"
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(good)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    buf = tmp_path / "whole.jpg"
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(buf, quality=90)
    (tmp_path / "cut.jpg").write_bytes(buf.read_bytes()[:400])
    names = ["good.png", "empty.jpg", "text.png", "cut.jpg"]
    ds = fo.Dataset()
    ds.persistent = True
    try:
        ds.add_samples([fo.Sample(filepath=str(tmp_path / n)) for n in names])
        first = runs.run_saliency(ds, "sal", tiny_file, "gradcam")
        assert (first.processed, first.failed) == (1, 3), first.failures
        before = runs.get_run_info(ds, "sal")["results"]

        out = subprocess.run([sys.executable, "-c", textwrap.dedent(_RERUN_FAILED), ds.name, tiny_file],
                             capture_output=True, text=True, timeout=300, env=os.environ.copy())
        assert out.returncode == 0, out.stderr[-3000:]
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert res["saliency"] == ["nothing to do", 0, 1, 3], res
        assert res["tf"] is False and res["keras"] is False, res
        assert res["reasons"] == sorted(["empty file", "not a recognised image format",
                                         "truncated or corrupt image data"]), res
        assert runs.get_run_info(ds, "sal")["results"]["updated_at"] == before["updated_at"]

        # what the App says of it: no claim that every sample has a heatmap, and the reasons
        import fiftyone.operators as foo

        foo.list_operators()
        common = next(m for name, m in sys.modules.items() if name.endswith("xpatch.common"))
        skipped = runs.run_saliency(ds, "sal", tiny_file, "gradcam")
        title, lines = common.run_result_lines(skipped, "heatmaps")
        assert "3 samples failed before and still cannot be read" in title, title
        assert "already have" not in title and "empty file" in lines[-1], lines
        # a record left 'interrupted' by a process that died after its last write is settled
        from xpatch_core.runs import records

        records.save_results(ds, "sal", skipped, "interrupted", {})
        runs.run_saliency(ds, "sal", tiny_file, "gradcam")
        assert runs.get_run_info(ds, "sal")["results"]["status"] == "failed"  # as a part with only failures
        # overwrite redoes every sample: the model is loaded
        redo = runs.run_saliency(ds, "sal", tiny_file, "gradcam", overwrite=True)
        assert (redo.processed, redo.failed) == (1, 3) and "load_model" in redo.timings

        # a mended file is computed; the others fail again in that run, with the model loaded
        Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(tmp_path / "text.png")
        again = runs.run_saliency(ds, "sal", tiny_file, "gradcam")
        assert (again.processed, again.skipped, again.failed) == (1, 1, 2), again
        assert "load_model" in again.timings
        assert ds.count_sample_tags().get("xpatch:sal:failed") == 2

        # another request is not the same run: it loads the model and is refused or run as usual
        with pytest.raises(Exception, match="other parameters"):
            runs.run_saliency(ds, "sal", tiny_file, "gradcam++")
    finally:
        ds.delete()


def test_precision_is_compared_by_what_was_asked_or_what_was_used(tmp_path, tiny_file, monkeypatch):
    """After a default run (``auto``, float32 on a CPU without bfloat16),
    ``precision="float32"`` was refused as other parameters; the maps are
    the same precision. Another precision in use is still refused."""
    from xpatch_core import hardware
    from xpatch_core.errors import ParameterError

    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(hardware, "CPUINFO_PATH", str(cpuinfo))
    monkeypatch.setattr(hardware, "detect_gpus", lambda: ())
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    rng = np.random.default_rng(4)
    ds = fo.Dataset()
    try:
        def add(i):
            _add_photos(ds, tmp_path, [f"p{i}"], rng)

        add(0)
        cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n\n")  # no bfloat16: auto is float32
        s = runs.run_saliency(ds, "sal", tiny_file, "gradcam", precision="auto")
        assert s.processed == 1 and runs.get_run_info(ds, "sal")["config"]["precision_used"] == "float32"
        # the precision it used, asked for by name, with nothing to do: no model loaded
        same = runs.run_saliency(ds, "sal", tiny_file, "gradcam", precision="float32")
        assert same.status == "nothing to do" and "load_model" not in same.timings
        add(1)
        assert runs.run_saliency(ds, "sal", tiny_file, "gradcam", precision="float32").processed == 1
        add(2)
        with pytest.raises(ParameterError, match=r"other parameters \(precision\)"), \
                pytest.warns(UserWarning, match="emulated and slower"):
            runs.run_saliency(ds, "sal", tiny_file, "gradcam", precision="mixed_bfloat16")
        cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma avx512_bf16 amx_bf16\n\n")
        with pytest.raises(ParameterError, match=r"other parameters \(precision\)"):  # auto is bfloat16 here
            runs.run_saliency(ds, "sal", tiny_file, "gradcam", precision="auto")
        assert ds.exists("sal").count() == 2
    finally:
        ds.delete()


@pytest.mark.parametrize("size", [3, (64,), (64, 48, 3), "big", "6x6", 1.5, True, (9000, 64)])
def test_a_bad_input_size_fails_before_the_model_loads(tmp_path, size):
    from xpatch_core.errors import ParameterError

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    ds = fo.Dataset()
    try:
        ds.add_sample(fo.Sample(filepath=str(tmp_path / "a.png")))
        with pytest.raises(ParameterError, match="input.size must be one or two"):
            runs.run_saliency(ds, "sal", str(tmp_path / "no-such-model.keras"), input_size=size)
        assert "sal" not in ds.list_runs()
    finally:
        ds.delete()


def test_a_model_that_takes_any_size_is_fixed_at_the_size_asked_for(tmp_path):
    """Every part of a model with a ``(None, None, 3)`` input is traced at
    ``input_size`` (its feature shape was read as None and loading failed)."""
    import keras

    import xpatch_core as xp

    inp = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    path = str(tmp_path / "anysize.keras")
    keras.Model(inp, out).save(path)
    for engine in ("tensorflow", "openvino"):
        sm = xp.load_model(path, input_size=(64, 48), engine=engine, cache=False)
        assert sm.input_size == (64, 48) and sm.feature_shape == (62, 46, 4)
        assert sm.source["feature_shape"] == [62, 46, 4] and sm.has_head
        assert sm.source["engine"] == engine
    # with a finer layer fused (its shape is known only at a size)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="c1")(inp)
    x = keras.layers.Conv2D(6, 3, strides=2, activation="relu", name="c2")(x)
    deep = str(tmp_path / "deep.keras")
    keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))).save(deep)
    sm = xp.load_model(deep, input_size=64, layer="c2", fuse_layer="c1", cache=False)
    assert [tuple(t.shape[1:]) for t in sm.fused.outputs] == [(30, 30, 6), (62, 62, 4)]
    with pytest.raises(Exception, match="must be at least as fine"):
        xp.load_model(deep, input_size=64, layer="c1", fuse_layer="c2", cache=False)
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    ds = fo.Dataset()
    try:
        ds.add_sample(fo.Sample(filepath=str(tmp_path / "b.png")))
        maps = xp.compute_saliency([str(tmp_path / "b.png")], path, "gradcam", input_size="64x48")
        assert maps[0].shape == (62, 46)
        s = runs.run_saliency(ds, "sal", path, "gradcam", input_size=64)
        assert s.processed == 1 and ds.first()["sal"].network_map is not None
        assert runs.get_run_info(ds, "sal")["config"]["input_size"] == [64, 64]
    finally:
        ds.delete()


def test_a_run_that_wrote_nothing_never_blocks_other_parameters(tmp_path, tiny_file):
    """A run that stopped before its first write (a model that failed after
    the run was registered) left a record that refused any other
    parameters, though its field held nothing."""
    rng = np.random.default_rng(6)
    ds = fo.Dataset()
    try:
        _add_photos(ds, tmp_path, ["w0", "w1"], rng)
        assert runs.run_saliency(ds, "sal", tiny_file, "gradcam").processed == 2
        from xpatch_core.errors import ParameterError

        with pytest.raises(ParameterError, match="other parameters"):  # values there: refused
            runs.run_saliency(ds, "sal", tiny_file, "gradcam++")
        ds.set_values("sal", [None, None])  # as if the run had stopped before writing
        s = runs.run_saliency(ds, "sal", tiny_file, "gradcam++")
        assert s.processed == 2 and runs.get_run_info(ds, "sal")["config"]["method"] == "gradcam++"
    finally:
        ds.delete()


def test_a_model_with_one_free_side_keeps_its_fixed_side(tmp_path):
    import keras

    import xpatch_core as xp
    from xpatch_core.errors import ParameterError

    inp = keras.Input((None, 96, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    path = str(tmp_path / "half.keras")
    keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))).save(path)
    with pytest.raises(ParameterError, match=r"accepts any height \(its width is 96\)"):
        xp.load_model(path, cache=False)
    with pytest.raises(ParameterError, match="takes inputs of width 96; the input size asked for has width 128"):
        xp.load_model(path, input_size=128, cache=False)
    sm = xp.load_model(path, input_size=(64, 96), cache=False)
    assert sm.input_size == (64, 96) and sm.feature_shape == (62, 94, 4)


def test_a_weights_file_of_another_model_gets_a_short_error(xception_weights):
    import xpatch_core as xp
    from xpatch_core.errors import ModelError

    with pytest.raises(ModelError, match="a file for another model or input size") as caught:
        xp.load_model("mobilenetv2", weights=xception_weights, cache=False)
    assert len(str(caught.value)) < 1200, len(str(caught.value))


def test_a_model_without_class_names_at_hand_records_class_numbers(tmp_path, monkeypatch):
    """ImageNet's class index neither cached nor downloadable (offline, a
    model with random weights): the run failed after registering; the maps
    do not need names, so classes are recorded as numbers, with a warning."""
    from xpatch_core import models
    from xpatch_core.errors import ModelError

    def offline(model=None):
        raise ModelError("the ImageNet class index is not cached and cannot be downloaded")

    monkeypatch.setattr(models, "_imagenet_class_names", offline)
    Image.fromarray(np.random.default_rng(7).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    ds = fo.Dataset()
    try:
        ds.add_sample(fo.Sample(filepath=str(tmp_path / "c.png")))
        with pytest.warns(UserWarning, match="classes are recorded as numbers"):
            s = runs.run_saliency(ds, "sal", "mobilenetv2", "eigencam", weights="random", input_size=96)
        assert s.processed == 1 and ds.first()["sal"]["predicted"].isdigit()
    finally:
        ds.delete()
