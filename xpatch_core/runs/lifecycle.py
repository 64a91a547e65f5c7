"""One lifecycle for every kind of run, local or sharded.

A run is a :class:`RunKind` (what it validates, computes and writes) driven
by :func:`execute` through a *recorder* (where its record goes). The steps,
in order, the same for every kind:

1.  **validate** every parameter on the images (cheap; no model): a
    parameter that is wrong for every image fails here, before any work;
2.  **todo**: the samples without a result, decided from the dataset (a
    view that hides the output field does not lose resume); with nothing to
    do (an empty collection, or the same request as the stored run), return
    at once: no model is loaded, TensorFlow is not imported, and the record
    is untouched unless it was left ``interrupted`` or ``running`` by a
    process stopped after its last write (it is then marked ``completed``).
    The same holds when, for the same request, every sample left is one that
    failed before and fails the kind's cheap :meth:`RunKind.recheck` again
    (a broken file, unchanged): the summary counts them as failed, with
    their reasons (status ``nothing to do``), and the record is untouched
    unless it was left ``interrupted`` or ``running`` (it is then marked
    ``failed`` if nothing was written in its last part, as a run that ends
    with every sample failed is);
3.  **setup**: heavy preparation (loading a model) and the typed
    :class:`~xpatch_core.runs.records.RunConfig`; before it, the parameters
    known without it (:meth:`RunKind.known_differences`) are compared with
    the field's existing run, so that another method or model is refused
    without a model load;
4.  **check** that an existing run of the field has the same parameters
    (else refuse unless ``overwrite``), then **lock** the field (or the
    shard's id range) and **start** the record;
5.  **loop**: per-sample :class:`Outcome` objects from the kind, written a
    chunk at a time (``XPATCH_WRITE_CHUNK``): values in bulk, failures with
    their reasons (and the ``xpatch:<field>:failed`` tag), samples deleted
    meanwhile counted as vanished; after each chunk the lock's heartbeat
    and the record's progress;
6.  **finish**: ``completed`` (or ``failed`` when every sample failed);
    on any exception, ``interrupted`` is recorded and the exception raised;
    the lock is always released.

Recorders: :class:`LocalRecorder` (a plain run: FiftyOne's run record), and
in :mod:`xpatch_core.runs.shards` the parent of a sharded run (registers
the run and its shards, processes nothing) and a shard worker (processes
one id range, progress in its shard record). All three have the same
methods, so the lifecycle has no special case for any of them.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from xpatch_core import settings
from xpatch_core.errors import XpatchError
from xpatch_core.runs import collections as colls
from xpatch_core.runs import rates, records
from xpatch_core.runs.locks import acquire_lock, heartbeat, release_lock
from xpatch_core.runs.progress import Progress, RunSummary


@dataclass
class Outcome:
    """What happened to one sample.

    Attributes:
        id: the sample id
        value: the value to write to the run's field (None on failure)
        reason: why the sample failed, or None
        vanished: the sample was deleted while the run went on
        filepath: the sample's file, if known
        patches: detections written or embedded for this sample
        degenerate: the sample's map was constant or not finite
    """

    id: str
    value: Any = None
    reason: str | None = None
    vanished: bool = False
    filepath: str | None = None
    patches: int = 0
    degenerate: bool = False


class RunKind:
    """A kind of run: its parameters, its work per sample and its writes.

    Subclasses set :attr:`kind` and implement :meth:`validate`,
    :meth:`request`, :meth:`setup`, :meth:`outcomes` and :meth:`write`;
    :meth:`todo`, :meth:`tally` and the messages have defaults.

    Args:
        field: the output field
        run_key: the run key (default: ``field``)
        overwrite: redo samples that have a result
        sample_ids: restrict the run to these samples
        id_range: restrict the run to ``lo <= id < hi``
    """

    kind: ClassVar[str] = ""
    #: The stage name under which :meth:`setup`'s time is reported.
    setup_stage: ClassVar[str] = "setup"
    #: The smallest write chunk (cheap per-sample work writes in bigger ones).
    min_chunk: ClassVar[int] = 1
    #: :meth:`setup` loads nothing heavy, so a few samples may be timed
    #: before a run to estimate its duration (:mod:`~xpatch_core.runs.estimate`).
    cheap_setup: ClassVar[bool] = False

    def __init__(self, field: str, *, run_key: str | None = None, overwrite: bool = False,
                 sample_ids: Sequence[str] | None = None, id_range: Sequence[Any] | None = None) -> None:
        self.field = field
        self.run_key = run_key or field
        self.overwrite = bool(overwrite)
        self.sample_ids = None if sample_ids is None else list(sample_ids)
        self.id_range = id_range

    # -- to implement -------------------------------------------------------------
    def validate(self, view: Any) -> None:
        """Checks every parameter before any work (cheap: no model).

        Args:
            view: the images

        Raises:
            ParameterError: for a parameter wrong for every image
        """
        raise NotImplementedError

    def request(self) -> dict[str, Any]:
        """The user's arguments as given, JSON-serialisable."""
        raise NotImplementedError

    def setup(self, view: Any, todo: list[str]) -> records.RunConfig:
        """Heavy preparation (a model), then the run's typed config.

        Args:
            view: the images
            todo: the samples to process

        Returns:
            the run's config
        """
        raise NotImplementedError

    def outcomes(self, dataset: Any, ids: list[str], summary: RunSummary) -> Iterator[Outcome]:
        """Processes samples, one :class:`Outcome` each, in order.

        Args:
            dataset: the dataset
            ids: the samples to process
            summary: the run's summary (for stage timings)

        Returns:
            an iterator of outcomes
        """
        raise NotImplementedError

    def write(self, dataset: Any, values: dict[str, Any]) -> None:
        """Writes one chunk of values, by sample id, in bulk."""
        raise NotImplementedError

    # -- defaults -----------------------------------------------------------------
    def todo(self, view: Any) -> tuple[list[str], int]:
        """The samples to process and the number already done.

        Args:
            view: the images

        Returns:
            ``(ids, skipped)``
        """
        ids = view.values("id")
        if self.overwrite:
            return ids, 0
        done = colls.done_ids(view._dataset, ids, self.field)
        todo = [i for i in ids if i not in done]
        return todo, len(ids) - len(todo)

    def same_request(self, dataset: Any) -> bool:
        """Whether the stored run of :attr:`run_key` was asked for with the
        same arguments (what lets a rerun with nothing to do return at
        once, without loading anything); by default an exact match of
        :meth:`request`.

        Args:
            dataset: the dataset

        Returns:
            True or False
        """
        return records.same_request(dataset, self.run_key, self.kind, self.request())

    def known_differences(self, stored: dict[str, Any]) -> list[str]:  # noqa: ARG002
        """The compared parameters that certainly differ from a stored config,
        known without :meth:`setup` (so a rerun with one of them is refused
        before a model loads); the config :meth:`setup` returns is compared
        in full afterwards.

        Args:
            stored: the stored run's config

        Returns:
            a list of parameter names (none by default)
        """
        return []

    def recheck(self, dataset: Any, ids: list[str]) -> dict[str, str]:  # noqa: ARG002
        """Checks cheaply, without the model, samples that failed in an
        earlier run of the same request: those that would fail again.

        Args:
            dataset: the dataset
            ids: samples tagged as failed in this run's field

        Returns:
            ``{id: reason}`` for the samples that still fail; it may stop at
            the first sample that would not (the run then goes on anyway).
            By default none is known to fail: every sample is tried again
        """
        return {}

    def finish(self, dataset: Any, summary: RunSummary) -> None:
        """After a run that wrote something (App settings, say); nothing by default."""

    def declare_again(self, dataset: Any) -> None:
        """Declares the run's field again if a concurrent schema change lost
        it (:func:`xpatch_core.runs.collections.keep_declared`); nothing by
        default."""

    def tally(self, values: list[Any]) -> dict[str, int]:
        """Counts of values already in the database (for a shard's recovery).

        Args:
            values: stored values of the field

        Returns:
            ``{"patches": n, "degenerate": n}``
        """
        return {"patches": 0, "degenerate": sum(1 for v in values if getattr(v, "degenerate", False))}

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> RunKind:
        """Builds the run from the keyword arguments of its ``iter_run_*``
        function (cheap: nothing is loaded or checked).

        Args:
            **kwargs: the arguments

        Returns:
            the run
        """
        return cls(**kwargs)

    @classmethod
    def speed_key(cls, request: dict[str, Any]) -> str:
        """What a measured speed is kept under, from a request (see
        :meth:`request`): runs with the same key run at about the same
        speed on one machine.

        Args:
            request: a run's request, as stored in its record

        Returns:
            a string
        """
        return cls.kind

    def rate_key(self) -> str:
        """This run's :meth:`speed_key`."""
        return self.speed_key(self.request())

    def probe_ids(self, dataset: Any, todo: list[str], count: int) -> list[str]:  # noqa: ARG002
        """The samples to time before a run (kinds with :attr:`cheap_setup`).

        Args:
            dataset: the dataset
            todo: the samples to process
            count: how many at most

        Returns:
            sample ids
        """
        return todo[:count]

    def start_message(self, count: int) -> str:
        """The first progress line."""
        return f"{self.kind} on {count} samples"

    def progress_message(self, summary: RunSummary) -> str:
        """The progress line after each chunk."""
        done = summary.processed + summary.failed + summary.vanished
        return f"{done:,} of {summary.total - summary.skipped:,} samples done, {summary.failed:,} failed"


