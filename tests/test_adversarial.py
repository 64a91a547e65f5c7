"""Adversarial cases, round two: what a hostile folder, a foreign tool, a
concurrent user or an interrupt does to a run, and what the user gets.

Beyond the 44 cases of ``docs/reliability.md`` and issue 13's eight, each
case is reproduced through the real code paths (library calls, the CLI via
:func:`xpatch_core.cli.main`, operators via
:func:`fiftyone.operators.execute_operator`) on the real embedded database,
with a tiny random Keras model (the weights do not matter here). Each case
is a row of ``docs/reliability.md``.

The principles checked: a check that depends on one image (its size,
content, labels) is a per-sample outcome; outputs never overlap inputs or
files a dataset points to; resume and "done" come from the dataset; counts
are true; bad input gets a clear error and loses nothing.
"""

from __future__ import annotations

import hashlib
import os
import time

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from PIL import Image

from tests.test_reliability import _state, _tiny_keras, _write_png_header
from xpatch_core import cli, runs
from xpatch_core.errors import ParameterError, XpatchError
from xpatch_core.export import export_patches

F = fo.ViewField


# -- helpers and fixtures ----------------------------------------------------------------


def _photos(folder, sizes: list[tuple[int, int]], seed: int = 1, prefix: str = "im") -> list[str]:
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    out = []
    for k, (w, h) in enumerate(sizes):
        p = os.path.join(folder, f"{prefix}{k:02d}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def _digest(folder) -> dict[str, str]:
    """File name -> content hash, for every file of a folder."""
    return {n: hashlib.sha1(open(os.path.join(folder, n), "rb").read()).hexdigest() for n in sorted(os.listdir(folder))}


def _no_locks(ds: fo.Dataset) -> bool:
    return list(runs.locks.collection().find({"dataset": ds.name})) == []


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> str:
    return _tiny_keras(str(tmp_path_factory.mktemp("tiny") / "tiny.keras"))


@pytest.fixture(scope="module")
def tiny(tiny_path):
    import xpatch_core as xp

    return xp.load_model(tiny_path)


@pytest.fixture()
def make_ds():
    made: list[fo.Dataset] = []

    def make(paths: list[str], **fields) -> fo.Dataset:
        ds = fo.Dataset()
        ds.add_samples([fo.Sample(filepath=p, **{k: v[i] for k, v in fields.items()}) for i, p in enumerate(paths)])
        made.append(ds)
        return ds

    make.made = made
    yield make
    for ds in made:
        if fo.dataset_exists(ds.name):
            ds.delete()


@pytest.fixture()
def cli_dataset():
    """A persistent dataset name for a CLI run, deleted afterwards."""
    names: list[str] = []

    def name(suffix: str = "") -> str:
        n = f"xpatch-adv-{os.getpid()}-{len(names)}{suffix}"
        names.append(n)
        return n

    yield name
    for n in names:
        if fo.dataset_exists(n):
            fo.delete_dataset(n)


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = cli.main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


# -- views that change which samples or fields are visible ----------------------------------


def test_a_view_of_a_grouped_dataset_is_refused_up_front(tmp_path, tiny):
    """select_group_slices shows images, but a run reads and writes through the
    dataset, which shows one slice: the other slice's samples were counted as vanished."""
    g = fo.Dataset()
    try:
        g.add_group_field("group", default="left")
        paths = _photos(tmp_path, [(64, 48)] * 4)
        samples = []
        for k in range(0, 4, 2):
            grp = fo.Group()
            samples += [fo.Sample(filepath=paths[k], group=grp.element("left")),
                        fo.Sample(filepath=paths[k + 1], group=grp.element("right"))]
        g.add_samples(samples)
        for view in (g.select_group_slices(), g.select_group_slices("right")):
            assert view.media_type == "image"
            with pytest.raises(ParameterError, match="grouped dataset .*select an image slice and clone it"):
                runs.run_saliency(view, "sal", tiny, "activation")
        assert "sal" not in g.get_field_schema() and g.list_runs() == []
        # the way out the message gives works
        clone = g.select_group_slices().clone()
        try:
            s = runs.run_saliency(clone, "sal", tiny, "activation")
            assert (s.processed, s.vanished) == (4, 0)
        finally:
            clone.delete()
    finally:
        g.delete()


def test_an_evaluation_patches_view_stands_for_its_images(tmp_path, tiny, make_ds):
    """Its patch ids were taken for sample ids: every sample 'vanished', no map written."""
    paths = _photos(tmp_path, [(64, 48)] * 3)
    box = [0.1, 0.1, 0.3, 0.3]
    ds = make_ds(paths, gt=[fo.Detections(detections=[fo.Detection(label="a", bounding_box=box)]) for _ in paths],
                 pred=[fo.Detections(detections=[fo.Detection(label="a", bounding_box=box, confidence=0.9)])
                       for _ in paths])
    ds.evaluate_detections("pred", gt_field="gt", eval_key="ev")
    ev = ds.to_evaluation_patches("ev")
    s = runs.run_saliency(ev.limit(2), "sal", tiny, "activation")
    assert (s.total, s.processed, s.vanished) == (2, 2, 0)
    s = runs.run_saliency(ev, "sal", tiny, "activation")
    assert (s.processed, s.skipped, s.vanished) == (1, 2, 0) and ds.count("sal") == 3


def test_export_from_a_view_that_hides_the_patches_field(tmp_path, tiny, make_ds):
    """Decided from the dataset: it failed with 'Field does not exist'."""
    ds = make_ds(_photos(tmp_path / "p", [(64, 48)] * 3))
    runs.run_saliency(ds, "sal", tiny, "activation")
    runs.run_patches(ds, "sal", "pp", n=2, size=16)
    full = export_patches(ds, str(tmp_path / "all"), field="pp")
    for k, view in enumerate((ds.select_fields(), ds.exclude_fields("pp"), ds.select_fields("sal").limit(2))):
        report = export_patches(view, str(tmp_path / f"v{k}"), field="pp")
        assert report.exported == (4 if k == 2 else full.exported) == report.files_written and not report.skipped
    assert full.exported == 6


def test_views_with_stages_change_only_which_samples_run(tmp_path, tiny, make_ds):
    """limit / sort_by / match / take / select_fields: the same boxes as one run on the
    dataset (each image's boxes depend on the seed and its id), true counts on resume."""
    ds = make_ds(_photos(tmp_path, [(80, 60), (60, 80), (70, 70), (90, 50), (50, 90)]))
    runs.run_saliency(ds.take(2, seed=3), "sal", tiny, "activation")
    s = runs.run_saliency(ds.sort_by("filepath", reverse=True).select_fields(), "sal", tiny, "activation")
    assert (s.processed, s.skipped) == (3, 2)
    first = ds.sort_by("filepath", reverse=True).limit(2)
    assert runs.run_patches(first, "sal", "pp", n=3, size=20, seed=4).processed == 2
    rest = runs.run_patches(ds.match(F("filepath") != "").exclude_fields("pp"), "sal", "pp", n=3, size=20, seed=4)
    assert (rest.processed, rest.skipped, rest.total) == (3, 2, 5)
    runs.run_patches(ds, "sal", "whole", n=3, size=20, seed=4)
    assert ds.values("pp.detections.bounding_box") == ds.values("whole.detections.bounding_box")


def test_operator_on_a_filtered_patches_view_and_on_a_selection_with_a_deleted_sample(tmp_path, tiny_path, make_ds):
    foo.list_operators()
    paths = _photos(tmp_path, [(64, 48)] * 4)
    labels = ["cat", "dog", "cat", "dog"]
    ds = make_ds(paths, gt=[fo.Detections(detections=[fo.Detection(label=lab, bounding_box=[0.1, 0.2, 0.3, 0.3])])
                            for lab in labels])
    uri = "@xpatch/xpatch/compute_saliency"
    params = {"model": "saved", "model_path": tiny_path, "method": "activation", "delegate": False}
    cats = ds.filter_labels("gt", F("label") == "cat").to_patches("gt")
    res = foo.execute_operator(uri, {"view": cats, "params": {**params, "field": "sal"}})
    assert res.error is None
    assert sorted(ds.exists("sal").values("filepath")) == [paths[0], paths[2]]
    extra = fo.Sample(filepath=paths[0])
    ds.add_sample(extra)
    gone = extra.id
    ds.delete_samples([gone])
    keep = ds.first().id
    res = foo.execute_operator(uri, {"view": ds.view(), "selected": [keep, gone],
                                     "params": {**params, "field": "sel", "view_target": "SELECTED_SAMPLES"}})
    assert res.error is None and ds.exists("sel").values("id") == [keep]
    assert runs.get_run_info(ds, "sel")["results"]["processed"] == 1


# -- heatmaps and labels written by another tool -----------------------------------------------


def test_odd_heatmap_values_from_another_tool_are_per_sample_outcomes(tmp_path, make_ds):
    maps = {
        "nan": np.full((8, 8), np.nan, np.float32), "inf": np.full((8, 8), np.inf, np.float32),
        "negative": -np.ones((8, 8), np.float32), "huge": np.full((8, 8), 1e38, np.float32),
        "int": np.arange(64).reshape(8, 8), "bool": np.eye(8, dtype=bool),
        "rgba": np.random.default_rng(0).random((8, 8, 4)).astype(np.float32),
        "one_d": np.ones(8, np.float32), "empty": np.zeros((0, 0), np.float32),
    }
    ds = make_ds(_photos(tmp_path, [(64, 48)] * len(maps)), theirs=[fo.Heatmap(map=m) for m in maps.values()])
    s = runs.run_patches(ds, "theirs", "pp", n=3, size=16)
    by_id = dict(zip(ds.values("id"), maps))
    failed = {by_id[f["id"]]: f["reason"] for f in s.failures}
    # maps that cannot be read the way the user meant fail with the reason (issue 14: FiftyOne's semantics)
    assert set(failed) == {"one_d", "empty", "nan", "inf", "huge"} and s.processed == len(maps) - 5
    assert "2-D" in failed["one_d"] and "empty" in failed["empty"]
    assert "no finite value" in failed["nan"] and "no finite value" in failed["inf"]
    assert "set the heatmap's range" in failed["huge"]
    for dets in ds.exists("pp").values("pp.detections"):
        boxes = np.array([d.bounding_box for d in dets])
        assert len(boxes) == 3 and np.isfinite(boxes).all() and (boxes >= 0).all()
        assert (boxes[:, 0] + boxes[:, 2] <= 1 + 1e-9).all() and (boxes[:, 1] + boxes[:, 3] <= 1 + 1e-9).all()


def test_odd_size_attributes_fall_back_to_the_metadata(tmp_path, make_ds):
    """One heatmap with width='abc' stopped the run with a raw ValueError."""
    odd = [("abc", 48), (float("nan"), 48), (0, 0), (-64, 48), (10**12, 10**12), (True, True)]
    m = np.random.default_rng(1).random((8, 8)).astype(np.float32)
    ds = make_ds(_photos(tmp_path, [(64, 48)] * len(odd)),
                 theirs=[fo.Heatmap(map=m, width=w, height=h) for w, h in odd])
    s = runs.run_patches(ds, "theirs", "pp", n=2, size=16)
    assert (s.processed, s.failed) == (len(odd), 0)
    assert ds.count("metadata") == len(odd)
    for dets in ds.values("pp.detections"):
        assert all(d.width_px == 16 and d.height_px == 16 for d in dets)


def test_a_stored_image_size_of_zero_is_recomputed(tmp_path, make_ds):
    """It failed every sample with 'image size unknown'."""
    m = np.random.default_rng(1).random((8, 8)).astype(np.float32)
    ds = make_ds(_photos(tmp_path, [(64, 48), (48, 64)]), theirs=[fo.Heatmap(map=m)] * 2,
                 metadata=[fo.ImageMetadata(width=0, height=0)] * 2)
    s = runs.run_patches(ds, "theirs", "pp", n=2, size=16)
    assert (s.processed, s.failed) == (2, 0)
    assert ds.values("metadata.width") == [64, 48]


def test_heatmap_files_replaced_behind_the_tools_back(tmp_path, tiny, make_ds):
    """A PNG replaced by a decompression bomb stopped the patch run with DecompressionBombError."""
    ds = make_ds(_photos(tmp_path / "p", [(64, 48)] * 5))
    runs.run_saliency(ds, "sal", tiny, "activation", map_dir=str(tmp_path / "maps"))
    files = ds.values("sal.map_path")
    _write_png_header(files[0], 100_000, 100_000)
    with open(files[1], "w") as f:
        f.write("not a png")
    os.remove(files[2])
    os.mkdir(files[2])
    os.remove(files[3])
    os.symlink(files[3], files[3])  # a link to itself
    Image.fromarray(np.full((300, 500), 200, np.uint8)).save(files[4])  # another size: still a map
    t = time.perf_counter()
    s = runs.run_patches(ds, "sal", "pp", n=2, size=16)
    assert time.perf_counter() - t < 60
    ids = ds.values("id")
    assert s.processed == 1 and ds.exists("pp").values("id") == [ids[4]]
    reasons = {f["id"]: f["reason"] for f in s.failures}
    assert set(reasons) == set(ids[:4])
    assert all(r.startswith("heatmap missing or unreadable: ") for r in reasons.values())  # and why (issue 14)
    assert "decompression bomb" in reasons[ids[0]] and "cannot identify image file" in reasons[ids[1]]
    assert "Is a directory" in reasons[ids[2]] and "not found" in reasons[ids[3]]


def test_a_heatmap_bomb_is_refused_even_when_pillow_checks_are_off(tmp_path, monkeypatch):
    """SAHI's image reader sets Image.MAX_IMAGE_PIXELS = None for the whole process: a later patch run
    read a bomb's header as 'truncated' (and a real bomb would have been decoded)."""
    from xpatch_core.heatmaps import HeatmapError, read_heatmap

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    bomb = tmp_path / "bomb.png"
    _write_png_header(str(bomb), 100_000, 100_000)
    with pytest.raises(HeatmapError, match="decompression bomb"):
        read_heatmap(fo.Heatmap(map_path=str(bomb)))


def test_an_unknown_class_in_the_target_field_fails_only_its_sample(tmp_path, tiny_path, make_ds):
    """A label is one sample's matter: 'zebra' refused the whole run."""
    import xpatch_core as xp

    model = xp.load_model(tiny_path, class_names=["a", "b", "c"], cache=False)
    labels = ["a", "zebra", "c", None]
    ds = make_ds(_photos(tmp_path, [(64, 48)] * 4),
                 gt=[fo.Classification(label=lab) if lab else None for lab in labels])
    s = runs.run_saliency(ds, "sal", model, "gradcam", target_field="gt")
    ids = ds.values("id")
    assert (s.processed, s.failed) == (3, 1)
    assert s.failures[0]["id"] == ids[1] and "zebra" in s.failures[0]["reason"]
    assert s.failures[0]["filepath"] == ds[ids[1]].filepath
    assert ds.values("sal.target") == ["a", None, "c", ds[ids[3]].sal.predicted]
    assert ds.match_tags("xpatch:sal:failed").values("id") == [ids[1]]
    # a target field wrong for every image of the run is a wrong parameter: refused before any work
    with pytest.raises(ParameterError, match="unknown class name 'zebra'"):
        runs.run_saliency(ds.select(ids[1]), "sal2", model, "gradcam", target_field="gt")
    assert "sal2" not in ds.get_field_schema() and "sal2" not in ds.list_runs()


# -- run keys and fields -------------------------------------------------------------------------


def test_run_keys_held_by_other_runs_are_never_taken(tmp_path, tiny, make_ds):
    """With overwrite=True, another tool's run record, an xpatch run of another kind,
    or the run of another field was replaced (orphaning its field)."""
    ds = make_ds(_photos(tmp_path, [(64, 48)] * 2))
    ds.register_run("theirs", ds.init_run(owner="another tool"))
    runs.run_saliency(ds, "sal", tiny, "activation")
    runs.run_patches(ds, "sal", "pa", n=2, size=16)
    before = _state(ds)
    for overwrite in (False, True):
        with pytest.raises(ParameterError, match="run key 'theirs' belongs to another kind of run or another tool"):
            runs.run_saliency(ds, "s2", tiny, "activation", run_key="theirs", overwrite=overwrite)
        with pytest.raises(ParameterError, match="run key 'sal' belongs to another kind"):
            runs.run_patches(ds, "sal", "pz", n=2, size=16, run_key="sal", overwrite=overwrite)
        with pytest.raises(ParameterError, match="run key 'pa' belongs to the xpatch run of field 'pa'"):
            runs.run_patches(ds, "sal", "pb", n=2, size=16, run_key="pa", overwrite=overwrite)
    with pytest.raises(ParameterError, match="invalid run key"):
        runs.run_patches(ds, "sal", "pa", n=2, size=16, run_key="a b")
    assert _state(ds) == before
    assert ds.get_run_info("theirs").config.owner == "another tool"


def test_a_renamed_field_gets_a_clear_error(tmp_path, tiny, make_ds):
    ds = make_ds(_photos(tmp_path, [(64, 48)] * 2))
    runs.run_saliency(ds, "sal", tiny, "activation")
    runs.run_patches(ds, "sal", "pp", n=2, size=16)
    ds.rename_sample_field("pp", "mine")
    with pytest.raises(ParameterError, match="field 'pp' of run 'pp' no longer exists"):
        runs.load_run_view(ds, "pp")
    runs.delete_run(ds, "pp")  # the run goes; the renamed field is the user's now
    assert ds.count("mine.detections") == 4


# -- files and folders ---------------------------------------------------------------------------


def test_a_clone_shares_heatmap_files_and_neither_side_destroys_them(tmp_path, tiny, make_ds):
    """A clone has the same sample ids, so the same file names: delete_run on the clone
    removed the original's PNGs; an overwrite on the clone rewrote them."""
    ds = make_ds(_photos(tmp_path / "p", [(64, 48)] * 3))
    maps = tmp_path / "maps"
    runs.run_saliency(ds, "sal", tiny, "activation", map_dir=str(maps))
    before = _digest(maps / "sal")
    clone = ds.clone()
    make_ds.made.append(clone)
    out = runs.delete_run(clone, "sal")
    assert out["files_removed"] == 0 and out["files_kept_for"] == [ds.name]
    assert _digest(maps / "sal") == before and "sal" not in clone.get_field_schema()
    assert runs.run_patches(ds, "sal", "pp", n=2, size=16).failed == 0
    clone2 = ds.clone()
    make_ds.made.append(clone2)
    with pytest.raises(ParameterError, match=f"holds heatmaps of other datasets .*{ds.name}"):
        runs.run_saliency(clone2, "sal", tiny, "eigencam", map_dir=str(maps), overwrite=True)
    s = runs.run_saliency(clone2, "sal", tiny, "eigencam", map_dir=str(tmp_path / "mine"), overwrite=True)
    assert s.processed == 3 and _digest(maps / "sal") == before
    # a rerun with nothing to do is still fine on both sides
    assert runs.run_saliency(ds, "sal", tiny, "activation", map_dir=str(maps)).status == "nothing to do"
    clone2.delete()
    assert runs.delete_run(ds, "sal")["files_removed"] == 3 and not (maps / "sal").exists()


def test_two_datasets_never_share_a_heatmap_folder(tmp_path, tiny, make_ds):
    a = make_ds(_photos(tmp_path / "a", [(64, 48)] * 2))
    b = make_ds(_photos(tmp_path / "b", [(64, 48)] * 2, seed=2))
    runs.run_saliency(a, "sal", tiny, "activation", map_dir=str(tmp_path / "maps"))
    before = _state(b)
    with pytest.raises(ParameterError, match=f"holds heatmaps of other datasets \\({a.name}\\)"):
        runs.run_saliency(b, "sal", tiny, "activation", map_dir=str(tmp_path / "maps"))
    assert _state(b) == before and len(os.listdir(tmp_path / "maps" / "sal")) == 2


def test_a_contact_sheet_never_replaces_the_users_files(tmp_path, tiny_path, cli_dataset, capsys):
    """Pointed at a photo the dataset holds (from an earlier folder) it overwrote it;
    pointed at a folder it crashed after all the work."""
    _photos(tmp_path / "first", [(64, 48)])
    _photos(tmp_path / "second", [(64, 48)] * 2, seed=2)
    name = cli_dataset()
    base = ["--dataset", name, "--model", tiny_path, "--method", "activation", "-n", "2", "--size", "16"]
    rc, _, err = _cli(["run", str(tmp_path / "first"), *base, "--contact-sheet", str(tmp_path / "s.png")], capsys)
    assert rc == 0, err
    photo = tmp_path / "first" / "im00.png"
    before = _digest(tmp_path / "first")
    rc, _, err = _cli(["run", str(tmp_path / "second"), *base, "--contact-sheet", str(photo)], capsys)
    assert rc == 2 and "files the dataset points to" in err
    assert _digest(tmp_path / "first") == before and len(fo.load_dataset(name)) == 1  # before any work
    (tmp_path / "folder").mkdir()
    fresh = cli_dataset()
    rc, _, err = _cli(["run", str(tmp_path / "second"), "--dataset", fresh, *base[2:],
                       "--contact-sheet", str(tmp_path / "folder")], capsys)
    assert rc == 2 and "is a folder" in err and not fo.dataset_exists(fresh)
    assert os.listdir(tmp_path / "folder") == []


def test_a_contact_sheet_is_never_written_through_a_planted_link(tmp_path, tiny, make_ds):
    from xpatch_core.contact import contact_sheet

    ds = make_ds(_photos(tmp_path / "p", [(64, 48)] * 2))
    runs.run_saliency(ds, "sal", tiny, "activation")
    runs.run_patches(ds, "sal", "pp", n=2, size=16)
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    sheet = tmp_path / "sheet.png"
    os.symlink(victim, f"{sheet}.{os.getpid()}.tmp")  # the old, predictable temporary name
    assert contact_sheet(ds, str(sheet), "pp") == str(sheet)
    assert victim.read_text() == "untouched"
    with Image.open(sheet) as img:
        assert img.format == "PNG"
    assert sorted(os.listdir(tmp_path)) == ["p", "sheet.png", f"sheet.png.{os.getpid()}.tmp", "victim.txt"]


def test_a_dataset_name_with_path_characters(tmp_path, tiny_path, cli_dataset, capsys, monkeypatch):
    """The default contact sheet 'xpatch-<dataset>.png' crashed after all the work."""
    _photos(tmp_path / "imgs", [(64, 48)] * 2)
    cwd = tmp_path / "cwd" / "deep"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    name = cli_dataset("/../../x y")
    rc, out, err = _cli(["run", str(tmp_path / "imgs"), "--dataset", name, "--model", tiny_path,
                         "--method", "activation", "-n", "2", "--size", "16"], capsys)
    assert rc == 0, err
    assert os.listdir(cwd) == [f"xpatch-{name.split('/')[0]}_.._.._x_y.png"]
    assert sorted(os.listdir(tmp_path)) == ["cwd", "imgs"] and os.listdir(tmp_path / "cwd") == ["deep"]


def test_a_file_name_that_is_not_utf8(tmp_path, tiny_path, cli_dataset, capsys):
    """One such name stopped the whole command with UnicodeEncodeError."""
    folder = tmp_path / "imgs"
    _photos(folder, [(64, 48)] * 3)
    os.rename(folder / "im01.png", os.fsencode(folder) + b"/\xff\xfe-photo.png")
    name = cli_dataset()
    rc, out, err = _cli(["run", str(folder), "--dataset", name, "--model", tiny_path, "--method", "activation",
                         "-n", "2", "--size", "16", "--contact-sheet", str(tmp_path / "s.png")], capsys)
    assert rc == 0, err
    assert "skipped 1 images whose file names are not valid UTF-8" in out and "\\xff\\xfe-photo.png" in out
    assert fo.load_dataset(name).count("patches.detections") == 4


def test_unicode_newline_and_very_long_paths(tmp_path, tiny, make_ds):
    deep = tmp_path.joinpath(*(["é" * 100] * 10))  # a 2,000-byte folder path
    names = ["a\nb 🙂.png", "ünïcödé ✓ (1).png", "x" * 120 + "ß" * 60 + ".png"]
    paths = []
    for k, n in enumerate(names):
        _photos(deep, [(64, 48)], seed=k, prefix=f"tmp{k}")
        os.rename(deep / f"tmp{k}00.png", deep / n)
        paths.append(str(deep / n))
    assert max(len(p.encode()) for p in paths) > 2000
    ds = make_ds(paths)
    s = runs.run_saliency(ds, "sal", tiny, "activation", map_dir=str(tmp_path / "maps"))
    assert (s.processed, s.failed) == (3, 0)
    assert sorted(os.listdir(tmp_path / "maps" / "sal")) == sorted(f"{i}.png" for i in ds.values("id"))
    runs.run_patches(ds, "sal", "pp", n=2, size=16)
    report = export_patches(ds, str(tmp_path / "out"), field="pp")
    assert report.exported == 6 and not report.outside


def test_pipes_devices_and_broken_links_in_a_mixed_folder(tmp_path, tiny, make_ds):
    """A named pipe said 'empty file' (opening one would wait for a writer); a looping link 'file not found'."""
    folder = tmp_path / "mixed"
    good = _photos(folder, [(64, 48)] * 2)
    os.mkfifo(folder / "pipe.jpg")
    os.symlink("/dev/zero", folder / "zero.jpg")
    os.symlink(folder / "loop.jpg", folder / "loop.jpg")
    os.symlink(folder / "gone.jpg", folder / "dangling.jpg")
    odd = ["pipe.jpg", "zero.jpg", "loop.jpg", "dangling.jpg"]
    ds = make_ds(good + [str(folder / n) for n in odd] + ["https://example.com/a.jpg"])
    t = time.perf_counter()
    s = runs.run_saliency(ds, "sal", tiny, "activation")
    assert time.perf_counter() - t < 60
    reasons = {os.path.basename(f["filepath"]): f["reason"] for f in s.failures}
    assert s.processed == 2 and s.failed == 5
    assert reasons == {"pipe.jpg": "not a regular file (a named pipe, socket or device)",
                       "zero.jpg": "not a regular file (a named pipe, socket or device)",
                       "loop.jpg": "broken symbolic link (its target is missing, or it loops)",
                       "dangling.jpg": "broken symbolic link (its target is missing, or it loops)",
                       "a.jpg": "file not found"}


def test_hostile_export_folders(tmp_path, tiny, make_ds):
    photos = tmp_path / "photos"
    ds = make_ds(_photos(photos, [(64, 48)] * 2))
    runs.run_saliency(ds, "sal", tiny, "activation")
    runs.run_patches(ds, "sal", "pp", n=2, size=16)
    before = _digest(photos)
    (tmp_path / "a_file").write_text("keep")
    os.symlink("/", tmp_path / "to_root")
    os.symlink(photos, tmp_path / "to_photos")
    for target, match in (("a_file", "exists and is not a folder"), ("to_root", "refusing to export into /"),
                          ("to_photos", "holds source images")):
        with pytest.raises(ParameterError, match=match):
            export_patches(ds, str(tmp_path / target), field="pp", overwrite=True)
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(out / "loop", out / "loop")
    os.symlink(photos, out / "photos_link")
    report = export_patches(ds, str(out), field="pp", overwrite=True)
    assert report.cleared == 2 and report.exported == 4 and not report.outside
    assert _digest(photos) == before and (tmp_path / "a_file").read_text() == "keep"


def test_detections_with_invalid_boxes_from_another_tool_export_the_rest(tmp_path, make_ds):
    """A NaN box stopped the ImageFolder export, a missing box the COCO export."""
    good = fo.Detection(label="ok", bounding_box=[0.1, 0.1, 0.3, 0.3])
    bad = [fo.Detection(label="nan", bounding_box=[float("nan"), 0.1, 0.3, 0.3]),
           fo.Detection(label="neg", bounding_box=[0.1, 0.1, -0.3, 0.3]),
           fo.Detection(label="none", bounding_box=None),
           fo.Detection(label="short", bounding_box=[0.1, 0.1, 0.3])]
    ds = make_ds(_photos(tmp_path / "p", [(64, 48)] * 2),
                 dets=[fo.Detections(detections=[good, *bad[:2]]), fo.Detections(detections=[good.copy(), *bad[2:]])])
    for fmt in ("imagefolder", "coco"):
        report = export_patches(ds, str(tmp_path / fmt), format=fmt, field="dets")
        assert (report.patches, report.exported, report.skipped) == (6, 2, 4)
        assert list(report.skipped_reasons) == ["invalid box: not four finite numbers with a positive width and height"]
    back = fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset, data_path=str(tmp_path / "coco" / "data"),
                               labels_path=str(tmp_path / "coco" / "labels.json"))
    try:
        assert back.count("detections.detections") == 2
    finally:
        back.delete()


