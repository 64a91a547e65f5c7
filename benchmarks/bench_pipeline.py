"""The whole job against the model's forward pass, measured in one run.

Prints images/s of ``run_saliency`` + ``run_patches`` on a FiftyOne dataset
(JPEG decoding, inference, heatmap writes, patch sampling, detection writes)
next to the raw forward-only rate of the same model on the same images,
already decoded and preprocessed, with their ratio (target >= 0.85x).

    .venv/bin/python benchmarks/bench_pipeline.py [--images 158] [--method eigencam]

Images: the shared COCO subset (../shared/data/coco_val_subset), else the
kitchenware photos. Model: the ImageNet Xception base (offline weights).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("FIFTYONE_DATABASE_DIR", tempfile.mkdtemp(prefix="xpatch-bench-db-"))

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                      "data", "coco_val_subset", "images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=158)
    parser.add_argument("--method", default="eigencam")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patches", type=int, default=16)
    args = parser.parse_args()

    import fiftyone as fo

    import xpatch_core as xp
    from xpatch_core.images import load_image
    from xpatch_core.offline import extract_xception_weights, kitchenware_images
    from xpatch_core.runs import run_patches, run_saliency

    paths = sorted(glob.glob(os.path.join(SHARED, "*.jpg"))) or kitchenware_images()
    paths = paths[: args.images]
    sm = xp.load_model("xception", weights=extract_xception_weights())
    import tensorflow as tf

    h, w = sm.input_size
    x = np.asarray(sm.preprocess(np.stack([load_image(p, (w, h)).array for p in paths])), np.float32)
    batches = [tf.constant(x[i : i + args.batch_size]) for i in range(0, len(x), args.batch_size)]
    backbone = sm.backbone

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32)])
    def forward(t):
        return backbone(t, training=False)

    def raw() -> float:
        t0 = time.perf_counter()
        for b in batches:
            forward(b).numpy()
        return len(paths) / (time.perf_counter() - t0)

    def pipeline(i: int) -> tuple[float, float, float]:
        ds = fo.Dataset(f"bench-pipeline-{os.getpid()}-{i}")
        ds.add_samples([fo.Sample(filepath=p) for p in paths])
        t0 = time.perf_counter()
        s = run_saliency(ds, "saliency", sm, args.method, batch_size=args.batch_size)
        t1 = time.perf_counter()
        p = run_patches(ds, "saliency", "patches", args.patches, 96)
        t2 = time.perf_counter()
        assert s.processed == len(paths) and p.processed == len(paths), (s, p)
        ds.delete()
        return len(paths) / (t2 - t0), len(paths) / (t1 - t0), len(paths) / (t2 - t1)

    raw()  # warm-up
    pipeline(-1)
    best_raw = best_all = best_sal = best_patch = 0.0
    for i in range(2):
        best_raw = max(best_raw, raw())
        a, s, p = pipeline(i)
        best_all, best_sal, best_patch = max(best_all, a), max(best_sal, s), max(best_patch, p)
    print(f"{len(paths)} images, {args.method}, batch {args.batch_size}, {args.patches} patches of 96 px, "
          f"best of 2 interleaved rounds, {os.cpu_count()} CPUs")
    print(f"raw forward only (decoded, preprocessed):       {best_raw:8.1f} images/s")
    print(f"run_saliency (decode + model + heatmap writes): {best_sal:8.1f} images/s  {best_sal / best_raw:.3f}x")
    print(f"run_patches (sampling + detection writes):      {best_patch:8.1f} images/s")
    print(f"compute_saliency + sample_patches, end to end:  {best_all:8.1f} images/s  "
          f"{best_all / best_raw:.3f}x raw forward (target >= 0.85x)")


if __name__ == "__main__":
    main()
