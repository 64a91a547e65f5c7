"""Tests of :mod:`xpatch_core.sampler`.

The reference here is written independently of the library: a coarse map is
upsampled to the image by pixel centres (pixel ``x`` belongs to map column
``floor((x + 0.5) * w / W)``), every legal top-left position is weighted by
the density at its centre pixel ``(x0 + bw // 2, y0 + bh // 2)``, and the
result is compared with what the sampler returns.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from xpatch_core.errors import ParameterError
from xpatch_core.sampler import (
    DegenerateMapError,
    PatchSet,
    box_shapes,
    image_rng,
    legal_positions,
    sample_patches,
    stable_key_hash,
)

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)


# ---------------------------------------------------------------------------
# independent reference


def full_res(m: np.ndarray, W: int, H: int) -> np.ndarray:
    h, w = m.shape
    rows = np.floor((np.arange(H) + 0.5) * h / H).astype(int)
    cols = np.floor((np.arange(W) + 0.5) * w / W).astype(int)
    return m[np.ix_(rows, cols)]


def clean(m: np.ndarray) -> np.ndarray:
    m = np.where(np.isfinite(m), m, 0.0)
    return np.clip(m, 0.0, None)


def expected_probs(m, W, H, bw, bh, temperature=1.0, eps=0.0) -> np.ndarray:
    """``[y0, x0]`` probabilities of every legal position."""
    d = full_res(clean(np.asarray(m, dtype=np.float64)), W, H)
    if temperature != 1.0:
        d = (d / d.max()) ** temperature
    wts = d[bh // 2 : H - bh + bh // 2 + 1, bw // 2 : W - bw + bw // 2 + 1]
    assert wts.shape == (H - bh + 1, W - bw + 1)
    if wts.sum() == 0:  # documented fallback: uniform over legal positions
        return np.full(wts.shape, 1.0 / wts.size)
    p = wts / wts.sum()
    return (1.0 - eps) * p + eps / p.size


def chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Upper-tail p-value of Pearson's statistic (Wilson-Hilferty)."""
    counts, probs = counts.ravel(), probs.ravel()
    assert counts[probs == 0].sum() == 0, "draws at zero-probability positions"
    pos = probs > 0
    n = counts.sum()
    e = probs[pos] * n
    assert e.min() >= 5, "test too small for chi-square"
    stat = float(((counts[pos] - e) ** 2 / e).sum())
    k = int(pos.sum()) - 1
    if k == 0:
        return 1.0
    z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def position_counts(r: PatchSet, W, H, bw, bh) -> np.ndarray:
    c = np.zeros((H - bh + 1, W - bw + 1), dtype=np.int64)
    np.add.at(c, (r.boxes[:, 1], r.boxes[:, 0]), 1)
    return c