# -- the lifecycle: interrupts, concurrent edits -------------------------------------------------


class _Interrupt:
    """Raises KeyboardInterrupt at one step of a run's lifecycle."""

    def __init__(self, monkeypatch, step: str) -> None:
        self.step, self.events = step, 0
        if step == "setup":  # while loading the model (before the lock)
            import xpatch_core.models

            monkeypatch.setattr(xpatch_core.models, "load_model", self.boom)
        elif step == "lock":  # inside acquire_lock, after its insert
            real = runs.locks.collection

            class Coll:
                def __getattr__(_, name):
                    return getattr(real(), name)

                def find(_, *a, **k):
                    raise KeyboardInterrupt

            monkeypatch.setattr(runs.locks, "collection", lambda: Coll())
        elif step == "start":  # registering the run, under the lock
            monkeypatch.setattr(runs.records, "start_run", self.boom)

    @staticmethod
    def boom(*a, **k):
        raise KeyboardInterrupt

    def progress(self, p) -> None:
        self.events += 1
        if self.step == "middle" and self.events == 2:
            raise KeyboardInterrupt
        if self.step == "callback" and self.events == 2:
            raise RuntimeError("a progress callback with a bug")
        if self.step == "last" and p.total and p.done == p.total:  # every sample written, record not final
            raise KeyboardInterrupt


