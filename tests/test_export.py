"""Patch export on a real dataset: COCO photos, real Xception saliency, FiftyOne's exporters."""

from __future__ import annotations

import json
import os
from collections import Counter

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from bson import ObjectId
from fiftyone import ViewField as F
from fiftyone.operators.executor import ExecutionError
from PIL import Image, ImageOps

from xpatch_core import runs
from xpatch_core.errors import ParameterError
from xpatch_core.export import export_patches, safe_class_name

N_IMAGES, N_PATCHES = 5, 4


@pytest.fixture(scope="module")
def coco_patches(coco_dir, xception):
    """Five COCO photos with their ground truth, real activation maps and
    four patches each (square 96 px and 2:1 boxes)."""
    ds = fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset,
                             data_path=os.path.join(coco_dir, "images"),
                             labels_path=os.path.join(coco_dir, "annotations.json"),
                             label_types="detections", max_samples=N_IMAGES, shuffle=False, progress=False)
    runs.run_saliency(ds, "sal", xception, "activation")
    runs.run_patches(ds, "sal", "pp", n=N_PATCHES, size=96, aspect_ratios=(1.0, 2.0), seed=0)
    assert ds.count("pp.detections") == N_IMAGES * N_PATCHES
    yield ds
    ds.delete()


def _files(root):
    out = []
    for dirpath, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(dirpath, n), root) for n in names]
    return sorted(out)


def _source_crop(path, box, width, height):
    x, y, w, h = box
    x0, y0 = round(x * width), round(y * height)
    x1, y1 = round((x + w) * width), round((y + h) * height)
    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB").crop((x0, y0, x1, y1)), dtype=np.float32)


def test_imagefolder_one_crop_per_kept_patch(coco_patches, tmp_path):
    ds = coco_patches
    pv = runs.patches_view(ds, "pp").match(F("pp.rank") <= 3)
    kept = pv.values("pp")
    assert len(kept) == N_IMAGES * 3
    out = tmp_path / "folder"
    report = export_patches(pv, str(out), "imagefolder", label_attr="rank", image_format=".png")
    files = _files(out)
    assert report.exported == report.files_written == len(files) == len(kept) and report.skipped == 0
    assert report.patches == len(kept) and report.images == N_IMAGES and report.outside == []
    assert sorted(os.listdir(out)) == ["1", "2", "3"] and report.classes == {"1": "1", "2": "2", "3": "3"}
    # the right size in the right folder: per class, the multiset of (w, h)
    expected = Counter((str(d.rank), d.width_px, d.height_px) for d in kept)
    got = Counter()
    for f in files:
        with Image.open(out / f) as img:
            got[(os.path.dirname(f), *img.size)] += 1
    assert got == expected
    assert {(w, h) for _, w, h in expected} <= {(96, 96), (136, 68)}
    # the pixels are the patch's pixels (PNG crops: only JPEG decoders differ)
    first = pv.first()
    sample, det = ds[first.sample_id], first.pp
    crops = [np.asarray(Image.open(out / f).convert("RGB"), dtype=np.float32)
             for f in files if f.startswith(f"{det.rank}/")]
    want = _source_crop(sample.filepath, det.bounding_box, sample.sal.width, sample.sal.height)
    diffs = [np.abs(c - want).mean() for c in crops if c.shape == want.shape]
    assert diffs and min(diffs) < 3.0


def test_imagefolder_padding_and_square_crops(coco_patches, tmp_path):
    ds = coco_patches
    pad = 0.5
    report = export_patches(ds, str(tmp_path / "sq"), field="pp", pad=pad, square=True)
    assert report.exported == N_IMAGES * N_PATCHES and os.listdir(tmp_path / "sq") == ["patch"]
    got = Counter()
    for f in _files(tmp_path / "sq"):
        with Image.open(tmp_path / "sq" / f) as img:
            got[img.size] += 1
    # each side moves out by pad / 2 of the box size, clamped to the image;
    # then the shorter side is extended to a square (the images are larger)
    want = Counter()
    for s in ds.iter_samples():
        W, H = s.sal.width, s.sal.height
        for d in s.pp.detections:
            x, y, w, h = d.bounding_box
            x0, y0, x1, y1 = round(x * W), round(y * H), round((x + w) * W), round((y + h) * H)
            dx, dy = pad * (x1 - x0) / 2, pad * (y1 - y0) / 2
            pw = min(x1 + dx, W) - max(x0 - dx, 0)
            ph = min(y1 + dy, H) - max(y0 - dy, 0)
            side = int(max(pw, ph))
            assert side <= min(W, H)
            want[(side, side)] += 1
    assert got == want
    assert (204, 204) in got or (144, 144) in got  # some boxes away from the borders


