"""Curation on the real embedded database: near-duplicates, a diverse subset,
a Brain similarity index and a 2-D map, on constructed embeddings and on
pooled Xception embeddings of real photos."""

from __future__ import annotations

import os

import fiftyone as fo
import numpy as np
import pytest
from fiftyone import ViewField as F
from PIL import Image, ImageOps

from xpatch_core import curation
from xpatch_core.errors import ParameterError


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def _rotate(base, angle_deg, towards):
    """A unit vector at ``angle_deg`` from ``base`` in the plane of ``towards``."""
    b = _unit(base)
    t = np.asarray(towards, np.float64) - b * (b @ towards)
    t = t / np.linalg.norm(t)
    a = np.radians(angle_deg)
    return np.cos(a) * b + np.sin(a) * t


def _dist(angle_deg):
    return 1 - np.cos(np.radians(angle_deg))


@pytest.fixture()
def constructed(kitchen):
    """Three real photos with five patches each, embeddings set by hand.

    Sample 0: A (conf 0.5), A1 = A at 1 degree (conf 0.9), A2 = A at 3 degrees
    (conf 0.1), B (conf 0.7), one detection without an embedding.
    Sample 1: X (conf 0.8), Y at 20 degrees from X (conf 0.6), Z at 40
    degrees from X, 20 from Y (conf 0.4), C (conf 0.3), D (conf 0.2).
    Sample 2: B1 = B at 2 degrees (conf 0.6), the only near-duplicate across
    images.
    """
    from xpatch_core.offline import kitchenware_images

    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    A, B, X, C, D, T = (basis[:, k] for k in range(6))
    vecs = {
        "A": A, "A1": _rotate(A, 1, T), "A2": _rotate(A, 3, -T), "B": B,
        "X": X, "Y": _rotate(X, 20, T), "Z": _rotate(X, 40, T), "C": C, "D": D, "B1": _rotate(B, 2, T),
    }
    conf = {"A": 0.5, "A1": 0.9, "A2": 0.1, "B": 0.7, "X": 0.8, "Y": 0.6, "Z": 0.4, "C": 0.3, "D": 0.2, "B1": 0.6}
    layout = [["A", "A1", "A2", "B", None], ["X", "Y", "Z", "C", "D"]]
    ds = fo.Dataset()
    paths = kitchenware_images()[:3]
    samples = []
    for s, names in enumerate(layout + [["B1"]]):
        dets = []
        for k, name in enumerate(names):
            d = fo.Detection(label=name or "none", bounding_box=[0.1 * k, 0.1, 0.1, 0.1],
                             confidence=conf.get(name, 0.0))
            if name is not None:
                d["embedding"] = (vecs[name] * (1 + k)).astype(np.float32)  # any norm works
            dets.append(d)
        samples.append(fo.Sample(filepath=paths[s], patches=fo.Detections(detections=dets)))
    ds.add_samples(samples)
    ids = {d.label: d.id for s in ds for d in s.patches.detections}
    yield ds, ids
    ds.delete()


def _tagged(ds, tag):
    return {d.label for s in ds for d in s.patches.detections if tag in d.tags}


def test_duplicates_keep_the_best_and_never_chain(constructed):
    ds, ids = constructed
    # by default only patches of different images are compared: B1 (another image) is B's duplicate
    res = curation.tag_duplicates(ds, "patches", threshold=_dist(10))
    assert res.patches == 10 and res.missing == 1
    assert _tagged(ds, "xpatch:duplicate") == {"B1"}
    assert [(k, set(v)) for k, v, _ in res.groups] == [(ids["B"], {ids["B1"]})]
    # threshold between 3 and 20 degrees, same image allowed: A1 has the highest confidence of
    # {A, A1, A2}: kept; X is 20 degrees from Y: not a duplicate at 10
    res = curation.tag_duplicates(ds, "patches", threshold=_dist(10), same_image=True)
    assert _tagged(ds, "xpatch:duplicate") == {"A", "A2", "B1"}
    groups = {k: set(dups) for k, dups, _ in res.groups}
    assert groups == {ids["A1"]: {ids["A"], ids["A2"]}, ids["B"]: {ids["B1"]}}
    # at 25 degrees Y is X's duplicate, and Z, 40 degrees from X, is kept: not chained through Y
    res = curation.tag_duplicates(ds, "patches", threshold=_dist(25), same_image=True)
    assert _tagged(ds, "xpatch:duplicate") == {"A", "A2", "Y", "B1"}
    assert [k for k, _, _ in res.groups] == [ids["A1"], ids["X"], ids["B"]]  # by decreasing confidence
    dists = dict(zip(res.groups[0][1], res.groups[0][2]))
    assert dists[ids["A"]] == pytest.approx(_dist(1), abs=1e-5)
    # keep_by=None keeps in collection order: A is first, so A1 and A2 are its duplicates
    curation.tag_duplicates(ds, "patches", threshold=_dist(10), keep_by=None, same_image=True)
    assert _tagged(ds, "xpatch:duplicate") == {"A1", "A2", "B1"}
    # undo: nothing deleted, tags gone
    assert curation.clear_duplicates(ds, "patches") == 3
    assert _tagged(ds, "xpatch:duplicate") == set()
    assert ds.count("patches.detections") == 11


