"""Run records: typed run configs, and results saved through FiftyOne's runs.

Every xpatch run is a FiftyOne run (``register_run``) keyed by its run key
(its output field by default), as FiftyOne Brain's methods are. Rules:

-   A run's config is a typed :class:`RunConfig` (one subclass per kind of
    run, in that kind's module). It is stored with FiftyOne's generic run
    config (``dataset.init_run``), so a dataset opens and lists its runs in a
    process without xpatch; :attr:`RunConfig.kind` is stored as
    ``xpatch_type``, which is how xpatch recognises its runs.
-   :attr:`RunConfig.compared` names the parameters that decide the results:
    resuming a run, or writing to its field again, with any of them changed
    is refused unless ``overwrite`` is given, so one field never mixes two
    settings. The user's request (the arguments as given) is stored too, so
    that a rerun with nothing left to do is recognised without loading a
    model.
-   Results are saved with ``save_run_results`` after every write chunk,
    keeping what other writers stored on them (an evaluation), except an
    evaluation of results the run has just replaced.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from xpatch_core import __version__
from xpatch_core.errors import ParameterError

#: At most this many failures are kept in a run's results.
MAX_FAILURES_KEPT = 1000
_HISTORY = 20


@dataclass
class RunConfig:
    """Base of the typed configs of xpatch runs.

    Attributes:
        field: the output field
        request: the user's arguments as given (JSON-serialisable)
    """

    kind: ClassVar[str] = ""
    compared: ClassVar[tuple[str, ...]] = ()

    field: str
    request: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """Returns the config as stored in the run record (JSON-serialisable)."""
        return jsonable(asdict(self))

    def differences(self, stored: dict[str, Any]) -> list[str]:
        """Names the compared parameters that differ from a stored config.

        Args:
            stored: a stored config (see :func:`run_config`)

        Returns:
            a list of parameter names
        """
        mine = self.to_record()
        return [k for k in self.compared if jsonable(stored.get(k)) != mine.get(k)]


def jsonable(v: Any) -> Any:
    """Converts NumPy scalars and tuples (recursively) to JSON types; drops
    the bulky ``wnids`` list of model sources."""
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items() if k != "wnids"}
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    return v


def run_type(dataset: Any, key: str) -> str | None:
    """The kind of the xpatch run ``key`` (None for other runs)."""
    try:
        cfg = dataset.get_run_info(key).config
    except Exception:  # noqa: BLE001 - not a run, or an unreadable one
        return None
    return getattr(cfg, "xpatch_type", None)


def list_runs(sample_collection: Any, type: str | None = None) -> list[str]:
    """Lists the xpatch runs on a collection's dataset.

    Args:
        sample_collection: a FiftyOne collection
        type: ``"saliency"``, ``"patches"``, ``"embeddings"`` or None for all

    Returns:
        a list of run keys
    """
    dataset = sample_collection._dataset
    out = []
    for key in dataset.list_runs():
        t = run_type(dataset, key)
        if t is not None and (type is None or t == type):
            out.append(key)
    return out


def run_config(dataset: Any, run_key: str) -> dict[str, Any]:
    """A stored run's config as a dict (empty when there is no such run)."""
    try:
        info = dataset.get_run_info(run_key)
    except Exception:  # noqa: BLE001
        return {}
    return {k: v for k, v in info.config.serialize().items() if not k.startswith("_") and k != "cls"}


def fields_of_runs(dataset: Any, kind: str) -> list[str]:
    """The output fields of the dataset's runs of one kind."""
    return sorted({run_config(dataset, key).get("field") for key in list_runs(dataset, type=kind)} - {None})


def run_of_field(dataset: Any, field_name: str, kind: str) -> str | None:
    """The key of the run of ``kind`` that wrote ``field_name`` (None if none).

    Args:
        dataset: the dataset
        field_name: the field
        kind: the kind of run

    Returns:
        a run key or None
    """
    keys = list_runs(dataset, type=kind)
    for key in sorted(keys, key=lambda k: k != field_name):  # the default key first
        if run_config(dataset, key).get("field") == field_name:
            return key
    return None


def load_results(dataset: Any, run_key: str) -> dict[str, Any]:
    """A run's stored results as a dict (empty when there are none)."""
    try:
        res = dataset.load_run_results(run_key, cache=False, load_view=False)
    except Exception:  # noqa: BLE001
        return {}
    if res is None:
        return {}
    d = res.serialize()
    return {k: v for k, v in d.items() if not k.startswith("_") and k not in ("cls", "key", "run_key")}


def _holds_results(dataset: Any, run_key: str, field: str, overwrite: bool) -> bool:
    """Whether a run's earlier results could block a rerun with other parameters."""
    if overwrite or run_key not in dataset.list_runs():
        return False
    # a run with nothing in its field stopped before its first write: it never blocks
    return "." in field or (dataset.has_sample_field(field) and bool(dataset.exists(field).count()))


def _refuse(field: str, diff: list[str]) -> None:
    if diff:
        raise ParameterError(
            f"field {field!r} holds results of a run with other parameters "
            f"({', '.join(diff)}); pass overwrite=True to redo every sample, or choose another field"
        )