class LocalRecorder:
    """The recorder of a plain run: FiftyOne's run record of the run key."""

    id_range = None
    register_only = False
    #: A run with nothing to do and the same request may return at once
    #: (a shard worker must still record that its range is complete).
    may_skip = True
    #: compares the parameters with a stored run's (a shard worker does not: its
    #: parent did)
    checks_parameters = True

    def check(self, dataset: Any, run_key: str, config: records.RunConfig, overwrite: bool) -> None:
        """Refuses other parameters on an existing run (before the lock)."""
        records.check_rerun(dataset, run_key, config, overwrite)

    def __init__(self) -> None:
        self._previous: dict[str, dict[str, Any]] = {}

    def start(self, view: Any, run: RunKind, config: records.RunConfig) -> None:
        """Registers the run (keeping its earlier results for its history)."""
        self._previous[run.run_key] = records.start_run(view, run.run_key, config, run.overwrite)

    def pending(self, ids: Sequence[str]) -> None:
        """Nothing to note: a plain run's counts come from its summary."""

    def save(self, view: Any, run_key: str, summary: RunSummary, status: str, extra: dict) -> None:
        """Saves the summary as the run's results."""
        records.save_results(view, run_key, summary, status, extra, previous=self._previous.get(run_key))


def select_todo(run: RunKind, sample_collection: Any,
                id_range: Sequence[Any] | None = None) -> tuple[Any, list[str], int]:
    """The images a run works on and its samples to process, decided from
    the dataset exactly as :func:`execute` does (step 2), without validating
    parameters or loading anything: what a form shows before a run.

    Args:
        run: the run
        sample_collection: a FiftyOne image collection (a patches view
            stands for its images)
        id_range: the recorder's id range, when ``run`` has none

    Returns:
        ``(view, todo_ids, skipped)``: the images, the ids to process and
        the number of samples that already have a result
    """
    view = colls.images_of(sample_collection)
    if run.sample_ids is not None:
        view = view.select(run.sample_ids)
    view = colls.restrict(view, run.id_range if run.id_range is not None else id_range)
    todo, skipped = run.todo(view)
    return view, todo, skipped