@pytest.mark.parametrize("step", ["setup", "lock", "start", "middle", "callback", "last"])
def test_an_interrupt_at_each_step_then_the_same_run_again(tmp_path, tiny, make_ds, monkeypatch, step):
    """After 'lock' the field stayed locked by this process for good; after 'middle' and
    'callback' (raised outside the run's generator) the lock lived as long as the
    traceback (a notebook keeps the last one: the rerun was refused by its own
    process); after 'last' the record said 'interrupted' forever."""
    monkeypatch.setenv("XPATCH_WRITE_CHUNK", "2")
    ds = make_ds(_photos(tmp_path, [(64, 48)] * 6))
    with monkeypatch.context() as m:
        stop = _Interrupt(m, step)
        with pytest.raises((KeyboardInterrupt, RuntimeError)) as raised:  # kept alive, as a notebook does
            runs.run_saliency(ds, "sal", tiny, "activation", batch_size=2, progress=stop.progress)
    assert _no_locks(ds)
    done = ds.count("sal") if "sal" in ds.get_field_schema() else 0
    status = runs.get_run_info(ds, "sal")["results"].get("status") if "sal" in ds.list_runs() else None
    assert status in (None, "interrupted")
    again = runs.run_saliency(ds, "sal", tiny, "activation", batch_size=2)
    assert again.processed == 6 - done and again.skipped == done and again.failed == again.vanished == 0
    info = runs.get_run_info(ds, "sal")
    assert info["results"]["status"] == "completed" and ds.count("sal") == 6 and _no_locks(ds)
    if step == "last":
        assert done == 6 and again.status == "nothing to do"
    assert raised.traceback  # the interrupted call's frames were alive throughout


