"""``xpatch curate``, run as a user would (the console script, in a subprocess), with real
Xception weights on the kitchenware photos."""

from __future__ import annotations

import os
import shutil

import fiftyone as fo
import numpy as np
import pytest
from bson import ObjectId
from PIL import Image, ImageOps

import xpatch_core as xp
from tests.cli_run import xpatch as _xpatch


@pytest.fixture()
def source(tmp_path):
    """Three kitchenware photos and an exact copy of the first (a file of its own) with the same
    patch boxes; persistent, so the command sees it."""
    from xpatch_core.offline import kitchenware_images

    photos = kitchenware_images()[:3]
    copy = tmp_path / "copy.jpg"
    shutil.copyfile(photos[0], copy)
    ds = fo.Dataset(f"curate-cli-{ObjectId()}")
    ds.persistent = True
    ds.add_samples([fo.Sample(filepath=p) for p in [*photos, str(copy)]])
    ds.compute_metadata(progress=False)
    first = None
    for s in ds:
        if s.filepath == str(copy):
            boxes = [(b, v * 0.5) for b, v in first]  # the copy scores lower: the original is kept
        else:
            with Image.open(s.filepath) as img:
                m = np.asarray(ImageOps.exif_transpose(img).convert("L").resize((16, 16)), np.float64)
            ps = xp.sample_patches(m, (s.metadata.width, s.metadata.height), 6, 160, seed=0, key=os.path.basename(s.filepath))
            boxes = [(list(map(float, b)), float(v)) for b, v in zip(ps.rel_boxes, ps.scores)]
            first = first or boxes
        s["pp"] = fo.Detections(detections=[fo.Detection(label="patch", bounding_box=b, confidence=v)
                                            for b, v in boxes])
        s.save()
    yield ds, str(copy)
    ds.delete()


def test_curate_command(source, xception_weights):
    ds, copy = source
    total = ds.count("pp.detections")
    assert total > 12
    view = f"diverse-{ObjectId()}"
    run = _xpatch("curate", ds.name, "--patches-field", "pp", "--weights", xception_weights, "--duplicates", "0.05", "--diverse", "5",
                  "--view-name", view, "--similarity", "--map")
    assert run.returncode == 0, run.stderr[-3000:]
    text = run.stdout
    assert "embeddings of 'pp': 4 processed, 0 already done, 0 failed" in text
    assert "<" not in text and "Summary(" not in text  # counts and paths, not reprs
    ds.reload()
    assert ds.count("pp.detections.embedding") == total
    vec = np.asarray(ds.first().pp.detections[0].embedding)
    assert vec.ndim == 1 and vec.size > 100 and np.isfinite(vec).all()

    # the copy's patches are exact duplicates of the original's, which score higher and are kept
    orig, dup = ds.first(), ds.match(fo.ViewField("filepath") == copy).first()
    orig_tags = [d.tags for d in orig.pp.detections]
    dup_tags = [d.tags for d in dup.pp.detections]
    assert all("xpatch:duplicate" in t for t in dup_tags), dup_tags
    assert not any("xpatch:duplicate" in t for t in orig_tags), orig_tags
    tagged = ds.count_label_tags().get("xpatch:duplicate", 0)
    assert tagged >= len(dup_tags) and f"near-duplicates: {tagged} of {total} patches tagged xpatch:duplicate" in text

    # five diverse patches, none of them a duplicate, saved as a view of patches
    assert ds.count_label_tags().get("xpatch:diverse") == 5
    diverse = ds.load_saved_view(view)
    assert diverse.count() == 5
    assert "xpatch:duplicate" not in diverse.count_label_tags()
    assert f"diverse subset: 5 of {total - tagged} patches tagged xpatch:diverse" in text
    assert f"saved view '{view}'" in text

    # the Brain runs the App uses
    brain = ds.list_brain_runs()
    assert len(brain) == 2, brain
    sim = [k for k in brain if ds.get_brain_info(k).config.type == "similarity"]
    assert sim and f"similarity index: brain key '{sim[0]}'" in text
    patches = ds.to_patches("pp")
    first_label = orig.pp.detections[0].id
    nearest = patches.sort_by_similarity(first_label, k=2, brain_key=sim[0])
    assert dup.pp.detections[0].id in nearest.values("id")  # its own copy is its nearest neighbour

    # a rerun has nothing to compute: no model is loaded; Brain keys are kept unless --overwrite
    again = _xpatch("curate", ds.name, "--patches-field", "pp", "--weights", xception_weights, "--similarity")
    assert again.returncode == 2 and "overwrite" in again.stderr, again.stderr[-2000:]
    assert "embeddings of 'pp': 0 processed, 4 already done, 0 failed" in again.stdout
    assert "load model" not in again.stdout  # the summary lists every stage that took time
    again = _xpatch("curate", ds.name, "--patches-field", "pp", "--weights", xception_weights, "--similarity", "--overwrite")
    assert again.returncode == 0, again.stderr[-2000:]


def test_curate_usage_errors(source):
    ds, _ = source
    run = _xpatch("curate", ds.name, "--view-name", "v")
    assert run.returncode == 2 and "--view-name needs --diverse N" in run.stderr
    run = _xpatch("curate", f"no-such-{ObjectId()}")
    assert run.returncode == 2 and "dataset not found" in run.stderr
    run = _xpatch("curate", ds.name)  # no patch run recorded, no field given
    assert run.returncode == 2 and "give --patches-field: the dataset has no patch run" in run.stderr
    run = _xpatch("curate", ds.name, "--patches-field", "pp", "--duplicates", "3")
    assert run.returncode == 2 and "--duplicates" in run.stderr
    assert ds.count("pp.detections.embedding") == 0  # no work was done by any of them
