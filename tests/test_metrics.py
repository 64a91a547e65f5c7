"""Patch evaluation: figures on a hand-made case, computed by hand here."""

from __future__ import annotations

import math

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from fiftyone import ViewField as F
from fiftyone.operators.executor import ExecutionError
from PIL import Image

from xpatch_core import metrics, runs
from xpatch_core.errors import ParameterError
from xpatch_core.sampler import image_rng

W, H = 200, 100


def _rel(x0, y0, x1, y1):
    return [x0 / W, y0 / H, (x1 - x0) / W, (y1 - y0) / H]


def _det(box, label="drop", **attrs):
    return fo.Detection(label=label, bounding_box=_rel(*box), **attrs)


def _map(shape, peak=None, value=1.0):
    m = np.full(shape, 0.2 if peak is not None else value, dtype=np.float32)
    if peak is not None:
        m[peak] = 1.0
    return m


def _heatmap(m):
    return fo.Heatmap(map=m, range=[0.0, 1.0], width=W, height=H)


# Ground truth (pixels): A has G1 and a crowd box; B has G3; C only a crowd box;
# D has G4; E has G5. Patches: A 40x40 (seed attribute 3), B 20x20, C two,
# D none, E none.
G1, G2_CROWD, G3, G4, G5 = (20, 10, 80, 60), (100, 0, 200, 100), (0, 0, 120, 100), (150, 80, 190, 95), (0, 0, 50, 50)
A_PATCHES = [(30, 20, 70, 60), (120, 30, 160, 70), (0, 60, 40, 100), (60, 40, 100, 80), (59, 39, 99, 79)]
B_PATCHES = [(10, 10, 30, 30), (150, 10, 170, 30), (110, 50, 130, 70)]
KEEP = {("A", 0), ("A", 2), ("B", 0)}


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    root = tmp_path_factory.mktemp("hand")
    ds = fo.Dataset()
    samples = {}
    spec = {
        "A": ([(G1, 0), (G2_CROWD, 1)], A_PATCHES, _map((2, 4), (0, 0)), {"seed": 3}),
        "B": ([(G3, 0)], B_PATCHES, _map((4, 4), (1, 3)), {}),
        "C": ([((0, 0, 200, 100), 1)], [(0, 0, 20, 20), (50, 50, 70, 70)], _map((2, 2), (0, 0)), {}),
        "D": ([(G4, 0)], [], _map((2, 2), (1, 1)), {}),
        "E": ([(G5, 0)], None, _map((2, 2), None, 0.5), {}),
    }
    for name, (gt, patches, m, attrs) in spec.items():
        path = str(root / f"{name}.png")
        Image.new("RGB", (W, H), (90, 120, 150)).save(path)
        s = fo.Sample(filepath=path, name=name)
        s["gt"] = fo.Detections(detections=[_det(b, "obj", iscrowd=c) for b, c in gt])
        if patches is not None:
            s["patches"] = fo.Detections(detections=[
                _det(b, "keep" if (name, k) in KEEP else "drop", **attrs) for k, b in enumerate(patches)])
        s["sal"] = _heatmap(m)
        samples[name] = s
    ds.add_samples(list(samples.values()))
    ids = dict(zip(ds.values("name"), ds.values("id")))
    yield ds, ids
    ds.delete()


def _pa():
    """P(uniform 40x40 centre in G1) on A: centre pixels x 20..180, y 20..80;
    inside G1: x 20..79 (60 of 161), y 20..59 (40 of 61)."""
    return (60 * 40) / (161 * 61)


def _pb():
    """P(uniform 20x20 centre in G3) on B: centre x 10..190 (181), of which
    10..119 (110) inside; every centre row is inside."""
    return 110 / 181


def _uniform_hits_by_hand(seed, key, n, w, h, box):
    rng = image_rng(seed, key)
    ux, uy = rng.random(n), rng.random(n)
    hits = 0
    for k in range(n):
        x0, y0 = math.floor(ux[k] * (W - w + 1)), math.floor(uy[k] * (H - h + 1))
        cx, cy = x0 + w // 2 + 0.5, y0 + h // 2 + 0.5
        hits += box[0] <= cx <= box[2] and box[1] <= cy <= box[3]
    return hits


