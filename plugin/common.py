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

from xpatch_core.defaults import MODEL_MENU  # noqa: E402

#: Operator URIs are ``@xpatch/xpatch/<name>``.
PLUGIN = "@xpatch/xpatch"


def uri(name: str) -> str:
    """Returns the URI of one of this plugin's operators."""
    return f"{PLUGIN}/{name}"


def api_view_target(sample_collection: Any) -> str:
    """The view target of a Python API call on a collection: the current
    view when it has stages, else the dataset (the only target FiftyOne
    offers then, on every version).

    Args:
        sample_collection: the collection the call was given

    Returns:
        ``"CURRENT_VIEW"`` or ``"DATASET"``
    """
    return "CURRENT_VIEW" if sample_collection.view()._stages else "DATASET"


def offer_view_target(ctx: Any, inputs: Any) -> None:
    """Offers the view-target choice (dataset / current view / selection) in
    a form: resolving the target adds FiftyOne's own input on versions that
    add it automatically; older ones get ``inputs.view_target``."""
    ctx.target_view()
    if not hasattr(foo.Operator, "_ensure_view_target") and hasattr(inputs, "view_target"):
        inputs.view_target(ctx)


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
    try:
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                return stop.value
            event = progress_event(ctx, p)
            if event is not None:
                yield event
    finally:
        # the App server closes an operator's generator when the browser goes away:
        # close the run now, at the chunk boundary it stopped at (it records
        # "interrupted" and releases its lock), rather than whenever it is collected
        gen.close()


