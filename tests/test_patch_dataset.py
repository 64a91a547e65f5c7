"""Patch datasets on the real database: hand-made images with hand-computed
answers, real COCO photos with their annotations and instance masks, SAHI's
slicing as the reference for carrying boxes, FiftyOne's importers to read
every export back, and the App operator through ``execute_operator``."""

from __future__ import annotations

import json
import os
from collections import Counter

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from bson import ObjectId
from fiftyone.operators.executor import ExecutionError
from PIL import Image, ImageOps

import xpatch_core as xp
from xpatch_core import gt_carry
from xpatch_core.errors import ParameterError
from xpatch_core.patch_dataset import (
    EXPORT_FORMATS,
    INFO_KEY,
    export_patch_dataset,
    iter_make_patch_dataset,
    make_patch_dataset,
)
from xpatch_core.patch_files import MARKER
from xpatch_core.runs import detection_son, drive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dets(boxes, **common):
    return fo.Detections(detections=[fo.Detection(bounding_box=list(b), **{**common, **extra})
                                      for b, extra in boxes])


def _rel(box, W, H):
    x0, y0, x1, y1 = box
    return [x0 / W, y0 / H, (x1 - x0) / W, (y1 - y0) / H]


def _gradient(W, H):
    x = np.arange(W)[None, :].repeat(H, 0)
    y = np.arange(H)[:, None].repeat(W, 1)
    return np.stack([x % 256, y % 256, np.full_like(x, 128)], axis=2).astype(np.uint8)


def _files(root):
    out = []
    for dirpath, _, names in os.walk(root):
        out += [os.path.join(dirpath, n) for n in names]
    return sorted(out)


def _name(tag):
    return f"pds-{tag}-{ObjectId()}"


@pytest.fixture()
def made():
    """Deletes the datasets a test makes."""
    names: list[str] = []
    yield names
    for n in names:
        if fo.dataset_exists(n):
            fo.delete_dataset(n)


# -- a hand-made case ------------------------------------------------------------------------

W, H = 200, 100
A, B, C = (20, 10, 60, 50), (50, 40, 150, 90), (30, 60, 50, 100)  # cat, dog, dog
P, PAD, OUT = (40, 20, 100, 80), (-20, 60, 40, 120), (210, 0, 230, 20)


@pytest.fixture()
def hand(tmp_path):
    """A 200x100 PNG whose pixels encode their position, with three boxes,
    instance masks on one, a segmentation and three patches; and a JPEG
    (quality 80) stored sideways with EXIF orientation 6."""
    png = tmp_path / "src" / "grad.png"
    png.parent.mkdir()
    Image.fromarray(_gradient(W, H)).save(png)
    jpg = tmp_path / "src" / "rotated.jpg"
    stored = Image.fromarray(_gradient(H, W))  # 100 wide, 200 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(jpg, quality=80, exif=exif.tobytes())
    seg = np.zeros((H, W), np.uint8)
    seg[A[1]:A[3], A[0]:A[2]] = 1
    seg[B[1]:B[3], B[0]:B[2]] = 2
    ds = fo.Dataset()
    s1 = fo.Sample(filepath=str(png))
    s1["gt"] = _dets([(_rel(A, W, H), {"label": "cat", "mask": np.ones((40, 40), bool)}),
                      (_rel(B, W, H), {"label": "dog"}), (_rel(C, W, H), {"label": "dog"})])
    s1["seg"] = fo.Segmentation(mask=seg)
    s1["pp"] = _dets([(_rel(b, W, H), {"label": "thing", "score": 0.9 - k / 10, "rank": k + 1})
                      for k, b in enumerate((P, PAD, OUT))])
    s2 = fo.Sample(filepath=str(jpg))
    s2["gt"] = fo.Detections()
    s2["seg"] = fo.Segmentation(mask=np.zeros((H, W), np.uint8))
    s2["pp"] = _dets([(_rel((10, 10, 74, 74), W, H), {"label": "thing"})])
    ds.add_samples([s1, s2])
    ds.mask_targets = {"seg": {1: "cat", 2: "dog"}}
    ds.save()
    yield ds
    ds.delete()


def _by_rank(pd):
    return {s.rank: s for s in pd.match(fo.ViewField("rank") != None)}  # noqa: E711