def execute(run: RunKind, sample_collection: Any, recorder: Any = None) -> Generator[Progress, None, RunSummary]:
    """Runs a kind of run through the lifecycle (see the module docstring).

    Args:
        run: the run
        sample_collection: a FiftyOne image collection (a patches view
            stands for its images)
        recorder: :class:`LocalRecorder` (default) or a shard role from
            :mod:`xpatch_core.runs.shards`

    Returns:
        a generator of :class:`Progress` events whose return value is the
        :class:`RunSummary`
    """
    recorder = recorder if recorder is not None else LocalRecorder()
    view = colls.image_view(sample_collection)
    run.validate(view)
    view, todo, skipped = select_todo(run, view, recorder.id_range)
    dataset = view._dataset
    summary = RunSummary(run_key=run.run_key, field=run.field, type=run.kind, total=len(todo) + skipped,
                         skipped=skipped)
    if not todo and recorder.may_skip and (
            not summary.total or run.same_request(dataset)):
        summary.status = "nothing to do"
        if summary.total:
            _settle(run, view, summary, recorder)
        return summary
    if not run.overwrite and recorder.may_skip and _still_failing(run, view, todo, summary):
        summary.status = "nothing to do"
        _settle(run, view, summary, recorder, "failed")
        return summary
    if recorder.checks_parameters:
        records.check_rerun_early(dataset, run.run_key, run.field, run.known_differences, run.overwrite)
    t = time.perf_counter()
    config = run.setup(view, todo)
    summary.add_time(run.setup_stage, time.perf_counter() - t)
    recorder.check(dataset, run.run_key, config, run.overwrite)
    lock = acquire_lock(dataset, run.field, id_range=recorder.id_range)
    try:
        recorder.start(view, run, config)
        if recorder.register_only:
            summary.status = "queued"
            return summary
        yield from _loop(run, view, todo, summary, recorder, lock)
        return summary
    except BaseException:
        summary.status = "interrupted"
        try:
            recorder.save(view, run.run_key, summary, "interrupted", {})
        except Exception:  # noqa: BLE001 - the original error matters more
            pass
        raise
    finally:
        release_lock(lock)


