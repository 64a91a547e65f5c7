"""The FiftyOne data layer: saliency and patch runs on a sample collection.

Every call is a FiftyOne run (``register_run``) keyed by its output field,
recording the model and weights, method, layer, all parameters, seed, package
version, counts, failures and elapsed time. Results are written in bulk with
``set_values(..., key_field="id")``, one chunk at a time, so an interrupted
run keeps what it finished and resumes with the rest.

The functions come in pairs: ``iter_*`` generators yield :class:`Progress`
events and return a summary (for the App's progress bar), and the plain
functions run them to completion, optionally with a progress bar.
"""

from __future__ import annotations

import datetime as _dt
import glob
import math
import os
import re
import socket
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from xpatch_core import __version__
from xpatch_core.errors import ImageDecodeError, ParameterError, XpatchError

#: Tag set on samples that failed in a run, as ``xpatch:<field>:failed``.
FAILED_TAG = "xpatch:{field}:failed"

_IDENT = re.compile(r"\A[A-Za-z][A-Za-z0-9_]*\Z")  # \Z: "$" would accept a trailing newline
_RESERVED = {"id", "filepath", "tags", "metadata", "media_type", "created_at", "last_modified_at", "frames"}
_CHUNK = int(os.environ.get("XPATCH_WRITE_CHUNK", 64))
_LOCK_TTL = float(os.environ.get("XPATCH_LOCK_TTL", 120))
_MAX_FAILURES_KEPT = 1000


@dataclass
class Progress:
    """A progress event.

    Attributes:
        done: samples handled so far
        total: samples to handle
        failed: failures so far
        message: a short status line
    """

    done: int
    total: int
    failed: int = 0
    message: str = ""

    @property
    def fraction(self) -> float:
        """``done / total`` in ``[0, 1]``."""
        return 1.0 if self.total == 0 else min(1.0, self.done / self.total)