def test_hand_computed_boxes_classes_and_pixels(hand, tmp_path, made):
    name = _name("hand")
    made.append(name)
    report = drive(iter_make_patch_dataset(hand, "pp", name, str(tmp_path / "out"), gt_field="gt"), False)
    pd = report.dataset
    assert report.added == 3 and report.skipped == 1 and report.padded == 1
    assert list(report.skipped_reasons) == ["patch box [210, 0, 230, 20] lies outside the 200x100 image"]
    s = _by_rank(pd)[1]
    assert s.source_box == list(P) and s.metadata.width == 60 and s.metadata.height == 60
    assert s.padded is False and s.valid_box == [0, 0, 60, 60] and s.score == pytest.approx(0.9)
    # cat: 600 of 1600 px inside (0.375); dog B: 2000 of 5000 (0.4); dog C: 200 of 800 (0.25)
    got = [(d.label, d.area_ratio, d.bounding_box) for d in s.gt.detections]
    assert [g[0] for g in got] == ["cat", "dog", "dog"]
    assert [g[1] for g in got] == pytest.approx([0.375, 0.4, 0.25])
    np.testing.assert_allclose(got[0][2], [0, 0, 20 / 60, 30 / 60])
    np.testing.assert_allclose(got[1][2], [10 / 60, 20 / 60, 50 / 60, 40 / 60])
    np.testing.assert_allclose(got[2][2], [0, 40 / 60, 10 / 60, 20 / 60])
    # the cat's all-ones mask is cut to its clipped box (20 x 30 px); the dogs have none
    assert s.gt.detections[0].mask.shape == (30, 20) and s.gt.detections[0].mask.all()
    assert s.gt.detections[1].mask is None
    # class: cat 600 px (its mask), dogs 2000 + 200 px of 3600 -> dog, coverage 0.611
    assert s.label.label == "dog" and s.label.coverage == pytest.approx(2200 / 3600)
    with Image.open(s.filepath) as img:
        assert img.format == "PNG" and img.size == (60, 60)
        crop = np.asarray(img)
    np.testing.assert_array_equal(crop, _gradient(W, H)[20:80, 40:100])
    # the padded patch: full 60 x 60 size, black outside the image; C half inside
    p = _by_rank(pd)[2]
    assert p.padded and p.valid_box == [20, 0, 60, 40] and p.source_box == list(PAD)
    with Image.open(p.filepath) as img:
        arr = np.asarray(img)
    assert arr.shape == (60, 60, 3) and not arr[:, :20].any() and not arr[40:].any()
    np.testing.assert_array_equal(arr[:40, 20:], _gradient(W, H)[60:100, 0:40])
    (d,) = p.gt.detections
    assert d.label == "dog" and d.area_ratio == pytest.approx(0.5)
    np.testing.assert_allclose(d.bounding_box, [50 / 60, 0, 10 / 60, 40 / 60])
    assert p.label.label == "background" and p.label.coverage == pytest.approx(400 / 3600)
    # the rotated JPEG: boxes in the displayed frame, JPEG crops with the source's tables
    (r,) = pd.match(fo.ViewField("source_filepath").ends_with("rotated.jpg"))
    with Image.open(r.source_filepath) as src, Image.open(r.filepath) as img:
        want = np.asarray(ImageOps.exif_transpose(src).convert("RGB").crop((10, 10, 74, 74)), np.float32)
        assert img.format == "JPEG" and img.size == (64, 64)
        assert img.quantization == src.quantization
        assert np.abs(np.asarray(img, np.float32) - want).mean() < 3.0
    assert r.gt.detections == [] and r.label.label == "background" and r.label.coverage == 0.0
    assert report.gt_kept == 4 and report.gt_dropped == 0
    # provenance and the marker
    assert {s.source_sample_id for s in pd} == set(hand.values("id"))
    assert set(pd.distinct("patch_id")) <= set(hand.values("pp.detections.id", unwind=True))
    assert set(pd.distinct("patches_field")) == {"pp"} and pd.info[INFO_KEY]["gt_field"] == "gt"
    with open(tmp_path / "out" / MARKER) as f:
        assert json.load(f)["dataset"] == name


@pytest.mark.parametrize("ratio, kept", [(0.0, ["cat", "dog", "dog"]), (0.1, ["cat", "dog", "dog"]),
                                         (0.25, ["cat", "dog", "dog"]), (0.3, ["cat", "dog"]), (0.38, ["dog"]),
                                         (0.4, ["dog"]), (0.41, [])])
def test_min_area_ratio_by_hand(hand, tmp_path, made, ratio, kept):
    name = _name("ratio")
    made.append(name)
    pd = make_patch_dataset(hand, "pp", name, str(tmp_path / "out"), "gt", ratio)
    assert [d.label for d in _by_rank(pd)[1].gt.detections] == kept


def test_min_coverage_and_background_label(hand, tmp_path, made):
    name = _name("cov")
    made.append(name)
    pd = make_patch_dataset(hand, "pp", name, str(tmp_path / "out"), "gt", min_coverage=0.62,
                            background_label="nothing")
    s = _by_rank(pd)[1]
    assert s.label.label == "nothing" and s.label.coverage == pytest.approx(2200 / 3600)
    assert set(pd.distinct("label.label")) == {"nothing"}


