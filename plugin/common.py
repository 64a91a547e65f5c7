"""Shared operator glue: lazy library access, progress, parameter checks.

Nothing here imports TensorFlow: the App re-runs the plugin's entry file on
every request, and listing operators must stay cheap.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_library() -> None:
    """Makes ``xpatch_core`` importable when the plugin was downloaded
    rather than pip-installed (its folder sits beside ``plugin/``)."""
    try:
        import xpatch_core  # noqa: F401
    except ImportError:
        if _ROOT not in sys.path:
            sys.path.insert(0, _ROOT)


ensure_library()

import fiftyone.operators as foo  # noqa: E402
import fiftyone.operators.types as types  # noqa: E402

#: Operator URIs are ``@xpatch/xpatch/<name>``.
PLUGIN = "@xpatch/xpatch"


def uri(name: str) -> str:
    """Returns the URI of one of this plugin's operators."""
    return f"{PLUGIN}/{name}"


def target_images(ctx: Any) -> Any:
    """The images the operator should process: the chosen view target
    (dataset, current view or selection), with patches mapped to images."""
    from xpatch_core.runs import images_of

    return images_of(ctx.target_view())


def progress_event(ctx: Any, p: Any) -> Any:
    """Reports a :class:`xpatch_core.runs.Progress` to the App or, when
    delegated, to the delegated operation's record.

    Returns:
        an App trigger to yield, or None
    """
    if ctx.delegated:
        ctx.set_progress(progress=p.fraction, label=p.message)
        return None
    return ctx.ops.set_progress(progress=p.fraction, label=p.message)


def relay(ctx: Any, gen: Any):
    """Relays a library generator's :class:`xpatch_core.runs.Progress` events
    to the App (or the delegated operation's record).

    Use as ``summary = yield from relay(ctx, gen)``.

    Args:
        ctx: the execution context
        gen: a generator of progress events

    Returns:
        the generator's return value
    """
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        event = progress_event(ctx, p)
        if event is not None:
            yield event


def long_running_config(name: str, label: str, description: str) -> Any:
    """The config of a long operator: a dynamic form, progress from a
    generator, run now or in the background.

    Args:
        name: the operator name
        label: its label in the App
        description: one line for the operator browser

    Returns:
        a :class:`fiftyone.operators.OperatorConfig`
    """
    return foo.OperatorConfig(
        name=name,
        label=label,
        description=description,
        dynamic=True,
        execute_as_generator=True,
        allow_immediate_execution=True,
        allow_delegated_execution=True,
    )


class DelegableOperator(foo.Operator):
    """Base of the operators that may run in the background: the caller (or
    the Python API's ``delegate=``) chooses."""

    def resolve_delegation(self, ctx: Any) -> bool | None:
        return ctx.params.get("delegate", None)


def execute_run(ctx: Any, iter_run: Any, kwargs: dict[str, Any], operator_uri: str):
    """Runs a library run for an operator (plain, sharded parent or shard),
    relaying progress, and reloads the App's dataset at the end.

    Use as ``summary = yield from execute_run(ctx, runs.iter_run_saliency, kwargs, self.uri)``.

    Args:
        ctx: the execution context
        iter_run: the library's run generator
        kwargs: validated keyword arguments of the run
        operator_uri: the operator's URI (shards are queued to it)

    Returns:
        the run's :class:`xpatch_core.runs.RunSummary`
    """
    from .dispatch import operator_run

    gen = operator_run(ctx, iter_run, target_images(ctx), kwargs, operator_uri)
    summary = yield from relay(ctx, gen)
    if not ctx.delegated:
        yield ctx.ops.reload_dataset()
    return summary


def shards_input(inputs: Any) -> None:
    """Adds the "Shards" input of operators that can split a run."""
    inputs.int("num_shards", default=1, min=1, max=1000, label="Shards",
               description="Split the run into this many delegated operations, for several "
                           "workers ('fiftyone delegated launch')")


def number(params: dict, name: str, default: Any, *, kind: type = float, lo: float | None = None,
           hi: float | None = None, allow_none: bool = False) -> Any:
    """Reads and validates a numeric parameter from the App.

    Args:
        params: ``ctx.params``
        name: the parameter
        default: its default
        kind: ``int`` or ``float``
        lo: the inclusive lower bound
        hi: the inclusive upper bound
        allow_none: whether None (empty) is allowed

    Returns:
        the value

    Raises:
        xpatch_core.errors.ParameterError: for a wrong type, NaN or a value
            out of range
    """
    from xpatch_core.errors import ParameterError

    v = params.get(name, default)
    if v is None or v == "":
        if allow_none:
            return None
        v = default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise ParameterError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(float(v)):
        raise ParameterError(f"{name} must be a finite number, got {v!r}")
    if kind is int:
        if float(v) != int(v):
            raise ParameterError(f"{name} must be an integer, got {v!r}")
        v = int(v)
    else:
        v = float(v)
    if lo is not None and v < lo:
        raise ParameterError(f"{name} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ParameterError(f"{name} must be <= {hi}, got {v}")
    return v


def text(params: dict, name: str, default: str | None = None, *, max_len: int = 4096) -> str | None:
    """Reads a text parameter, refusing non-strings and control characters."""
    from xpatch_core.errors import ParameterError

    v = params.get(name, default)
    if v is None or v == "":
        return default
    if not isinstance(v, str):
        raise ParameterError(f"{name} must be text, got {type(v).__name__}")
    if len(v) > max_len or any(ord(c) < 32 for c in v):
        raise ParameterError(f"{name} is too long or holds control characters")
    return v.strip()


def number_list(params: dict, name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    """Reads ``"1, 1.5"`` or a list as a tuple of positive floats."""
    from xpatch_core.errors import ParameterError

    v = params.get(name)
    if v is None or v == "" or v == []:
        return default
    items = v.split(",") if isinstance(v, str) else list(v)
    out = []
    for item in items:
        try:
            f = float(item)
        except (TypeError, ValueError):
            raise ParameterError(f"{name}: {item!r} is not a number") from None
        if not math.isfinite(f) or f <= 0:
            raise ParameterError(f"{name}: values must be positive finite numbers, got {item!r}")
        out.append(f)
    return tuple(out)


def fields_of(ctx: Any, doc_type: Any) -> list[str]:
    """Names of the dataset's top-level fields holding ``doc_type`` labels."""
    if ctx.dataset is None:
        return []
    schema = ctx.dataset.get_field_schema(embedded_doc_type=doc_type)
    return sorted(schema)


def field_name_input(ctx: Any, inputs: Any, name: str, default: str, kind: str, label: str) -> str:
    """Adds a validated field-name input and returns its current value."""
    value = ctx.params.get(name) or default
    error = None
    try:
        from xpatch_core.runs import validate_field_name

        if ctx.dataset is not None:
            validate_field_name(ctx.dataset, value, kind)
    except Exception as e:  # noqa: BLE001 - shown in the form
        error = str(e)
    inputs.str(
        name,
        default=default,
        required=True,
        label=label,
        description="A new field, or the field of an earlier run of this kind (resumed or overwritten)",
        invalid=error is not None,
        error_message=error,
    )
    return value


def error_view(inputs: Any, message: str) -> Any:
    """Shows an error in the form and returns a property that blocks execution."""
    inputs.view("error", types.Error(label="Cannot run", description=message))
    return types.Property(inputs, invalid=True)


__all__ = ["PLUGIN", "foo", "types", "uri"]