def test_delete_run_while_a_run_holds_the_lock(tmp_path, tiny, make_ds, monkeypatch):
    monkeypatch.setenv("XPATCH_WRITE_CHUNK", "2")
    ds = make_ds(_photos(tmp_path / "p", [(64, 48)] * 4))
    refused = []

    def meddle(p):
        if p.done == 2:
            with pytest.raises(XpatchError, match="being written by another run") as e:
                runs.delete_run(ds, "sal")
            refused.append(str(e.value))

    s = runs.run_saliency(ds, "sal", tiny, "activation", batch_size=2, map_dir=str(tmp_path / "maps"),
                          progress=meddle)
    assert refused and s.processed == 4 and s.status == "completed"
    assert len(os.listdir(tmp_path / "maps" / "sal")) == 4 and ds.count("sal") == 4


def test_a_dataset_renamed_or_deleted_during_a_run(tmp_path, tiny, make_ds, monkeypatch):
    monkeypatch.setenv("XPATCH_WRITE_CHUNK", "2")
    ds = make_ds(_photos(tmp_path / "p", [(64, 48)] * 4))
    new_name = f"{ds.name}-renamed"

    def rename(p):
        if p.done == 2:
            ds.name = new_name

    s = runs.run_saliency(ds, "sal", tiny, "activation", batch_size=2, progress=rename)
    assert s.processed == 4 and ds.name == new_name and fo.load_dataset(new_name).count("sal") == 4
    assert runs.get_run_info(ds, "sal")["results"]["status"] == "completed" and _no_locks(ds)
    doomed = make_ds(_photos(tmp_path / "q", [(64, 48)] * 4))
    name = doomed.name

    def delete(p):
        if p.done == 2:
            doomed.delete()

    with pytest.raises(ValueError, match="deleted"):
        runs.run_saliency(doomed, "sal", tiny, "activation", batch_size=2, progress=delete)
    assert list(runs.locks.collection().find({"dataset": name})) == []