def test_segmentation_cropped_inline_and_as_files(hand, tmp_path, made):
    name = _name("seg")
    made.append(name)
    pd = make_patch_dataset(hand, "pp", name, str(tmp_path / "out"), "seg")
    s = _by_rank(pd)[1]
    full = hand.first().seg.mask
    np.testing.assert_array_equal(s.seg.mask, full[20:80, 40:100])
    # cat 500 px (100 px of it under the dog), dog 2000 px of 3600
    assert s.label.label == "dog" and s.label.coverage == pytest.approx(2000 / 3600)
    assert pd.mask_targets == {"seg": {1: "cat", 2: "dog"}}
    pad = _by_rank(pd)[2].seg.mask
    assert pad.shape == (60, 60) and not pad[:, :20].any() and not pad[40:].any()
    # masks stored as files stay files: PNG crops under the output folder
    first = hand.first()
    path = tmp_path / "seg.png"
    Image.fromarray(full).save(path)
    first.seg = fo.Segmentation(mask_path=str(path))
    first.save()
    name2 = _name("segfile")
    made.append(name2)
    pd2 = make_patch_dataset(hand, "pp", name2, str(tmp_path / "out2"), "seg")
    s2 = _by_rank(pd2)[1]
    assert s2.seg.mask is None and s2.seg.mask_path.startswith(str(tmp_path / "out2" / "masks" / "seg"))
    np.testing.assert_array_equal(np.asarray(Image.open(s2.seg.mask_path)), full[20:80, 40:100])


def test_image_classification_is_each_patch_class(hand, tmp_path, made):
    s1, s2 = hand
    s1["cls"] = fo.Classification(label="kitchen", confidence=0.9)
    s1.save()
    s2["cls"] = fo.Classification(label="street")
    s2.save()
    name = _name("cls")
    made.append(name)
    pd = make_patch_dataset(hand, "pp", name, str(tmp_path / "out"), "cls")
    assert pd.count_values("label.label") == {"kitchen": 2, "street": 1}
    assert sorted(pd.values("cls.confidence"), key=str) == [0.9, 0.9, None]
    assert pd.get_field_schema()["cls"].document_type is fo.Classification


def test_without_ground_truth_the_patch_label_is_kept(hand, tmp_path, made):
    name = _name("plain")
    made.append(name)
    pd = make_patch_dataset(hand, "pp", name, str(tmp_path / "out"))
    assert pd.count_values("label.label") == {"thing": 3} and "gt" not in pd.get_field_schema()
    assert pd.info[INFO_KEY]["gt_kind"] is None


# -- the classification rule on hand-made cases ------------------------------------------


def test_classification_rule():
    # union of a class's objects; the largest share wins if above the threshold
    cov = gt_carry.class_coverage(["dog", "dog", "cat"], [(0, 0, 5, 10), (5, 0, 10, 10), (0, 0, 10, 4)],
                                  [None, None, None], (10, 10))
    assert cov == {"dog": 1.0, "cat": 0.4}
    assert gt_carry.classify_patch(cov, 0.5, "bg") == ("dog", 1.0)
    # masks count their pixels, not their boxes
    mask = np.zeros((10, 10), bool)
    mask[:3] = True
    cov = gt_carry.class_coverage(["cat"], [(0, 0, 10, 10)], [mask], (10, 10))
    assert cov == {"cat": 0.3} and gt_carry.classify_patch(cov, 0.5, "bg") == ("bg", 0.3)
    # a tie goes to the name first in order, whatever the input order
    assert gt_carry.classify_patch({"b": 0.5, "a": 0.5}, 0.5, "bg") == ("a", 0.5)
    assert gt_carry.classify_patch({}, 0.0, "bg") == ("bg", 0.0)
    assert gt_carry.classify_patch({"a": 0.0}, 0.0, "bg") == ("bg", 0.0)
    # segmentation: value 0 is background; RGB masks by colour
    seg = np.zeros((4, 4), np.uint8)
    seg[:3, :3] = 7
    assert gt_carry.segmentation_class(seg, {7: "tree"}, 0.5, "bg") == ("tree", 9 / 16)
    assert gt_carry.segmentation_class(seg, None, 0.6, "bg") == ("bg", 9 / 16)
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0] = (255, 0, 0)
    assert gt_carry.segmentation_class(rgb, {"#ff0000": "red"}, 0.5, "bg") == ("red", 0.5)


