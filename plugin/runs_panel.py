"""The xpatch panel: the dataset's runs, one run's parameters, counts,
failures and timings, its evaluation and score distribution as plots, and
the next steps as buttons.

The panel only shows what :mod:`xpatch_core.overview` reads from the run
records (and one ``histogram_values`` aggregation); it computes nothing
heavy. On a FiftyOne without Python panels, nothing is registered and the
operators work as before.
"""

from __future__ import annotations

from typing import Any

from .common import foo, types, uri

#: The panel's name (``@xpatch/xpatch/xpatch_runs``) and its tab label.
PANEL_NAME = "xpatch_runs"
PANEL_LABEL = "xpatch runs"

#: The run table's columns: (key of :func:`xpatch_core.overview.run_row`, heading).
_COLUMNS = [("run", "Run"), ("kind", "Kind"), ("status", "Status"), ("samples", "Samples"), ("patches", "Patches"),
            ("time", "Time")]
_PLOT_CONFIG = {"displayModeBar": False, "responsive": True}


def load_state(ctx: Any, run_key: str | None = None) -> dict[str, Any]:
    """Reads the runs and puts what the panel shows into its state and data.

    Args:
        ctx: the panel's execution context
        run_key: the run to detail (default: the latest patch run)

    Returns:
        the :func:`xpatch_core.overview.panel_content` dict
    """
    from xpatch_core.overview import panel_content

    if ctx.dataset is None:
        content = {"rows": [], "run_key": None, "details": "", "hits": None, "scores": None, "evaluation": None,
                   "steps": []}
    else:
        content = panel_content(ctx.dataset, run_key)
    hits, scores = content["hits"], content["scores"]
    ctx.panel.state.set({
        "dataset": ctx.dataset_name,
        "rows": content["rows"],
        "run_key": content["run_key"],
        "details": content["details"],
        "kind": next((r["kind"] for r in content["rows"] if r["run"] == content["run_key"]), None),
        "hits_layout": hits["layout"] if hits else None,
        "hits_title": hits["title"] if hits else None,
        "hits_note": (f"{hits['classes_left_out']} more classes are not shown." if hits and hits["classes_left_out"]
                      else None),
        "scores_layout": scores["layout"] if scores else None,
        "scores_title": scores["title"] if scores else None,
        "evaluation": content["evaluation"],
        "steps": content["steps"],
    })
    ctx.panel.data.set({"hits": hits["data"] if hits else [], "scores": scores["data"] if scores else []})
    return content


def runs_table_markdown(dataset_name: str, rows: list[dict[str, Any]]) -> str:
    """The run table as Markdown (it wraps to the panel's width).

    Args:
        dataset_name: the dataset's name
        rows: :func:`xpatch_core.overview.run_row` dicts

    Returns:
        Markdown text: a heading and a table
    """
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|") if v not in (None, "") else "-"

    lines = [f"**xpatch runs on '{dataset_name}'**", "",
             "| " + " | ".join(label for _, label in _COLUMNS) + " |",
             "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(key)) for key, _ in _COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


class RunsPanel(getattr(foo, "Panel", foo.Operator)):
    """Lists the dataset's xpatch runs and shows the chosen one."""

    @property
    def config(self) -> Any:
        return foo.PanelConfig(name=PANEL_NAME, label=PANEL_LABEL, icon="insights", surfaces="grid",
                               help_markdown="xpatch runs of this dataset: parameters, counts, failures, timings, "
                                             "the patch evaluation and the next steps")

    def on_load(self, ctx: Any) -> None:
        load_state(ctx, ctx.panel.state.run_key)

    def on_change_dataset(self, ctx: Any) -> None:
        load_state(ctx)

    def on_refresh(self, ctx: Any) -> None:
        load_state(ctx, ctx.panel.state.run_key)

    def on_select_run(self, ctx: Any) -> None:
        load_state(ctx, ctx.params.get("value"))

    def render(self, ctx: Any) -> Any:
        panel = types.Object()
        state = ctx.panel.state
        rows = state.rows or []
        if ctx.dataset is None:
            panel.md("Open a dataset to see its xpatch runs.", name="empty")
        elif not rows:
            panel.md(f"### No xpatch runs on '{ctx.dataset_name}' yet\n\nCompute saliency heatmaps first.",
                     name="empty")
            panel.btn("compute", label="Compute saliency", on_click=uri("compute_saliency"), prompt=True,
                      variant="contained")
        else:
            self._render_runs(panel, state, rows)
        panel.btn("refresh", label="Refresh", icon="refresh", on_click=self.on_refresh)
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=2, padding=2))

    def _render_runs(self, panel: Any, state: Any, rows: list[dict[str, Any]]) -> None:
        panel.md(runs_table_markdown(state.dataset, rows), name="rows_table")
        choices = types.DropdownView()
        for r in rows:
            choices.add_choice(r["run"], label=f"{r['run']} ({r['kind']})")
        panel.enum("run_key", choices.values(), default=state.run_key, label="Run", view=choices,
                   on_change=self.on_select_run)
        panel.str("details", view=types.MarkdownView())
        if state.hits_layout:
            panel.md(f"**{state.hits_title}**", name="hits_title")
            panel.plot("hits", layout=state.hits_layout, config=_PLOT_CONFIG)
            ev = state.evaluation or {}
            pointing = ev.get("pointing_game")
            panel.md(f"Evaluated against `{ev.get('gt_field')}`: {ev.get('patches'):,} patches on "
                     f"{ev.get('images_evaluated'):,} images"
                     + (f"; pointing game {pointing:.0%}" if isinstance(pointing, (int, float)) else "")
                     + (f". {state.hits_note}" if state.hits_note else "."), name="evaluation_note")
        elif state.kind == "patches":
            panel.md("Not evaluated yet: **Evaluate** measures how often the patches land on ground-truth "
                     "objects, against uniform placement and the centre prior.", name="evaluation_note")
        if state.scores_layout:
            panel.md(f"**{state.scores_title}**", name="scores_title")
            panel.plot("scores", layout=state.scores_layout, config=_PLOT_CONFIG)
        steps = panel.h_stack("steps", gap=1)
        for step in state.steps or []:
            steps.btn(step["name"], label=step["label"], on_click=uri(step["operator"]), prompt=step["prompt"],
                      params=step["params"], variant="contained" if not step["prompt"] else "outlined")


def register(p: Any) -> None:
    """Registers the panel where FiftyOne has Python panels."""
    if getattr(foo, "Panel", None) is not None and getattr(foo, "PanelConfig", None) is not None:
        p.register(RunsPanel)