def test_duplicates_leave_other_tags_and_other_views_alone(constructed):
    ds, ids = constructed
    ds.select_labels(ids=[ids["A"]], fields="patches").tag_labels("mine", label_fields="patches")
    curation.tag_duplicates(ds, "patches", threshold=_dist(10))
    assert _tagged(ds, "mine") == {"A"} and _tagged(ds, "xpatch:duplicate") == {"B1"}
    # a patches view stands for its images (here sample 0); B1's tag, outside it, stays
    res = curation.tag_duplicates(ds.to_patches("patches").match(F("patches.label") == "A"), "patches",
                                  threshold=_dist(10), same_image=True)
    assert res.patches == 4 and _tagged(ds, "xpatch:duplicate") == {"A", "A2", "B1"}
    # on a view of sample 1 only, the other samples' duplicate tags stay
    view = ds.skip(1).limit(1)
    curation.tag_duplicates(view, "patches", threshold=_dist(25), same_image=True)
    assert _tagged(ds, "xpatch:duplicate") == {"A", "A2", "Y", "B1"}


def test_duplicate_parameters_fail_before_work(constructed):
    ds, _ = constructed
    for bad in (-0.1, 2.0, float("nan"), "0.1", True):
        with pytest.raises(ParameterError):
            curation.tag_duplicates(ds, "patches", threshold=bad)
    with pytest.raises(ParameterError, match="same_image"):
        curation.tag_duplicates(ds, "patches", same_image="yes")
    with pytest.raises(ParameterError, match="no field"):
        curation.tag_duplicates(ds, "nope")
    with pytest.raises(ParameterError, match="compute patch embeddings"):
        curation.tag_duplicates(ds, "patches", attribute="other")
    assert _tagged(ds, "xpatch:duplicate") == set()


def test_an_attribute_with_another_meaning_is_refused(constructed):
    ds, _ = constructed
    view = ds.limit(1)
    for s in view:
        for d in s.patches.detections:
            d["note"] = "hello"
        s.save()
    with pytest.raises(ParameterError, match="not an embedding"):
        curation.load_patch_embeddings(ds, "patches", "note")


def test_diverse_subset_takes_one_per_cluster_and_is_deterministic(kitchen):
    from xpatch_core.offline import kitchenware_images

    rng = np.random.default_rng(0)
    centres = np.linalg.qr(rng.normal(size=(32, 32)))[0][:, :3].T
    ds = fo.Dataset()
    try:
        samples, cluster = [], {}
        for s, path in enumerate(kitchenware_images()[:3]):
            dets = []
            for k in range(5):  # 5 patches per sample, spread over the 3 clusters
                c = (s + k) % 3
                v = centres[c] + 0.02 * rng.normal(size=32)
                d = fo.Detection(label=f"s{s}p{k}", bounding_box=[0.1 * k, 0.1, 0.1, 0.1], confidence=0.5,
                                 embedding=v.astype(np.float32))
                cluster[d.label] = c
                dets.append(d)
            samples.append(fo.Sample(filepath=path, patches=fo.Detections(detections=dets)))
        ds.add_samples(samples)
        labels = {d.id: d.label for s in ds for d in s.patches.detections}
        sel = curation.select_diverse(ds, "patches", 3, seed=7, view_name="diverse3")
        picked = [labels[i] for i in sel.label_ids]
        assert sorted(cluster[p] for p in picked) == [0, 1, 2]
        assert sel.coverage < 0.1  # every patch is near a selected one (clusters are ~1 apart)
        assert _tagged(ds, "xpatch:diverse") == set(picked)
        view = ds.load_saved_view("diverse3")
        assert sorted(view.values("patches.label")) == sorted(picked)
        again = curation.select_diverse(ds, "patches", 3, seed=7, view_name="diverse3", overwrite=True)
        assert again.label_ids == sel.label_ids
        # 4 picks: a 4th patch from some cluster, the selection tag is replaced, not added to
        four = curation.select_diverse(ds, "patches", 4, seed=1)
        assert len(_tagged(ds, "xpatch:diverse")) == 4 and len(set(four.label_ids)) == 4
        # the duplicates are left out of the pool
        dup = four.label_ids[0]
        ds.select_labels(ids=[dup], fields="patches").tag_labels("xpatch:duplicate", label_fields="patches")
        excl = curation.select_diverse(ds, "patches", 15, seed=1)
        assert excl.patches == 14 and dup not in excl.label_ids
        with pytest.raises(ParameterError, match="exists"):
            curation.select_diverse(ds, "patches", 3, view_name="diverse3")
        for bad in (0, -1, 2.5, True):
            with pytest.raises(ParameterError):
                curation.select_diverse(ds, "patches", bad)
        assert curation.clear_diverse(ds, "patches", view_name="diverse3") == 14
        assert not ds.has_saved_view("diverse3") and _tagged(ds, "xpatch:diverse") == set()
    finally:
        ds.delete()


