"""Pooled patch embeddings on real weights and real photos, checked against
vectors computed by hand from the network's own feature map."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xpatch_core.embeddings import (
    compute_patch_embeddings,
    iter_patch_embeddings,
    load_embedder,
    prepare_boxes,
    relative_to_pixels,
)
from xpatch_core.errors import ModelError, ParameterError


@pytest.fixture(scope="module")
def photo(kitchen):
    from xpatch_core.offline import kitchenware_images

    return kitchenware_images()[0]


@pytest.fixture(scope="module")
def feature_maps(xception, photo):
    """Both maps of the photo (``block14_sepconv2_act``, 10x10, and
    ``block13_sepconv1_act``, 19x19), through a plain Keras call."""
    from xpatch_core.images import load_image

    h, w = xception.input_size
    d = load_image(photo, (w, h))
    x = xception.preprocess(d.array[None].copy())
    coarse, fine = xception.fused(x, training=False)
    return np.asarray(coarse, np.float64)[0], np.asarray(fine, np.float64)[0], d.size


@pytest.fixture(scope="module")
def feature_map(feature_maps):
    return feature_maps[0], feature_maps[2]


def _hand_align(F, box, size, ratio=2):
    """RoI Align with one bin, written out point by point."""
    h, w, _ = F.shape
    W, H = size
    x0, y0, x1, y1 = box[0] * w / W, box[1] * h / H, box[2] * w / W, box[3] * h / H
    nx = max(1, math.ceil(ratio * (x1 - x0)))
    ny = max(1, math.ceil(ratio * (y1 - y0)))
    total = np.zeros(F.shape[2])
    for iy in range(ny):
        for ix in range(nx):
            px = x0 + (ix + 0.5) * (x1 - x0) / nx - 0.5  # in cell-centre coordinates
            py = y0 + (iy + 0.5) * (y1 - y0) / ny - 0.5
            px = min(max(px, 0.0), w - 1.0)
            py = min(max(py, 0.0), h - 1.0)
            cx, cy = int(math.floor(px)), int(math.floor(py))
            cx1, cy1 = min(cx + 1, w - 1), min(cy + 1, h - 1)
            tx, ty = px - cx, py - cy
            total += ((1 - ty) * (1 - tx) * F[cy, cx] + (1 - ty) * tx * F[cy, cx1]
                      + ty * (1 - tx) * F[cy1, cx] + ty * tx * F[cy1, cx1])
    return total / (nx * ny)


def _hand_area(F, box, size):
    """Area-weighted mean of the cells, cell by cell."""
    h, w, _ = F.shape
    W, H = size
    total = np.zeros(F.shape[2])
    area = 0.0
    for i in range(h):
        for j in range(w):
            ox = max(0.0, min(box[2], (j + 1) * W / w) - max(box[0], j * W / w))
            oy = max(0.0, min(box[3], (i + 1) * H / h) - max(box[1], i * H / h))
            total += ox * oy * F[i, j]
            area += ox * oy
    return total / area


def _unit(v):
    return v / np.linalg.norm(v)


def test_pooling_matches_hand_computed_vectors(xception, photo, feature_maps):
    F, F2, size = feature_maps
    W, H = size
    assert F.shape == (10, 10, 2048) and F2.shape == (19, 19, 728)
    aligned = [2 * W / 10, 3 * H / 10, 6 * W / 10, 6 * H / 10]  # cells rows 3-5, columns 2-5
    odd = [37.3, 81.9, 133.3, 160.2]
    boxes = np.array([aligned, odd])
    for pooling, hand in (("align", _hand_align), ("area", _hand_area)):
        # the default: both layers, each unit length, concatenated, divided by sqrt(2)
        item = next(iter_patch_embeddings([photo], [boxes], xception, pooling=pooling))
        assert item.ok and item.valid.all() and item.image_size == size
        assert item.embeddings.shape == (2, 2048 + 728)
        for k, box in enumerate(boxes):
            expected = np.concatenate([_unit(hand(F, box, size)), _unit(hand(F2, box, size))]) / math.sqrt(2)
            np.testing.assert_allclose(item.embeddings[k], expected, atol=2e-5)
        assert np.linalg.norm(item.embeddings, axis=1) == pytest.approx([1, 1], abs=1e-5)
        one = next(iter_patch_embeddings([photo], [boxes], xception, pooling=pooling, fine_layer=None))
        for k, box in enumerate(boxes):
            np.testing.assert_allclose(one.embeddings[k], _unit(hand(F, box, size)), atol=2e-5)
    # the two poolings differ, so each comparison above tells them apart
    assert np.abs(_unit(_hand_align(F, odd, size)) - _unit(_hand_area(F, odd, size))).max() > 1e-3
    # on cell boundaries, area pooling is the plain mean of the covered cells
    item = next(iter_patch_embeddings([photo], [boxes[:1]], xception, pooling="area", fine_layer=None))
    np.testing.assert_allclose(item.embeddings[0], _unit(F[3:6, 2:6].mean(axis=(0, 1))), atol=2e-5)


def test_a_box_smaller_than_a_cell_reads_one_sample_at_its_centre(xception, photo, feature_map):
    F, size = feature_map
    W, H = size
    tiny = [100, 70, 101, 71]
    item = next(iter_patch_embeddings([photo], [[tiny]], xception, fine_layer=None))
    assert item.valid.all()
    # one bilinear read at the pixel's centre
    np.testing.assert_allclose(item.embeddings[0], _unit(_hand_align(F, tiny, size, ratio=1)), atol=2e-5)
    item = next(iter_patch_embeddings([photo], [[tiny]], xception, pooling="area", fine_layer=None))
    col, row = int(100.5 * 10 / W), int(70.5 * 10 / H)
    np.testing.assert_allclose(item.embeddings[0], _unit(F[row, col]), atol=2e-5)


def test_boxes_partly_outside_pool_the_inside_part(xception, photo):
    outside = [-50, -30, 60, 70]
    inside = [0, 0, 60, 70]
    item = next(iter_patch_embeddings([photo], [[outside, inside]], xception, border="pad"))
    assert item.valid.all() and item.clipped.tolist() == [True, False]
    np.testing.assert_allclose(item.embeddings[0], item.embeddings[1], atol=1e-6)
    item = next(iter_patch_embeddings([photo], [[outside, inside]], xception, border="error"))
    assert item.valid.tolist() == [False, True]
    assert "outside the image" in item.reasons[0] and np.isnan(item.embeddings[0]).all()


def test_degenerate_boxes_fail_alone(xception, photo, feature_map):
    _, (W, H) = feature_map
    good = [10, 10, 106, 106]
    boxes = [good, [10, 10, 10, 50], [5, 5, float("nan"), 9], [W + 10, 0, W + 50, 40], [30, 40, 20, 90], good]
    item = next(iter_patch_embeddings([photo], [boxes], xception))
    assert item.ok
    assert item.valid.tolist() == [True, False, False, False, False, True]
    assert item.reasons[1] == "empty box (width or height <= 0)"
    assert "NaN" in item.reasons[2]
    assert "outside" in item.reasons[3]
    assert item.reasons[4] == "empty box (width or height <= 0)"
    assert np.isnan(item.embeddings[1:5]).all() and np.isfinite(item.embeddings[[0, 5]]).all()
    np.testing.assert_allclose(item.embeddings[0], item.embeddings[5])
    # no boxes at all: an empty array, not a failure
    item = next(iter_patch_embeddings([photo], [np.zeros((0, 4))], xception))
    assert item.ok and item.embeddings.shape == (0, 2048 + 728)


def test_bad_images_and_bad_box_lists_fail_their_own_sample(xception, photo, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    boxes = [[[0, 0, 50, 50]], [[0, 0, 50, 50]], [1, 2, 3], [[0, 0, 50, 50]]]
    items = list(iter_patch_embeddings([photo, str(broken), photo, photo], boxes, xception, batch_size=2))
    assert [it.ok for it in items] == [True, False, False, True]
    assert "not a recognised image" in items[1].error
    assert items[2].error.startswith("bad boxes")
    np.testing.assert_allclose(items[0].embeddings, items[3].embeddings, atol=1e-6)
    assert compute_patch_embeddings([photo, str(broken)], boxes[:2], xception)[1] is None


def test_parameters_and_models_fail_before_any_image_is_read(xception):
    import keras

    def unreadable():
        raise AssertionError("an image was read")
        yield

    inp = keras.Input((16, 16, 3))
    flat = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(inp)))
    with pytest.raises(ModelError, match="no layer with a 4-D spatial output"):
        next(iter_patch_embeddings(unreadable(), [], flat))
    x = keras.layers.Conv2D(4, 16, name="whole")(inp)  # a 1x1 map
    one = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    with pytest.raises(ModelError, match="1x1 output"):
        next(iter_patch_embeddings(unreadable(), [], one, layer="whole"))
    for kwargs in ({"pooling": "max"}, {"border": "wrap"}, {"batch_size": 0}, {"box_format": "xywh"},
                   {"sampling_ratio": 0}):
        with pytest.raises(ParameterError):
            next(iter_patch_embeddings(unreadable(), [], xception, **kwargs))
    with pytest.raises(ParameterError, match="box lists"):
        next(iter_patch_embeddings(["a.jpg", "b.jpg"], [[]], xception))


def test_batching_box_formats_and_streams_agree(xception, kitchen):
    from xpatch_core.images import image_size
    from xpatch_core.offline import kitchenware_images

    paths = kitchenware_images()[:5]
    rng = np.random.default_rng(0)
    rel = [np.column_stack([rng.uniform(0, 0.7, (4, 2)), rng.uniform(0.05, 0.3, (4, 2))]) for _ in paths]
    pix = [relative_to_pixels(r, image_size(p)) for r, p in zip(rel, paths)]
    a = compute_patch_embeddings(paths, pix, xception, batch_size=1)
    b = compute_patch_embeddings(paths, rel, xception, batch_size=3, box_format="relative")
    c = [it.embeddings for it in iter_patch_embeddings(iter(paths), iter(rel), xception, batch_size=2,
                                                        box_format="relative")]
    for x, y, z in zip(a, b, c):
        np.testing.assert_allclose(x, y, atol=2e-5)
        np.testing.assert_allclose(x, z, atol=2e-5)
    with pytest.raises(ParameterError, match="fewer box lists"):
        list(iter_patch_embeddings(iter(paths), iter(rel[:2]), xception))


def test_two_layers_weigh_the_same(xception, photo):
    two = load_embedder(xception, fine_layer="auto")
    assert two.layers == ("block14_sepconv2_act", "block13_sepconv1_act") and two.dim == 2048 + 728
    boxes = [[20, 30, 140, 130], [200, 100, 296, 196]]
    e2 = next(iter_patch_embeddings([photo], [boxes], two)).embeddings
    e1 = next(iter_patch_embeddings([photo], [boxes], xception, fine_layer=None)).embeddings
    assert np.linalg.norm(e2, axis=1) == pytest.approx([1, 1], abs=1e-5)
    np.testing.assert_allclose(e2[:, :2048] * math.sqrt(2), e1, atol=2e-5)
    assert np.linalg.norm(e2[:, 2048:], axis=1) == pytest.approx([1 / math.sqrt(2)] * 2, abs=1e-5)


def test_a_users_classifier_with_a_nested_backbone(kitchen_model, kitchen):
    from xpatch_core.offline import kitchenware_images

    emb = load_embedder(kitchen_model)
    assert emb.layers[0].endswith("block14_sepconv2_act") and emb.feature_shapes[0][:2] == (5, 5)
    item = next(iter_patch_embeddings(kitchenware_images()[:1], [[[0, 0, 60, 60], [100, 100, 160, 160]]], emb))
    assert item.valid.all() and np.isfinite(item.embeddings).all()
    assert emb.describe()["dim"] == 2048


def test_prepare_boxes_rules():
    cut, valid, reasons, clipped = prepare_boxes(
        [[-5, 0, 10, 10], [0, 0, 0, 5], [20, 20, 30, 30], [0, 0, 10, 10]], (15, 15), "pad")
    assert valid.tolist() == [True, False, False, True]
    assert clipped.tolist() == [True, False, False, False]
    assert cut[0].tolist() == [0, 0, 10, 10]
    assert reasons[2] == "box lies wholly outside the image"


# -- the FiftyOne run -------------------------------------------------------------------


@pytest.fixture()
def patched(kitchen, xception_weights):
    """Six real photos with a saliency run and four patches each."""
    import fiftyone as fo

    from xpatch_core import runs
    from xpatch_core.offline import kitchenware_images

    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=p) for p in kitchenware_images()[:6]])
    runs.run_saliency(ds, "saliency", "xception", "eigencam", weights=xception_weights)
    runs.run_patches(ds, "saliency", "patches", n=4, size=64)
    yield ds
    ds.delete()


def test_run_stores_what_the_library_computes_and_resumes(patched, xception, xception_weights, monkeypatch):
    import fiftyone.core.fields as fof

    from xpatch_core import runs

    ds = patched
    ids = ds.values("id")
    first = runs.run_embeddings(ds, "patches", weights=xception_weights, sample_ids=ids[:2])
    assert (first.processed, first.patches, first.status) == (2, 8, "completed")
    assert isinstance(ds.get_field("patches.detections.embedding"), fof.VectorField)
    monkeypatch.setenv("XPATCH_WRITE_CHUNK", "1")  # written a sample at a time: bounded memory
    events = []
    rest = runs.run_embeddings(ds, "patches", weights=xception_weights, progress=events.append)
    assert (rest.processed, rest.skipped, rest.patches) == (4, 2, 16)
    assert len(events) >= 5  # the start, then one event per written chunk
    again = runs.run_embeddings(ds, "patches", weights=xception_weights)
    assert again.status == "nothing to do" and again.skipped == 6
    # the stored vectors are the library's, detection by detection
    paths, rel, stored = ds.values(["filepath", "patches.detections.bounding_box", "patches.detections.embedding"])
    for path, boxes, vecs in zip(paths, rel, stored):
        item = next(iterate([path], [boxes], xception))
        np.testing.assert_allclose(np.stack(vecs), item.embeddings, atol=2e-5)
    info = runs.get_run_info(ds, "patches_embedding")
    assert info["type"] == "embeddings"
    assert info["config"]["layers"] == ["block14_sepconv2_act", "block13_sepconv1_act"]
    assert info["config"]["dim"] == 2048 + 728 and info["results"]["patches"] == 16  # the last run that worked
    # other parameters on the same attribute are refused; overwrite redoes every sample
    with pytest.raises(ParameterError, match=r"other parameters \(pooling\)"):
        runs.run_embeddings(ds, "patches", weights=xception_weights, pooling="area")
    # known before any model loads (was: a ResNet50 load, which fails offline for want of its weights)
    with pytest.raises(ParameterError, match=r"other parameters \(model_source\)"):
        runs.run_embeddings(ds, "patches", model="resnet50")
    redo = runs.run_embeddings(ds, "patches", weights=xception_weights, pooling="area", overwrite=True)
    assert redo.processed == 6
    # a new patch run on a sample makes it pending again
    runs.run_patches(ds.select(ids[0]), "saliency", "patches", n=4, size=64, overwrite=True)
    assert runs.run_embeddings(ds, "patches", weights=xception_weights, pooling="area").processed == 1
    deleted = runs.delete_run(ds, "patches_embedding")
    assert deleted["field"] == "patches.detections.embedding" and ds.count("patches.detections.embedding") == 0
    assert ds.count("patches.detections") == 24


def iterate(paths, boxes, model):
    return iter_patch_embeddings(paths, boxes, model, box_format="relative")


def test_run_never_clobbers_another_tools_attribute(patched, xception_weights):
    import fiftyone as fo

    from xpatch_core import runs

    ds = patched
    lids = ds.values("patches.detections.id", unwind=True)
    # as FiftyOne's compute_patch_embeddings leaves it: a declared vector attribute
    ds.add_sample_field("patches.detections.embedding", fo.VectorField)
    ds.set_label_values("patches.detections.embedding", {lid: np.ones(3, np.float32) for lid in lids})
    with pytest.raises(ParameterError, match="no xpatch embedding run wrote"):
        runs.run_embeddings(ds, "patches", weights=xception_weights)
    assert all(v.shape == (3,) for v in ds.values("patches.detections.embedding", unwind=True))
    done = runs.run_embeddings(ds, "patches", weights=xception_weights, overwrite=True)
    assert done.processed == 6
    assert all(v.shape == (2776,) for v in ds.values("patches.detections.embedding", unwind=True))
    # an attribute declared with another type is never replaced
    ds.add_sample_field("patches.detections.note", fo.StringField)
    for overwrite in (False, True):
        with pytest.raises(ParameterError, match="not a vector field"):
            runs.run_embeddings(ds, "patches", attribute="note", weights=xception_weights, overwrite=overwrite)
    for bad, match in ((dict(attribute="label"), "attribute"), (dict(attribute="a.b"), "attribute"),
                       (dict(patches_field="saliency"), "fo.Detections"), (dict(pooling="max"), "pooling"),
                       (dict(border="wrap"), "border"), (dict(batch_size=0), "batch_size")):
        with pytest.raises(ParameterError, match=match):
            runs.run_embeddings(ds, **{"patches_field": "patches", "attribute": "emb2", **bad})
    assert "patches_emb2" not in ds.list_runs()


def test_run_fails_bad_samples_alone(patched, xception_weights, tmp_path):
    import fiftyone as fo

    from xpatch_core import runs

    ds = patched
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    ds.add_sample(fo.Sample(filepath=str(broken), patches=fo.Detections(detections=[
        fo.Detection(label="p", bounding_box=[0.1, 0.1, 0.2, 0.2])])))
    odd = ds.first()
    odd.patches.detections[0].bounding_box = [0.5, 0.5, 0.0, 0.3]  # empty box
    odd.patches.detections[1].bounding_box = [0.9, 0.9, 0.3, 0.3]  # partly outside: pooled inside
    odd.save()
    ds.add_sample(fo.Sample(filepath=odd.filepath, patches=fo.Detections(detections=[
        fo.Detection(label="p", bounding_box=[1.2, 0.1, 0.2, 0.2])])))  # wholly outside
    ds.add_sample(fo.Sample(filepath=odd.filepath))  # no patches: nothing to do
    summary = runs.run_embeddings(ds, "patches", weights=xception_weights)
    assert (summary.processed, summary.failed, summary.patches) == (6, 2, 23)
    reasons = sorted(f["reason"] for f in summary.failures)
    assert "not a recognised image" in reasons[1] or "cannot" in reasons[1]
    assert reasons[0] == "no patch could be embedded: box lies wholly outside the image"
    assert len(ds.match_tags("xpatch:patches.detections.embedding:failed")) == 2
    vecs = ds.first().patches.detections
    assert vecs[0].embedding is None and vecs[1].embedding.shape == (2776,)


def test_embeddings_operator_on_the_real_database(patched, xception_weights):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionError

    ds = patched
    op = foo.get_operator("@xpatch/xpatch/compute_patch_embeddings")
    result = op(ds, "patches", weights=xception_weights, batch_size=4)
    assert result.error is None
    assert ds.count("patches.detections.embedding") == 24
    from xpatch_core import runs

    assert runs.get_run_info(ds, "patches_embedding")["results"]["processed"] == 6
    for kwargs, match in ((dict(pooling="max"), "pooling"), (dict(batch_size=0), "batch_size"),
                          (dict(model="nosuchnet"), "nosuchnet"), (dict(attribute="a b"), "attribute")):
        with pytest.raises(ExecutionError, match=match):
            op(ds, "patches", **{"weights": xception_weights, **kwargs}).raise_exceptions()
