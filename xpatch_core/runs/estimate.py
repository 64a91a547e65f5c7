"""Before a run: how many samples it will process and about how long it takes.

The App's forms show this for a run's parameters and recommend running in
the background above a threshold (``SCALE`` in :mod:`xpatch_core.defaults`).
Rules:

-   The counts are the lifecycle's own (:func:`~xpatch_core.runs.lifecycle.select_todo`):
    decided from the dataset, whatever fields the view shows; nothing is
    validated, loaded or written.
-   The speed comes from, in order: the latest run of the same rate key
    (:meth:`~xpatch_core.runs.RunKind.rate_key`: for a saliency run the
    model, the method and the fusion) recorded on this dataset; else the
    speed last recorded by such a run on this machine
    (:mod:`~xpatch_core.runs.rates`); else, for kinds whose setup is cheap
    (patch runs), a few samples timed now, in memory, without writing
    anything. A saliency run that was never timed gets no estimate (timing
    one would load the model into the App's server): the recommendation
    then rests on the number of samples alone.
-   A run its field's earlier run would refuse (other parameters; see
    :func:`~xpatch_core.runs.records.check_rerun`) is said so, from what is
    known without a model (:meth:`~xpatch_core.runs.RunKind.known_differences`;
    the whole config for kinds whose setup is cheap).
-   The estimate is the setup time (loading the model) plus the samples to
    process at that speed. It is an estimate: the figures it comes from are
    shown with it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from xpatch_core.defaults import SCALE
from xpatch_core.runs import rates, records
from xpatch_core.runs.lifecycle import RunKind, select_todo
from xpatch_core.runs.progress import RunSummary

_PROBES: dict[tuple[str, str], tuple[float, float]] = {}
_PROBE_TTL = 300.0


@dataclass
class RunPlan:
    """What a run would do.

    Attributes:
        kind: the kind of run
        todo: samples to process
        done: samples that already have a result (skipped)
        images_per_s: the expected speed, or None when unknown
        setup_s: the expected setup time (loading the model)
        seconds: the estimated duration, or None when unknown
        source: where the speed comes from, for people
        background: whether running in the background is recommended
        tasks: the recommended number of distributed tasks
        refused: why the run would be refused for its parameters (its field
            holds results of a run with other ones), or ``""``
    """

    kind: str
    todo: int
    done: int
    images_per_s: float | None = None
    setup_s: float = 0.0
    seconds: float | None = None
    source: str = ""
    background: bool = False
    tasks: int = 1
    refused: str = ""

    def lines(self) -> list[str]:
        """The plan for people: counts, the estimate and its source, the advice.

        Returns:
            a list of sentences
        """
        total = self.todo + self.done
        if self.refused:
            return [f"This run would be refused: {self.refused}."]
        if self.todo == 0:
            return [f"Nothing to process: all {total:,} samples already have a result."]
        out = [f"{self.todo:,} of {total:,} samples to process ({self.done:,} already done)."]
        if self.seconds is None:
            out.append("No time estimate yet: no run with this model and method was timed on this dataset "
                       "or on this machine.")
        else:
            setup = f" plus {self.setup_s:.0f} s to load the model" if self.setup_s >= 1 else ""
            out.append(f"Estimated time: {duration(self.seconds)} ({self.images_per_s:.1f} samples/s{setup}, "
                       f"{self.source}).")
        if self.background:
            out.append("Recommended: schedule it (a delegated worker runs it in the background: "
                       "'fiftyone delegated launch'). A run in the App stops when its tab closes, and resumes "
                       "where it stopped when started again.")
        return out


def duration(seconds: float) -> str:
    """A duration for people: ``about 40 s``, ``about 12 min``, ``about 2.5 h``.

    Args:
        seconds: a duration

    Returns:
        a string
    """
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


def run_kind(kind: str, **kwargs: Any) -> RunKind:
    """Builds a run of a kind from the keyword arguments of its ``iter_run_*``
    function (nothing is loaded or checked).

    Args:
        kind: the :attr:`~xpatch_core.runs.RunKind.kind` of a run
            (``"saliency"``, ``"patches"``, or any other subclass's)
        **kwargs: the run's arguments

    Returns:
        a :class:`~xpatch_core.runs.RunKind`

    Raises:
        ParameterError: for an unknown kind
    """
    from xpatch_core.errors import ParameterError
    from xpatch_core.runs import patches_run, saliency_run  # noqa: F401 - they define their kinds

    kinds: dict[str, type[RunKind]] = {}
    pending = [RunKind]
    while pending:
        for sub in pending.pop().__subclasses__():
            kinds.setdefault(sub.kind, sub)
            pending.append(sub)
    if kind not in kinds:
        raise ParameterError(f"unknown kind of run {kind!r} (one of {', '.join(kinds)})")
    return kinds[kind].from_kwargs(**kwargs)


def count_todo(run: RunKind, sample_collection: Any) -> tuple[int, int]:
    """The number of samples a run would process and of those already done,
    decided from the dataset as the run itself decides (no model is loaded).

    Args:
        run: the run (e.g. a :class:`~xpatch_core.runs.saliency_run.SaliencyRun`)
        sample_collection: a FiftyOne image collection

    Returns:
        ``(todo, done)``
    """
    _, todo, done = select_todo(run, sample_collection)
    return len(todo), done


def _dataset_rate(dataset: Any, run: RunKind) -> tuple[float, float, str] | None:
    """The speed of the latest plain run of the same rate key on the dataset."""
    key, best = run.rate_key(), None
    for run_key in records.list_runs(dataset, type=run.kind):
        cfg = records.run_config(dataset, run_key)
        if cfg.get("sharding") or run.speed_key(cfg.get("request") or {}) != key:
            continue
        res = records.load_results(dataset, run_key)
        speed = float(res.get("images_per_s") or 0)
        if int(res.get("processed") or 0) < rates.MIN_SAMPLES or speed <= 0:
            continue
        when = str(res.get("updated_at") or "")
        if best is None or when > best[0]:
            setup = float((res.get("timings") or {}).get(run.setup_stage, 0.0))
            best = (when, speed, setup, run_key)
    if best is None:
        return None
    return best[1], best[2], f"measured by the run '{best[3]}' on this dataset"


def _probe_rate(run: RunKind, view: Any, todo: list[str]) -> tuple[float, float, str] | None:
    """Times a few samples now (kinds with a cheap setup), in memory."""
    cache_key = (run.rate_key(), view._dataset.name)
    hit = _PROBES.get(cache_key)
    if hit is not None and time.monotonic() - hit[1] < _PROBE_TTL:
        return hit[0], 0.0, f"measured on {SCALE['probe_samples']} samples"
    dataset = view._dataset
    ids = run.probe_ids(dataset, todo, int(SCALE["probe_samples"]))
    if not ids:
        return None
    summary = RunSummary(run_key=run.run_key, field=run.field, type=run.kind)
    try:
        run.setup(view, ids)
        outcomes = run.outcomes(dataset, ids, summary)
        next(outcomes, None)  # the first sample pays for warming up; time the others
        t = time.perf_counter()
        count = sum(1 for _ in outcomes)
        elapsed = time.perf_counter() - t
    except Exception:  # noqa: BLE001 - no estimate; the run reports its own errors
        return None
    if not count or elapsed <= 0:
        return None
    speed = count / elapsed
    _PROBES[cache_key] = (speed, time.monotonic())
    return speed, 0.0, f"measured now on {count} samples"


def _refusal(run: RunKind, view: Any) -> str:
    """Why the run would be refused for its parameters, or ``""``."""
    from xpatch_core.errors import ParameterError

    dataset = view._dataset
    try:
        if run.cheap_setup:
            records.check_rerun(dataset, run.run_key, run.setup(view, []), run.overwrite)
        else:
            records.check_rerun_early(dataset, run.run_key, run.field, run.known_differences, run.overwrite)
    except ParameterError as e:
        return str(e)
    except Exception:  # noqa: BLE001 - the run reports its own errors
        return ""
    return ""


def plan_run(run: RunKind, sample_collection: Any, *, probe: bool = True) -> RunPlan:
    """How many samples a run would process, about how long it would take,
    and whether to run it in the background (see the module docstring).

    Args:
        run: the run (e.g. a :class:`~xpatch_core.runs.saliency_run.SaliencyRun`
            built from the form's parameters)
        sample_collection: a FiftyOne image collection
        probe: time a few samples when no speed is recorded (cheap kinds)

    Returns:
        a :class:`RunPlan`
    """
    view, todo, done = select_todo(run, sample_collection)
    plan = RunPlan(kind=run.kind, todo=len(todo), done=done,
                   refused=_refusal(run, view) if todo or done else "")  # no samples: the run does nothing
    speed = _dataset_rate(view._dataset, run) if todo else None
    if speed is None and todo:
        entry = rates.machine_rate(run.rate_key())
        if entry is not None:
            speed = (float(entry["images_per_s"]), float(entry.get("setup_s") or 0.0),
                     f"measured by an earlier run on this machine ({int(entry.get('samples') or 0):,} samples)")
    if speed is None and todo and probe and run.cheap_setup:
        speed = _probe_rate(run, view, todo)
    if speed is not None:
        plan.images_per_s, plan.setup_s, plan.source = speed
        plan.seconds = plan.setup_s + plan.todo / plan.images_per_s
        plan.background = plan.seconds > float(SCALE["background_above_s"])
    else:
        plan.background = plan.todo > int(SCALE["background_above_samples"])
    plan.tasks = max(int(SCALE["min_tasks"]), min(int(SCALE["max_tasks"]),
                                                  math.ceil(plan.todo / int(SCALE["samples_per_task"]))))
    return plan


__all__ = ["RunPlan", "count_todo", "duration", "plan_run", "run_kind"]
