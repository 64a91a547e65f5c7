"""``xpatch patch-dataset``, run as a user would (the console script, in a subprocess)."""

from __future__ import annotations

import os

import fiftyone as fo
import numpy as np
import pytest
from bson import ObjectId
from PIL import Image, ImageOps

import xpatch_core as xp
from tests.cli_run import xpatch as _xpatch


@pytest.fixture()
def source(coco_dir):
    """Four COCO photos with their boxes and patches drawn by xpatch's
    sampler from a cheap map; persistent, so the command sees it."""
    ds = fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset,
                             data_path=os.path.join(coco_dir, "images"),
                             labels_path=os.path.join(coco_dir, "annotations.json"), label_types="detections",
                             label_field="gt", max_samples=4, shuffle=False, progress=False)
    ds.persistent = True
    ds.compute_metadata(progress=False)
    for s in ds:
        with Image.open(s.filepath) as img:
            m = np.asarray(ImageOps.exif_transpose(img).convert("L").resize((16, 16)), np.float64)
        ps = xp.sample_patches(m, (s.metadata.width, s.metadata.height), 6, 128, seed=0, key=os.path.basename(s.filepath))
        s["pp"] = fo.Detections(detections=[fo.Detection(label="patch", bounding_box=list(map(float, b)),
                                                         score=float(v)) for b, v in zip(ps.rel_boxes, ps.scores)])
        s.save()
    yield ds
    ds.delete()


def test_patch_dataset_command(source, tmp_path):
    name = f"cli-pds-{ObjectId()}"
    out = tmp_path / "crops"
    try:
        run = _xpatch("patch-dataset", source.name, "--patches-field", "pp", "--name", name, "--out", str(out),
                      "--gt-field", "gt", "--min-area-ratio", "0.2", "--background", "bg",
                      "--export", f"coco:{tmp_path / 'coco'}", "--export", f"imagefolder:{tmp_path / 'tree'}")
        assert run.returncode == 0, run.stderr[-3000:]
        text = run.stdout
        assert f"patch dataset '{name}': 24 patches; 24 added now from 4 images, 0 already there" in text
        assert f"crops in {out} (24 files written" in text and "boxes carried" in text
        assert f"exported 24 samples as coco (gt) to {tmp_path / 'coco'}" in text
        assert f"exported 24 samples as imagefolder (label) to {tmp_path / 'tree'}" in text
        assert "<" not in text and "Report(" not in text  # counts and paths, not reprs
        pd = fo.load_dataset(name)
        assert len(pd) == 24 and pd.persistent and pd.info["xpatch_patch_dataset"]["min_area_ratio"] == 0.2
        assert set(pd.distinct("label.label")) <= set(source.distinct("gt.detections.label")) | {"bg"}
        back = fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset, data_path=str(tmp_path / "coco" / "data"),
                                   labels_path=str(tmp_path / "coco" / "labels.json"), label_types="detections",
                                   progress=False)
        try:
            assert len(back) == 24
        finally:
            back.delete()
        # again: nothing new; the same folder is accepted because it is this dataset's
        again = _xpatch("patch-dataset", source.name, "--patches-field", "pp", "--name", name, "--out", str(out),
                        "--gt-field", "gt", "--min-area-ratio", "0.2", "--background", "bg")
        assert again.returncode == 0 and "0 added now from 0 images, 24 already there" in again.stdout
        # usage errors: a clear line, exit status 2, nothing made
        for args, message in (
            (["no-such-dataset", "--name", "x", "--out", str(tmp_path / "x")], "dataset not found: no-such-dataset"),
            ([source.name, "--patches-field", "pp", "--name", "y", "--out", str(tmp_path / "y"), "--export", "tar:z"],
             "expected FORMAT:DIR"),
            ([source.name, "--patches-field", "pp", "--name", "z", "--out", str(out)], "holds the patch dataset"),
            ([source.name, "--patches-field", "pp", "--name", "w", "--out", str(tmp_path / "w"), "--gt-field",
              "filepath"], "expected fo.Detections"),
            # export folders refused before any crop is written (were: after the whole dataset was made)
            ([source.name, "--patches-field", "pp", "--name", "v", "--out", str(tmp_path / "v"), "--export",
              f"coco:{tmp_path / 'coco'}"], "exists and is not an empty folder"),
            ([source.name, "--patches-field", "pp", "--name", "u", "--out", str(tmp_path / "u"), "--export",
              f"coco:{tmp_path / 'u' / 'exp'}"], "lies inside --out"),
        ):
            bad = _xpatch("patch-dataset", *args)
            assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr[-2000:])
            assert "Traceback" not in bad.stderr
        assert not any(fo.dataset_exists(n) for n in ("x", "y", "z", "w", "v", "u"))
        assert not (tmp_path / "v").exists() and not (tmp_path / "u").exists()
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_help_lists_the_command():
    out = _xpatch("patch-dataset", "--help")
    assert out.returncode == 0
    for word in ("--gt-field", "--min-area-ratio", "--background", "--export", "yolov5", "SAHI"):
        assert word in out.stdout