def test_box_rule_matches_sahi_on_edge_cases():
    from sahi.slicing import process_coco_annotations
    from sahi.utils.coco import CocoAnnotation

    # the last two: SAHI compares whole-pixel areas (int-truncated), so an exact ratio of 0.25 (9.75 / 39)
    # counts as 9 / 39, and a 0.64 px2 overlap of a 2.56 px2 object as none
    boxes = np.array([[0, 0, 10, 10], [8, 8, 20, 20], [10, 0, 20, 10], [9.5, 9.5, 30, 30], [2, 2, 4, 4],
                      [7.5, 0, 17.5, 3.9], [9.2, 9.2, 10.8, 10.8]], float)
    anns = [CocoAnnotation.from_coco_bbox([x0, y0, x1 - x0, y1 - y0], k, str(k))
            for k, (x0, y0, x1, y1) in enumerate(boxes)]
    kept = []
    for ratio in (0.0, 0.01, 0.1, 0.2, 0.25, 0.5, 1.0):
        ours = gt_carry.carry_boxes(boxes, (0, 0, 10, 10), ratio)
        kept.append({c.index for c in ours})
        theirs = process_coco_annotations(anns, [0, 0, 10, 10], ratio)
        assert [c.index for c in ours] == [a.category_id for a in theirs]
        for c, a in zip(ours, theirs):
            x0, y0, x1, y1 = c.box
            np.testing.assert_allclose([x0, y0, x1 - x0, y1 - y0], a.bbox, atol=1e-9)
    assert 6 in kept[0] and 6 not in kept[1]  # 0.64 px2 of 2.56: kept only while the ratio asked is 0
    assert 5 in kept[3] and 5 not in kept[4]  # 9 / 39 = 0.23, though the exact share is 0.25


def test_patch_dataset_keeps_boxes_as_sahi_counts_them(tmp_path, made):
    """Through make_patch_dataset: a box with an exact share of 0.25 in the patch, 9 / 39 in whole pixels."""
    img = tmp_path / "small.png"
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(img)
    ds = fo.Dataset()
    ds.add_sample(fo.Sample(filepath=str(img), gt=_dets([(_rel((7.5, 0, 17.5, 3.9), 64, 48), {"label": "cup"})]),
                            pp=_dets([(_rel((0, 0, 10, 10), 64, 48), {"label": "thing"})])))
    try:
        for ratio, carried in ((0.2, 1), (0.25, 0)):
            name = _name(f"whole{ratio}")
            made.append(name)
            report = drive(iter_make_patch_dataset(ds, "pp", name, str(tmp_path / str(ratio)), gt_field="gt",
                                                   min_area_ratio=ratio), False)
            dets = fo.load_dataset(name).first().gt.detections
            assert len(dets) == carried and report.gt_dropped == 1 - carried
            if carried:
                assert dets[0].area_ratio == pytest.approx(0.25)  # the exact share is what is stored
    finally:
        ds.delete()


# -- incremental runs and the output folder ----------------------------------------------


def test_incremental_rerun_adds_only_new_patches(hand, tmp_path, made):
    name = _name("incr")
    made.append(name)
    out = str(tmp_path / "out")
    first_only = hand.to_patches("pp").match(fo.ViewField("pp.rank") == 1)
    r1 = drive(iter_make_patch_dataset(first_only, None, name, out, gt_field="gt"), False)
    assert r1.added == 1 and r1.total == 1 and len(_files(out)) == 2  # crop + marker
    r2 = drive(iter_make_patch_dataset(hand, "pp", name, out, gt_field="gt"), False)
    assert r2.added == 2 and r2.already == 1 and r2.total == 3 and r2.skipped == 1
    r3 = drive(iter_make_patch_dataset(hand, "pp", name, out, gt_field="gt"), False)
    assert r3.added == 0 and r3.already == 3 and r3.total == 3 and r3.files_written == 0
    assert len(fo.load_dataset(name).distinct("patch_id")) == 3 == len(_files(out)) - 1
    # other settings on the same dataset are refused, before any work
    with pytest.raises(ParameterError, match="other settings: min_area_ratio"):
        make_patch_dataset(hand, "pp", name, out, "gt", 0.5)


def test_output_folder_and_name_refusals(hand, tmp_path, made):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    name = _name("refuse")
    with pytest.raises(ParameterError, match="not empty and was not made by make_patch_dataset"):
        make_patch_dataset(hand, "pp", name, str(foreign))
    assert not fo.dataset_exists(name) and os.listdir(foreign) == ["notes.txt"]
    made.append(name)
    make_patch_dataset(hand, "pp", name, str(tmp_path / "a"))
    other = _name("other")
    with pytest.raises(ParameterError, match=f"holds the patch dataset '{name}'"):
        make_patch_dataset(hand, "pp", other, str(tmp_path / "a"))
    assert not fo.dataset_exists(other)
    with pytest.raises(ParameterError, match="other settings: output_dir"):
        make_patch_dataset(hand, "pp", name, str(tmp_path / "b"))
    plain = fo.Dataset(_name("plain"))
    made.append(plain.name)
    with pytest.raises(ParameterError, match="was not made by make_patch_dataset"):
        make_patch_dataset(hand, "pp", plain.name, str(tmp_path / "c"))
    with pytest.raises(ParameterError, match="other than its source"):
        make_patch_dataset(hand, "pp", hand.name, str(tmp_path / "d"))


def test_a_link_leaving_the_output_folder_is_refused(hand, tmp_path, made):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    name = _name("link")
    (out / MARKER).write_text(json.dumps({"dataset": name}))
    made.append(name)
    os.symlink(outside, out / "images")
    report = drive(iter_make_patch_dataset(hand, "pp", name, str(out)), False)
    assert report.added == 0 and os.listdir(outside) == []
    links = {r: n for r, n in report.skipped_reasons.items() if "is a link or lies outside" in r}
    assert sum(links.values()) == 3 and report.skipped == 4  # the fourth lies outside its image


