"""The dataset's saved colour scheme, shown in the App as soon as a run changes it.

A saliency run gives its field a value colormap in the dataset's saved colour
scheme (:func:`xpatch_core.runs.saliency_run.default_colorscale`), but the App
reads the saved scheme only when it opens a dataset: ``reload_dataset`` keeps
the session's scheme, so the new heatmaps would show in the field's single
colour until the page is reloaded. After such a run, the operator triggers
the App's own ``set_color_scheme`` operator with what was saved. Only when the
run changed the saved scheme, with the colorscales (and, for a scheme the run
created, its colour mode and opacity; colours the user set in the session are
left alone otherwise), and only on FiftyOne versions whose App has that operator
(:data:`SET_COLOR_SCHEME_SINCE`; older ones show the scheme on the next page
load).
"""

from __future__ import annotations

from typing import Any

#: The first FiftyOne version tested whose App has ``set_color_scheme`` (1.11 has not).
SET_COLOR_SCHEME_SINCE = (1, 22)


def app_can_set_colour_scheme() -> bool:
    """Whether the installed FiftyOne's App has the ``set_color_scheme`` operator."""
    import re

    import fiftyone as fo

    m = re.match(r"(\d+)\.(\d+)", fo.__version__)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= SET_COLOR_SCHEME_SINCE


def saved_scheme(ctx: Any) -> dict[str, Any] | None:
    """The dataset's saved colour scheme as a dict (None without one)."""
    if ctx.dataset is None:
        return None
    ctx.dataset.reload()
    scheme = ctx.dataset.app_config.color_scheme
    return None if scheme is None else scheme.to_dict()


def colour_scheme_event(ctx: Any, before: dict[str, Any] | None) -> Any:
    """The App trigger that shows the saved colour scheme, if the run changed it.

    Args:
        ctx: the execution context (not delegated)
        before: :func:`saved_scheme` before the run

    Returns:
        a trigger to yield, or None (nothing changed, or an App without
        ``set_color_scheme``)
    """
    after = saved_scheme(ctx)
    if after is None or after == before or not app_can_set_colour_scheme():
        return None
    params: dict[str, Any] = {"colorscales": [
        {"path": c.get("path"), "name": c.get("name"), "list": c.get("list")} for c in after.get("colorscales") or []]}
    if before is None:  # the run made the scheme: its colour mode and opacity too
        if after.get("color_by"):
            params["color_by"] = after["color_by"]
        if after.get("opacity") is not None:
            params["opacity"] = after["opacity"]
    return ctx.trigger("set_color_scheme", params)