def test_samples_added_during_a_run_are_left_for_the_next(tmp_path, tiny, make_ds, monkeypatch):
    monkeypatch.setenv("XPATCH_WRITE_CHUNK", "2")
    ds = make_ds(_photos(tmp_path / "p", [(64, 48)] * 4))
    new = _photos(tmp_path / "new", [(48, 64)] * 3, seed=4)

    def add(p):
        if p.done == 2:
            ds.add_samples([fo.Sample(filepath=x) for x in new])

    s = runs.run_saliency(ds, "sal", tiny, "activation", batch_size=2, progress=add)
    assert (s.total, s.processed, s.vanished) == (4, 4, 0)
    again = runs.run_saliency(ds, "sal", tiny, "activation")
    assert (again.processed, again.skipped) == (3, 4) and ds.count("sal") == 7
    assert set(new) <= set(ds.exists("sal").values("filepath"))


# -- parameters ----------------------------------------------------------------------------------


def test_a_huge_n_is_refused_before_any_work(tmp_path, tiny, tiny_path, make_ds, cli_dataset, capsys):
    """n=2**40 ran for minutes (or ran out of memory); the CLI found it only after every heatmap."""
    ds = make_ds(_photos(tmp_path / "p", [(64, 48)] * 2))
    runs.run_saliency(ds, "sal", tiny, "activation")
    before = _state(ds)
    for n in (100_001, 2**40, 2**64, np.int64(2**62)):
        t = time.perf_counter()
        with pytest.raises(ParameterError, match="n must be at most 100,000 patches per image"):
            runs.run_patches(ds, "sal", "pp", n=n, size=16)
        assert time.perf_counter() - t < 10
    assert _state(ds) == before
    name = cli_dataset()
    rc, _, err = _cli(["run", str(tmp_path / "p"), "--dataset", name, "--model", tiny_path,
                       "-n", str(10**12), "--contact-sheet", str(tmp_path / "s.png")], capsys)
    assert rc == 2 and "n must be at most" in err and not fo.dataset_exists(name)