def test_diverse_indices_is_k_centre_greedy():
    rng = np.random.default_rng(1)
    e = rng.normal(size=(40, 8))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    rows, coverage = curation.diverse_indices(e, 6, seed=3)
    assert rows[0] == np.random.default_rng(3).integers(40)
    d = 1 - e @ e.T
    for k in range(1, 6):  # each pick is the farthest from the ones before it
        mind = d[:, rows[:k]].min(axis=1)
        assert mind[rows[k]] == pytest.approx(mind.max(), abs=1e-6)
    assert coverage == pytest.approx(d[:, rows].min(axis=1).max(), abs=1e-6)
    assert len(curation.diverse_indices(e, 100)[0]) == 40


def test_patch_map_for_the_embeddings_panel(constructed):
    ds, ids = constructed
    res = curation.compute_patch_map(ds, "patches", method="pca")
    assert ds.has_brain_run("xpatch_patches_map")
    assert res.points.shape == (10, 2) and np.isfinite(res.points).all()
    assert set(res.current_label_ids) == {v for k, v in ids.items() if k != "none"}
    with pytest.raises(ParameterError, match="exists"):
        curation.compute_patch_map(ds, "patches")
    curation.compute_patch_map(ds, "patches", method="tsne", overwrite=True)
    with pytest.raises(ParameterError, match="method"):
        curation.compute_patch_map(ds, "patches", method="mds", overwrite=True)


@pytest.fixture()
def copied_photos(xception, coco_dir, tmp_path):
    """Four COCO photos with four patches each, a mirrored copy of the first
    (patches mirrored) and a copy shifted by 8 px and re-encoded (patches
    shifted), each copy a sample of its own."""
    import glob

    paths = sorted(glob.glob(os.path.join(coco_dir, "images", "*.jpg")))[:4]
    img = Image.open(paths[0])
    W, H = img.size
    flipped, shifted = str(tmp_path / "flipped.jpg"), str(tmp_path / "shifted.jpg")
    ImageOps.mirror(img).save(flipped, quality=95)
    img.crop((8, 0, W, H)).save(shifted, quality=80)
    rel = [[0.05 + 0.22 * k, 0.1 + 0.2 * (k % 3), 0.2, 0.3] for k in range(4)]
    copies = {
        flipped: ("mirror", [[1 - b[0] - b[2], b[1], b[2], b[3]] for b in rel]),
        shifted: ("shift", [[(b[0] * W - 8) / (W - 8), b[1], b[2] * W / (W - 8), b[3]] for b in rel]),
    }
    ds = fo.Dataset()
    samples = [fo.Sample(filepath=p, patches=fo.Detections(detections=[
        fo.Detection(label="patch", bounding_box=b, confidence=0.5) for b in rel])) for p in paths]
    for path, (label, boxes) in copies.items():
        samples.append(fo.Sample(filepath=path, patches=fo.Detections(detections=[
            fo.Detection(label=label, bounding_box=b, confidence=0.4) for b in boxes])))
    ds.add_samples(samples)
    yield ds
    ds.delete()


def _store_embeddings(ds, model):
    """Embeds the patches with the library and stores them on the detections."""
    from xpatch_core.embeddings import iter_patch_embeddings

    samples = list(ds)
    boxes = [[d.bounding_box for d in s.patches.detections] for s in samples]
    for s, item in zip(samples, iter_patch_embeddings([s.filepath for s in samples], boxes, model,
                                                      box_format="relative")):
        assert item.ok and item.valid.all()
        for d, v in zip(s.patches.detections, item.embeddings):
            d["embedding"] = v
        s.save()