@dataclass
class RunSummary:
    """What a run did.

    Attributes:
        run_key: the run's key (its output field)
        field: the output field
        type: ``"saliency"`` or ``"patches"``
        total: samples in the view
        processed: samples processed now
        skipped: samples skipped because they already had a result
        failed: samples that failed now
        failures: ``[{"id", "filepath", "reason"}, ...]`` (first 1,000)
        patches: detections written (patch runs)
        degenerate: maps that were constant or not finite
        elapsed: seconds
        images_per_s: processed samples per second
    """

    run_key: str
    field: str
    type: str
    total: int = 0
    processed: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    patches: int = 0
    degenerate: int = 0
    elapsed: float = 0.0
    images_per_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Returns the summary as a JSON-serialisable dict."""
        return asdict(self)


# -- validation ------------------------------------------------------------------


def _fo():
    import fiftyone as fo

    return fo


def _base_collection(sample_collection: Any) -> Any:
    """Returns the image view behind a patches view, or the collection."""
    import fiftyone.core.patches as fop

    if isinstance(sample_collection, fop.PatchesView):
        return sample_collection._source_collection
    return sample_collection


def _image_view(sample_collection: Any) -> Any:
    """The images a run works on, checked, with the dataset reloaded so that
    fields and runs written by other processes (a worker, a killed run) are seen."""
    view = _base_collection(sample_collection)
    check_image_collection(view)
    view._dataset.reload()
    return view


def check_image_collection(sample_collection: Any) -> None:
    """Refuses collections whose samples are not images.

    Args:
        sample_collection: a FiftyOne collection

    Raises:
        ParameterError: for video, 3D, point-cloud or grouped collections
    """
    media = sample_collection.media_type
    if media != "image":
        raise ParameterError(
            f"xpatch works on image datasets; this collection's media type is {media!r} "
            "(select an image slice or an image dataset)"
        )


def validate_field_name(sample_collection: Any, name: str, kind: str, *, run_key: str | None = None) -> bool:
    """Validates an output field name before any work.

    A name is accepted if it is a new identifier, or the field of an earlier
    xpatch run of the same kind (which is then resumed or overwritten). A
    field of another type, or one not written by xpatch, is never clobbered.

    Args:
        sample_collection: a FiftyOne collection
        name: the field name
        kind: ``"saliency"`` (a ``fo.Heatmap`` field) or ``"patches"`` (a
            ``fo.Detections`` field)
        run_key: the run key that would own the field (default: ``name``)

    Returns:
        True if the field exists (from an earlier run), False if it is new

    Raises:
        ParameterError: if the name is invalid or the field is taken
    """
    fo = _fo()
    if not isinstance(name, str) or not _IDENT.match(name):
        raise ParameterError(
            f"invalid field name {name!r}: use letters, digits and underscores, starting with a letter"
        )
    if name in _RESERVED:
        raise ParameterError(f"{name!r} is a built-in field name")
    dataset = sample_collection._dataset
    schema = dataset.get_field_schema(flat=True)
    if name not in schema:
        if run_key is not None and not _IDENT.match(run_key):
            raise ParameterError(f"invalid run key {run_key!r}")
        return False
    expected = fo.Heatmap if kind == "saliency" else fo.Detections
    fld = schema[name]
    doc_type = getattr(fld, "document_type", None)
    key = run_key or name
    ours = key in dataset.list_runs() and _run_type(dataset, key) == kind
    if doc_type is not expected:
        raise ParameterError(
            f"field {name!r} already exists with type {type(fld).__name__}"
            f"({getattr(doc_type, '__name__', '')}); xpatch will not overwrite it: choose another name"
        )
    if not ours:
        raise ParameterError(
            f"field {name!r} already exists and was not written by an xpatch {kind} run; "
            "choose another name"
        )
    return True


def _run_type(dataset: Any, key: str) -> str | None:
    try:
        cfg = dataset.get_run_info(key).config
    except Exception:  # noqa: BLE001
        return None
    return getattr(cfg, "xpatch_type", None)


def list_runs(sample_collection: Any, type: str | None = None) -> list[str]:
    """Lists the xpatch runs on a collection's dataset.

    Args:
        sample_collection: a FiftyOne collection
        type: ``"saliency"``, ``"patches"`` or None for both

    Returns:
        a list of run keys
    """
    dataset = sample_collection._dataset
    out = []
    for key in dataset.list_runs():
        t = _run_type(dataset, key)
        if t is not None and (type is None or t == type):
            out.append(key)
    return out


def get_run_info(sample_collection: Any, run_key: str) -> dict[str, Any]:
    """Returns a run's config and results as a dict.

    Args:
        sample_collection: a FiftyOne collection
        run_key: the run key

    Returns:
        ``{"key", "type", "timestamp", "config", "results"}``
    """
    dataset = sample_collection._dataset
    if run_key not in list_runs(dataset):
        raise ParameterError(f"no xpatch run {run_key!r} on dataset {dataset.name!r}")
    info = dataset.get_run_info(run_key)
    cfg = {k: v for k, v in info.config.serialize().items() if not k.startswith("_") and k not in ("cls",)}
    results = _load_results(dataset, run_key)
    if isinstance(cfg.get("sharding"), dict):
        from xpatch_core.shards import aggregate

        results = {**results, **aggregate(dataset, run_key, cfg)}
    return {
        "key": run_key,
        "type": cfg.get("xpatch_type"),
        "timestamp": str(info.timestamp),
        "config": cfg,
        "results": results,
    }


def _load_results(dataset: Any, run_key: str) -> dict[str, Any]:
    try:
        res = dataset.load_run_results(run_key, cache=False, load_view=False)
    except Exception:  # noqa: BLE001
        return {}
    if res is None:
        return {}
    d = res.serialize()
    return {k: v for k, v in d.items() if not k.startswith("_") and k not in ("cls", "key", "run_key")}


# -- locks -------------------------------------------------------------------------


def _locks():
    import fiftyone.core.odm as foo
    from pymongo import WriteConcern

    # Journaled: a lock taken or released is not undone by an unclean database restart
    # (acknowledged but unjournaled writes of the last ~100 ms are lost by a crash).
    return foo.get_db_conn()["xpatch_locks"].with_options(write_concern=WriteConcern(j=True))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_live(held: dict[str, Any]) -> bool:
    """Whether a lock document belongs to a live run (or to this process)."""
    same_host = held.get("host") == socket.gethostname()
    if held.get("pid") == os.getpid() and same_host:
        return True
    stale = time.time() - float(held.get("heartbeat", 0)) > _LOCK_TTL
    dead = same_host and not _pid_alive(int(held.get("pid", -1)))
    return not (stale or dead)


def acquire_lock(dataset: Any, field_name: str, *, id_range: Sequence[Any] | None = None) -> str:
    """Takes the write lock of a field, or of an id range of it, atomically,
    in the database.

    A lock held by a dead process on this host, or not refreshed for
    ``XPATCH_LOCK_TTL`` seconds, is taken over.

    The lock of a whole field (``id_range=None``, id ``<dataset>:<field>``)
    conflicts with every lock of that field; the lock of a shard's range
    (id ``<dataset>:<field>:<lo>-<hi>``) conflicts with the whole-field lock
    and with the same range, so the shards of one sharded run hold their
    locks together while an unsharded run (or a delete) of the field is
    refused. The same range is excluded by the unique ``_id``; a whole-field
    lock against range locks by *insert, then check*: each side first
    inserts its own lock, then looks for a live lock of the other kind and,
    finding one, withdraws its own and fails. Since both inserts happen
    before both checks, two conflicting runs may both back off but never
    both proceed (reads go to the primary; on a replica set use the default
    majority write concern).

    Args:
        dataset: a FiftyOne dataset
        field_name: the field to write
        id_range: ``(lo, hi)`` sample ids (None for unbounded) to lock only
            a shard's range

    Returns:
        the lock id

    Raises:
        XpatchError: if another live run holds a conflicting lock
    """
    import pymongo.errors

    coll = _locks()
    base = f"{dataset._doc.id}:{field_name}"
    if id_range is None:
        lock_id = base
    else:
        from xpatch_core.shards import range_name

        lock_id = f"{base}:{range_name(id_range)}"
    me = {"_id": lock_id, "pid": os.getpid(), "host": socket.gethostname(), "heartbeat": time.time(),
          "dataset": dataset.name, "field": field_name}

    def _refuse(held: dict[str, Any]) -> XpatchError:
        return XpatchError(
            f"field {field_name!r} of dataset {dataset.name!r} is being written by another run "
            f"(pid {held.get('pid')} on {held.get('host')}); wait for it to finish or choose another field"
        )

    for _ in range(3):
        try:
            coll.insert_one(me)
        except pymongo.errors.DuplicateKeyError:
            held = coll.find_one({"_id": lock_id})
            if held is None:
                continue
            if not _lock_live(held):
                coll.delete_one({"_id": lock_id, "heartbeat": held.get("heartbeat")})
                continue
            raise _refuse(held) from None
        others = {"_id": {"$regex": f"^{re.escape(base)}:"}} if id_range is None else {"_id": base}
        for held in coll.find(others):
            if held["_id"] == lock_id:
                continue
            if _lock_live(held):
                coll.delete_one({"_id": lock_id, "pid": os.getpid()})
                raise _refuse(held)
            coll.delete_one({"_id": held["_id"], "heartbeat": held.get("heartbeat")})
        return lock_id
    raise XpatchError(f"could not take the lock of field {field_name!r}")


def _heartbeat(lock_id: str) -> None:
    _locks().update_one({"_id": lock_id, "pid": os.getpid()}, {"$set": {"heartbeat": time.time()}})


def release_lock(lock_id: str) -> None:
    """Releases a lock taken by this process.

    Args:
        lock_id: the id :func:`acquire_lock` returned
    """
    _locks().delete_one({"_id": lock_id, "pid": os.getpid()})


# -- run records -------------------------------------------------------------------


_RESULT_KEYS = {
    "saliency": ("model_source", "method", "layer", "target", "target_field", "input_size", "precision",
                 "map_dir"),
    "patches": ("heatmap_field", "n", "size", "scales", "aspect_ratios", "temperature", "epsilon", "replace",
                "max_iou", "min_distance", "score", "mode", "seed", "label", "border"),
}


def _same_config(old: dict[str, Any], new: dict[str, Any], kind: str) -> list[str]:
    return [k for k in _RESULT_KEYS[kind] if _jsonable(old.get(k)) != _jsonable(new.get(k))]


def _jsonable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items() if k != "wnids"}
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v


def _check_rerun(sample_collection: Any, run_key: str, kind: str, config: dict[str, Any], overwrite: bool) -> None:
    """Refuses to resume a run with other parameters (called before the lock, so
    that a refused call leaves the earlier run's record untouched, and again in
    :func:`_start_run`)."""
    dataset = sample_collection._dataset
    if run_key in dataset.list_runs() and not overwrite:
        old = get_run_info(dataset, run_key)["config"]
        diff = _same_config(old, config, kind)
        if diff:
            raise ParameterError(
                f"field {config['field']!r} holds results of a run with other parameters "
                f"({', '.join(diff)}); pass overwrite=True to redo every sample, or choose another field"
            )


def _start_run(sample_collection: Any, run_key: str, kind: str, config: dict[str, Any], overwrite: bool) -> None:
    dataset = sample_collection._dataset
    _check_rerun(sample_collection, run_key, kind, config, overwrite)
    cfg = dataset.init_run(
        xpatch_type=kind,
        xpatch_version=__version__,
        started_at=_dt.datetime.now(_dt.UTC).isoformat(),
        **{k: _jsonable(v) for k, v in config.items()},
    )
    sample_collection.register_run(run_key, cfg, overwrite=True, cleanup=False)


def _save_results(sample_collection: Any, run_key: str, summary: RunSummary, status: str, extra: dict) -> None:
    dataset = sample_collection._dataset
    previous = _load_results(dataset, run_key)
    data = summary.to_dict()
    data.pop("run_key", None)
    data.update(extra)
    data["status"] = status
    data["updated_at"] = _dt.datetime.now(_dt.UTC).isoformat()
    data["history"] = (previous.get("history") or [])[-19:]
    if status in ("completed", "failed"):
        data["history"].append({k: data[k] for k in ("processed", "failed", "skipped", "elapsed", "status")})
    # keep what other writers (e.g. evaluation) stored on the results, except an
    # evaluation of results this run has just replaced
    stale = ("evaluation", "evaluations") if summary.processed else ()
    for k, v in previous.items():
        if k not in data and k not in ("status",) and k not in stale:
            data[k] = v
    results = dataset.init_run_results(run_key, **_jsonable(data))
    dataset.save_run_results(run_key, results, overwrite=True, cache=False)


def update_run_results(sample_collection: Any, run_key: str, **values: Any) -> None:
    """Adds values (e.g. an evaluation) to a run's stored results.

    Args:
        sample_collection: a FiftyOne collection
        run_key: the run key
        **values: JSON-serialisable values
    """
    dataset = sample_collection._dataset
    data = _load_results(dataset, run_key)
    data.update(_jsonable(values))
    for reserved in ("run_key", "key", "samples", "config", "backend"):
        data.pop(reserved, None)
    results = dataset.init_run_results(run_key, **data)
    dataset.save_run_results(run_key, results, overwrite=True, cache=False)


# -- heatmap files -----------------------------------------------------------------


def _safe_dir(root: str, field_name: str) -> str:
    root_real = os.path.realpath(os.path.abspath(os.path.expanduser(root)))
    target = os.path.realpath(os.path.join(root_real, field_name))
    if os.path.dirname(target) != root_real:
        raise ParameterError(f"heatmap folder for field {field_name!r} would leave {root_real}")
    return target


def _write_png(path: str, m: np.ndarray) -> None:
    from PIL import Image

    # A fresh temporary name, created exclusively and never through a symlink; renamed
    # over ``path`` only once complete, and removed if anything fails (e.g. a full disk).
    tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    arr = np.clip(np.round(np.asarray(m, np.float32) * 255.0), 0, 255).astype(np.uint8)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(arr, mode="L").save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def read_heatmap(heatmap: Any) -> np.ndarray | None:
    """Reads a stored heatmap as a float32 map in ``[0, 1]``.

    Args:
        heatmap: a ``fo.Heatmap`` (in the database or with ``map_path``)

    Returns:
        the map, or None if missing or unreadable
    """
    if heatmap is None:
        return None
    lo, hi = (heatmap.range or [0.0, 1.0])[:2] if heatmap.range else (0.0, 1.0)
    m = heatmap.map
    if m is None and heatmap.map_path:
        from PIL import Image

        try:
            with Image.open(heatmap.map_path) as img:
                m = np.asarray(img.convert("L"), dtype=np.float32)
        except (OSError, ValueError):
            return None
    if m is None:
        return None
    m = np.asarray(m, dtype=np.float32)
    if m.ndim == 3:
        m = m[..., 0]
    span = float(hi - lo) or 1.0
    return np.clip((m - lo) / span, 0.0, 1.0)


# -- saliency runs -----------------------------------------------------------------


def _chunks(seq: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _pending_ids(view: Any, field_name: str, overwrite: bool) -> tuple[list[str], int]:
    ids = view.values("id")
    if overwrite:
        return ids, 0
    schema = view._dataset.get_field_schema(flat=True)
    if field_name not in schema:
        return ids, 0
    missing = view.exists(field_name, False).values("id")
    return missing, len(ids) - len(missing)


def _restrict(view: Any, id_range: Sequence[Any] | None, shard: Any) -> Any:
    """Restricts a view to an id range (given, or a shard's)."""
    rng = id_range if id_range is not None else getattr(shard, "id_range", None)
    if rng is None:
        return view
    from xpatch_core.shards import restrict

    return restrict(view, rng)


def iter_run_saliency(
    sample_collection: Any,
    field: str = "saliency",
    model: Any = "xception",
    method: str = "eigencam",
    *,
    target: Any = None,
    target_field: str | None = None,
    weights: str | None = None,
    layer: str | None = None,
    fuse_layer: str | None = "auto",
    batch_size: int = 16,
    map_dir: str | None = None,
    overwrite: bool = False,
    run_key: str | None = None,
    class_names: Sequence[str] | None = None,
    allow_unsafe: bool = False,
    precision: str = "float32",
    sample_ids: Sequence[str] | None = None,
    id_range: Sequence[str | None] | None = None,
    shard: Any = None,
) -> Generator[Progress, None, RunSummary]:
    """Computes saliency heatmaps into a field, yielding progress.

    See :func:`run_saliency` for the arguments. ``id_range`` restricts the
    run to the samples with ``lo <= _id < hi`` (see
    :func:`xpatch_core.shards.shard_ranges`); ``shard`` is the role of a
    sharded run's parent or child (:mod:`xpatch_core.shards`). The
    environment variable ``XPATCH_BATCH_SIZE``, when set, overrides
    ``batch_size`` (a per-worker setting).

    Returns:
        a generator of :class:`Progress` whose return value is the
        :class:`RunSummary`
    """
    from xpatch_core.models import load_model
    from xpatch_core.saliency import get_method, iter_saliency, resolve_targets

    fo = _fo()
    view = _image_view(sample_collection)
    run_key = run_key or field
    validate_field_name(view, field, "saliency", run_key=run_key)
    method_cls = get_method(method)
    if os.environ.get("XPATCH_BATCH_SIZE"):
        try:
            batch_size = int(os.environ["XPATCH_BATCH_SIZE"])
        except ValueError:
            raise ParameterError(f"XPATCH_BATCH_SIZE must be an integer, got "
                                 f"{os.environ['XPATCH_BATCH_SIZE']!r}") from None
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
    if target is not None and target_field is not None:
        raise ParameterError("give either target or target_field, not both")
    map_root = None
    if map_dir:
        map_root = _safe_dir(map_dir, field)
        try:
            os.makedirs(map_root, exist_ok=True)
            probe = os.path.join(map_root, f".probe.{os.getpid()}")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as e:
            raise ParameterError(f"heatmap folder {map_root} is not writable: {e}") from e
    if target_field is not None:
        schema = view._dataset.get_field_schema(flat=True)
        if target_field not in schema or getattr(schema[target_field], "document_type", None) is not fo.Classification:
            raise ParameterError(f"target_field {target_field!r} must be an existing fo.Classification field")

    sm = load_model(model, weights=weights, layer=layer, fuse_layer=fuse_layer, class_names=class_names,
                    allow_unsafe=allow_unsafe, precision=precision)
    method_name = method_cls.name
    runner = method_cls(sm)  # raises for gradient methods on a model without a head
    fixed_target = resolve_targets(sm, target, None) if target_field is None else None

    if sample_ids is not None:
        view = view.select(list(sample_ids))
    view = _restrict(view, id_range, shard)
    ids, skipped = _pending_ids(view, field, overwrite)
    targets_by_id: dict[str, int] = {}
    if target_field is not None and ids:
        labels = view.select(ids).values(["id", f"{target_field}.label"])
        distinct = sorted({lab for lab in labels[1] if lab is not None})
        resolved = {lab: sm.class_index(lab) for lab in distinct}
        targets_by_id = {i: (resolved[lab] if lab is not None else -1) for i, lab in zip(*labels)}

    config = {
        "field": field,
        "model_source": {k: v for k, v in sm.source.items() if k != "wnids"},
        "method": method_name,
        "layer": runner.layer_description,
        "target": target if not isinstance(target, np.ndarray) else target.tolist(),
        "target_field": target_field,
        "batch_size": int(batch_size),
        "input_size": list(sm.input_size),
        "precision": precision,
        "map_dir": map_root,
        "storage": "png" if map_root else "database",
    }
    dataset = view._dataset
    if shard is None:
        _check_rerun(view, run_key, "saliency", config, overwrite)
    lock = acquire_lock(dataset, field, id_range=getattr(shard, "id_range", None))
    summary = RunSummary(run_key=run_key, field=field, type="saliency", total=len(ids) + skipped,
                         skipped=skipped)
    save = _save_results if shard is None else shard.save
    try:
        if shard is None:
            _start_run(view, run_key, "saliency", config, overwrite)
        else:
            shard.start(view, run_key, "saliency", config, overwrite)
            if shard.register_only:
                return summary
        if map_root:
            mine = None if shard is None else set(ids)  # shards run side by side: only their own files
            for tmp in glob.glob(os.path.join(map_root, "*.tmp")):
                if mine is None or os.path.basename(tmp).split(".")[0] in mine:
                    os.remove(tmp)
        t0 = time.perf_counter()
        names = sm.class_names if sm.has_head else None
        failed_tag = FAILED_TAG.format(field=field)
        yield Progress(0, len(ids), 0, f"computing {method_name} saliency on {len(ids)} samples")
        chunk_size = max(_CHUNK, batch_size)
        path_of: dict[int, str] = {}

        def stream_paths() -> Iterable[str]:
            # One stream for the whole run, so decoding keeps overlapping inference
            # across write chunks; file paths are fetched a chunk at a time.
            for start in range(0, len(ids), chunk_size):
                chunk_ids = ids[start : start + chunk_size]
                by_id = dict(zip(*dataset.select(chunk_ids).values(["id", "filepath"])))
                for k, sid in enumerate(chunk_ids):
                    path_of[start + k] = by_id.get(sid, f"<sample {sid} was deleted>")
                    yield path_of[start + k]

        def flush(values: dict[str, Any], ok_ids: list[str], bad: list[dict[str, str]]) -> Progress:
            if values:
                if shard is not None:
                    shard.pending(list(values))
                dataset.set_values(field, values, key_field="id")
            if ok_ids:
                ok_view = dataset.select(ok_ids)
                if failed_tag in ok_view.distinct("tags"):
                    ok_view.untag_samples(failed_tag)
            if bad:
                dataset.select([b["id"] for b in bad]).tag_samples(failed_tag)
                room = _MAX_FAILURES_KEPT - len(summary.failures)
                summary.failures.extend(bad[: max(room, 0)])
            summary.processed += len(ok_ids)
            summary.failed += len(bad)
            summary.elapsed = time.perf_counter() - t0
            _heartbeat(lock)
            save(view, run_key, summary, "running", {})
            return Progress(summary.processed + summary.failed, len(ids), summary.failed,
                            f"{summary.processed} done, {summary.failed} failed")

        tgt = fixed_target if fixed_target is not None else [targets_by_id.get(i, -1) for i in ids]
        values: dict[str, Any] = {}
        ok_ids: list[str] = []
        bad: list[dict[str, str]] = []
        for item in iter_saliency(stream_paths(), sm, method_name, tgt, batch_size):
            sid = ids[item.index]
            filepath = path_of.pop(item.index, "")
            if item.error is not None:
                bad.append({"id": sid, "filepath": filepath, "reason": item.error})
            else:
                attrs = {
                    "method": method_name,
                    "degenerate": bool(item.degenerate),
                    "width": int(item.image_size[0]),
                    "height": int(item.image_size[1]),
                }
                if item.predicted is not None:
                    attrs["predicted"] = names[item.predicted] if names else str(item.predicted)
                    attrs["confidence"] = float(item.confidence)
                if item.target is not None:
                    attrs["target"] = names[item.target] if names else str(item.target)
                summary.degenerate += int(item.degenerate)
                if map_root:
                    path = os.path.join(map_root, f"{sid}.png")
                    try:
                        _write_png(path, item.map)
                    except OSError as e:
                        bad.append({"id": sid, "filepath": filepath, "reason": f"cannot write heatmap file: {e}"})
                        path = None
                    if path is not None:
                        values[sid] = fo.Heatmap(map_path=path, range=[0, 255], **attrs)
                        ok_ids.append(sid)
                else:
                    values[sid] = fo.Heatmap(map=np.clip(item.map, 0.0, 1.0).astype(np.float32),
                                             range=[0.0, 1.0], **attrs)
                    ok_ids.append(sid)
            if len(ok_ids) + len(bad) >= chunk_size:
                yield flush(values, ok_ids, bad)
                values, ok_ids, bad = {}, [], []
        if ok_ids or bad:
            yield flush(values, ok_ids, bad)
        summary.elapsed = time.perf_counter() - t0
        summary.images_per_s = summary.processed / summary.elapsed if summary.elapsed > 0 else 0.0
        status = "completed" if (summary.processed or not ids or summary.failed == 0) else "failed"
        save(view, run_key, summary, status, {})
        return summary
    except BaseException:
        try:
            save(view, run_key, summary, "interrupted", {})
        except Exception:  # noqa: BLE001
            pass
        raise
    finally:
        release_lock(lock)


def drive(gen: Generator[Progress, Any, Any], progress: Any) -> Any:
    """Runs a progress generator to completion, with an optional progress bar.

    Args:
        gen: a generator of :class:`Progress` events
        progress: True for a progress bar, or a callable taking each event

    Returns:
        the generator's return value
    """
    bar = None
    callback: Callable[[Progress], None] | None = progress if callable(progress) else None
    try:
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                return stop.value
            if callback is not None:
                callback(p)
            elif progress:
                if bar is None:
                    from tqdm import tqdm

                    bar = tqdm(total=p.total, unit="img", desc=p.message[:40] or "xpatch")
                bar.n = p.done
                bar.set_postfix(failed=p.failed)
                bar.refresh()
    finally:
        if bar is not None:
            bar.close()


def run_saliency(
    sample_collection: Any,
    field: str = "saliency",
    model: Any = "xception",
    method: str = "eigencam",
    *,
    progress: bool | Callable[[Progress], None] = False,
    **kwargs: Any,
) -> RunSummary:
    """Computes saliency heatmaps and stores them as ``fo.Heatmap`` fields.

    Only samples without a heatmap in ``field`` are processed unless
    ``overwrite=True``, so an interrupted run resumes. A sample whose image
    cannot be read fails with a reason (kept in the run's results, and the
    sample tagged ``xpatch:<field>:failed``); the run goes on.

    Args:
        sample_collection: a FiftyOne image collection (a patches view is
            replaced by its images)
        field: the heatmap field (also the run key by default)
        model: a ``keras.applications`` name, a saved model path, a Keras
            model or a :class:`xpatch_core.models.SaliencyModel`
        method: ``"activation"``, ``"eigencam"``, ``"gradcam"`` or
            ``"gradcam++"``
        progress: True for a progress bar, or a callable taking
            :class:`Progress` events
        **kwargs: ``target`` (class index/name, or None for predicted),
            ``target_field`` (a ``fo.Classification`` field giving each
            sample's class), ``weights``, ``layer``, ``fuse_layer`` (see
            :func:`xpatch_core.load_model`), ``batch_size``,
            ``map_dir`` (write 8-bit PNGs under ``map_dir/field/`` instead
            of storing maps in the database), ``overwrite``, ``run_key``,
            ``class_names``, ``allow_unsafe``, ``precision``, ``sample_ids``

    Returns:
        a :class:`RunSummary`
    """
    return drive(iter_run_saliency(sample_collection, field, model, method, **kwargs), progress)


# -- patch runs --------------------------------------------------------------------


def _image_sizes(view: Any, heatmap_field: str) -> tuple[list[str], list[Any], list[Any]]:
    ids, ws, hs = view.values(["id", f"{heatmap_field}.width", f"{heatmap_field}.height"])
    return ids, ws, hs


def iter_run_patches(
    sample_collection: Any,
    heatmap_field: str = "saliency",
    field: str = "patches",
    n: int = 16,
    size: int | float = 96,
    *,
    scales: Sequence[float] = (1.0,),
    aspect_ratios: Sequence[float] = (1.0,),
    temperature: float = 4.0,
    epsilon: float = 0.0,
    replace: bool = False,
    max_iou: float | None = 0.7,
    min_distance: float | None = None,
    score: str = "mean",
    mode: str = "random",
    seed: int = 0,
    label: str = "predicted",
    border: str = "error",
    overwrite: bool = False,
    run_key: str | None = None,
    sample_ids: Sequence[str] | None = None,
    id_range: Sequence[str | None] | None = None,
    shard: Any = None,
) -> Generator[Progress, None, RunSummary]:
    """Samples saliency-weighted patches into a ``fo.Detections`` field,
    yielding progress. See :func:`run_patches` for the arguments, and
    :func:`iter_run_saliency` for ``id_range`` and ``shard``.

    Returns:
        a generator of :class:`Progress` whose return value is the
        :class:`RunSummary`
    """
    from xpatch_core.sampler import sample_patches

    fo = _fo()
    view = _image_view(sample_collection)
    run_key = run_key or field
    schema = view._dataset.get_field_schema(flat=True)
    if heatmap_field not in schema or getattr(schema[heatmap_field], "document_type", None) is not fo.Heatmap:
        raise ParameterError(f"heatmap field {heatmap_field!r} does not exist or is not a fo.Heatmap field; "
                             "run compute_saliency first")
    if field == heatmap_field:
        raise ParameterError("the patches field must differ from the heatmap field")
    validate_field_name(view, field, "patches", run_key=run_key)
    if not isinstance(label, str) or not label.strip():
        raise ParameterError("label must be 'predicted' or a non-empty text")
    for name, v in (("temperature", temperature), ("epsilon", epsilon)):
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ParameterError(f"{name} must be a finite number, got {v!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)) or not size > 0:
        raise ParameterError(f"size must be > 0 pixels (int) or a fraction (float), got {size!r}")
    if isinstance(size, (float, np.floating)) and not (math.isfinite(size) and 0 < size <= 1):
        raise ParameterError(f"a fractional size must be in (0, 1], got {size!r}")

    if sample_ids is not None:
        view = view.select(list(sample_ids))
    view = _restrict(view, id_range, shard)
    has_map = view.exists(heatmap_field)
    ids, ws, hs = _image_sizes(has_map, heatmap_field)
    # Parameters fail before any work: a dry run on the largest image checks them all.
    known = [(w, h) for w, h in zip(ws, hs) if w and h]
    if known and isinstance(size, (int, np.integer)):
        if all(size * max(scales) > min(w, h) for w, h in known) and border == "error":
            big = max(known, key=lambda s: min(s))
            raise ParameterError(f"patch size {size} (x{max(scales)}) is larger than every image "
                                 f"(largest short side: {min(big)} px)")
    probe = max(known, key=lambda s: s[0] * s[1]) if known else (max(int(size), 1) * 4,) * 2
    kwargs = dict(scales=tuple(scales), aspect_ratios=tuple(aspect_ratios), temperature=temperature,
                  epsilon=epsilon, replace=replace, max_iou=max_iou, min_distance=min_distance,
                  score=score, mode=mode, border=border)
    try:
        sample_patches(np.ones((4, 4)), tuple(int(v) for v in probe), n, size, seed=seed, key="probe", **kwargs)
    except XpatchError as e:
        raise ParameterError(str(e)) from e
    except ValueError as e:
        raise ParameterError(str(e)) from e

    config = {
        "field": field, "heatmap_field": heatmap_field, "n": n, "size": size, "seed": int(seed),
        "label": label, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()},
    }
    dataset = view._dataset
    pending_view = has_map if overwrite or field not in schema else has_map.exists(field, False)
    pending = set(pending_view.values("id"))
    todo = [i for i in ids if i in pending]
    if shard is None:
        _check_rerun(view, run_key, "patches", config, overwrite)
    lock = acquire_lock(dataset, field, id_range=getattr(shard, "id_range", None))
    summary = RunSummary(run_key=run_key, field=field, type="patches", total=len(ids),
                         skipped=len(ids) - len(todo))
    failed_tag = FAILED_TAG.format(field=field)
    save = _save_results if shard is None else shard.save
    try:
        if shard is None:
            _start_run(view, run_key, "patches", config, overwrite)
        else:
            shard.start(view, run_key, "patches", config, overwrite)
            if shard.register_only:
                return summary
        t0 = time.perf_counter()
        yield Progress(0, len(todo), 0, f"sampling patches on {len(todo)} samples")
        declared = False
        for chunk_ids in _chunks(todo, max(_CHUNK, 256)):
            chunk = dataset.select(chunk_ids, ordered=True)
            # Field values, not Heatmap documents: building documents costs more than sampling.
            hf = heatmap_field
            maps, map_paths, ranges, hm_w, hm_h, predicted, meta_w, meta_h = chunk.values(
                [f"{hf}.map", f"{hf}.map_path", f"{hf}.range", f"{hf}.width", f"{hf}.height",
                 f"{hf}.predicted", "metadata.width", "metadata.height"])
            values: dict[str, Any] = {}
            bad = []
            for sid, m, mpath, rng_, hw, hh, pred, mw, mh in zip(chunk_ids, maps, map_paths, ranges, hm_w, hm_h,
                                                                 predicted, meta_w, meta_h):
                m = read_heatmap(fo.Heatmap(map=m, map_path=mpath, range=rng_))
                w = hw or mw
                h = hh or mh
                if m is None:
                    bad.append({"id": sid, "reason": "heatmap missing or unreadable"})
                    continue
                if not w or not h:
                    bad.append({"id": sid, "reason": "image size unknown (compute metadata)"})
                    continue
                try:
                    ps = sample_patches(m, (int(w), int(h)), n, size, seed=int(seed), key=sid, **kwargs)
                except (XpatchError, ValueError) as e:
                    bad.append({"id": sid, "reason": str(e)})
                    continue
                text = (pred or "patch") if label == "predicted" else label
                order = np.argsort(-ps.scores, kind="stable")
                rank = np.empty(len(order), np.int64)
                rank[order] = np.arange(1, len(order) + 1)
                dets = []
                scale_of = tuple(scales)
                aspect_of = tuple(aspect_ratios)
                for k in range(len(ps)):
                    x0, y0, x1, y1 = (int(v) for v in ps.boxes[k])
                    dets.append(detection_son(
                        label=text,
                        bounding_box=[float(v) for v in ps.rel_boxes[k]],
                        confidence=float(ps.scores[k]),
                        score=float(ps.scores[k]),
                        prob=float(ps.probs[k]),
                        rank=int(rank[k]),
                        scale=float(scale_of[int(ps.scale_idx[k])]),
                        aspect_ratio=float(aspect_of[int(ps.aspect_idx[k])]),
                        width_px=x1 - x0,
                        height_px=y1 - y0,
                        flagged=bool(ps.flags[k]),
                        degenerate=bool(ps.degenerate),
                        seed=int(seed),
                    ))
                summary.degenerate += int(ps.degenerate)
                summary.patches += len(dets)
                values[sid] = {"_cls": "Detections", "detections": dets}
            if values:
                if shard is not None:
                    shard.pending(list(values))
                # Our own detections need no validation; the first write declares their
                # attributes (score, prob, rank, ...) so the App can filter on them.
                items = list(values.items())
                if not declared:
                    # One real document declares the field and its attributes.
                    first_id, first = items[0]
                    doc = fo.Detections(detections=[fo.Detection.from_dict(d) for d in first["detections"]])
                    dataset.set_values(field, {first_id: doc}, key_field="id", validate=False, dynamic=True)
                    items = items[1:]
                    declared = True
                if items:
                    dataset.set_values(field, dict(items), key_field="id", validate=False, expand_schema=False)
                ok_view = dataset.select(list(values))
                if failed_tag in ok_view.distinct("tags"):
                    ok_view.untag_samples(failed_tag)
            if bad:
                paths = dict(zip(*dataset.select([b["id"] for b in bad]).values(["id", "filepath"])))
                for b in bad:
                    b["filepath"] = paths.get(b["id"], "")
                dataset.select([b["id"] for b in bad]).tag_samples(failed_tag)
                room = _MAX_FAILURES_KEPT - len(summary.failures)
                summary.failures.extend(bad[: max(room, 0)])
            summary.processed += len(values)
            summary.failed += len(bad)
            summary.elapsed = time.perf_counter() - t0
            _heartbeat(lock)
            if shard is not None:
                save(view, run_key, summary, "running", {})
            yield Progress(summary.processed + summary.failed, len(todo), summary.failed,
                           f"{summary.patches} patches on {summary.processed} samples")
        summary.elapsed = time.perf_counter() - t0
        summary.images_per_s = summary.processed / summary.elapsed if summary.elapsed > 0 else 0.0
        save(view, run_key, summary, "completed", {})
        return summary
    except BaseException:
        try:
            save(view, run_key, summary, "interrupted", {})
        except Exception:  # noqa: BLE001
            pass
        raise
    finally:
        release_lock(lock)


def run_patches(
    sample_collection: Any,
    heatmap_field: str = "saliency",
    field: str = "patches",
    n: int = 16,
    size: int | float = 96,
    *,
    progress: bool | Callable[[Progress], None] = False,
    **kwargs: Any,
) -> RunSummary:
    """Samples saliency-weighted patch boxes into a ``fo.Detections`` field.

    Each sample's boxes depend only on ``(seed, sample id)``, so results do
    not depend on order, batching or the number of workers. Every detection
    carries ``confidence`` (= ``score``), ``prob``, ``rank``, ``scale``,
    ``aspect_ratio``, pixel size, ``flagged``, ``degenerate`` and ``seed``,
    for sorting and filtering in the App.

    Args:
        sample_collection: a FiftyOne image collection
        heatmap_field: the ``fo.Heatmap`` field to sample from
        field: the ``fo.Detections`` field to write (the run key by default)
        n: patches per image
        size: patch size in pixels (int) or as a fraction of the short side
            (float)
        progress: True for a progress bar, or a callable
        **kwargs: ``scales``, ``aspect_ratios``, ``temperature``,
            ``epsilon``, ``replace``, ``temperature`` (default 4), ``max_iou``
            (default 0.7; defaults chosen by ``benchmarks/bench_quality.py``),
            ``min_distance``, ``score`` (``"mean"`` or ``"center"``),
            ``mode`` (``"random"``, ``"topk"``, ``"grid"``), ``seed``,
            ``label`` (``"predicted"`` or a fixed text), ``border``,
            ``overwrite``, ``run_key``, ``sample_ids``

    Returns:
        a :class:`RunSummary`
    """
    return drive(iter_run_patches(sample_collection, heatmap_field, field, n, size, **kwargs), progress)


def detection_son(**fields: Any) -> dict[str, Any]:
    """Returns a ``fo.Detection`` as the BSON document FiftyOne stores.

    Building mongoengine documents costs about 0.25 ms per detection, more
    than sampling the boxes; ``set_values`` accepts the stored form directly
    (``tests/test_plugin.py`` checks it equals the document's own
    ``to_mongo()``).

    Args:
        **fields: the detection's fields and attributes

    Returns:
        a dict
    """
    from bson import ObjectId

    return {"_id": ObjectId(), "_cls": "Detection", "attributes": {}, "tags": [], **fields}


def patches_view(sample_collection: Any, field: str = "patches") -> Any:
    """Returns the patches view of a patch run, best score first.

    Args:
        sample_collection: a FiftyOne collection
        field: the ``fo.Detections`` field

    Returns:
        a :class:`fiftyone.core.patches.PatchesView`
    """
    base = _base_collection(sample_collection)
    return base.to_patches(field).sort_by(f"{field}.confidence", reverse=True)


def load_run_view(sample_collection: Any, run_key: str) -> Any:
    """Loads the view a run worked on (for a patch run, its patches view).

    Args:
        sample_collection: a FiftyOne collection
        run_key: the run key

    Returns:
        a view
    """
    info = get_run_info(sample_collection, run_key)
    dataset = sample_collection._dataset
    view = dataset.load_run_view(run_key)
    fld = info["config"]["field"]
    if info["type"] == "patches":
        return view.exists(fld).to_patches(fld).sort_by(f"{fld}.confidence", reverse=True)
    return view.exists(fld)


def delete_run(sample_collection: Any, run_key: str) -> dict[str, Any]:
    """Deletes a run, its field, its failure tags and any heatmap files.

    Args:
        sample_collection: a FiftyOne collection
        run_key: the run key

    Returns:
        ``{"field", "files_removed"}``
    """
    info = get_run_info(sample_collection, run_key)
    dataset = sample_collection._dataset
    fld = info["config"]["field"]
    lock = acquire_lock(dataset, fld)
    removed = 0
    try:
        map_dir = info["config"].get("map_dir")
        if map_dir and os.path.isdir(map_dir):
            for path in glob.glob(os.path.join(map_dir, "*.png")) + glob.glob(os.path.join(map_dir, "*.tmp")):
                stem = os.path.basename(path).split(".")[0]
                if re.fullmatch(r"[0-9a-f]{24}", stem):
                    os.remove(path)
                    removed += 1
            if not os.listdir(map_dir):
                os.rmdir(map_dir)
        if fld in dataset.get_field_schema(flat=True):
            dataset.delete_sample_field(fld)
        tag = FAILED_TAG.format(field=fld)
        tagged = dataset.match_tags(tag)
        if len(tagged):
            tagged.untag_samples(tag)
        dataset.delete_run(run_key)
        if isinstance(info["config"].get("sharding"), dict):
            from xpatch_core.shards import forget

            forget(dataset, run_key)
    finally:
        release_lock(lock)
    return {"field": fld, "files_removed": removed}


def failures_of(sample_collection: Any, run_key: str) -> list[dict[str, str]]:
    """Returns a run's recorded failures.

    Args:
        sample_collection: a FiftyOne collection
        run_key: the run key

    Returns:
        ``[{"id", "filepath", "reason"}, ...]``
    """
    return list(get_run_info(sample_collection, run_key)["results"].get("failures") or [])


__all__ = [
    "FAILED_TAG",
    "ImageDecodeError",
    "Progress",
    "RunSummary",
    "check_image_collection",
    "delete_run",
    "drive",
    "failures_of",
    "get_run_info",
    "iter_run_patches",
    "iter_run_saliency",
    "list_runs",
    "load_run_view",
    "patches_view",
    "read_heatmap",
    "run_patches",
    "run_saliency",
    "update_run_results",
    "validate_field_name",
]
