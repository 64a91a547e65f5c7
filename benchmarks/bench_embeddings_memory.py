"""Memory of an embedding run as the dataset grows: bounded, not proportional.

Issue 17 asks that memory stays bounded on 20,000 images. This builds a
dataset of ``--images`` samples (the shared COCO photos, or the kitchenware
photos, repeated) with ``--patches`` patch boxes each, then runs
:func:`xpatch_core.runs.run_embeddings` twice: on the first ``--first``
samples, then on the whole dataset (which resumes: the rest). It samples the
process's resident memory (``VmRSS``) at every progress event and prints the
peak of each part and the growth per 1,000 images. A small random Keras
model (two strided convolutions, 64 px input) stands in for Xception: the
model's own memory does not depend on the number of images, and Xception
would take about half an hour here for 20,000 images; its embedding layer
has 2,048 channels, so that embeddings kept in memory would show (320,000
of them take 2.6 GB).

    .venv/bin/python benchmarks/bench_embeddings_memory.py [--images 20000] [--first 2000]
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


def rss_mb() -> float:
    """The resident memory of this process now, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def tiny_model() -> object:
    """A random functional classifier with a spatial layer (weights do not matter here)."""
    import keras

    x = inp = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="c1")(x)
    # 2,048 channels: embeddings as wide as Xception's (320,000 of them would take 2.6 GB if kept)
    x = keras.layers.Conv2D(2048, 3, strides=2, activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(10)(x))


def build(n_images: int, n_patches: int) -> object:
    """A dataset of ``n_images`` samples with ``n_patches`` random boxes each."""
    import fiftyone as fo

    from xpatch_core.offline import kitchenware_images
    from xpatch_core.runs import detection_son

    photos = sorted(glob.glob(os.path.join(SHARED, "*.jpg"))) or kitchenware_images()
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=photos[i % len(photos)]) for i in range(n_images)], progress=False)
    ds.compute_metadata(progress=False)
    rng = np.random.default_rng(0)
    ids = ds.values("id")
    first = fo.Detections(detections=[fo.Detection(label="patch", bounding_box=[0.1, 0.1, 0.2, 0.2])])
    ds.set_values("patches", {ids[0]: first}, key_field="id")
    values = {}
    for sid in ids:
        xy = rng.uniform(0, 0.8, size=(n_patches, 2))
        values[sid] = {"_cls": "Detections", "detections": [
            detection_son(label="patch", bounding_box=[float(x), float(y), 0.2, 0.2]) for x, y in xy]}
    ds.set_values("patches", values, key_field="id", validate=False, expand_schema=False)
    return ds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--first", type=int, default=2000)
    parser.add_argument("--patches", type=int, default=16)
    args = parser.parse_args()

    from xpatch_core.runs import run_embeddings

    t0 = time.perf_counter()
    ds = build(args.images, args.patches)
    model = tiny_model()
    print(f"{args.images} samples x {args.patches} patches built in {time.perf_counter() - t0:.0f} s; "
          f"resident memory {rss_mb():.0f} MB")
    peaks = []
    for label, view in ((f"first {args.first}", ds.limit(args.first)), (f"the other {args.images - args.first}", ds)):
        seen = [rss_mb()]
        t = time.perf_counter()
        s = run_embeddings(view, "patches", model=model, layer="c2", fine_layer=None,
                           progress=lambda e, seen=seen: seen.append(rss_mb()))
        peaks.append(max(seen))
        print(f"{label}: {s.processed} images embedded in {time.perf_counter() - t:.0f} s; resident memory "
              f"{seen[0]:.0f} MB before, peak {max(seen):.0f} MB, {len(seen) - 1} progress events")
    embedded = ds.count("patches.detections.embedding")
    growth = (peaks[1] - peaks[0]) / ((args.images - args.first) / 1000)
    dim = len(ds.first().patches.detections[0].embedding)
    print(f"{embedded} embeddings of {dim} floats stored ({embedded * dim * 4 / 2**30:.1f} GiB if kept); peak over {args.images} images vs over {args.first}: "
          f"{peaks[1] - peaks[0]:+.0f} MB ({growth:+.2f} MB per 1,000 images)")
    ds.delete()


if __name__ == "__main__":
    main()