# -- bad input ------------------------------------------------------------------------------


def test_bad_ground_truth_and_labels(hand, tmp_path, made):
    hand.add_sample_field("kp", fo.EmbeddedDocumentField, embedded_doc_type=fo.Keypoints)
    for field, match in (("kp", "holds Keypoints; expected"), ("nope", "does not exist"),
                         ("pp", "must differ from the patches field")):
        with pytest.raises(ParameterError, match=match):
            make_patch_dataset(hand, "pp", _name("bad"), str(tmp_path / field), field)
        assert not os.path.exists(tmp_path / field)
    for kwargs, match in (({"background_label": "../up"}, "background_label"), ({"min_area_ratio": 1.5}, "in \\[0"),
                          ({"image_format": "gif"}, "image_format"), ({"fill": 300}, "fill")):
        with pytest.raises(ParameterError, match=match):
            make_patch_dataset(hand, "pp", _name("bad"), str(tmp_path / "x"), "gt", **kwargs)
    # ground truth missing on one sample, a label with path characters on the other, a box outside
    s1, s2 = hand.select_fields("gt").head(2)
    s2.gt = None
    s2.save()
    s1 = hand.first()
    s1.gt.detections[1].label = "../../etc"
    s1.gt.detections.append(fo.Detection(label="ok", bounding_box=[1.2, 0.0, 0.1, 0.1]))
    s1.save()
    name = _name("badgt")
    made.append(name)
    report = drive(iter_make_patch_dataset(hand, "pp", name, str(tmp_path / "out"), gt_field="gt"), False)
    assert report.added == 0 and report.failed == 2
    reasons = sorted(f["reason"] for f in report.failures)
    assert "holds path or control characters" in reasons[0]
    assert reasons[1].startswith("no ground truth in 'gt'")
    assert _files(tmp_path / "out") == [str(tmp_path / "out" / MARKER)]
    s1.gt.detections[1].label = "dog"
    s1.save()
    report = drive(iter_make_patch_dataset(hand, "pp", name, str(tmp_path / "out"), gt_field="gt"), False)
    assert report.added == 2 and report.failed == 1 and report.gt_invalid == 1


def test_unreadable_image_fails_its_sample(hand, tmp_path, made):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    s = fo.Sample(filepath=str(bad), pp=_dets([([0.1, 0.1, 0.2, 0.2], {"label": "x"})]))
    hand.add_sample(s)
    name = _name("broken")
    made.append(name)
    report = drive(iter_make_patch_dataset(hand, "pp", name, str(tmp_path / "out")), False)
    assert report.failed == 1 and report.failures[0]["filepath"] == str(bad)
    assert report.failures[0]["reason"].startswith("cannot decode")
    assert report.added == 3 and "1 source images failed" in report.summary()


# -- the stored documents equal FiftyOne's ---------------------------------------------------


def test_documents_equal_those_add_samples_writes(hand, tmp_path, made):
    name = _name("docs")
    made.append(name)
    pd = make_patch_dataset(hand, "pp", name, str(tmp_path / "out"), "gt")
    sample = _by_rank(pd)[1]
    other = fo.Dataset()
    try:
        other.add_sample(fo.Sample.from_dict(sample.to_dict()), dynamic=True)
        skip = {"_id", "_dataset_id", "created_at", "last_modified_at", "_rand"}
        ours = pd._sample_collection.find_one({"_id": ObjectId(sample.id)})
        theirs = other._sample_collection.find_one({})
        assert {k: v for k, v in ours.items() if k not in skip} == {k: v for k, v in theirs.items() if k not in skip}
        assert 0.999 <= ours["_rand"] <= 1.0 and ours["_dataset_id"] == pd._doc.id
        # and the schema declares what the App filters on
        schema = pd.get_field_schema(flat=True)
        for path in ("label.coverage", "gt.detections.area_ratio", "gt.detections.source_id", "source_box"):
            assert path in schema
    finally:
        other.delete()


# -- real COCO photos ------------------------------------------------------------------------


def _coco(coco_dir, n):
    ds = fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset,
                             data_path=os.path.join(coco_dir, "images"),
                             labels_path=os.path.join(coco_dir, "annotations.json"),
                             label_field="ground_truth", max_samples=n, shuffle=False, progress=False)
    ds.compute_metadata(progress=False)
    return ds