def check_rerun(dataset: Any, run_key: str, config: RunConfig, overwrite: bool) -> None:
    """Refuses to resume a run, or to write its field, with other parameters
    (a run that wrote nothing to its field, stopped before its first write,
    never blocks another).

    Args:
        dataset: the dataset
        run_key: the run key
        config: the new run's config
        overwrite: whether every sample will be redone

    Raises:
        ParameterError: if a compared parameter differs and not ``overwrite``
    """
    if _holds_results(dataset, run_key, config.field, overwrite):
        _refuse(config.field, config.differences(run_config(dataset, run_key)))


def check_rerun_early(dataset: Any, run_key: str, field: str, differences: Callable[[dict[str, Any]], list[str]],
                      overwrite: bool) -> None:
    """:func:`check_rerun` for the parameters known before a run's setup
    (before a model loads), so that a rerun with, say, another method is
    refused at once; :func:`check_rerun` still compares the whole config
    after the setup.

    Args:
        dataset: the dataset
        run_key: the run key
        field: the run's output field
        differences: the stored config -> the names of the parameters that
            certainly differ from it (:meth:`RunKind.known_differences`)
        overwrite: whether every sample will be redone

    Raises:
        ParameterError: if a known parameter differs and not ``overwrite``
    """
    if _holds_results(dataset, run_key, field, overwrite):
        _refuse(field, differences(run_config(dataset, run_key)))


def same_request(dataset: Any, run_key: str, kind: str, request: dict[str, Any]) -> bool:
    """Whether the stored run was started with exactly this request."""
    stored = run_config(dataset, run_key)
    return stored.get("xpatch_type") == kind and stored.get("request") == jsonable(request)


def start_run(sample_collection: Any, run_key: str, config: RunConfig, overwrite: bool,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Registers (or re-registers) a run after :func:`check_rerun`.

    Args:
        sample_collection: the collection the run works on
        run_key: the run key
        config: the run's config
        overwrite: whether every sample will be redone
        extra: more config entries (a sharded run's ``sharding``)

    Returns:
        the results stored before (FiftyOne drops them when the run is
        registered again): pass them to :func:`save_results`, which carries
        their history on
    """
    dataset = sample_collection._dataset
    check_rerun(dataset, run_key, config, overwrite)
    previous = load_results(dataset, run_key) if run_key in dataset.list_runs() else {}
    cfg = dataset.init_run(
        xpatch_type=config.kind,
        xpatch_version=__version__,
        started_at=_dt.datetime.now(_dt.UTC).isoformat(),
        **config.to_record(),
        **jsonable(extra or {}),
    )
    sample_collection.register_run(run_key, cfg, overwrite=True, cleanup=False)
    return previous


def save_results(sample_collection: Any, run_key: str, summary: Any, status: str, extra: dict,
                 previous: dict[str, Any] | None = None) -> None:
    """Saves a run's summary as its results.

    Args:
        sample_collection: the collection
        run_key: the run key
        summary: a :class:`xpatch_core.runs.progress.RunSummary`
        status: the run's status
        extra: more entries
        previous: what :func:`start_run` returned, used where no results
            are stored since (the first save after a run starts again)
    """
    dataset = sample_collection._dataset
    previous = load_results(dataset, run_key) or previous or {}
    data = summary.to_dict()
    data.pop("run_key", None)
    data.update(extra)
    data["status"] = status
    data["updated_at"] = _dt.datetime.now(_dt.UTC).isoformat()
    data["history"] = (previous.get("history") or [])[-(_HISTORY - 1):]
    if status in ("completed", "failed"):
        data["history"].append({k: data[k] for k in ("processed", "failed", "skipped", "elapsed", "status")})
    # keep what other writers (an evaluation) stored, except an evaluation of replaced results
    stale = ("evaluation", "evaluations") if summary.processed else ()
    for k, v in previous.items():
        if k not in data and k != "status" and k not in stale:
            data[k] = v
    results = dataset.init_run_results(run_key, **jsonable(data))
    dataset.save_run_results(run_key, results, overwrite=True, cache=False)


def update_run_results(sample_collection: Any, run_key: str, **values: Any) -> None:
    """Adds values (e.g. an evaluation) to a run's stored results.

    Args:
        sample_collection: a FiftyOne collection
        run_key: the run key
        **values: JSON-serialisable values
    """
    dataset = sample_collection._dataset
    data = load_results(dataset, run_key)
    data.update(jsonable(values))
    for reserved in ("run_key", "key", "samples", "config", "backend"):
        data.pop(reserved, None)
    results = dataset.init_run_results(run_key, **data)
    dataset.save_run_results(run_key, results, overwrite=True, cache=False)


__all__ = [
    "MAX_FAILURES_KEPT",
    "RunConfig",
    "check_rerun",
    "check_rerun_early",
    "fields_of_runs",
    "jsonable",
    "list_runs",
    "load_results",
    "run_config",
    "run_of_field",
    "run_type",
    "same_request",
    "save_results",
    "start_run",
    "update_run_results",
]