def _still_failing(run: RunKind, view: Any, todo: list[str], summary: RunSummary) -> bool:
    """Whether every sample to do failed before, for the same request, and
    fails :meth:`RunKind.recheck` again; if so, counts them in ``summary``
    as failed with their reasons (nothing is written)."""
    dataset = view._dataset
    if not run.same_request(dataset):
        return False
    failed_before = view.match_tags(colls.FAILED_TAG.format(field=run.field))
    if failed_before.count() < len(todo) or not set(failed_before.values("id")).issuperset(todo):
        return False
    reasons = run.recheck(dataset, todo)
    if len(reasons) < len(todo) or not set(reasons).issuperset(todo):
        return False
    paths = colls.filepaths(dataset, todo)
    summary.failed = len(todo)
    summary.failures = [{"id": sid, "filepath": paths.get(sid, ""), "reason": reasons[sid]}
                        for sid in todo[:records.MAX_FAILURES_KEPT]]
    return True


def _settle(run: RunKind, view: Any, summary: RunSummary, recorder: Any, status: str = "completed") -> None:
    """Records as ``status`` a run with nothing left to do whose record still
    says ``interrupted`` or ``running`` (its process stopped after its last
    write), unless another run of the field holds the lock."""
    dataset = view._dataset
    if records.load_results(dataset, run.run_key).get("status") in ("completed", "failed"):
        return
    try:
        lock = acquire_lock(dataset, run.field, id_range=recorder.id_range)
    except XpatchError:
        return
    try:
        recorder.save(view, run.run_key, summary, status, {})
    finally:
        release_lock(lock)


def _loop(run: RunKind, view: Any, todo: list[str], summary: RunSummary, recorder: Any,
          lock: str) -> Generator[Progress, None, None]:
    """Step 5 and 6: outcomes in chunks, then the final status."""
    t0 = time.perf_counter()
    yield Progress(0, len(todo), 0, run.start_message(len(todo)))
    size = max(settings.write_chunk(), run.min_chunk)
    batch: list[Outcome] = []
    for outcome in run.outcomes(view._dataset, todo, summary):
        batch.append(outcome)
        if len(batch) >= size:
            yield _flush(run, view, batch, summary, recorder, lock, t0, len(todo))
            batch = []
    if batch:
        yield _flush(run, view, batch, summary, recorder, lock, t0, len(todo))
    summary.elapsed = time.perf_counter() - t0
    summary.images_per_s = summary.processed / summary.elapsed if summary.elapsed > 0 else 0.0
    summary.status = "completed" if (summary.processed or not todo or summary.failed == 0) else "failed"
    recorder.save(view, run.run_key, summary, summary.status, {})
    rates.record_rate(run.rate_key(), summary.images_per_s, summary.timings.get(run.setup_stage, 0.0),
                      summary.processed)
    if summary.processed:
        run.declare_again(view._dataset)
        run.finish(view._dataset, summary)


def _flush(run: RunKind, view: Any, batch: list[Outcome], summary: RunSummary, recorder: Any, lock: str,
           t0: float, total: int) -> Progress:
    """Writes one chunk: values, failures, tags, counts, heartbeat, record."""
    t = time.perf_counter()
    dataset = view._dataset
    present = colls.present_ids(dataset, [o.id for o in batch])
    live = [o for o in batch if o.id in present and not o.vanished]
    ok = [o for o in live if o.reason is None]
    bad = [o for o in live if o.reason is not None]
    if ok:
        recorder.pending([o.id for o in ok])
        run.write(dataset, {o.id: o.value for o in ok})
    colls.tag_failed(dataset, run.field, [o.id for o in ok], [o.id for o in bad])
    if bad:
        paths = colls.filepaths(dataset, [o.id for o in bad if not o.filepath])
        room = max(records.MAX_FAILURES_KEPT - len(summary.failures), 0)
        summary.failures.extend({"id": o.id, "filepath": o.filepath or paths.get(o.id, ""), "reason": o.reason}
                                for o in bad[:room])
    summary.processed += len(ok)
    summary.failed += len(bad)
    summary.vanished += len(batch) - len(live)
    summary.patches += sum(o.patches for o in ok)
    summary.degenerate += sum(1 for o in ok if o.degenerate)
    summary.elapsed = time.perf_counter() - t0
    heartbeat(lock)
    recorder.save(view, run.run_key, summary, "running", {})
    summary.add_time("write", time.perf_counter() - t)
    done = summary.processed + summary.failed + summary.vanished
    return Progress(done, total, summary.failed, run.progress_message(summary))


__all__ = ["LocalRecorder", "Outcome", "RunKind", "execute", "select_todo"]
