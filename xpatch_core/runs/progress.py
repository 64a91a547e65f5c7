"""Progress events, run summaries, and the driver that runs a generator.

Rules:

-   Every long job of the library is a generator of :class:`Progress` events
    whose return value is its result (a :class:`RunSummary` for runs); the
    App relays the events, and :func:`drive` runs the generator to the end
    for Python and the command line, with an optional progress bar.
-   A summary's counts are true and separate: ``processed`` (written now),
    ``skipped`` (already done), ``failed`` (with a reason each) and
    ``vanished`` (deleted from the dataset while the run went on) add up to
    ``total``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from typing import Any


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
        type: ``"saliency"``, ``"patches"`` or ``"embeddings"``
        total: samples in the view
        processed: samples processed now
        skipped: samples skipped because they already had a result
        failed: samples that failed now
        vanished: samples deleted from the dataset while the run went on
        failures: ``[{"id", "filepath", "reason"}, ...]`` (first 1,000)
        patches: detections written (patch runs) or embedded (embedding runs)
        degenerate: maps that were constant or not finite
        elapsed: seconds
        images_per_s: processed samples per second
        status: ``"completed"``, ``"failed"``, ``"interrupted"``,
            ``"queued"`` (a sharded run's parent) or ``"nothing to do"``
        timings: seconds spent per stage (``load_model``, ``read``,
            ``compute``, ``write``; a stage that did not run is absent);
            a saliency run adds ``decode`` (summed over the decoding
            threads) and ``inference`` (the model's batches on its own
            thread), which overlap the other stages
    """

    run_key: str
    field: str
    type: str
    total: int = 0
    processed: int = 0
    skipped: int = 0
    failed: int = 0
    vanished: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    patches: int = 0
    degenerate: int = 0
    elapsed: float = 0.0
    images_per_s: float = 0.0
    status: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Returns the summary as a JSON-serialisable dict."""
        return asdict(self)

    def add_time(self, stage: str, seconds: float) -> None:
        """Adds ``seconds`` to a stage's time.

        Args:
            stage: the stage's name
            seconds: the time spent
        """
        self.timings[stage] = self.timings.get(stage, 0.0) + float(seconds)

    def describe(self) -> str:
        """One line for people: the counts, the speed and where time went.

        Returns:
            a string
        """
        parts = [f"{self.processed} processed", f"{self.skipped} already done", f"{self.failed} failed"]
        if self.vanished:
            parts.append(f"{self.vanished} deleted during the run")
        if self.patches:
            parts.append(f"{self.patches} patches")
        line = ", ".join(parts)
        if self.processed and self.elapsed > 0:
            line += f" ({self.images_per_s:.1f} images/s)"
        times = dict(self.timings)
        threads = {k: times.pop(k) for k in _IN_THREADS if k in times}
        order = [k for k in _STAGE_ORDER if k in times] + [k for k in times if k not in _STAGE_ORDER]
        stages = [f"{k.replace('_', ' ')} {times[k]:.1f} s" for k in order if times[k] >= 0.05 or k == "compute"]
        if stages:
            line += "; time: " + ", ".join(stages)
        if threads:
            line += "; in threads, overlapped: " + ", ".join(f"{_IN_THREADS[k]} {v:.1f} s" for k, v in threads.items())
        return line


#: Stages in the order a run passes through them (others follow).
_STAGE_ORDER = ("load_model", "read", "compute", "write")
#: Work done in threads beside the main one, overlapping it and each other:
#: decoding (summed over the decoding threads) and the model's batches (input,
#: forward pass, maps) on the model thread.
_IN_THREADS = {"decode": "decoding", "inference": "inference"}


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

                    # the first message is printed whole above the bar: a bar is cut to the
                    # terminal's width, so it only shows counts (and failures)
                    tqdm.write(p.message, file=sys.stderr)
                    bar = tqdm(total=p.total, unit="img", desc="xpatch", dynamic_ncols=True, file=sys.stderr)
                bar.total = p.total
                bar.n = p.done
                if p.failed:
                    bar.set_postfix_str(f"{p.failed:,} failed")
                bar.refresh()
    finally:
        # an exception here (a callback's, or Ctrl-C in a bar update) stops the run now: closing
        # the generator runs its cleanup (record 'interrupted', release the lock) at once, not
        # whenever the traceback that holds it is dropped (a notebook keeps the last one)
        gen.close()
        if bar is not None:
            bar.close()


__all__ = ["Progress", "RunSummary", "drive"]
