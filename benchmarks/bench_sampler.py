"""Speed of :func:`xpatch_core.sampler.sample_patches` (a benchmark, not a test).

Prints, in one run:

-   centres/s on a full-resolution 299x299 and 4096x4096 map: one
    ``sample_patches`` call drawing 1,000,000 boxes, timed end to end (map
    checks, float64 CDF build, draws, boxes, scores, probabilities);
-   boxes/s for 100 boxes per image over 1,000 images of 640x480, each from
    its own 10x10 map (exact coarse-map path, NMS off);
-   the same workload done naively (upsample each map to 640x480, one full
    CDF per image), and the original recipe's loop (CDF rebuilt per patch),
    with ratios measured in this run.

Run: ``python benchmarks/bench_sampler.py``.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xpatch_core.sampler import sample_patches  # noqa: E402


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


# ---------------------------------------------------------------------------
# the recipe this project grew from, reproduced with its bugs (benchmark only)


def recipe_sample(image: np.ndarray, saliency: np.ndarray, n: int, size: int) -> list[np.ndarray]:
    """The original loop: rebuilds the CDF for every patch, unravels with the
    image's shape instead of the map's, cuts ``size + 1`` pixels around the
    centre (65x65 for 64) truncated at borders, global RNG, with
    replacement."""
    patches = []
    half = size // 2
    for _ in range(n):
        flat = saliency.flatten()
        p = flat / flat.sum()
        cdf = np.cumsum(p)
        idx = np.searchsorted(cdf, np.random.rand())
        y, x = np.unravel_index(idx, (image.shape[0], image.shape[1]))
        patch = image[max(0, y - half) : y + half + 1, max(0, x - half) : x + half + 1]
        patches.append(patch)
    return patches


# ---------------------------------------------------------------------------
# a naive but correct alternative: full-resolution CDF per image


def naive_upsample_cdf(
    saliency: np.ndarray,
    W: int,
    H: int,
    n: int,
    size: int,
    rng: np.random.Generator,
    rows: np.ndarray,
    cols: np.ndarray,
) -> np.ndarray:
    full = saliency[np.ix_(rows, cols)]  # nearest-neighbour upsample to H x W
    half = size // 2
    legal = full[half : H - size + half + 1, half : W - size + half + 1]
    cdf = np.cumsum(legal)
    u = rng.random(n) * cdf[-1]
    idx = np.searchsorted(cdf, u, side="right")
    y0, x0 = np.divmod(idx, legal.shape[1])
    return np.stack([x0, y0, x0 + size, y0 + size], axis=1)


def main() -> None:
    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs visible, python {sys.version.split()[0]}")
    rng = np.random.default_rng(0)
    n_big = 1_000_000

    # ---- centres/s on full-resolution maps ----
    m299 = rng.random((299, 299))
    t299 = best(lambda: sample_patches(m299, (299, 299), n_big, 32, key="a"), 3)
    c299 = n_big / t299
    print(
        f"full-res 299x299 map, 1M boxes of 32 px in one call (incl. map checks + float64 CDF over the 268x268 legal centres): "
        f"{t299 * 1e3:.0f} ms -> {c299 / 1e6:.2f}M centres/s"
    )
    m4k = rng.random((4096, 4096))
    t4k = best(lambda: sample_patches(m4k, (4096, 4096), n_big, 256, key="a"), 2)
    c4k = n_big / t4k
    print(
        f"full-res 4096x4096 map, 1M boxes of 256 px in one call (incl. map checks + float64 CDF over the 3841x3841 legal centres): "
        f"{t4k * 1e3:.0f} ms -> {c4k / 1e6:.2f}M centres/s"
    )
    m4k = None  # free the 128 MB map

    # ---- end to end: 1,000 images of 640x480 from 10x10 maps ----
    n_img, per, W, H, size = 1000, 100, 640, 480, 64
    maps = [rng.random((10, 10)) for _ in range(n_img)]

    def ours() -> None:
        for i, m in enumerate(maps):
            sample_patches(m, (W, H), per, size, key=i)

    t_ours = best(ours, 3)
    b_ours = n_img * per / t_ours
    print(
        f"coarse 10x10 maps -> 640x480 images, {per} boxes/image, {n_img} images, NMS off: "
        f"{t_ours:.3f} s -> {b_ours / 1e3:.0f}k boxes/s, {n_img / t_ours:.0f} images/s "
        f"({t_ours / n_img * 1e6:.0f} us/image)"
    )

    rows = np.floor((np.arange(H) + 0.5) * 10 / H).astype(np.intp)
    cols = np.floor((np.arange(W) + 0.5) * 10 / W).astype(np.intp)

    def naive() -> None:
        for i, m in enumerate(maps):
            naive_upsample_cdf(m, W, H, per, size, np.random.default_rng(i), rows, cols)

    t_naive = best(naive, 2)
    b_naive = n_img * per / t_naive
    print(
        f"naive upsample to 640x480 + full CDF, same workload: {t_naive:.3f} s -> "
        f"{b_naive / 1e3:.0f}k boxes/s"
    )

    # ---- the recipe's loop ----
    img299 = np.zeros((299, 299, 3), dtype=np.uint8)
    n_rec = 2000
    np.random.seed(0)
    t_rec = best(lambda: recipe_sample(img299, m299, n_rec, 64), 1)
    r_rec = n_rec / t_rec
    patches = recipe_sample(img299, m299, 500, 64)
    bad = sum(p.shape[:2] != (64, 64) for p in patches)
    print(
        f"recipe loop on the same 299x299 map, {n_rec} patches: {t_rec:.2f} s -> {r_rec:.0f} patches/s "
        f"({bad}/500 patches not 64x64: 65x65 or truncated)"
    )
    img640 = np.zeros((H, W, 3), dtype=np.uint8)
    n_rec2 = 5000
    t_rec2 = best(lambda: recipe_sample(img640, maps[0], n_rec2, size), 1)
    r_rec2 = n_rec2 / t_rec2
    ys = {int(np.unravel_index(i, (H, W))[0]) for i in range(100)}
    print(
        f"recipe loop on a 10x10 map for a 640x480 image, {n_rec2} patches: {r_rec2:.0f} patches/s "
        f"(unravels with the image width: every centre lands in image row(s) {sorted(ys)})"
    )

    # ---- ratios (same run) ----
    print("ratios measured in this run:")
    print(f"  ours 299x299 centres/s vs recipe loop on the same map: {c299 / r_rec:,.0f}x")
    print(f"  ours coarse end-to-end boxes/s vs naive upsample+CDF:   {b_ours / b_naive:.1f}x")
    print(f"  ours coarse end-to-end boxes/s vs recipe loop (10x10):  {b_ours / r_rec2:,.0f}x")
    print(
        "targets (2-core CPU): >= 5M centres/s at 299^2 "
        f"[{'met' if c299 >= 5e6 else 'MISSED'}], >= 1M/s at 4096^2 [{'met' if c4k >= 1e6 else 'MISSED'}], "
        f">= 200k boxes/s end to end [{'met' if b_ours >= 2e5 else 'MISSED'}]"
    )


if __name__ == "__main__":
    main()