def test_numpy_scalars_as_parameters(tmp_path, tiny, make_ds):
    ds = make_ds(_photos(tmp_path, [(64, 48)] * 3))
    s = runs.run_saliency(ds, "sal", tiny, "activation", batch_size=np.int64(2))
    assert s.processed == 3
    runs.run_patches(ds, "sal", "np_", n=np.int32(3), size=np.int64(16), seed=np.uint64(7),
                     scales=np.array([1.0]), temperature=np.float32(2.0))
    runs.run_patches(ds, "sal", "py_", n=3, size=16, seed=7, temperature=2.0)
    assert ds.values("np_.detections.bounding_box") == ds.values("py_.detections.bounding_box")
    again = runs.run_patches(ds, "sal", "np_", n=3, size=16, seed=7, scales=(1.0,), temperature=2.0)
    assert again.status == "nothing to do"
    assert runs.get_run_info(ds, "np_")["config"]["seed"] == 7


def test_an_empty_dataset_is_nothing_to_do(tmp_path, tiny, make_ds):
    """A new dataset has no media type yet: it was refused as 'media type None'."""
    ds = make_ds([])
    summary = runs.run_saliency(ds, "sal", tiny, "activation")
    assert (summary.status, summary.total, summary.processed) == ("nothing to do", 0, 0)
    assert ds.list_runs() == [] and "sal" not in ds.get_field_schema() and _no_locks(ds)
    ds.add_sample_field("theirs", fo.EmbeddedDocumentField, embedded_doc_type=fo.Heatmap)
    summary = runs.run_patches(ds, "theirs", "pp", n=2, size=16)
    assert (summary.status, summary.total) == ("nothing to do", 0) and ds.list_runs() == []
    # an empty view of an image dataset: the same
    full = make_ds(_photos(tmp_path, [(64, 48)]))
    assert runs.run_saliency(full.limit(0), "sal", tiny, "activation").status == "nothing to do"
    assert full.list_runs() == []


