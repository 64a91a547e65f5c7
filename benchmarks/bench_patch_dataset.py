"""Patch datasets against FiftyOne's own export of the patches view, in one run.

Builds a dataset of 2,000 images (the shared COCO subset's photos repeated)
with 16 patches each, drawn by xpatch's sampler from a cheap random map (no
model), then times, in interleaved rounds:

-   ``make_patch_dataset`` (crops written as files, one new sample per patch
    in a new dataset, provenance and labels);
-   FiftyOne's export of the same patches view as an image classification
    directory tree (``dataset.to_patches(field).export(...,
    fo.types.ImageClassificationDirectoryTree, label_field=field)``), which
    writes the same crops but no dataset (it reads the source image once per
    patch);
-   FiftyOne's export of the same crops from the images
    (``dataset.export(..., ImageClassificationDirectoryTree,
    label_field=field)``, which reads each image once for all its patches):
    the stronger baseline.

Prints crops/s of each, the time ratios per round and their medians (goal:
xpatch within 1.5x of FiftyOne's time; below 1 is faster).

    .venv/bin/python benchmarks/bench_patch_dataset.py [--images 2000] [--patches 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
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


def build(n_images: int, n_patches: int, size: int) -> tuple[object, int]:
    """The source dataset: COCO photos repeated, patches from a cheap map."""
    import fiftyone as fo

    import xpatch_core as xp
    from xpatch_core.images import image_size
    from xpatch_core.runs import detection_son

    photos = sorted(os.path.abspath(p) for p in glob.glob(os.path.join(SHARED, "*.jpg")))
    if not photos:
        from xpatch_core.offline import kitchenware_images

        photos = kitchenware_images()
    sizes = {p: image_size(p) for p in photos}
    paths = [photos[i % len(photos)] for i in range(n_images)]
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=p, metadata=fo.ImageMetadata(width=sizes[p][0], height=sizes[p][1]))
                    for p in paths], progress=False)
    values = {}
    for sid, p in zip(ds.values("id"), ds.values("filepath")):
        m = np.random.default_rng(abs(hash(sid)) % 2**32).random((8, 8))
        ps = xp.sample_patches(m, sizes[p], n_patches, size, seed=0, key=sid)
        values[sid] = {"_cls": "Detections", "detections": [
            detection_son(label="patch", bounding_box=[float(v) for v in ps.rel_boxes[k]],
                          score=float(ps.scores[k]), rank=k + 1) for k in range(len(ps))]}
    first = next(iter(values))
    ds.set_values("pp", {first: fo.Detections(detections=[fo.Detection.from_dict(d)
                                                           for d in values[first]["detections"]])},
                  key_field="id", dynamic=True)
    ds.set_values("pp", {k: v for k, v in values.items() if k != first}, key_field="id", validate=False)
    return ds, ds.count("pp.detections")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--patches", type=int, default=16)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="crop threads (default XPATCH_DECODE_WORKERS)")
    args = parser.parse_args()

    import fiftyone as fo

    from xpatch_core.patch_dataset import iter_make_patch_dataset
    from xpatch_core.runs import drive

    t0 = time.perf_counter()
    ds, n = build(args.images, args.patches, args.size)
    print(f"source: {len(ds)} images, {n} patches of {args.size} px (built in {time.perf_counter() - t0:.0f} s); "
          f"{os.cpu_count()} CPUs")
    work = tempfile.mkdtemp(prefix="xpatch-bench-pds-")
    ours, theirs, ratios, images_t, ratios2 = [], [], [], [], []
    try:
        for r in range(args.rounds):
            out = os.path.join(work, f"ours-{r}")
            name = f"bench-pds-{os.getpid()}-{r}"
            t = time.perf_counter()
            report = drive(iter_make_patch_dataset(ds, "pp", name, out, workers=args.workers), False)
            a = time.perf_counter() - t
            assert report.added == n and report.total == n, report.summary()
            fo.delete_dataset(name)
            shutil.rmtree(out)

            out = os.path.join(work, f"fiftyone-{r}")
            t = time.perf_counter()
            ds.to_patches("pp").export(export_dir=out, dataset_type=fo.types.ImageClassificationDirectoryTree,
                                       label_field="pp", progress=False)
            b = time.perf_counter() - t
            written = sum(len(f) for _, _, f in os.walk(out))
            assert written == n, (written, n)
            shutil.rmtree(out)

            out = os.path.join(work, f"fiftyone-images-{r}")
            t = time.perf_counter()
            ds.export(export_dir=out, dataset_type=fo.types.ImageClassificationDirectoryTree, label_field="pp",
                      progress=False)
            c = time.perf_counter() - t
            written = sum(len(f) for _, _, f in os.walk(out))
            assert written == n, (written, n)
            shutil.rmtree(out)

            ours.append(a)
            theirs.append(b)
            images_t.append(c)
            ratios.append(a / b)
            ratios2.append(a / c)
            print(f"round {r + 1}: make_patch_dataset {a:.1f} s ({n / a:.0f} crops/s); FiftyOne patches-view "
                  f"export {b:.1f} s ({n / b:.0f} crops/s), ratio {a / b:.2f}; FiftyOne image export {c:.1f} s "
                  f"({n / c:.0f} crops/s), ratio {a / c:.2f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        ds.delete()
    a, b, c = statistics.median(ours), statistics.median(theirs), statistics.median(images_t)
    print(f"median over {args.rounds} rounds: make_patch_dataset {n / a:.0f} crops/s (files + a new dataset of "
          f"{n} samples); FiftyOne's patches-view export {n / b:.0f} crops/s, time ratio xpatch / FiftyOne "
          f"{statistics.median(ratios):.2f}; FiftyOne's image export {n / c:.0f} crops/s, time ratio "
          f"{statistics.median(ratios2):.2f} (goal <= 1.5; files only for FiftyOne)")


if __name__ == "__main__":
    main()