def pair_iou(b: np.ndarray) -> np.ndarray:
    b = b.astype(np.float64)
    iw = np.clip(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iou = inter / (area[:, None] + area[None, :] - inter)
    np.fill_diagonal(iou, 0.0)
    return iou


def pair_dist(b: np.ndarray) -> np.ndarray:
    c = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=1)
    d = np.sqrt(((c[:, None, :] - c[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return d


@st.composite
def scenes(draw, max_side: int = 48):
    """A random image size, map (coarse or full resolution) and box size."""
    W = draw(st.integers(1, max_side))
    H = draw(st.integers(1, max_side))
    if draw(st.booleans()):
        h, w = H, W
    else:
        h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    density = draw(st.sampled_from([1.0, 0.5, 0.1]))
    m = rng.random((h, w)) * (rng.random((h, w)) < density)
    if m.max() == 0 or m.min() == m.max():
        m[rng.integers(h), rng.integers(w)] = 2.0
        m.flat[0] = 0.5 if m.size > 1 else 2.0
    size = draw(st.integers(1, min(W, H)))
    return m, W, H, size


# ---------------------------------------------------------------------------
# geometry


def test_legal_positions():
    assert legal_positions(299, 64) == 236
    assert legal_positions(64, 64) == 1
    assert legal_positions(10, 11) == 0


@given(
    scene=scenes(),
    mode=st.sampled_from(["random", "topk", "grid"]),
    aspect=st.sampled_from([1.0, 0.5, 2.0, 3.0]),
    score=st.sampled_from(["center", "mean"]),
)
@SETTINGS
def test_boxes_full_size_and_inside(scene, mode, aspect, score):
    m, W, H, size = scene
    shapes = box_shapes((W, H), size, aspect_ratios=(aspect,))
    assume(shapes[0, 0] <= W and shapes[0, 1] <= H)
    bw, bh = (int(v) for v in shapes[0])
    r = sample_patches(m, (W, H), 200, size, aspect_ratios=(aspect,), mode=mode, score=score, key=W * H)
    b = r.boxes
    assert b.dtype == np.int64 and b.shape == (len(r), 4) and len(r) >= 1
    assert np.all(b[:, 2] - b[:, 0] == bw) and np.all(b[:, 3] - b[:, 1] == bh)
    assert b[:, 0].min() >= 0 and b[:, 1].min() >= 0
    assert b[:, 2].max() <= W and b[:, 3].max() <= H
    ones = np.ones(len(r))
    np.testing.assert_array_equal(
        r.rel_boxes, np.stack([b[:, 0] / W, b[:, 1] / H, ones * bw / W, ones * bh / H], 1)
    )
    assert r.rel_boxes.dtype == np.float64
    assert not r.flags.any()
    assert np.all((r.scores >= 0) & (r.scores <= 1 + 1e-12))
    exp = expected_probs(m, W, H, bw, bh)
    np.testing.assert_allclose(r.probs, exp[b[:, 1], b[:, 0]], rtol=1e-9, atol=1e-15)
    if mode == "random":
        assert np.all(r.probs > 0)


@given(scene=scenes(max_side=40))
@SETTINGS
def test_exact_distribution_over_all_legal_positions(scene):
    """topk with n = #positions enumerates every legal position exactly once,
    including the last flush position on each border, with exact probs."""
    m, W, H, size = scene
    nx, ny = legal_positions(W, size), legal_positions(H, size)
    r = sample_patches(m, (W, H), nx * ny, size, mode="topk")
    assert len(r) == nx * ny
    got = {(int(x), int(y)) for x, y in r.boxes[:, :2]}
    assert got == {(x, y) for x in range(nx) for y in range(ny)}
    assert r.boxes[:, 2].max() == W and r.boxes[:, 3].max() == H  # flush
    exp = expected_probs(m, W, H, size, size)
    np.testing.assert_allclose(r.probs, exp[r.boxes[:, 1], r.boxes[:, 0]], rtol=1e-9, atol=1e-15)
    assert math.isclose(r.probs.sum(), 1.0, rel_tol=1e-9)
    # ranked by weight
    assert np.all(np.diff(r.probs) <= 1e-15)


def test_every_position_reachable_with_uniform_map():
    W, H, p = 23, 17, 6
    r = sample_patches(np.ones((4, 4)) + np.eye(4) * 1e-9, (W, H), 20000, p, key="u")
    xs, ys = set(r.boxes[:, 0].tolist()), set(r.boxes[:, 1].tolist())
    assert xs == set(range(W - p + 1)) and ys == set(range(H - p + 1))


def test_weight_only_in_last_cell_gives_flush_boxes():
    m = np.zeros((10, 10))
    m[-1, -1] = 1.0
    W, H, p = 640, 480, 64
    r = sample_patches(m, (W, H), 5000, p, key=1)
    # legal centres in the last cell: x in [576, 608] -> x0 in [544, 576]
    assert r.boxes[:, 0].min() == 576 - 32 and r.boxes[:, 2].max() == W
    assert r.boxes[:, 1].min() == 432 - 32 and r.boxes[:, 3].max() == H
    assert np.all(r.scores == 1.0)
    np.testing.assert_allclose(r.probs, 1.0 / (33 * 17))


# ---------------------------------------------------------------------------
# distribution (chi-square on tiny maps)


@pytest.mark.parametrize(
    "m, W, H, p, kw",
    [
        (np.array([[1.0, 2.0, 0.5], [0.0, 3.0, 1.0]]), 7, 5, 3, {}),  # coarse
        (np.arange(30, dtype=float).reshape(5, 6) % 7, 6, 5, 2, {}),  # full res, even size
        (np.array([[4.0, 1.0], [1.0, 0.0]]), 9, 8, 4, {"temperature": 2.0, "epsilon": 0.25}),
        (np.array([[0.0, 1.0, 0.0, 5.0]]), 11, 6, 3, {"temperature": 0.5}),
        (np.array([[1.0, 0.0], [0.0, 0.0]]), 8, 8, 5, {"epsilon": 0.5}),
    ],
)
def test_chi_square_matches_intended_distribution(m, W, H, p, kw):
    n = 30000
    r = sample_patches(m, (W, H), n, p, key="chi2", **kw)
    exp = expected_probs(m, W, H, p, p, kw.get("temperature", 1.0), kw.get("epsilon", 0.0))
    counts = position_counts(r, W, H, p, p)
    assert counts.sum() == n
    assert chi2_pvalue(counts, exp) > 1e-4
    np.testing.assert_allclose(r.probs, exp[r.boxes[:, 1], r.boxes[:, 0]], rtol=1e-9)


def test_chi_square_several_shapes():
    m = np.array([[1.0, 3.0], [2.0, 0.5]])
    W, H = 9, 7
    r = sample_patches(m, (W, H), 30000, 2, scales=(1.0, 2.0), key="shapes")
    shapes = r.shapes
    k = r.scale_idx * 1 + r.aspect_idx
    # shape choice is uniform
    assert chi2_pvalue(np.bincount(k, minlength=2), np.full(2, 0.5)) > 1e-4
    for s in range(2):
        bw, bh = (int(v) for v in shapes[s])
        sub = r.boxes[k == s]
        assert np.all(sub[:, 2] - sub[:, 0] == bw) and np.all(sub[:, 3] - sub[:, 1] == bh)
        counts = np.zeros((H - bh + 1, W - bw + 1), dtype=np.int64)
        np.add.at(counts, (sub[:, 1], sub[:, 0]), 1)
        assert chi2_pvalue(counts, expected_probs(m, W, H, bw, bh)) > 1e-4


# ---------------------------------------------------------------------------
# reproducibility


def test_same_seed_and_key_same_boxes_in_any_order_or_worker():
    rng = np.random.default_rng(5)
    maps = {f"img{i}": rng.random((10, 10)) for i in range(12)}

    def run(k):
        return sample_patches(maps[k], (640, 480), 50, 64, seed=3, key=k).boxes

    ref = {k: run(k) for k in maps}
    rev = {k: run(k) for k in reversed(list(maps))}
    with ThreadPoolExecutor(4) as ex:
        par = dict(zip(maps, ex.map(run, list(maps)), strict=True))
    for k in maps:
        np.testing.assert_array_equal(ref[k], rev[k])
        np.testing.assert_array_equal(ref[k], par[k])
    a = sample_patches(maps["img0"], (640, 480), 50, 64, seed=3, key="img0").boxes
    b = sample_patches(maps["img0"], (640, 480), 50, 64, seed=3, key="img1").boxes
    c = sample_patches(maps["img0"], (640, 480), 50, 64, seed=4, key="img0").boxes
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


def test_global_rng_untouched_and_key_hash_stable():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    sample_patches(np.random.default_rng(0).random((5, 5)), (50, 50), 10, 8)
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    assert stable_key_hash("abc") == 379167468994990588
    assert stable_key_hash(7) == 9917135981858608630
    assert stable_key_hash(None) != stable_key_hash("None")
    assert image_rng(1, "k").random() == image_rng(1, "k").random()
    with pytest.raises(ValueError):
        stable_key_hash(1.5)


# ---------------------------------------------------------------------------
# overlap control and replacement


@given(
    scene=scenes(),
    max_iou=st.sampled_from([0.0, 0.1, 0.3, 0.7]),
    mode=st.sampled_from(["random", "topk", "grid"]),
)
@SETTINGS
def test_nms_holds(scene, max_iou, mode):
    m, W, H, size = scene
    r = sample_patches(m, (W, H), 30, size, max_iou=max_iou, mode=mode, key="nms", max_tries=3000)
    assert 1 <= len(r) <= 30 and r.requested == 30
    if len(r) > 1:
        assert pair_iou(r.boxes).max() <= max_iou + 1e-12


@given(scene=scenes(), frac=st.floats(0.0, 1.5), mode=st.sampled_from(["random", "topk"]))
@SETTINGS
def test_min_distance_holds(scene, frac, mode):
    m, W, H, size = scene
    md = frac * size
    r = sample_patches(m, (W, H), 30, size, min_distance=md, mode=mode, key="md", max_tries=3000)
    assert 1 <= len(r) <= 30
    if len(r) > 1:
        assert pair_dist(r.boxes).min() >= md - 1e-9


def test_nms_reports_shortfall():
    r = sample_patches(np.ones((3, 3)) + np.eye(3), (100, 100), 50, 40, max_iou=0.0, key=0)
    assert len(r) <= 9 and r.requested == 50 and not r.complete
    assert r.n_draws <= 10_000 + 20 * 50


def test_without_replacement_unique():
    m = np.array([[1.0, 5.0], [0.2, 0.0]])
    W, H, p = 10, 8, 5
    npos = legal_positions(W, p) * legal_positions(H, p)
    # zero-weight cell: only positions with positive weight can come back
    support = int((expected_probs(m, W, H, p, p) > 0).sum())
    r = sample_patches(m, (W, H), support, p, replace=False, key="x")
    assert len(r) == support <= npos and r.complete
    assert len({tuple(b) for b in r.boxes.tolist()}) == support
    r = sample_patches(m, (W, H), support + 5, p, replace=False, key="x", max_tries=2000)
    assert len(r) == support and not r.complete
    r = sample_patches(m, (W, H), 40, p, replace=True, key="x")
    assert len({tuple(b) for b in r.boxes.tolist()}) < 40


# ---------------------------------------------------------------------------
# degenerate maps


def test_clean_map_not_flagged():
    r = sample_patches(np.random.default_rng(0).random((10, 10)), (64, 64), 10, 8)
    assert not r.degenerate and not r.uniform_fallback and r.reason is None


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "infinite")])
def test_non_finite(bad, word):
    m = np.ones((4, 4))
    m[0, :] = 3.0
    m[2, 1] = bad
    r = sample_patches(m, (40, 40), 3000, 4, key="nf")
    assert r.degenerate and word in r.reason and not r.uniform_fallback
    cy = (r.boxes[:, 1] + 2) // 10
    cx = (r.boxes[:, 0] + 2) // 10
    assert not np.any((cy == 2) & (cx == 1))  # treated as 0: never drawn
    with pytest.raises(DegenerateMapError, match=word):
        sample_patches(m, (40, 40), 3, 4, on_degenerate="error")
    with pytest.raises(ValueError):
        sample_patches(m, (40, 40), 3, 4, on_degenerate="error")


def test_negative_values_clipped():
    m = np.array([[-1.0, 2.0], [0.5, -3.0]])
    r = sample_patches(m, (20, 20), 4000, 2, key="neg")
    assert r.degenerate and "negative" in r.reason and not r.uniform_fallback
    exp = expected_probs(m, 20, 20, 2, 2)
    assert chi2_pvalue(position_counts(r, 20, 20, 2, 2), exp) > 1e-4
    with pytest.raises(DegenerateMapError, match="negative"):
        sample_patches(m, (20, 20), 3, 2, on_degenerate="error")


@pytest.mark.parametrize(
    "m, word",
    [
        (np.zeros((5, 5)), "all zero"),
        (np.full((5, 5), 0.7), "constant"),
        (np.full((5, 5), -2.0), "all zero"),  # negative, clipped -> zero
        (np.full((5, 5), np.nan), "all zero"),
        (np.ones((1, 1)), "constant"),
    ],
)
def test_no_information_uniform_fallback(m, word):
    W, H, p = 30, 20, 7
    r = sample_patches(m, (W, H), 20000, p, key="deg")
    assert r.degenerate and r.uniform_fallback and word in r.reason
    npos = legal_positions(W, p) * legal_positions(H, p)
    np.testing.assert_allclose(r.probs, 1.0 / npos)
    counts = position_counts(r, W, H, p, p)
    assert chi2_pvalue(counts, np.full(counts.shape, 1.0 / npos)) > 1e-4
    first = word if np.isfinite(m).all() and m.min() >= 0 else "NaN|negative"  # first problem found
    with pytest.raises(DegenerateMapError, match=first):
        sample_patches(m, (W, H), 5, p, on_degenerate="error")


def test_no_weight_at_legal_centres():
    m = np.zeros((5, 5))
    m[0, 0] = 1.0  # only the corner, but a 5x5 box can only be centred at (2, 2)
    r = sample_patches(m, (5, 5), 4, 5)
    assert r.uniform_fallback and "legal centre" in r.reason
    assert np.all(r.boxes == [0, 0, 5, 5])
    with pytest.raises(DegenerateMapError, match="legal centre"):
        sample_patches(m, (5, 5), 4, 5, on_degenerate="error")


# ---------------------------------------------------------------------------
# borders


def test_oversized_patch_error_names_sizes():
    with pytest.raises(ParameterError, match=r"100x100.*64x48"):
        sample_patches(np.ones((3, 3)), (64, 48), 5, 100)


def test_clip_and_pad():
    m = np.random.default_rng(2).random((6, 8))
    r = sample_patches(m, (64, 48), 5, 100, border="clip")
    assert np.all(r.boxes == [0, 0, 64, 48]) and r.flags.all()
    np.testing.assert_allclose(r.rel_boxes, [[0, 0, 1, 1]] * 5)
    r = sample_patches(m, (64, 48), 5, 100, border="pad")
    assert np.all(r.boxes == [-18, -26, 82, 74]) and r.flags.all()
    # one axis oversized: the other axis follows the marginal of the map
    W, H, p = 120, 48, 64
    r = sample_patches(m, (W, H), 20000, p, border="pad", key="pad")
    assert np.all(r.boxes[:, 1] == -8) and np.all(r.boxes[:, 3] == 56) and r.flags.all()
    d = full_res(m, W, H)
    marg = d.sum(axis=0)[p // 2 : W - p + p // 2 + 1]
    marg = marg / marg.sum()
    counts = np.bincount(r.boxes[:, 0], minlength=W - p + 1)
    assert chi2_pvalue(counts, marg) > 1e-4
    np.testing.assert_allclose(r.probs, marg[r.boxes[:, 0]], rtol=1e-9)
    # mixing fitting and oversized shapes: only the oversized ones are flagged
    r = sample_patches(m, (W, H), 200, 40, scales=(1.0, 2.0), border="clip", key="mix")
    big = r.scale_idx == 1
    assert big.any() and (~big).any()
    assert np.array_equal(r.flags, big)
    assert np.all(r.boxes[big][:, [1, 3]] == [0, H])
    assert np.all(r.boxes[big][:, 2] - r.boxes[big][:, 0] == 80)


# ---------------------------------------------------------------------------
# parameters


@pytest.mark.parametrize(
    "args, kw, word",
    [
        ((0, 8), {}, "n must"),
        ((-3, 8), {}, "n must"),
        ((None, 8), {}, "n=None"),
        ((2.5, 8), {}, "n must"),
        ((5, 0), {}, "size"),
        ((5, 1.5), {}, "fraction"),
        ((5, -0.1), {}, "fraction"),
        ((5, "8"), {}, "size"),
        ((5, 8), {"temperature": float("nan")}, "temperature"),
        ((5, 8), {"temperature": -1.0}, "temperature"),
        ((5, 8), {"epsilon": 1.5}, "epsilon"),
        ((5, 8), {"epsilon": -0.1}, "epsilon"),
        ((5, 8), {"mode": "best"}, "mode"),
        ((5, 8), {"score": "max"}, "score"),
        ((5, 8), {"border": "wrap"}, "border"),
        ((5, 8), {"on_degenerate": "ignore"}, "on_degenerate"),
        ((5, 8), {"max_iou": 1.5}, "max_iou"),
        ((5, 8), {"min_distance": -1}, "min_distance"),
        ((5, 8), {"scales": ()}, "scales"),
        ((5, 8), {"scales": (1.0, 0.0)}, "scales"),
        ((5, 8), {"aspect_ratios": (float("inf"),)}, "aspect_ratios"),
        ((5, 8), {"seed": -1}, "seed"),
        ((5, 8), {"key": 1.5}, "key"),
        ((5, 8), {"max_tries": 0}, "max_tries"),
        ((5, 8), {"mode": "grid", "stride": 0}, "stride"),
    ],
)
def test_invalid_parameters_raise_before_work(args, kw, word):
    # the map is invalid too: parameters are checked first
    with pytest.raises(ParameterError, match=word):
        sample_patches(None, (64, 48), *args, **kw)


@pytest.mark.parametrize(
    "m, image_size",
    [
        (np.ones((2, 2, 3)), (10, 10)),
        (np.ones((0, 4)), (10, 10)),
        (np.ones(5), (10, 10)),
        (np.ones((2, 2)), (0, 10)),
        (np.ones((2, 2)), (10,)),
        (np.array([["a"]]), (10, 10)),
    ],
)
def test_invalid_map_or_image(m, image_size):
    with pytest.raises(ValueError):
        sample_patches(m, image_size, 3, 2)


def test_sizes_scales_aspects():
    shapes = box_shapes((640, 480), 0.25, scales=(1.0, 2.0), aspect_ratios=(1.0, 4.0))
    np.testing.assert_array_equal(shapes, [[120, 120], [240, 60], [240, 240], [480, 120]])
    m = np.random.default_rng(0).random((10, 10))
    r = sample_patches(m, (640, 480), 400, 0.25, scales=(1.0, 2.0), aspect_ratios=(1.0, 4.0), key="s")
    np.testing.assert_array_equal(r.shapes, shapes)
    k = r.scale_idx * 2 + r.aspect_idx
    assert set(k.tolist()) == {0, 1, 2, 3}
    np.testing.assert_array_equal(r.boxes[:, 2:] - r.boxes[:, :2], shapes[k])
    assert r.scale_idx.dtype == np.int64 and r.aspect_idx.dtype == np.int64
    assert (
        sample_patches(m, (640, 480), 1, 64).boxes[0, 2] - sample_patches(m, (640, 480), 1, 64).boxes[0, 0]
        == 64
    )


# ---------------------------------------------------------------------------
# scores


@given(scene=scenes(max_side=40), border=st.sampled_from(["pad", "clip"]), grow=st.integers(0, 20))
@SETTINGS
def test_scores_center_and_mean(scene, border, grow):
    m, W, H, size = scene
    size = size + grow  # may exceed the image: padded / clipped boxes
    d = full_res(m, W, H) / m.max()
    rc = sample_patches(m, (W, H), 40, size, key="s", border=border, score="center")
    rm = sample_patches(m, (W, H), 40, size, key="s", border=border, score="mean")
    np.testing.assert_array_equal(rc.boxes, rm.boxes)
    for b, sc, sm in zip(rc.boxes, rc.scores, rm.scores, strict=True):
        x0, y0, x1, y1 = (int(v) for v in b)
        cx = min(max(x0 + (x1 - x0) // 2, 0), W - 1)
        cy = min(max(y0 + (y1 - y0) // 2, 0), H - 1)
        assert sc == pytest.approx(d[cy, cx], abs=1e-12)
        win = d[max(y0, 0) : min(y1, H), max(x0, 0) : min(x1, W)]
        assert sm == pytest.approx(win.mean(), abs=1e-9)
    assert np.all(rc.flags == (size > W or size > H))


# ---------------------------------------------------------------------------
# topk and grid


def test_topk_deterministic_and_highest():
    m = np.random.default_rng(9).random((30, 40))
    r1 = sample_patches(m, (40, 30), 7, 5, mode="topk", key="a", seed=1)
    r2 = sample_patches(m, (40, 30), 7, 5, mode="topk", key="b", seed=2)
    np.testing.assert_array_equal(r1.boxes, r2.boxes)
    legal = m[2 : 30 - 5 + 2 + 1, 2 : 40 - 5 + 2 + 1]
    top = np.sort(legal.ravel())[::-1][:7] / m.max()
    np.testing.assert_allclose(r1.scores, top)
    # corner weight: topk returns the flush bottom-right box
    c = np.zeros((30, 40))
    c[27, 37] = 1.0  # the last legal centre
    r = sample_patches(c, (40, 30), 1, 5, mode="topk")
    np.testing.assert_array_equal(r.boxes, [[35, 25, 40, 30]])


def test_grid_last_tile_flush():
    m = np.random.default_rng(1).random((10, 10))
    r = sample_patches(m, (100, 70), None, 32, mode="grid")
    xs, ys = sorted(set(r.boxes[:, 0].tolist())), sorted(set(r.boxes[:, 1].tolist()))
    assert xs == [0, 32, 64, 68] and ys == [0, 32, 38]
    assert len(r) == 12 and r.requested is None and r.complete
    cover = np.zeros((70, 100), dtype=bool)
    for x0, y0, x1, y1 in r.boxes:
        cover[y0:y1, x0:x1] = True
    assert cover.all()
    r = sample_patches(m, (96, 64), None, 32, mode="grid")
    assert sorted(set(r.boxes[:, 0].tolist())) == [0, 32, 64] and len(r) == 6  # exact fit: no extra tile
    r = sample_patches(m, (100, 70), 5, 32, mode="grid", stride=(16, 38))
    assert len(r) == 5 and r.boxes[:, 0].tolist() == [0, 16, 32, 48, 64]
    r = sample_patches(m, (100, 70), None, 32, mode="grid", stride=20)
    assert sorted(set(r.boxes[:, 0].tolist())) == [0, 20, 40, 60, 68]


# ---------------------------------------------------------------------------
# extreme uniform draws (side="right", jitter bounds)


class _ConstGen:
    """Stands in for the generator: every uniform draw is ``val``."""

    def __init__(self, val: float):
        self.val = val

    def random(self, size=None):
        return np.full(size, self.val)

    def integers(self, lo, hi, size=None):
        return np.full(size, lo, dtype=np.int64)


@pytest.mark.parametrize("full", [False, True])
def test_extreme_uniforms_never_pick_zero_weight_cells(monkeypatch, full):
    import xpatch_core.sampler.core as core
    from xpatch_core.sampler.seeding import seeded_rng

    W, H, p = 30, 10, 3
    m = np.array([[0.0, 2.0, 0.0]])
    if full:
        m = full_res(m, W, H)
    lo = seeded_rng(0, 0).random()  # the real generator still works
    assert 0 <= lo < 1
    monkeypatch.setattr(core, "seeded_rng", lambda seed, key_hash: _ConstGen(0.0))
    r = sample_patches(m, (W, H), 5, p)
    # u = 0 with side="right" skips the zero-weight first cell: centre x = 10
    assert np.all(r.boxes[:, 0] == 10 - p // 2)
    monkeypatch.setattr(core, "seeded_rng", lambda seed, key_hash: _ConstGen(1.0 - 2.0**-53))
    r = sample_patches(m, (W, H), 5, p)
    # u -> total never runs into the trailing zero-weight cell: centre x = 19
    assert np.all(r.boxes[:, 0] == 19 - p // 2)
    assert np.all(r.boxes[:, 1] == H - p)  # last legal row, flush


@pytest.mark.parametrize(
    "shape, W, H, n, size",
    [
        ((200, 300), 300, 200, 5, 9),
        ((7, 5), 300, 200, 400, 50),
        ((13, 11), 97, 61, 3, 60),
        ((64, 48), 640, 480, 50, 64),
        ((40, 30), 30, 40, 40, 20),
    ],
)
def test_mean_score_both_paths_match_brute_force(shape, W, H, n, size):
    """Few small boxes on a big map (direct visit) and many boxes on a small map
    (integral images) both give the exact window mean."""
    m = np.random.default_rng(sum(shape)).random(shape)
    r = sample_patches(m, (W, H), n, size, score="mean", key="mean")
    d = full_res(m, W, H) / m.max()
    want = [d[y0:y1, x0:x1].mean() for x0, y0, x1, y1 in r.boxes]
    np.testing.assert_allclose(r.scores, want, rtol=1e-9, atol=1e-12)


def test_multi_shape_overlap_control_and_dedup():
    m = np.random.default_rng(3).random((10, 10))
    r = sample_patches(
        m, (200, 160), 40, 40, scales=(1.0, 1.5), aspect_ratios=(0.5, 2.0), max_iou=0.2, key="ms"
    )
    assert len(r) > 5 and pair_iou(r.boxes).max() <= 0.2 + 1e-12
    assert len(set(r.scale_idx.tolist())) == 2 and len(set(r.aspect_idx.tolist())) == 2
    # two oversized shapes clip to the same box: without replacement it comes back once
    r = sample_patches(m, (50, 40), 5, 60, scales=(1.0, 2.0), border="clip", replace=False, max_tries=200)
    assert len(r) == 1 and r.boxes.tolist() == [[0, 0, 50, 40]] and not r.complete


def test_temperature_zero_is_uniform_and_epsilon_one_ignores_map():
    m = np.array([[0.0, 1.0], [5.0, 0.0]])
    for kw in ({"temperature": 0.0}, {"epsilon": 1.0}):
        r = sample_patches(m, (20, 20), 100, 4, key="t", **kw)
        np.testing.assert_allclose(r.probs, 1.0 / 17**2)
        assert not r.degenerate


def test_imports_only_numpy():
    import subprocess
    import sys

    code = (
        "import sys, xpatch_core.sampler as s; "
        "bad = [m for m in ('tensorflow', 'fiftyone', 'scipy', 'PIL', 'torch') if m in sys.modules]; "
        "assert not bad, bad"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# ---------------------------------------------------------------------------
# border="drop": shapes larger than the image are left out for that image


def test_drop_leaves_out_oversized_shapes():
    m = np.random.default_rng(4).random((6, 8))
    W, H = 120, 48
    # shapes 40x40 (fits) and 80x80 (taller than the image)
    for mode in ("random", "topk", "grid"):
        r = sample_patches(m, (W, H), 30, 40, scales=(1.0, 2.0), border="drop", mode=mode, key="d")
        assert r.dropped_shapes == (1,) and r.shapes.tolist() == [[40, 40], [80, 80]]
        assert len(r) >= 1 and np.all(r.scale_idx == 0) and np.all(r.aspect_idx == 0)
        assert np.all(r.boxes[:, 2] - r.boxes[:, 0] == 40) and np.all(r.boxes[:, 3] - r.boxes[:, 1] == 40)
        assert r.boxes[:, :2].min() >= 0 and r.boxes[:, 2].max() <= W and r.boxes[:, 3].max() <= H
        assert not r.flags.any() and not r.degenerate
        assert "80x80" in r.reason and "scale 2" in r.reason and "120x48" in r.reason
        np.testing.assert_allclose(r.probs, expected_probs(m, W, H, 40, 40)[r.boxes[:, 1], r.boxes[:, 0]])
    # the grid holds only the fitting shape's tiles: x at 0, 40, 80 and y at 0, 8 (flush)
    r = sample_patches(m, (W, H), None, 40, scales=(1.0, 2.0), border="drop", mode="grid")
    assert sorted(map(tuple, r.boxes[:, :2].tolist())) == [(x, y) for x in (0, 40, 80) for y in (0, 8)]
    # the same image with border="error" is refused
    with pytest.raises(ParameterError, match=r"80x80 is larger than the image 120x48"):
        sample_patches(m, (W, H), 30, 40, scales=(1.0, 2.0), border="error")


def test_drop_keeps_full_shape_indices_and_aspects():
    m = np.random.default_rng(5).random((10, 10))
    # size 32: scale 3 gives 96x96 (too big for 64x64), scale 1 gives 32x32
    r = sample_patches(m, (64, 64), 20, 32, scales=(3.0, 1.0), border="drop", key="k")
    assert r.dropped_shapes == (0,) and len(r) == 20
    assert np.all(r.scale_idx == 1) and np.all(r.aspect_idx == 0)
    assert np.all(r.boxes[:, 2] - r.boxes[:, 0] == 32)
    # aspect ratio 4 gives 80x20, wider than a 70x60 image; aspect 1 gives 40x40
    r = sample_patches(m, (70, 60), 50, 40, aspect_ratios=(1.0, 4.0, 0.25), border="drop", mode="topk")
    np.testing.assert_array_equal(r.shapes, [[40, 40], [80, 20], [20, 80]])
    assert r.dropped_shapes == (1, 2) and set(r.aspect_idx.tolist()) == {0}
    assert "80x20 (scale 1, aspect ratio 4)" in r.reason and "20x80 (scale 1, aspect ratio 0.25)" in r.reason


def test_drop_draws_uniformly_among_fitting_shapes():
    m = np.array([[1.0, 3.0], [2.0, 0.5]])
    W, H = 9, 7
    # size 2 at scales 1, 2, 4: 2x2, 4x4 fit, 8x8 is taller than 7
    r = sample_patches(m, (W, H), 30000, 2, scales=(1.0, 2.0, 4.0), border="drop", key="u")
    assert r.dropped_shapes == (2,)
    counts = np.bincount(r.scale_idx, minlength=3)
    assert counts[2] == 0
    assert chi2_pvalue(counts[:2], np.full(2, 0.5)) > 1e-4
    for s, p in ((0, 2), (1, 4)):
        sub = r.boxes[r.scale_idx == s]
        assert chi2_pvalue(position_counts_of(sub, W, H, p), expected_probs(m, W, H, p, p)) > 1e-4


def position_counts_of(boxes: np.ndarray, W: int, H: int, p: int) -> np.ndarray:
    c = np.zeros((H - p + 1, W - p + 1), dtype=np.int64)
    np.add.at(c, (boxes[:, 1], boxes[:, 0]), 1)
    return c


def test_drop_with_no_fitting_shape_raises_before_work():
    with pytest.raises(ParameterError, match=r"patch 100x100 is larger than the image 64x48, and so is every"):
        sample_patches(None, (64, 48), 5, 100, scales=(1.0, 2.0), border="drop")
    with pytest.raises(ParameterError, match=r"patch 100x100 is larger than the image 64x48; use"):
        sample_patches(None, (64, 48), 5, 100, border="drop")


def test_every_border_choice_is_accepted():
    from xpatch_core.defaults import CHOICES, PATCHES

    assert "drop" in CHOICES["border"] and PATCHES["border"] in CHOICES["border"]
    for border in CHOICES["border"]:
        r = sample_patches(np.ones((3, 3)) + np.eye(3), (30, 20), 4, 8, border=border, key=border)
        assert len(r) == 4 and r.dropped_shapes == ()


@given(
    scene=scenes(),
    mode=st.sampled_from(["random", "topk", "grid"]),
    scales=st.lists(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0]), min_size=1, max_size=3),
    aspects=st.lists(st.sampled_from([0.25, 0.5, 1.0, 2.0, 4.0]), min_size=1, max_size=3),
    replace=st.booleans(),
    max_iou=st.sampled_from([None, 0.3]),
)
@SETTINGS
def test_drop_property(scene, mode, scales, aspects, replace, max_iou):
    m, W, H, size = scene
    kw = dict(scales=scales, aspect_ratios=aspects, mode=mode, replace=replace, max_iou=max_iou,
              key="p", max_tries=500, score="mean")
    shapes = box_shapes((W, H), size, scales, aspects)
    fits = (shapes[:, 0] <= W) & (shapes[:, 1] <= H)
    if not fits.any():
        with pytest.raises(ParameterError, match="larger than the image"):
            sample_patches(m, (W, H), 20, size, border="drop", **kw)
        return
    r = sample_patches(m, (W, H), 20, size, border="drop", **kw)
    assert r.dropped_shapes == tuple(np.flatnonzero(~fits).tolist())
    k = r.scale_idx * len(aspects) + r.aspect_idx
    assert len(r) >= 1 and np.all(fits[k])  # only fitting shapes appear
    np.testing.assert_array_equal(r.boxes[:, 2:] - r.boxes[:, :2], shapes[k])
    assert r.boxes[:, :2].min() >= 0 and r.boxes[:, 2].max() <= W and r.boxes[:, 3].max() <= H
    assert not r.flags.any()
    if fits.all():  # every shape fits: exactly what border="error" gives
        e = sample_patches(m, (W, H), 20, size, border="error", **kw)
        for f in ("boxes", "rel_boxes", "scores", "probs", "scale_idx", "aspect_idx", "flags", "shapes"):
            np.testing.assert_array_equal(getattr(r, f), getattr(e, f))
        assert (r.n_draws, r.reason, r.degenerate) == (e.n_draws, e.reason, e.degenerate)
    else:
        assert f"left out box shapes larger than the image {W}x{H}" in r.reason


def test_integer_temperatures_by_squaring_match_pow():
    from xpatch_core.sampler.maps import weight_map

    rng = np.random.default_rng(3)
    v = rng.integers(0, 256, (48, 64)).astype(np.float64) / 255.0
    v[0, 0] = 1e-200  # underflows to zero either way
    before = v.copy()
    for t in (2.0, 3.0, 5.0, 8.0, 13.0, 64.0):
        w = weight_map(v, float(v.max()), t, False)
        ref = (v / v.max()) ** t
        assert np.array_equal(w == 0, ref == 0), t
        nz = ref > 0
        assert np.max(np.abs(w[nz] - ref[nz]) / ref[nz]) < 1e-14, t
        assert w is not v and np.array_equal(v, before)  # the map itself is never changed
    assert np.array_equal(weight_map(v, float(v.max()), 2.5, False), (v / v.max()) ** 2.5)  # pow otherwise


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 300), st.integers(1, 40), st.sampled_from([None, 0.0, 0.3, 0.7, 1.0]),
       st.sampled_from([None, 0.0, 5.0, 40.0]), st.integers(0, 2**31 - 1))
def test_greedy_by_pairwise_matrix_matches_the_walk(count, need, max_iou, min_distance, seed):
    from xpatch_core.sampler import overlap

    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 200, (count, 2)).astype(np.float64)
    wh = rng.integers(1, 80, (count, 2)).astype(np.float64)
    cand = np.concatenate([xy, xy + wh], axis=1)
    if count > 3:
        cand[3] = cand[1]  # an exact duplicate: IoU 1, distance 0
    fast = overlap.greedy(cand, need, max_iou, min_distance)  # <= 256 candidates: the pairwise matrix
    saved = overlap._PAIRWISE_MAX
    overlap._PAIRWISE_MAX = -1  # the one-box-at-a-time walk
    try:
        walk = overlap.greedy(cand, need, max_iou, min_distance)
    finally:
        overlap._PAIRWISE_MAX = saved
    assert fast.dtype == walk.dtype == np.int64
    np.testing.assert_array_equal(fast, walk)
    assert len(fast) <= need
    if len(fast) > 1:  # and what it keeps holds the constraints
        assert not (overlap.conflict_matrix(cand[fast], cand[fast], max_iou, min_distance)
                    & ~np.eye(len(fast), dtype=bool)).any()
