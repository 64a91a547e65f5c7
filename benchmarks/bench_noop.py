"""A rerun with nothing to do, against FiftyOne's own start-up, measured in one run.

Builds a persistent dataset of 1,000 samples (the kitchenware photos, repeated)
whose saliency and patch runs are complete (a small saved classifier, so the
set-up is quick), then times in fresh processes, interleaved over rounds:

-   FiftyOne's start-up: ``import fiftyone; fo.list_datasets()``;
-   the same plus a rerun of both runs with the same arguments, which must
    find nothing to do (no model loaded, TensorFlow never imported).

Prints the medians, the rerun's cost beyond the start-up (goal: under 2 s)
and whether TensorFlow was imported.

    .venv/bin/python benchmarks/bench_noop.py [--samples 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_STARTUP = "import fiftyone as fo; fo.list_datasets()"
_RERUN = """
import json, sys
import fiftyone as fo
fo.list_datasets()
from xpatch_core import runs
ds = fo.load_dataset(sys.argv[1])
s = runs.run_saliency(ds, "sal", sys.argv[2], "activation")
p = runs.run_patches(ds, "sal", "pp", n=4, size=24)
print(json.dumps({"tf": "tensorflow" in sys.modules, "status": [s.status, p.status],
                  "skipped": [s.skipped, p.skipped]}))
"""


def _timed(code: str, *args: str) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    return time.perf_counter() - t, out.stdout


def _build(name: str, samples: int, folder: str) -> str:
    import fiftyone as fo
    import keras

    from xpatch_core import runs
    from xpatch_core.offline import kitchenware_images

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = os.path.join(folder, "small.keras")
    keras.Model(inp, keras.layers.Dense(3)(x)).save(model)
    photos = kitchenware_images()
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name, persistent=True)
    ds.add_samples([fo.Sample(filepath=photos[i % len(photos)]) for i in range(samples)])
    runs.run_saliency(ds, "sal", model, "activation", progress=True)
    runs.run_patches(ds, "sal", "pp", n=4, size=24, progress=True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import fiftyone as fo

    name = f"xpatch-bench-noop-{os.getpid()}"
    with tempfile.TemporaryDirectory() as folder:
        model = _build(name, args.samples, folder)
        try:
            startup, rerun = [], []
            info = {}
            for _ in range(args.rounds):
                startup.append(_timed(_STARTUP)[0])
                t, out = _timed(_RERUN, name, model)
                rerun.append(t)
                info = json.loads(out.strip().splitlines()[-1])
        finally:
            fo.delete_dataset(name)
    s, r = statistics.median(startup), statistics.median(rerun)
    print(f"samples: {args.samples}, rounds: {args.rounds} (medians, fresh processes)")
    print(f"FiftyOne start-up (import fiftyone; fo.list_datasets()): {s:.2f} s")
    print(f"start-up + no-op rerun of a saliency and a patch run: {r:.2f} s")
    print(f"no-op rerun beyond start-up: {r - s:.2f} s (goal < 2 s)")
    print(f"statuses: {info.get('status')}, skipped: {info.get('skipped')}, TensorFlow imported: {info.get('tf')}")


if __name__ == "__main__":
    main()
