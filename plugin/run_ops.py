"""Run management, in the style of FiftyOne's brain plugin: get info, load
the run's view, delete the run (its field, failure tags and heatmap files)."""

from __future__ import annotations

import json
from typing import Any

from .common import foo, types


def _run_keys(ctx: Any) -> list[str]:
    if ctx.dataset is None:
        return []
    from xpatch_core.runs import list_runs

    return list_runs(ctx.dataset)


def _run_key_input(ctx: Any, inputs: Any) -> str | None:
    keys = _run_keys(ctx)
    if not keys:
        inputs.view("none", types.Warning(label="This dataset has no xpatch runs"))
        return None
    choices = types.DropdownView()
    for key in keys:
        choices.add_choice(key, label=key)
    inputs.enum("run_key", choices.values(), required=True, label="Run", view=choices)
    return ctx.params.get("run_key")


def _checked_key(ctx: Any) -> str:
    from xpatch_core.errors import ParameterError

    key = ctx.params.get("run_key")
    if not isinstance(key, str) or key not in _run_keys(ctx):
        raise ParameterError(f"unknown xpatch run {key!r}")
    return key


class _RunOperator(foo.Operator):
    """Base of the run-management operators: a run-key form and a Python call."""

    form_label = "xpatch run"

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        _run_key_input(ctx, inputs)
        return types.Property(inputs, view=types.View(label=self.form_label))

    def __call__(self, sample_collection: Any, run_key: str) -> Any:
        """Runs the operator on a run, as the App does.

        Args:
            sample_collection: a FiftyOne collection
            run_key: the run key

        Returns:
            the :class:`fiftyone.operators.executor.ExecutionResult` (for
            *get run info*, ``result["info"]`` holds the config and results)
        """
        ctx = {"view": sample_collection.view(), "params": {"run_key": run_key}}
        return foo.execute_operator(self.uri, ctx)



class GetRunInfo(_RunOperator):
    """Shows the config and results of an xpatch run."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(name="get_xpatch_run_info", label="xpatch: get run info", dynamic=True)

    form_label = "xpatch run info"

    def execute(self, ctx: Any) -> dict[str, Any]:
        from xpatch_core.runs import get_run_info

        info = get_run_info(ctx.dataset, _checked_key(ctx))
        return {"info": json.loads(json.dumps(info, default=str))}

    def resolve_output(self, ctx: Any) -> types.Property:
        outputs = types.Object()
        outputs.obj("info", label="Run", view=types.JSONView())
        return types.Property(outputs, view=types.View(label="xpatch run info"))



class LoadRunView(_RunOperator):
    """Opens the view of an xpatch run (a patches view for patch runs)."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(name="load_xpatch_run_view", label="xpatch: load run view", dynamic=True)

    form_label = "Load xpatch run view"

    def execute(self, ctx: Any) -> dict[str, Any]:
        from xpatch_core.runs import load_run_view

        view = load_run_view(ctx.dataset, _checked_key(ctx))
        ctx.ops.set_view(view=view)
        return {"samples": len(view)}



class DeleteRun(_RunOperator):
    """Deletes an xpatch run with its field, failure tags and heatmap files."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(name="delete_xpatch_run", label="xpatch: delete run", dynamic=True)

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        key = _run_key_input(ctx, inputs)
        if key:
            from xpatch_core.runs import get_run_info

            info = get_run_info(ctx.dataset, key)
            fld = info["config"].get("field")
            extra = " and its heatmap files" if info["config"].get("map_dir") else ""
            inputs.view("warning", types.Warning(
                label=f"This deletes the field '{fld}'{extra}. It cannot be undone."))
        return types.Property(inputs, view=types.View(label="Delete xpatch run"))

    def execute(self, ctx: Any) -> dict[str, Any]:
        from xpatch_core.runs import delete_run

        out = delete_run(ctx.dataset, _checked_key(ctx))
        ctx.ops.reload_dataset()
        return out



def register(p: Any) -> None:
    """Registers this module's operators."""
    p.register(GetRunInfo)
    p.register(LoadRunView)
    p.register(DeleteRun)