def _cheap_patches(ds, field="pp", n=12):
    """Patches drawn by xpatch's sampler from a cheap map (brightness)."""
    values = {}
    for sid, path, w, h in zip(*ds.values(["id", "filepath", "metadata.width", "metadata.height"])):
        with Image.open(path) as img:
            m = np.asarray(ImageOps.exif_transpose(img).convert("L").resize((16, 16)), np.float64)
        # keyed by the file name, not the sample id: the same boxes on every run
        ps = xp.sample_patches(m, (w, h), n, 96, seed=0, key=os.path.basename(path), scales=(1.0, 1.5),
                               aspect_ratios=(1.0, 2.0),
                               max_iou=0.5)
        values[sid] = {"_cls": "Detections", "detections": [
            detection_son(label="patch", bounding_box=[float(v) for v in ps.rel_boxes[k]],
                          score=float(ps.scores[k]), rank=k + 1) for k in range(len(ps))]}
    first = next(iter(values))
    ds.set_values(field, {first: fo.Detections(detections=[fo.Detection.from_dict(d)
                                                           for d in values[first]["detections"]])},
                  key_field="id", dynamic=True)
    ds.set_values(field, {k: v for k, v in values.items() if k != first}, key_field="id", validate=False)


@pytest.fixture(scope="module")
def coco(coco_dir):
    ds = _coco(coco_dir, 8)
    _cheap_patches(ds)
    yield ds
    ds.delete()


def _placed(mask, rel_box, size):
    """A detection's mask placed on a ``size`` frame at gt_carry.mask_origin of its box."""
    W, H = size
    x, y, w, h = rel_box
    c0, r0, c1, r1 = gt_carry.mask_origin((x * W, y * H, (x + w) * W, (y + h) * H))
    m = np.asarray(mask).astype(bool)
    assert m.shape == (r1 - r0, c1 - c0), (m.shape, (r1 - r0, c1 - c0))
    out = np.zeros((H, W), bool)
    out[r0:r1, c0:c1] = m
    return out


def test_instance_masks_match_fiftyones_rendering(coco, tmp_path, made):
    """Every carried mask is its source mask cut exactly at the patch (both at
    the corners rounded half up, as FiftyOne's COCO importer cuts them); and
    FiftyOne's own rendering (``to_segmentation``, which truncates corners and
    resizes a mask whose shape is off by a pixel) of the patch agrees with its
    rendering of the whole image up to that rendering's own error."""
    name = _name("masks")
    made.append(name)
    pd = make_patch_dataset(coco, "pp", name, str(tmp_path / "out"), "ground_truth_segmentations", 0.0)
    sources = {s.id: s for s in coco}
    compared = exact_off = fo_off = fo_own = carried = 0
    for s in pd.match(fo.ViewField("ground_truth_segmentations.detections").length() > 0):
        src = sources[s.source_sample_id]
        size = (src.metadata.width, src.metadata.height)
        x0, y0, x1, y1 = s.source_box
        by_id = {d.id: d for d in src.ground_truth_segmentations.detections}
        for d in s.ground_truth_segmentations.detections:
            sd = by_id[d.source_id]
            placed = _placed(sd.mask, sd.bounding_box, size)[y0:y1, x0:x1]
            ours = _placed(d.mask, d.bounding_box, (x1 - x0, y1 - y0))
            exact_off += int((ours != placed).sum())
            whole = sd.to_segmentation(frame_size=size).mask[y0:y1, x0:x1] > 0
            got = d.to_segmentation(frame_size=(x1 - x0, y1 - y0)).mask > 0
            fo_off += int((whole != got).sum())
            fo_own += int((whole != placed).sum())
            compared += placed.size
            carried += 1
    assert carried >= 20, carried
    assert exact_off == 0, exact_off
    # measured here: FiftyOne's renders differ on ~0.2% of the pixels, less
    # than its whole-image render differs from the mask as cut (~0.4%)
    assert 0 < compared and fo_off / compared < 0.005 and fo_off <= fo_own, (fo_off, fo_own, compared)