def _accepted(cls: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The options a FiftyOne class of the installed version accepts (newer
    options, such as distributed execution, are dropped on older versions)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return options
    return {k: v for k, v in options.items() if k in params}


def long_running_config(name: str, label: str, description: str, *, distributed: bool = True) -> Any:
    """The config of a long operator: a dynamic form, progress from a
    generator, run now or in the background, and split over the tasks of a
    distributed execution where FiftyOne offers it.

    Args:
        name: the operator name
        label: its label in the App
        description: one line for the operator browser
        distributed: whether the operator honours distributed execution
            (:func:`plugin.dispatch.distributed_task`)

    Returns:
        a :class:`fiftyone.operators.OperatorConfig`
    """
    return foo.OperatorConfig(**_accepted(foo.OperatorConfig, dict(
        name=name,
        label=label,
        description=description,
        dynamic=True,
        execute_as_generator=True,
        allow_immediate_execution=True,
        allow_delegated_execution=True,
        allow_distributed_execution=distributed,
    )))


def execution_options(**options: Any) -> Any:
    """A :class:`fiftyone.operators.executor.ExecutionOptions` with the
    options the installed FiftyOne knows."""
    from fiftyone.operators.executor import ExecutionOptions

    return ExecutionOptions(**_accepted(ExecutionOptions, options))


_PLANS: dict[str, tuple[float, Any]] = {}
_PLAN_TTL = 10.0


class DelegableOperator(foo.Operator):
    """Base of the operators that may run in the background.

    The Python API's ``delegate=`` forces the choice; in the App, the form
    shows the run's plan (:meth:`plan`: samples to process, an estimate of
    the time) and background execution is pre-selected when the plan
    recommends it (``SCALE`` in :mod:`xpatch_core.defaults`). Subclasses
    that run a library run set :attr:`run_kind` and implement
    :meth:`run_kwargs`.
    """

    #: The kind of library run (``"saliency"``, ``"patches"``), or None.
    run_kind: str | None = None
    #: The label of the form's ``overwrite`` option (messages name it).
    overwrite_label: str = "Recompute"

    def run_kwargs(self, ctx: Any) -> dict[str, Any]:
        """The run's keyword arguments, validated from ``ctx.params``."""
        raise NotImplementedError

    def resolve_delegation(self, ctx: Any) -> bool | None:
        return ctx.params.get("delegate", None)

    def plan(self, ctx: Any) -> Any:
        """The run's :class:`xpatch_core.runs.RunPlan` for the form's current
        parameters and target, or None (no kind, or parameters not valid
        yet); kept a few seconds, as the App asks for the form and the
        execution options separately."""
        if self.run_kind is None or ctx.dataset is None:
            return None
        import json
        import time

        from xpatch_core.runs import plan_run, records, run_kind

        try:
            kwargs = self.run_kwargs(ctx)
            run = run_kind(self.run_kind, **kwargs)
            # the stored run's registration time: a run started, redone or deleted since is planned anew
            started = records.run_config(ctx.dataset, run.run_key).get("started_at")
            key = json.dumps([self.uri, ctx.dataset_name, ctx.request_params.get("view"),
                              ctx.request_params.get("view_target"), ctx.selected, kwargs,
                              ctx.params.get("view_target"), started], sort_keys=True, default=str)
            hit = _PLANS.get(key)
            if hit is not None and time.monotonic() - hit[0] < _PLAN_TTL:
                return hit[1]
            plan = plan_run(run, target_images(ctx))
        except Exception:  # noqa: BLE001 - the form shows the parameter errors itself
            return None
        _PLANS[key] = (time.monotonic(), plan)
        return plan

    def resolve_execution_options(self, ctx: Any) -> Any:
        """Immediate or delegated (background) execution, background
        pre-selected when the plan recommends it; distributed execution
        declared with a recommended number of tasks."""
        from xpatch_core.defaults import SCALE

        forced = self.resolve_delegation(ctx)
        plan = None if forced is not None else self.plan(ctx)
        options = {
            "allow_immediate_execution": True if forced is None else not forced,
            "allow_delegated_execution": True if forced is None else bool(forced),
            "default_choice_to_delegated": bool(plan is not None and plan.background),
            "allow_distributed_execution": True,  # honoured by plugin.dispatch; FiftyOne decides if offered
            "min_distributed_tasks": int(SCALE["min_tasks"]),
            "max_distributed_tasks": int(SCALE["max_tasks"]),
            "recommended_distributed_tasks": plan.tasks if plan is not None else None,
        }
        return execution_options(**options)


def result_output(ctx: Any, title: str, lines: list[str], steps: list[tuple[str, str, dict[str, Any]]]) -> Any:
    """Shows an operator's result in the App: a short text (counts,
    failures, where things were written) and one button per next step.

    Args:
        ctx: the execution context
        title: the first line (bold)
        lines: more lines
        steps: ``(label, operator name, params)`` of each next step; the
            button opens that operator's form, filled with ``params``

    Returns:
        the ``show_output`` trigger to yield
    """
    outputs = types.Object()
    outputs.str("result", label="Result", view=types.MarkdownView())
    for k, (label, name, params) in enumerate(steps):
        outputs.btn(f"next_{k}", label=label, on_click=uri(name), prompt=True, params=params)
    text = "\n\n".join([f"**{title}**", *lines])
    return ctx.ops.show_output(types.Property(outputs).to_json(), {"result": text})


def run_result_lines(summary: Any, what: str) -> tuple[str, list[str]]:
    """The result of a library run for people: a title and the details.

    Args:
        summary: the run's :class:`xpatch_core.runs.RunSummary`
        what: what a processed sample gets (``"heatmaps"``, ``"patches"``)

    Returns:
        ``(title, lines)``
    """
    from xpatch_core.runs.estimate import duration

    if summary.status == "nothing to do" and not summary.failed:
        return (f"Nothing to do: all {summary.total:,} samples already have {what} in '{summary.field}'", [])
    if summary.status == "queued":
        return (f"Run '{summary.run_key}' is queued as shards", [
            "Start workers with `fiftyone delegated launch`; see its progress with *xpatch: get run info*."])
    title = f"{what.capitalize()} in '{summary.field}'"
    if summary.status == "nothing to do":  # every sample left failed before and still fails
        title += (f": nothing computed; {summary.failed:,} samples failed before and still cannot be read "
                  "(mend or remove their files, then run again)")
    lines = [f"{summary.processed:,} processed, {summary.skipped:,} already done, {summary.failed:,} failed"
             + (f", {summary.vanished:,} deleted during the run" if summary.vanished else "")
             + (f"; {summary.patches:,} patches" if summary.patches else "")
             + (f"; {duration(summary.elapsed)} at {summary.images_per_s:.1f} samples/s" if summary.processed else "")
             + "."]
    if summary.failed:
        shown = summary.failures[:5]
        lines.append("Failed (tagged `xpatch:" + summary.field + ":failed`): " + "; ".join(
            f"{os.path.basename(f.get('filepath') or f['id'])}: {f['reason']}" for f in shown)
            + (f"; and {summary.failed - len(shown):,} more" if summary.failed > len(shown) else ""))
    return title, lines


def _app_wording(message: str, overwrite_label: str) -> str:
    """A library message as the App's forms say it (their overwrite option
    named by its label)."""
    return message.replace("pass overwrite=True to redo every sample",
                           f"tick \u201c{overwrite_label}\u201d below to redo every sample")


def plan_notice(op: DelegableOperator, ctx: Any, inputs: Any) -> Any:
    """Shows the run's plan at the top of a form: the samples it will
    process and those already done, the estimated time and where it comes
    from, and the recommendation to schedule it.

    Args:
        op: the operator
        ctx: the execution context
        inputs: the form

    Returns:
        the :class:`xpatch_core.runs.RunPlan`, or None
    """
    plan = op.plan(ctx)
    if plan is None:
        return None
    lines = [_app_wording(line, op.overwrite_label) for line in plan.lines()]
    kind = types.Warning if plan.background or plan.refused else types.Notice
    inputs.view("plan", kind(label=lines[0], description=" ".join(lines[1:])))
    return plan


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


def field_name_input(ctx: Any, inputs: Any, name: str, default: str, kind: str, label: str,
                     plan: Any = None, overwrite_label: str = "Recompute") -> str:
    """Adds a validated field-name input and returns its current value; a
    run its field's earlier run would refuse (``plan.refused``, other
    parameters) makes the input invalid too, so the form can be neither run
    nor scheduled until the parameters, the field or ``overwrite`` change."""
    value = ctx.params.get(name) or default
    error = None
    try:
        from xpatch_core.runs import validate_field_name

        if ctx.dataset is not None:
            validate_field_name(ctx.dataset, value, kind)
    except Exception as e:  # noqa: BLE001 - shown in the form
        error = str(e)
    if error is None and plan is not None and plan.refused:
        error = _app_wording(plan.refused, overwrite_label)
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


# -- shared parameter readers and form pieces ---------------------------------------

#: The model menu of forms that load a model (first the common ``keras.applications`` models).
MODEL_CHOICES = [
    *MODEL_MENU,
    ("other", "Another keras.applications model"),
    ("saved", "My saved classifier (.keras / .h5)"),
]


def flag(params: dict, name: str, default: bool = False) -> bool:
    """Reads a true/false parameter, refusing anything else."""
    from xpatch_core.errors import ParameterError

    v = params.get(name, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ParameterError(f"{name} must be true or false")
    return v


def choice(params: dict, name: str, allowed: Any, *, required: bool = True, what: str = "") -> str | None:
    """Reads a text parameter that must be one of ``allowed``.

    Args:
        params: ``ctx.params``
        name: the parameter
        allowed: the accepted values
        required: whether it must be given
        what: how to describe the choices in the error (default: list them)

    Returns:
        the value, or None when not given and not required

    Raises:
        xpatch_core.errors.ParameterError: for a missing or unknown value
    """
    from xpatch_core.errors import ParameterError

    v = text(params, name, None, max_len=200)
    if v is None:
        if required:
            raise ParameterError(f"{name} is required")
        return None
    if v not in allowed:
        raise ParameterError(f"{name}: {v!r} is not one of {what or ''}({', '.join(map(str, allowed)) or 'none'})")
    return v


def model_param(params: dict, default: str) -> str:
    """Reads the model of a form built by :func:`model_inputs`.

    Args:
        params: ``ctx.params``
        default: the default model name

    Returns:
        a ``keras.applications`` name or a saved model path

    Raises:
        xpatch_core.errors.ParameterError: for an unknown model or a missing path
    """
    from xpatch_core.errors import ParameterError
    from xpatch_core.models import is_application

    picked = text(params, "model", default)
    if picked == "saved":
        model = text(params, "model_path", max_len=4096)
        if not model:
            raise ParameterError("give the path of your saved classifier")
        return model
    if picked == "other":
        model = text(params, "model_name")
        if not model or not is_application(model):
            raise ParameterError(f"unknown keras.applications model {model!r}")
        return model
    if not is_application(picked or ""):
        raise ParameterError(f"unknown model {picked!r}")
    return picked


def model_call_params(model: str) -> dict[str, str]:
    """The form parameters that stand for a model name or path (for ``__call__``)."""
    from xpatch_core.models import is_application

    if is_application(model):
        return {"model": model if model in dict(MODEL_CHOICES) else "other", "model_name": model}
    return {"model": "saved", "model_path": model}


def model_inputs(ctx: Any, inputs: Any, default: str) -> str:
    """Adds the model menu (and the name / path / weights inputs it needs).

    Args:
        ctx: the execution context
        inputs: the form
        default: the default model

    Returns:
        the current menu choice
    """
    menu = types.Dropdown(label="Model")
    for value, label in MODEL_CHOICES:
        menu.add_choice(value, label=label)
    inputs.enum("model", menu.values(), default=default, view=menu)
    picked = ctx.params.get("model", default)
    if picked == "other":
        inputs.str("model_name", required=True, label="keras.applications name",
                   description="e.g. ResNet101, DenseNet121, InceptionV3")
    if picked == "saved":
        inputs.str("model_path", required=True, label="Saved classifier",
                   description="Path of a .keras or .h5 file (loaded with Keras' safe mode)")
    else:
        inputs.str("weights", label="Weights file (optional)",
                   description="Offline weights; empty = ImageNet through Keras' cache (or XPATCH_WEIGHTS)")
    return picked


def patches_view_of(ctx: Any) -> Any | None:
    """The target view when it is a patches view (evaluation patches aside), else None."""
    import fiftyone.core.patches as fop

    view = ctx.target_view()
    return view if isinstance(view, fop.PatchesView) and not isinstance(view, fop.EvaluationPatchesView) else None


def patch_fields(ctx: Any) -> list[str]:
    """``fo.Detections`` fields, those of xpatch patch runs first."""
    import fiftyone as fo

    fields = fields_of(ctx, fo.Detections)
    if ctx.dataset is None:
        return fields
    from xpatch_core.runs.records import fields_of_runs

    ours = [f for f in fields_of_runs(ctx.dataset, "patches") if f in fields]
    return ours + [f for f in fields if f not in ours]


__all__ = ["PLUGIN", "foo", "types", "uri"]