def test_similarity_index_returns_the_copied_patch_first(copied_photos, xception):
    ds = copied_photos
    _store_embeddings(ds, xception)
    curation.compute_similarity_index(ds, "patches")
    assert ds.has_brain_run("xpatch_patches_sim")
    originals = ds.first().patches.detections
    patches = ds.to_patches("patches")
    for copy_label in ("mirror", "shift"):
        copies = ds.match(F("patches.detections.label").contains(copy_label)).first().patches.detections
        others = patches.match(F("patches.label") != ("shift" if copy_label == "mirror" else "mirror"))
        for orig, copy in zip(originals, copies):
            got = others.sort_by_similarity(orig.id, k=2, brain_key="xpatch_patches_sim").values("patches.id")
            assert got == [orig.id, copy.id], (copy_label, got, copy.id)
    with pytest.raises(ParameterError, match="exists"):
        curation.compute_similarity_index(ds, "patches")
    curation.compute_similarity_index(ds, "patches", overwrite=True)


def test_near_duplicate_search_finds_the_shifted_copies(copied_photos, xception):
    ds = copied_photos.match(~F("patches.detections.label").contains("mirror"))
    _store_embeddings(ds, xception)
    table = curation.load_patch_embeddings(ds, "patches")
    d = 1 - table.embeddings @ table.embeddings.T
    labels = ds.values("patches.detections.label", unwind=True)
    shift_rows = [k for k, lab in enumerate(labels) if lab == "shift"]
    pair = np.zeros_like(d, bool)
    for k, r in enumerate(shift_rows):
        pair[k, r] = pair[r, k] = True
    np.fill_diagonal(d, np.inf)
    # the real photos put each shifted patch nearer its original than anything else is to anything
    assert d[pair].max() < d[~pair].min()
    threshold = float((d[pair].max() + d[~pair].min()) / 2)
    res = curation.tag_duplicates(ds, "patches", threshold=threshold)
    originals = ds.first().patches.detections
    assert {k: set(v) for k, v, _ in res.groups} == {
        o.id: {table.label_ids[r]} for o, r in zip(originals, shift_rows)}  # originals score higher
    assert res.tagged == 4 and _tagged(ds, "xpatch:duplicate") == {"shift"}


def _op(name):
    import fiftyone.operators as foo

    return foo.get_operator(f"@xpatch/xpatch/{name}")


def test_curation_operators_on_the_real_database(constructed):
    from fiftyone.operators.executor import ExecutionError

    ds, ids = constructed
    r = _op("tag_duplicate_patches")(ds, "patches", threshold=_dist(10))
    assert r.error is None and _tagged(ds, "xpatch:duplicate") == {"B1"}
    r = _op("tag_duplicate_patches")(ds, "patches", threshold=_dist(10), same_image=True)
    assert r.error is None and _tagged(ds, "xpatch:duplicate") == {"A", "A2", "B1"}
    r = _op("clear_duplicate_patches")(ds, "patches")
    assert r.error is None and _tagged(ds, "xpatch:duplicate") == set()
    r = _op("select_diverse_patches")(ds, "patches", 3, seed=0, view_name="ops3")
    assert r.error is None and ds.has_saved_view("ops3") and len(_tagged(ds, "xpatch:diverse")) == 3
    r = _op("build_patch_similarity")(ds, "patches")
    assert r.error is None and ds.has_brain_run("xpatch_patches_sim")
    assert ds.load_brain_results("xpatch_patches_sim").total_index_size == 10
    r = _op("compute_patch_map")(ds, "patches", method="pca", brain_key="opsmap")
    assert r.error is None and ds.load_brain_results("opsmap").points.shape == (10, 2)
    # every parameter is checked on the server; nothing changes on a refusal
    bad = [
        ("tag_duplicate_patches", dict(threshold=-1), "threshold"),
        ("tag_duplicate_patches", dict(threshold=float("nan")), "threshold"),
        ("tag_duplicate_patches", dict(keep_by="a.b"), "keep_by"),
        ("tag_duplicate_patches", dict(tag="  "), "tag"),
        ("tag_duplicate_patches", dict(patches_field="filepath"), "patches_field"),
        ("tag_duplicate_patches", dict(attribute="a.b"), "attribute"),
        ("select_diverse_patches", dict(count=0), "count"),
        ("select_diverse_patches", dict(count="5"), "count"),
        ("select_diverse_patches", dict(count=2.5), "count"),
        ("select_diverse_patches", dict(seed=-1), "seed"),
        ("select_diverse_patches", dict(view_name="ops3"), "exists"),
        ("compute_patch_map", dict(method="mds"), "method"),
        ("compute_patch_map", dict(brain_key="bad key!"), "brain key"),
        ("compute_patch_map", dict(brain_key="opsmap"), "exists"),
        ("build_patch_similarity", dict(), "exists"),
    ]
    for name, kwargs, match in bad:
        with pytest.raises(ExecutionError, match=match):
            _op(name)(ds, **{"patches_field": "patches", **kwargs}).raise_exceptions()
    assert _tagged(ds, "xpatch:duplicate") == set() and len(_tagged(ds, "xpatch:diverse")) == 3
