"""Shared helpers for the App tests: a real ``fiftyone app launch`` server and a
``fiftyone delegated launch`` worker, each in its own process group, plus a
persistent dataset of the kitchenware photos and HTTP helpers for the
operator routes.

The processes inherit the test session's environment (``tests/conftest.py``
sets a private ``FIFTYONE_DATABASE_DIR``, ``FIFTYONE_PLUGINS_DIR`` with a
symlink to this repository, ``KERAS_HOME`` ...), so they see the test
database and the plugin. With the embedded database, the test process starts
``mongod`` first (it creates the dataset) and the server and worker connect to
that same ``mongod``.

One App server is shared by every test module of a session
(:func:`shared_app`): it is stopped when the session ends, and at exit as a
last resort.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
PLUGIN = "@xpatch/xpatch"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    """Returns a TCP port that is free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of the App server and the delegated worker: the test
    session's (private database and plugins folder, Keras cache), with
    legacy orchestrators allowed so that the App offers "Schedule".

    The test process connects to the database first, and the children get
    its port (``FIFTYONE_PRIVATE_DATABASE_PORT``): FiftyOne's database
    service otherwise attaches to *any* ``mongod`` it started on this
    machine, whatever its ``FIFTYONE_DATABASE_DIR``.
    """
    import fiftyone.core.odm as foo

    foo.get_db_conn()  # starts (or attaches to) mongod; sets the port variable
    env = dict(os.environ)
    env.update(
        FIFTYONE_DO_NOT_TRACK="true",
        FIFTYONE_DATABASE_VALIDATION="false",
        FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS="true",
        PYTHONUNBUFFERED="1",
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


class GroupProcess:
    """A command run in its own process group, with its output in a log file;
    :meth:`stop` ends the whole group (the command and every child)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]):
        self.name = name
        self.args = args
        fd, self.log_path = tempfile.mkstemp(prefix=f"xpatch-{name}-", suffix=".log")
        self._log = os.fdopen(fd, "wb")
        self.proc = subprocess.Popen(
            args,
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group
        )
        self.pgid = self.proc.pid
        self.groups: set[int] = set()
        atexit.register(self.stop)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self, tail: int = 6000) -> str:
        """The last characters of the process group's output."""
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
        except OSError:
            return ""
        return data[-tail:].decode("utf-8", "replace")

    def note_children(self) -> None:
        """Records the process groups of the command's descendants.

        FiftyOne runs its server under ``service/main.py``, which calls
        ``setpgrp()``: the server lives in a process group of its own and
        outlives the launcher. Its group is remembered here (while the
        launcher is alive to find it from) and stopped with ours. The shared
        database service (``--51-service db``) is left alone: the test
        process started it, and it exits when its last client does.
        """
        import psutil

        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return
        for kid in kids:
            try:
                if "db" in _service_name(kid.cmdline()):
                    continue
                pgid = os.getpgid(kid.pid)
            except (psutil.Error, ProcessLookupError):
                continue
            if pgid != os.getpgid(0):
                self.groups.add(pgid)

    def stop(self, timeout: float = 15.0) -> None:
        """Stops every process group the command made: SIGTERM, then SIGKILL."""
        if self.alive():
            self.note_children()
        groups = [self.pgid, *sorted(self.groups - {self.pgid})]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            live = [g for g in groups if _group_alive(g)]
            if not live:
                break
            for g in live:
                try:
                    os.killpg(g, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + timeout
            while time.time() < deadline and any(_group_alive(g) for g in live):
                try:
                    self.proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if not self._log.closed:
            self._log.close()
        if os.path.exists(self.log_path):
            os.remove(self.log_path)


def _service_name(cmdline: list[str]) -> list[str]:
    """The FiftyOne service name in a ``service/main.py`` command line."""
    for i, arg in enumerate(cmdline[:-1]):
        if arg == "--51-service":
            return [cmdline[i + 1]]
    return []


def _group_alive(pgid: int) -> bool:
    """Whether a process group has a live (non-zombie) member."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


class AppServer(GroupProcess):
    """``fiftyone app launch DATASET --remote --address 127.0.0.1 --port P``."""

    def __init__(self, dataset_name: str | None = None, port: int | None = None, **env: str):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [os.path.join(BIN, "fiftyone"), "app", "launch"]
        if dataset_name:
            args.append(dataset_name)
        # --wait -1: keep serving when no browser tab is connected.
        args += ["--remote", "--address", "127.0.0.1", "--port", str(self.port), "--wait", "-1"]
        super().__init__("app", args, child_env(**env))

    def wait_ready(self, timeout: float = 150.0) -> dict[str, Any]:
        """Polls ``GET /fiftyone`` until the server answers (a cold start
        takes 30-50 s).

        Returns:
            the server's answer (its version)
        """
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.alive():
                raise RuntimeError(f"the App launcher exited ({self.proc.returncode}):\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/fiftyone", timeout=3) as r:
                    answer = json.loads(r.read())
                self.note_children()
                return answer
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(1.0)
        raise TimeoutError(f"the App server did not answer within {timeout:.0f} s:\n{self.log()}")


class DelegatedWorker(GroupProcess):
    """``fiftyone delegated launch``: runs queued delegated operations."""

    def __init__(self, **env: str):
        super().__init__("worker", [os.path.join(BIN, "fiftyone"), "delegated", "launch"], child_env(**env))


_SHARED: dict[str, AppServer] = {}


def shared_app(request: Any, dataset_name: str) -> AppServer:
    """Returns the session's App server, starting it on first use with
    ``fiftyone app launch DATASET``; it is stopped when the pytest session
    ends (or at exit). It serves every dataset of the test database.

    Args:
        request: a pytest ``request`` (of any scope)
        dataset_name: the dataset to launch the App on, if it starts now
    """
    app = _SHARED.get("app")
    if app is not None and app.alive():
        return app
    app = AppServer(dataset_name)
    _SHARED["app"] = app

    def _stop() -> None:
        _SHARED.pop("app", None)
        app.stop()

    request.session.addfinalizer(_stop)
    try:
        app.wait_ready()
    except BaseException:
        _stop()
        raise
    return app


# -- data ------------------------------------------------------------------------


def kitchen_dataset(name: str) -> Any:
    """A new persistent dataset of the 18 kitchenware photos, with metadata.

    Args:
        name: the dataset name (an existing dataset of that name is deleted)
    """
    import fiftyone as fo

    from xpatch_core.offline import kitchenware_images

    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name, persistent=True)
    ds.add_samples([fo.Sample(filepath=p) for p in kitchenware_images()])
    ds.compute_metadata()
    return ds


def saliency_form(model_path: str, class_names: list[str], field: str = "saliency") -> dict[str, Any]:
    """The compute_saliency form as a user fills it for the kitchenware model."""
    return {
        "model": "saved",
        "model_path": model_path,
        "class_names": ",".join(class_names),
        "method": "gradcam",
        "target_mode": "predicted",
        "batch_size": 18,
        "field": field,
        "storage": "database",
        "overwrite": False,
    }


# -- the operator routes -------------------------------------------------------------


def request_body(dataset_name: str, operator: str, params: dict[str, Any] | None = None,
                 **extra: Any) -> dict[str, Any]:
    """The body the App posts to ``/operators/execute/generator`` (the
    App's ``executeOperatorAsGenerator`` in fiftyone 1.22)."""
    body = {
        "current_sample": None,
        "dataset_name": dataset_name,
        "delegation_target": None,
        "extended": None,
        "extended_selection": None,
        "filters": {},
        "operator_uri": operator if operator.startswith("@") else f"{PLUGIN}/{operator}",
        "params": params or {},
        "request_delegation": False,
        "selected": [],
        "selected_samples": [],
        "sample_selection_style": {},
        "selected_labels": [],
        "view": [],
        "view_name": None,
        "group_slice": None,
        "query_performance": False,
        "spaces": None,
        "workspace_name": None,
        "prompt_id": None,
        "active_fields": [],
    }
    body.update(extra)
    return body


def post_json(url: str, body: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """POSTs JSON and returns the JSON answer."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def stream_json_lines(url: str, body: dict[str, Any], timeout: float = 300.0) -> Iterator[dict[str, Any]]:
    """POSTs JSON and yields the JSON lines of a streamed answer as they come."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for raw in r:
            line = raw.strip()
            if line:
                yield json.loads(line)


def run_operator(app: AppServer, dataset_name: str, operator: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Executes an operator through the App server's generator route, as the
    App does, and returns its messages.

    Raises:
        AssertionError: if a message is not a success (with the messages)
    """
    messages = list(stream_json_lines(f"{app.url}/operators/execute/generator",
                                      request_body(dataset_name, operator, params)))
    bad = [m for m in messages if "SUCCESS" not in str(m.get("type"))]
    if bad or not messages:
        raise AssertionError(f"{operator} failed: {bad or 'no answer'}\n{app.log()}")
    return messages