def test_pure_functions_by_hand():
    # centre pixel of [0, 96) is 48 -> point 48.5; of [1, 4) is 2 -> 2.5
    np.testing.assert_array_equal(metrics.center_points([[0, 0, 96, 96], [1, 1, 4, 3]]),
                                  [[48.5, 48.5], [2.5, 2.5]])
    gt = [[20, 10, 80, 60]]
    assert metrics.center_hits([[30, 20, 70, 60], [60, 40, 100, 80], [59, 39, 99, 79]], gt).tolist() == [
        True, False, True]
    assert metrics.hit_rate([[30, 20, 70, 60], [60, 40, 100, 80]], gt) == 0.5
    assert math.isnan(metrics.hit_rate(np.zeros((0, 4)), gt))
    assert metrics.center_hits([[0, 0, 10, 10]], np.zeros((0, 4))).tolist() == [False]
    m = metrics.gt_mask([[0.4, 0.6, 2.5, 2.5]], (4, 4))  # pixel centres 0.5..2.5 inside
    assert m.sum() == 3 * 2 and m[1:3, 0:3].all()
    np.testing.assert_allclose(metrics.uniform_expected_hits([[40, 40]], gt, (W, H)), [_pa()])
    np.testing.assert_array_equal(metrics.center_prior_boxes([[40, 40], [20, 10]], (W, H)),
                                  [[80, 30, 120, 70], [90, 45, 110, 55]])
    assert metrics.peak_point(_map((2, 4), (0, 0)), (W, H)) == (25.0, 25.0)
    assert metrics.peak_point(_map((4, 4), (1, 3)), (W, H)) == (175.0, 37.5)
    assert metrics.peak_point(np.ones((3, 3)), (W, H)) is None
    np.testing.assert_allclose(metrics.point_box_distance((175.0, 37.5), [G3, (0, 0, 10, 10)]),
                               [55.0, math.hypot(165, 27.5)])
    assert metrics.pointing_hit(_map((4, 4), (1, 3)), (W, H), [G3], radius=55.0)
    assert not metrics.pointing_hit(_map((4, 4), (1, 3)), (W, H), [G3], radius=54.9)
    assert metrics.pointing_game([_map((2, 4), (0, 0)), np.ones((2, 2)), _map((2, 2), (0, 0))],
                                 [(W, H)] * 3, [[G1], [G1], np.zeros((0, 4))]) == 0.5
    boxes = metrics.uniform_boxes([[40, 40]] * 50 + [[300, 20]], (W, H), seed=1, key="k")
    assert (boxes[:50, :2] >= 0).all() and (boxes[:50, 2] <= W).all() and (boxes[:50, 3] <= H).all()
    assert boxes[50, 0] == (W - 300) // 2  # wider than the image: centred
    np.testing.assert_array_equal(boxes, metrics.uniform_boxes([[40, 40]] * 50 + [[300, 20]], (W, H), 1, "k"))
    with pytest.raises(ParameterError):
        metrics.QualityAccumulator(radius=-1)


