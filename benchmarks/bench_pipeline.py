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
    parser.add_argument("--rounds", type=int, default=5)
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
    rows = []
    for i in range(args.rounds):
        r = raw()
        a, s, p = pipeline(i)
        rows.append((r, a, s, p))
        print(f"round {i + 1}: raw {r:.1f}, saliency {s:.1f} ({s / r:.3f}x), patches {p:.1f}, "
              f"end to end {a:.1f} images/s ({a / r:.3f}x)")
    med = lambda v: float(np.median(v))  # noqa: E731
    r, a, s, p = (med([row[k] for row in rows]) for k in range(4))
    e2e = med([row[1] / row[0] for row in rows])
    sal = med([row[2] / row[0] for row in rows])
    print(f"{len(paths)} images, {args.method}, batch {args.batch_size}, {args.patches} patches of 96 px, "
          f"{args.rounds} interleaved rounds (medians), {os.cpu_count()} CPUs")
    print(f"raw forward only (decoded, preprocessed):       {r:8.1f} images/s")
    print(f"run_saliency (decode + model + heatmap writes): {s:8.1f} images/s  {sal:.3f}x")
    print(f"run_patches (sampling + detection writes):      {p:8.1f} images/s")
    print(f"compute_saliency + sample_patches, end to end:  {a:8.1f} images/s  "
          f"{e2e:.3f}x raw forward (median of per-round ratios; target >= 0.85x)")


if __name__ == "__main__":
    main()