def test_the_cli_exits_1_when_no_image_gets_patches(tmp_path, tiny_path, cli_dataset, capsys):
    folder = tmp_path / "imgs"
    _photos(folder, [(64, 48)] * 2)
    name = cli_dataset()
    args = ["run", str(folder), "--dataset", name, "--model", tiny_path, "--method", "activation",
            "--map-dir", str(tmp_path / "maps"), "-n", "2", "--size", "16", "--contact-sheet", str(tmp_path / "s.png")]
    assert _cli(args, capsys)[0] == 0
    fo.load_dataset(name).delete_sample_field("patches")
    fo.load_dataset(name).delete_run("patches")
    for f in os.listdir(tmp_path / "maps" / "saliency"):
        os.remove(tmp_path / "maps" / "saliency" / f)
    rc, out, err = _cli(args, capsys)
    assert rc == 1 and "no image could be given patches" in err
    assert out.count("heatmap missing or unreadable") == 2


def test_a_users_file_at_the_contact_sheet_path_is_never_overwritten(tmp_path, tiny_path, cli_dataset, capsys):
    """The default sheet name (and --contact-sheet) replaced a user's file of
    that name, even a JPEG under a .jpg name; only our own sheets are replaced."""
    from xpatch_core.contact import is_contact_sheet

    _photos(tmp_path / "imgs", [(64, 48)] * 2)
    base = ["--dataset", cli_dataset(), "--model", tiny_path, "--method", "activation", "-n", "2", "--size", "16"]
    mine = tmp_path / "mine.png"
    mine.write_text("the user's notes, not an image")
    rc, _, err = _cli(["run", str(tmp_path / "imgs"), *base, "--contact-sheet", str(mine)], capsys)
    assert rc == 2 and "is not a contact sheet xpatch wrote" in err
    assert mine.read_text() == "the user's notes, not an image" and not fo.dataset_exists(base[1])
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(photo)
    rc, _, err = _cli(["run", str(tmp_path / "imgs"), *base, "--contact-sheet", str(photo)], capsys)
    assert rc == 2 and "must be a .png file path" in err
    sheet = tmp_path / "sheet.png"
    for _ in range(2):  # our own sheet is replaced on a rerun
        rc, out, err = _cli(["run", str(tmp_path / "imgs"), *base, "--contact-sheet", str(sheet)], capsys)
        assert rc == 0, err
        assert is_contact_sheet(str(sheet)) and f"contact sheet: {sheet}" in out
    assert not is_contact_sheet(str(mine)) and not is_contact_sheet(str(photo))