def test_coco_export_images_once_reimports_and_honours_a_filter(coco_patches, tmp_path):
    ds = coco_patches
    first = ds.first().id
    pv = runs.patches_view(ds, "pp").match((F("pp.rank") <= 2) & (F("_sample_id") != ObjectId(first)))
    kept = {d.id: d for d in pv.values("pp")}
    assert len(kept) == (N_IMAGES - 1) * 2
    out = tmp_path / "coco"
    report = export_patches(pv, str(out), "coco")
    assert report.exported == len(kept) and report.images == N_IMAGES - 1 and report.skipped == 0
    with open(out / "labels.json") as f:
        labels = json.load(f)
    names = [im["file_name"] for im in labels["images"]]
    assert len(names) == len(set(names)) == N_IMAGES - 1  # each source image once
    assert len(labels["annotations"]) == len(kept)
    assert sorted(_files(out)) == sorted(["labels.json"] + [f"data/{n}" for n in names])
    assert os.path.basename(ds.first().filepath) not in names  # the filtered-out image
    back = fo.Dataset.from_dir(dataset_dir=str(out), dataset_type=fo.types.COCODetectionDataset,
                               label_types="detections", label_field="pp", progress=False)
    try:
        assert len(back) == N_IMAGES - 1 and back.count("pp.detections") == len(kept)
        assert set(back.distinct("pp.detections.rank")) == {1, 2}  # the filter carried over
        src = {os.path.basename(p): s for p, s in zip(ds.values("filepath"), ds.values("pp"))}
        for s in back.iter_samples():
            want = sorted(tuple(round(v * 1000) for v in d.bounding_box)
                          for d in src[os.path.basename(s.filepath)].detections if d.id in kept)
            got = sorted(tuple(round(v * 1000) for v in d.bounding_box) for d in s.pp.detections)
            assert got == want
            assert all(d.confidence is not None for d in s.pp.detections)  # score -> COCO score
    finally:
        back.delete()


def test_traversal_labels_stay_inside_the_folder(coco_patches, tmp_path):
    ds = coco_patches.clone()
    try:
        nasty = ["../x", "/abs", "..", ".", "a/b", "a_b", "C:\\evil", "nul\x00byte", "x" * 400, "Cat", "cat",
                 "../../etc/passwd", " spaced ", "ok", "", "é/ü", "a_b-" + "0" * 8, "..\\..\\y", "\n"]
        dets_all = ds.values("pp")
        k = 0
        for dets in dets_all:
            for d in dets.detections:
                d.label = nasty[k % len(nasty)]
                k += 1
        ds.set_values("pp", dets_all)
        used = [nasty[i % len(nasty)] for i in range(k)]
        out = tmp_path / "inside" / "export"
        report = export_patches(ds, str(out), field="pp")
        assert report.outside == []
        # nothing outside the export folder: tmp_path holds only it
        assert sorted(os.listdir(tmp_path)) == ["inside"] and os.listdir(tmp_path / "inside") == ["export"]
        assert not os.path.exists("/abs") and not os.path.exists(str(tmp_path / "x"))
        for f in _files(out):
            real = os.path.realpath(out / f)
            assert real.startswith(os.path.realpath(out) + os.sep)
            assert f.count(os.sep) == 1  # <class>/<file>
        blank = {lab for lab in used if not lab.strip()}
        assert report.skipped == sum(lab in blank for lab in used)
        assert set(report.skipped_reasons) == {"no class: the patch has no label"}
        classes = {lab for lab in used if lab not in blank}
        folders = set(os.listdir(out))
        assert len(folders) == len(classes)  # distinct labels stay distinct
        assert report.classes == {lab: safe_class_name(lab) if lab not in ("Cat", "cat") else report.classes[lab]
                                  for lab in classes}
        assert {"ok", "a_b"} <= folders and report.classes["Cat"].lower() != report.classes["cat"].lower()
        for name in folders:
            assert name not in (".", "..") and "/" not in name and "\\" not in name and "\x00" not in name
            assert len(name.encode()) < 255
    finally:
        ds.delete()