def test_every_export_format_reads_back(coco, tmp_path, made):
    name = _name("export")
    made.append(name)
    pd = make_patch_dataset(coco, "pp", name, str(tmp_path / "crops"), "ground_truth_detections", 0.2)
    n = len(pd)
    assert n == coco.count("pp.detections") and n > 50
    labels = {os.path.basename(s.filepath): s.label.label for s in pd}
    boxes = {os.path.basename(s.filepath): sorted((d.label, *np.round(d.bounding_box, 3))
                                                  for d in s.ground_truth_detections.detections) for s in pd}
    read = {}
    for fmt in EXPORT_FORMATS:
        folder = tmp_path / fmt
        done = export_patch_dataset(pd, str(folder), fmt)
        assert done["samples"] == n and done["files"] > 0
        dtype = getattr(fo.types, EXPORT_FORMATS[fmt][0])
        if fmt == "coco":
            back = fo.Dataset.from_dir(dataset_type=dtype, data_path=str(folder / "data"),
                                       labels_path=str(folder / "labels.json"), label_types="detections",
                                       label_field="gt", progress=False)
        elif fmt == "yolov5":
            back = fo.Dataset.from_dir(dataset_dir=str(folder), dataset_type=dtype, split="val",
                                       label_field="gt", progress=False)
        else:
            back = fo.Dataset.from_dir(dataset_dir=str(folder), dataset_type=dtype, label_field="gt",
                                       progress=False)
        read[fmt] = back
    try:
        for fmt in ("imagefolder", "fiftyone-classification"):
            got = {os.path.basename(s.filepath): s.gt.label for s in read[fmt]}
            assert got == labels, fmt
        for fmt in ("coco", "yolov5"):
            back = read[fmt]
            assert len(back) == n
            for s in back:
                dets = s.gt.detections if s.gt is not None else []
                got = sorted((d.label, *np.round(d.bounding_box, 3)) for d in dets)
                want = boxes[os.path.basename(s.filepath)]
                assert [g[0] for g in got] == [w[0] for w in want], fmt
                np.testing.assert_allclose([g[1:] for g in got] or np.zeros((0, 4)),
                                           [w[1:] for w in want] or np.zeros((0, 4)), atol=0.02)
        full = read["fiftyone"]
        assert len(full) == n and full.info[INFO_KEY]["gt_field"] == "ground_truth_detections"
        a = full.sort_by("patch_id").values(["patch_id", "source_box", "label.label", "label.coverage"])
        b = pd.sort_by("patch_id").values(["patch_id", "source_box", "label.label", "label.coverage"])
        assert a == b
    finally:
        for back in read.values():
            back.delete()
    with pytest.raises(ParameterError, match="not an empty folder"):
        export_patch_dataset(pd, str(tmp_path / "coco"), "coco")


def test_yolo_and_coco_need_ground_truth_detections(hand, tmp_path, made):
    name = _name("nogt")
    made.append(name)
    pd = make_patch_dataset(hand, "pp", name, str(tmp_path / "out"), "seg")
    for fmt in ("coco", "yolov5"):
        with pytest.raises(ParameterError, match="needs ground-truth detections"):
            export_patch_dataset(pd, str(tmp_path / fmt), fmt)


# -- equivalence with SAHI on real photos at xpatch's own patches -------------------------


RATIOS = (0.1, 0.3, 0.6, 0.9)


@pytest.fixture(scope="module")
def coco_run(coco_dir, xception):
    from xpatch_core import runs

    ds = _coco(coco_dir, 16)
    runs.run_saliency(ds, "sal", xception, "activation")
    runs.run_patches(ds, "sal", "patches", n=16, size=96, scales=(1.0, 2.0), aspect_ratios=(1.0, 2.0), seed=0)
    yield ds
    ds.delete()


def test_same_annotations_and_boxes_as_sahi(coco_run, tmp_path, made):
    from sahi.slicing import process_coco_annotations
    from sahi.utils.coco import CocoAnnotation
    from sahi.utils.cv import read_image_as_pil

    ds = coco_run
    anns, sizes = {}, {}
    for s in ds:
        W, H = s.metadata.width, s.metadata.height
        sizes[s.id] = (W, H)
        anns[s.id] = [CocoAnnotation.from_coco_bbox([x * W, y * H, w * W, h * H], k, d.label, int(d.iscrowd or 0))
                      for k, d in enumerate(s.ground_truth_detections.detections)
                      for x, y, w, h in [d.bounding_box]]
    kept_per_ratio = []
    for ratio in RATIOS:
        name = _name(f"sahi{ratio}")
        made.append(name)
        report = drive(iter_make_patch_dataset(ds, "patches", name, str(tmp_path / str(ratio)),
                                               gt_field="ground_truth_detections", min_area_ratio=ratio), False)
        assert report.failed == 0 and report.skipped == 0 and report.gt_clipped == 0
        pairs = kept = 0
        worst = 0.0
        for s in report.dataset.select_fields(["source_sample_id", "source_box", "ground_truth_detections"]):
            x0, y0, x1, y1 = s.source_box
            theirs = process_coco_annotations(anns[s.source_sample_id], [x0, y0, x1, y1], ratio)
            ours = s.ground_truth_detections.detections
            pairs += len(anns[s.source_sample_id])
            assert [d.label for d in ours] == [a.category_name for a in theirs]
            pw, ph = x1 - x0, y1 - y0
            for d, a in zip(ours, theirs):
                x, y, w, h = d.bounding_box
                diff = np.abs(np.array([x * pw, y * ph, w * pw, h * ph]) - np.array(a.bbox)).max()
                worst = max(worst, float(diff))
                assert d.iscrowd == a.iscrowd
            kept += len(ours)
        assert worst < 1.0
        kept_per_ratio.append(kept)
        print(f"SAHI min_area_ratio={ratio}: {len(report.dataset)} patches x {pairs} annotation pairs compared, "
              f"{kept} kept by both, largest box difference {worst:.2e} px")
    # the thresholds matter on these patches: fewer annotations kept as the ratio grows
    assert all(a > b for a, b in zip(kept_per_ratio, kept_per_ratio[1:])), kept_per_ratio
    # and the crops are SAHI's crops (JPEG re-encoded with the source's own tables)
    pd = fo.load_dataset(made[0])
    diffs = []
    for s in pd.limit(30):
        x0, y0, x1, y1 = s.source_box
        sahi_crop = np.asarray(read_image_as_pil(s.source_filepath, exif_fix=True), np.float32)[y0:y1, x0:x1]
        with Image.open(s.filepath) as img:
            diffs.append(np.abs(np.asarray(img.convert("RGB"), np.float32) - sahi_crop).mean())
    assert max(diffs) < 3.0, max(diffs)


