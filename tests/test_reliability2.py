"""Reliability, round two (issue 13): the FiftyOne layer and the command line.

Each numbered case of the issue that lives in these layers, reproduced as it
was reported: one odd image never refuses the run (1), outputs never destroy
each other (3), a view that hides the output field keeps resume (5), counts
are true when samples vanish (6), user heatmaps without metadata (7). Cases
2, 4 and 8 (models) are in ``tests/test_models.py``.
"""

from __future__ import annotations

import os

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from tests.test_reliability import _state, _tiny_keras
from xpatch_core import cli, runs
from xpatch_core.errors import ParameterError


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> str:
    return _tiny_keras(str(tmp_path_factory.mktemp("tiny") / "tiny.keras"))


def _photos(folder, sizes: list[tuple[int, int]]) -> list[str]:
    rng = np.random.default_rng(1)
    os.makedirs(folder, exist_ok=True)
    out = []
    for k, (w, h) in enumerate(sizes):
        p = os.path.join(folder, f"im{k:02d}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


@pytest.fixture()
def ds_factory():
    made = []

    def make(paths: list[str]) -> fo.Dataset:
        ds = fo.Dataset()
        ds.add_samples([fo.Sample(filepath=p) for p in paths])
        made.append(ds)
        return ds

    yield make
    for ds in made:
        if fo.dataset_exists(ds.name):
            ds.delete()


# -- case 1: one odd image never refuses the whole patch run ------------------------


def test_case1_a_banner_fails_alone_and_the_others_get_patches(tmp_path, ds_factory, tiny_file):
    paths = _photos(tmp_path / "mixed", [(200, 150)] * 4 + [(12000, 40)])
    ds = ds_factory(paths)
    runs.run_saliency(ds, "sal", tiny_file, "activation")
    s = runs.run_patches(ds, "sal", "pp", n=4, size=96, border="error")
    banner = ds.match(fo.ViewField("filepath") == paths[-1]).first()
    assert (s.processed, s.failed) == (4, 1)
    assert s.failures[0]["id"] == banner.id and "larger than the image 12000x40" in s.failures[0]["reason"]
    assert s.patches == 16


def test_case1_shapes_that_do_not_fit_are_dropped_per_image(tmp_path, ds_factory, tiny_file):
    paths = _photos(tmp_path / "mixed", [(200, 150)] * 3 + [(12000, 40)])
    ds = ds_factory(paths)
    runs.run_saliency(ds, "sal", tiny_file, "activation")
    # 0.75 of the short side at scales 1 and 2: the scale-2 shape fits no image, scale 1 fits all
    s = runs.run_patches(ds, "sal", "pp", n=6, size=0.75, scales=(1.0, 2.0), border="drop")
    assert (s.processed, s.failed) == (4, 0)
    assert set(ds.distinct("pp.detections.scale")) == {1.0}
    # aspect ratios 1 and 2: on the banner the square 96 px shape does not fit, the 2:1 one does not either
    # (68 px high), on the photos both fit
    s = runs.run_patches(ds, "sal", "pq", n=6, size=96, aspect_ratios=(1.0, 2.0), border="drop")
    assert s.processed == 3 and s.failed == 1 and "larger than the image" in s.failures[0]["reason"]
    per_image = ds.exists("pq").values("pq.detections.aspect_ratio")
    assert all(set(a) <= {1.0, 2.0} for a in per_image) and {2.0} <= set(sum(per_image, []))
    # a wide image where only the 2:1 shape fits keeps that shape
    wide = ds_factory(_photos(tmp_path / "wide", [(400, 80)]))
    runs.run_saliency(wide, "sal", tiny_file, "activation")
    s = runs.run_patches(wide, "sal", "pq", n=3, size=90, aspect_ratios=(1.0, 4.0), border="drop")
    assert s.processed == 1 and {d.aspect_ratio for d in wide.first().pq.detections} == {4.0}


def test_case1_a_size_that_fits_no_image_is_refused_before_work(tmp_path, ds_factory, tiny_file):
    ds = ds_factory(_photos(tmp_path / "small", [(64, 48)] * 2))
    runs.run_saliency(ds, "sal", tiny_file, "activation")
    before = _state(ds)
    with pytest.raises(ParameterError, match="larger than every image"):
        runs.run_patches(ds, "sal", "pp", n=2, size=96, border="drop")
    assert _state(ds) == before


def test_case1_cli_run_on_a_mixed_folder_exits_zero(tmp_path, tiny_file, capsys):
    folder = tmp_path / "folder"
    _photos(folder, [(220, 160)] * 3 + [(12000, 40)])
    name = f"xpatch-rel2-{os.getpid()}"
    try:
        rc = cli.main(["run", str(folder), "--dataset", name, "--model", tiny_file, "--method", "activation",
                       "--contact-sheet", str(tmp_path / "sheet.png"), "--border", "error", "-n", "3"])
        out = capsys.readouterr().out
        assert rc == 0, out
        assert "patches: 3 processed, 0 already done, 1 failed" in out, repr(out)
        assert fo.load_dataset(name).count("patches.detections") == 9
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


# -- case 3: no output destroys another ----------------------------------------------


def test_case3_overlapping_outputs_are_refused_before_any_work(tmp_path, tiny_file, capsys):
    folder = tmp_path / "photos"
    _photos(folder, [(120, 90)] * 2)
    out = tmp_path / "out"
    name = f"xpatch-rel2-out-{os.getpid()}"
    rc = cli.main(["run", str(folder), "--dataset", name, "--model", tiny_file, "--map-dir", str(out / "maps"),
                   "--export", f"imagefolder:{out}", "--export-overwrite", "--contact-sheet",
                   str(out / "sheet.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "overlap" in err
    assert not out.exists() and not fo.dataset_exists(name)  # nothing was done
    # an output inside the images folder (it would be ingested next time) is refused too
    rc = cli.main(["run", str(folder), "--dataset", name, "--model", tiny_file, "--contact-sheet",
                   str(folder / "sheet.png")])
    assert rc == 2 and "overlaps the input" in capsys.readouterr().err
    assert sorted(os.listdir(folder)) == ["im00.png", "im01.png"]


def test_case3_an_export_never_clears_the_heatmap_files(tmp_path, ds_factory, tiny_file):
    from xpatch_core.export import export_patches

    ds = ds_factory(_photos(tmp_path / "p", [(120, 90)] * 2))
    out = tmp_path / "out"
    runs.run_saliency(ds, "sal", tiny_file, "activation", map_dir=str(out / "maps"))
    runs.run_patches(ds, "sal", "pp", n=2, size=32)
    with pytest.raises(ParameterError, match="files the dataset points to"):
        export_patches(ds, str(out), field="pp", overwrite=True)
    assert len(os.listdir(out / "maps" / "sal")) == 2
    s = runs.run_patches(ds, "sal", "pq", n=2, size=32)
    assert s.failed == 0  # the maps are all still there


# -- case 5: resume is decided from the dataset ---------------------------------------


def test_case5_a_view_hiding_the_field_keeps_resume(tmp_path, ds_factory, tiny_file):
    ds = ds_factory(_photos(tmp_path / "p", [(120, 90)] * 3))
    runs.run_saliency(ds, "sal", tiny_file, "activation")
    runs.run_patches(ds, "sal", "pp", n=2, size=32)
    maps = [hm.map.copy() for hm in ds.values("sal")]
    boxes = ds.values("pp.detections.bounding_box")
    s = runs.run_saliency(ds.select_fields(), "sal", tiny_file, "activation")
    assert (s.processed, s.skipped) == (0, 3)
    p = runs.run_patches(ds.exclude_fields(["pp", "sal"]), "sal", "pp", n=2, size=32)
    assert (p.processed, p.skipped) == (0, 3)
    assert all(np.array_equal(a, hm.map) for a, hm in zip(maps, ds.values("sal")))
    assert ds.values("pp.detections.bounding_box") == boxes


# -- case 6: counts are true when samples vanish --------------------------------------


def test_case6_samples_deleted_during_a_run_are_counted_apart(tmp_path, ds_factory, tiny_file, monkeypatch):
    monkeypatch.setenv("XPATCH_WRITE_CHUNK", "2")
    ds = ds_factory(_photos(tmp_path / "p", [(120, 90)] * 8))
    ids = ds.values("id")
    doomed = ids[5:7]
    seen = []

    def on_progress(p):
        seen.append(p.done)
        if len(seen) == 2:  # after the first chunk was written
            ds.delete_samples(doomed)

    s = runs.run_saliency(ds, "sal", tiny_file, "activation", batch_size=2, progress=on_progress)
    assert s.vanished == 2 and s.failed == 0 and s.failures == []
    assert s.processed == 6 and s.processed + s.vanished + s.failed + s.skipped == s.total == 8
    assert len(ds.exists("sal")) == 6
    assert "deleted during the run" in s.describe()


# -- case 7: heatmaps from elsewhere, without metadata ---------------------------------


def test_case7_user_heatmaps_without_metadata_get_sizes(tmp_path, ds_factory):
    paths = _photos(tmp_path / "p", [(160, 120), (90, 200)])
    ds = ds_factory(paths)
    for s in ds:
        m = np.zeros((12, 16), np.float32)
        m[3:6, 10:14] = 1.0
        s["theirs"] = fo.Heatmap(map=m)
        s.save()
    assert ds.count("metadata") == 0
    r = runs.run_patches(ds, "theirs", "pp", n=3, size=24)
    assert (r.processed, r.failed) == (2, 0)
    assert ds.count("metadata") == 2 and ds.count("pp.detections") == 6