def test_evaluate_hand_made_case(hand):
    ds, ids = hand
    r = metrics.evaluate_patches(ds, "patches", "gt", heatmap_field="sal")
    # hits: A P1 and P5 (P4's centre 80.5 is just right of G1; P2 is only in
    # the crowd box), B P6 (P8's centre 120.5 is just right of G3)
    assert r["patches"] == 8 and r["hits"] == 3
    assert r["hit_rate"] == pytest.approx(3 / 8)
    # centre prior: centre pixel (100, 50) -> (100.5, 50.5): outside G1 (the
    # crowd box is ignored), inside G3 -> B's 3 patches
    assert r["center_prior_rate"] == pytest.approx(3 / 8)
    assert r["uniform_expected"] == pytest.approx((5 * _pa() + 3 * _pb()) / 8)
    uni = (_uniform_hits_by_hand(3, ids["A"], 5, 40, 40, G1) + _uniform_hits_by_hand(0, ids["B"], 3, 20, 20, G3))
    assert r["uniform_hits"] == uni and r["uniform_rate"] == pytest.approx(uni / 8)
    # (the uniform boxes depend on the random sample ids: none may hit, about 1 run in 60)
    assert r["ratio"] == (pytest.approx((3 / 8) / (uni / 8)) if uni else None)
    # pointing: A (25, 25) in G1; B (175, 37.5) 55 px from G3; D (150, 75)
    # 5 px from G4; E constant map; C has no non-crowd box
    assert r["pointing_images"] == 4 and r["pointing_hits"] == 2 and r["pointing_game"] == 0.5
    assert r["degenerate_maps"] == 1
    assert (r["images"], r["images_evaluated"], r["images_without_gt"], r["images_without_patches"]) == (5, 2, 1, 2)
    assert r["crowd_boxes_ignored"] == 2
    assert r["stored"] is False and r["run_key"] is None  # a hand-made field has no run
    assert metrics.evaluate_patches(ds, "patches", "gt", heatmap_field="sal", radius=60)["pointing_game"] == 0.75
    assert metrics.evaluate_patches(ds, "patches", "gt", heatmap_field="sal", radius=4)["pointing_game"] == 0.25
    assert metrics.evaluate_patches(ds, "patches", "gt")["pointing_game"] is None  # no heatmap field


def test_patches_view_filter_carries_over(hand):
    ds, _ = hand
    pv = ds.to_patches("patches").match(F("patches.label") == "keep")
    r = metrics.evaluate_patches(pv, "patches", "gt", heatmap_field="sal")
    # kept: A P1 (hit), A P3 (miss), B P6 (hit); images A and B only
    assert (r["patches"], r["hits"]) == (3, 2)
    assert r["uniform_expected"] == pytest.approx((2 * _pa() + _pb()) / 3)
    assert r["images"] == 2 and r["pointing_game"] == 0.5 and r["view"] == "patches view"
    with pytest.raises(ParameterError, match="shows 'patches'"):
        metrics.evaluate_patches(pv, "gt", "patches")


def test_bad_fields_are_refused(hand):
    ds, _ = hand
    for args, match in ((("patches", "nope"), "gt_field"), (("sal", "gt"), "patches_field"),
                        (("patches", "patches"), "differ")):
        with pytest.raises(ParameterError, match=match):
            metrics.evaluate_patches(ds, *args)
    with pytest.raises(ParameterError, match="radius"):
        metrics.evaluate_patches(ds, "patches", "gt", radius=float("nan"))


def test_evaluation_is_stored_with_the_run_and_shown_by_the_operator(hand):
    ds = hand[0].clone()
    try:
        runs.run_patches(ds, "sal", "pp", n=3, size=24, seed=5)
        op = foo.get_operator("@xpatch/xpatch/evaluate_patches")
        res = op(ds, "pp", "gt")
        assert res.error is None, res.error
        ev = res.result["evaluation"]
        assert ev["stored"] and ev["run_key"] == "pp" and ev["heatmap_field"] == "sal"
        assert res.result["hit_rate"] == ev["hit_rate"] and res.result["pointing_game"] == 0.5
        # the hit rate by hand from the boxes the run wrote
        hits = n = 0
        for dets, gts in zip(ds.values("pp.detections"), ds.values("gt.detections")):
            boxes = [g.bounding_box for g in gts if not g["iscrowd"]]
            if not boxes:
                continue
            for d in dets or []:
                x, y, w, h = d.bounding_box
                x0, y0, pw, ph = round(x * W), round(y * H), round(w * W), round(h * H)
                cx, cy = x0 + pw // 2 + 0.5, y0 + ph // 2 + 0.5
                n += 1
                hits += any(bx * W <= cx <= (bx + bw) * W and by * H <= cy <= (by + bh) * H
                            for bx, by, bw, bh in boxes)
        assert ev["patches"] == n and ev["hits"] == hits
        stored = runs.get_run_info(ds, "pp")["results"]
        assert stored["evaluation"]["hit_rate"] == ev["hit_rate"]
        assert stored["evaluations"]["gt"]["patches"] == n
        assert stored["status"] == "completed"  # the run's own results are kept
        with pytest.raises(ExecutionError, match="gt_field"):
            op(ds, "pp", "nope")
    finally:
        ds.delete()