def test_export_folder_rules(coco_patches, tmp_path):
    ds = coco_patches
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ParameterError, match="not empty"):
        export_patches(ds, str(out), field="pp")
    assert os.listdir(out) == ["keep.txt"]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    os.symlink(outside, out / "link")
    report = export_patches(ds, str(out), "coco", field="pp", overwrite=True)
    assert report.cleared == 2 and (outside / "precious.txt").read_text() == "keep me"
    assert not os.path.lexists(out / "link") and not os.path.exists(out / "keep.txt")
    assert report.images == N_IMAGES and report.exported == N_IMAGES * N_PATCHES
    with pytest.raises(ParameterError, match="not a folder"):
        export_patches(ds, str(outside / "precious.txt"), field="pp")
    with pytest.raises(ParameterError, match="holds source images"):
        export_patches(ds, os.path.dirname(ds.first().filepath), field="pp", overwrite=True)
    with pytest.raises(ParameterError, match="format"):
        export_patches(ds, str(tmp_path / "new"), "tfrecords", field="pp")
    with pytest.raises(ParameterError, match="pad and square"):
        export_patches(ds, str(tmp_path / "new"), "coco", field="pp", pad=0.2)
    with pytest.raises(ParameterError, match="not a fo.Detections"):
        export_patches(ds, str(tmp_path / "new"), field="sal")
    assert not os.path.exists(tmp_path / "new")
    # a missing attribute skips its patches, with the reason
    report = export_patches(ds, str(tmp_path / "attr"), field="pp", label_attr="nope")
    assert report.exported == 0 and report.skipped_reasons == {
        "no class: the patch has no attribute 'nope'": N_IMAGES * N_PATCHES}
    assert len(report.skipped_examples) == N_IMAGES * N_PATCHES and "reason" in report.skipped_examples[0]


def test_export_operator(coco_patches, tmp_path):
    ds = coco_patches
    op = foo.get_operator("@xpatch/xpatch/export_patches")
    pv = runs.patches_view(ds, "pp").match(F("pp.rank") == 1)
    res = op(pv, str(tmp_path / "op"), format="coco")
    assert res.error is None, res.error
    rep = res.result["report"]
    assert rep["exported"] == N_IMAGES and rep["images"] == N_IMAGES and rep["format"] == "coco"
    assert "labels.json" in rep["files"]
    res = op(ds, str(tmp_path / "op2"), field="pp", label_attr="flagged", pad=0.1)
    assert res.error is None and res.result["report"]["classes"] == {"False": "False"}
    with pytest.raises(ExecutionError, match="not empty"):
        op(ds, str(tmp_path / "op2"), field="pp")
    with pytest.raises(ExecutionError, match="format"):
        op(ds, str(tmp_path / "op3"), format="yolo", field="pp")
    with pytest.raises(ExecutionError, match="field"):
        op(ds, str(tmp_path / "op3"), field="ground_truth_typo")


class _Ops:
    def set_progress(self, **kwargs):
        return ("progress", kwargs)

    def show_output(self, outputs, results):
        return ("output", outputs, results)


class _Ctx:
    """The parts of an App execution context the operators use."""

    def __init__(self, view, params):
        self.view, self.params, self.delegated, self.ops = view, params, False, _Ops()
        self.dataset = view._root_dataset

    def target_view(self):
        return self.view


def test_operator_forms_and_app_output(coco_patches, tmp_path):
    ds = coco_patches
    pv = runs.patches_view(ds, "pp").match(F("pp.rank") == 1)
    export = foo.get_operator("@xpatch/xpatch/export_patches")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    form = json.dumps(export.resolve_input(_Ctx(pv, {"export_dir": str(tmp_path / "full")})).to_json())
    assert "is not empty" in form and f"{N_IMAGES} patches of this patches view" in form
    form = json.dumps(export.resolve_input(_Ctx(ds, {"class_source": "attribute"})).to_json())
    assert "label_attr" in form and "rank" in form and "pad" in form
    assert "pad" not in json.dumps(export.resolve_input(_Ctx(ds, {"format": "coco"})).to_json())
    events = list(export.execute(_Ctx(pv, {"export_dir": str(tmp_path / "app"), "format": "imagefolder"})))
    assert events[0][0] == "progress" and events[-1][0] == "output"
    results = events[-1][2]
    assert f"Exported {N_IMAGES} of {N_IMAGES} patches" in results["result"] and str(tmp_path / "app") in results["result"]
    evaluate = foo.get_operator("@xpatch/xpatch/evaluate_patches")
    form = json.dumps(evaluate.resolve_input(_Ctx(ds, {})).to_json())
    assert "gt_field" in form and "ground_truth" in form and "radius" in form
    out = evaluate.execute(_Ctx(pv, {"gt_field": "ground_truth", "store": False}))
    assert out["patches"] == N_IMAGES and out["evaluation"]["view"] == "patches view"
    assert 0.0 <= out["hit_rate"] <= 1.0 and out["pointing_game"] is not None
    assert "pointing_game" in json.dumps(evaluate.resolve_output(_Ctx(ds, {})).to_json())