# -- the App operator ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def make_op_uri():
    """The operator's URI in the xpatch plugin."""
    return "@xpatch/xpatch/make_patch_dataset"


def test_operator_makes_the_dataset_and_validates(coco, tmp_path, made, make_op_uri):
    op = foo.get_operator(make_op_uri)
    name = _name("op")
    made.append(name)
    result = op(coco, name, str(tmp_path / "out"), "pp", "ground_truth_detections", min_area_ratio=0.3,
                background_label="nothing")
    assert result.error is None, result.error
    report = result.result["report"]
    assert report["added"] == coco.count("pp.detections") == len(fo.load_dataset(name))
    assert report["gt_field"] == "ground_truth_detections" and "nothing" in report["classes"]
    pd = fo.load_dataset(name)
    assert pd.info[INFO_KEY]["min_area_ratio"] == 0.3
    assert Counter(pd.values("label.label")) == Counter(report["classes"])
    # every parameter is checked on the server
    for params, match in (({"gt_field": "filepath"}, "gt_field"), ({"min_area_ratio": 2}, "min_area_ratio"),
                          ({"background_label": "a/b"}, "background_label"), ({"name": ""}, "name"),
                          ({"image_format": "bmp"}, "image_format"), ({"patches_field": "nope"}, "patches_field"),
                          ({"gt_field": "ground_truth_detections", "min_coverage": -1}, "min_coverage"),
                          ({"open_dataset": "yes"}, "open_dataset")):
        base = {"name": _name("op"), "output_dir": str(tmp_path / "bad"), "patches_field": "pp",
                "return_report": True}
        try:  # FiftyOne's own form validation raises; the operator's returns the error
            error = foo.execute_operator(make_op_uri, {"view": coco.view(), "params": {**base, **params}}).error
        except ExecutionError as e:
            error = str(e)
        assert error is not None and match in str(error), (params, error)
    assert not os.path.exists(tmp_path / "bad")


def test_operator_parameters_are_checked_on_the_server(coco):
    """The same checks without FiftyOne's form validation in front (as a
    scheduled run or another client would reach them)."""
    from types import SimpleNamespace

    from plugin.dataset_ops import dataset_params

    base = {"name": "x", "output_dir": "/tmp/x", "patches_field": "pp"}
    ok = dataset_params(SimpleNamespace(params=base, dataset=coco, target_view=lambda: coco.view()))
    assert ok["patches_field"] == "pp" and ok["gt_field"] is None and ok["min_area_ratio"] == 0.1
    for params, match in (({"gt_field": "filepath"}, "gt_field"), ({"min_area_ratio": "2"}, "min_area_ratio"),
                          ({"min_area_ratio": float("nan")}, "finite"), ({"background_label": ".."}, "background"),
                          ({"name": None}, "name is required"), ({"output_dir": ""}, "output_dir is required"),
                          ({"image_format": "bmp"}, "image_format"), ({"patches_field": "nope"}, "patches_field"),
                          ({"name": "a\x01b"}, "control characters"), ({"open_dataset": 1}, "open_dataset")):
        ctx = SimpleNamespace(params={**base, **params}, dataset=coco, target_view=lambda: coco.view())
        with pytest.raises(ParameterError, match=match):
            dataset_params(ctx)


def test_operator_form(coco, tmp_path):
    from types import SimpleNamespace

    from plugin.dataset_ops import MakePatchDataset

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("x")
    op = MakePatchDataset()
    params = {"output_dir": str(taken), "gt_field": "ground_truth_detections", "patches_field": "pp"}
    ctx = SimpleNamespace(params=params, dataset=coco, target_view=lambda: coco.view())
    form = op.resolve_input(ctx).to_json()
    props = form["type"]["properties"]
    assert "pp" in props["patches_field"]["type"]["values"]
    assert "ground_truth_detections" in props["gt_field"]["type"]["values"]
    assert props["output_dir"]["invalid"] and "is not empty" in props["output_dir"]["error_message"]
    assert {"min_area_ratio", "min_coverage", "background_label", "name", "open_dataset"} <= set(props)
    patches = coco.to_patches("pp")
    ctx = SimpleNamespace(params={}, dataset=coco, target_view=lambda: patches)
    props = op.resolve_input(ctx).to_json()["type"]["properties"]
    assert "patches_field" not in props and "source" in props and "min_area_ratio" not in props