CUP = (110, 30, 170, 80)


def test_per_class_rates_by_hand(hand):
    """A gets a second class ("cup", hit by its patch P2), B's G3 becomes a
    cup: the per-class rates, computed by hand, are stored with the run."""
    ds = hand[0].clone()
    try:
        a = ds.match(F("name") == "A").first()
        a["gt"].detections.append(_det(CUP, "cup"))
        a.save()
        b = ds.match(F("name") == "B").first()
        b["gt"].detections[0].label = "cup"
        b.save()
        r = metrics.evaluate_patches(ds, "patches", "gt", heatmap_field="sal")
        assert r["patches"] == 8 and r["hits"] == 4  # pooled: A P1, P2, P5 and B P6
        classes = r["per_class"]
        assert [c["label"] for c in classes] == ["cup", "obj"]  # most images first
        cup, obj = classes
        # cup: A (P2's centre (140.5, 50.5) is in the cup) and B (P6): 2 of 8;
        # centre prior: only B's centred boxes are on a cup
        assert (cup["images"], cup["patches"], cup["hits"]) == (2, 8, 2)
        assert cup["hit_rate"] == pytest.approx(2 / 8) and cup["center_prior_rate"] == pytest.approx(3 / 8)
        # a uniform 40x40 centre on A: x 20..180 (161), y 20..80 (61); in the cup: x 110..169, y 30..79
        p_cup_a = (60 * 50) / (161 * 61)
        assert cup["uniform_expected"] == pytest.approx((5 * p_cup_a + 3 * _pb()) / 8)
        assert cup["ratio_expected"] == pytest.approx((2 / 8) / cup["uniform_expected"])
        # obj: A only (D and E have no patches), P1 and P5
        assert (obj["images"], obj["patches"], obj["hits"]) == (1, 5, 2)
        assert obj["uniform_expected"] == pytest.approx(_pa()) and obj["center_prior_rate"] == 0.0
        uni_a = _uniform_hits_by_hand(3, hand[1]["A"], 5, 40, 40, G1)  # the same uniform boxes as pooled
        assert obj["uniform_rate"] == pytest.approx(uni_a / 5)
        # stored with the patch run, as a list (labels may not be database keys)
        runs.run_patches(ds, "sal", "pp", n=3, size=24, seed=5)
        r2 = metrics.evaluate_patches(ds, "pp", "gt")
        stored = runs.get_run_info(ds, "pp")["results"]["evaluation"]["per_class"]
        assert stored == r2["per_class"] and {c["label"] for c in stored} <= {"cup", "obj"}
        cup2 = next(c for c in stored if c["label"] == "cup")
        assert (cup2["images"], cup2["patches"]) == (2, 6)  # A and B, 3 patches each
        with pytest.raises(ParameterError, match="labels"):
            metrics.QualityAccumulator().add((W, H), [[0, 0, 10, 10]], [G1], labels=["a", "b"])
    finally:
        ds.delete()


def test_labels_of_crowd_boxes_are_left_out():
    dets = fo.Detections(detections=[_det(G1, "cup"), _det(G2_CROWD, "crowd", iscrowd=1), _det(G3, "a.b")])
    boxes, labels, crowd = metrics.gt_boxes_px_labels(dets, (W, H))
    assert labels == ["cup", "a.b"] and crowd == 1
    np.testing.assert_allclose(boxes, [G1, G3])
    np.testing.assert_allclose(metrics.gt_boxes_px(dets, (W, H))[0], boxes)
