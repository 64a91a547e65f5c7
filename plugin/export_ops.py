"""The ``export_patches`` and ``evaluate_patches`` operators."""

from __future__ import annotations

import json
import os
from typing import Any

from .common import (
    DelegableOperator,
    api_view_target,
    choice,
    fields_of,
    flag,
    foo,
    long_running_config,
    number,
    patch_fields,
    patches_view_of,
    relay,
    result_output,
    text,
    types,
)

#: Detection attributes written by patch runs, offered as class sources.
PATCH_ATTRS = ["rank", "scale", "aspect_ratio", "flagged", "degenerate", "width_px", "height_px", "seed"]
_REPORT_FILES = 50


def export_params(ctx: Any) -> dict[str, Any]:
    """Validates the form's parameters on the server.

    Args:
        ctx: the execution context

    Returns:
        keyword arguments of :func:`xpatch_core.export.iter_export_patches`
    """
    from xpatch_core.errors import ParameterError
    from xpatch_core.export import FORMATS

    params = ctx.params
    fmt = text(params, "format", "imagefolder")
    if fmt not in FORMATS:
        raise ParameterError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    export_dir = text(params, "export_dir", None, max_len=4096)
    if not export_dir:
        raise ParameterError("export_dir is required")
    pv = patches_view_of(ctx)
    field = pv.patches_field if pv is not None else choice(params, "field", patch_fields(ctx),
                                                              what="the dataset's fields ")
    source = text(params, "class_source", "label")
    if source not in ("label", "attribute"):
        raise ParameterError(f"class_source must be 'label' or 'attribute', got {source!r}")
    label_attr = None
    if source == "attribute":
        label_attr = text(params, "label_attr", None, max_len=200)
        if not label_attr or not label_attr.replace("_", "").isalnum():
            raise ParameterError(f"label_attr must be an attribute name, got {label_attr!r}")
    pad, square = 0.0, False
    if fmt == "imagefolder":
        pad = number(params, "pad", 0.0, lo=0.0, hi=10.0)
        square = flag(params, "square")
    return {"export_dir": export_dir, "format": fmt, "field": field, "label_attr": label_attr, "pad": pad,
            "square": square, "overwrite": flag(params, "overwrite")}


def _report_for_app(report: dict[str, Any]) -> dict[str, Any]:
    out = dict(report)
    out["files"] = report["files"][:_REPORT_FILES]
    out["files_listed"] = len(out["files"])
    return json.loads(json.dumps(out, default=str))


class ExportPatches(DelegableOperator):
    """Exports patches as an ImageFolder tree of crops or as a COCO dataset of
    the source images, then shows what was written and skipped."""

    @property
    def config(self) -> foo.OperatorConfig:
        return long_running_config(
            "export_patches", "Export patches",
            "ImageFolder crops or COCO detections from a patches view or a patch field",
        )

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        pv = patches_view_of(ctx)
        if pv is not None:
            inputs.view("source", types.Notice(
                label=f"Exports the {len(pv)} patches of this patches view ('{pv.patches_field}'): "
                      "filters and selections carry over"))
            field = pv.patches_field
        else:
            fields = patch_fields(ctx)
            if not fields:
                inputs.view("nofield", types.Error(label="No patches field",
                                                   description="Run 'Sample patches' first"))
                return types.Property(inputs, invalid=True)
            inputs.enum("field", fields, default=fields[0], required=True, label="Patches field")
            field = ctx.params.get("field") or fields[0]
        fmt = types.RadioGroup()
        fmt.add_choice("imagefolder", label="ImageFolder (one crop per patch, class folders)")
        fmt.add_choice("coco", label="COCO detections (source images, patches as boxes)")
        inputs.enum("format", fmt.values(), default="imagefolder", label="Format", view=fmt)
        export_dir = ctx.params.get("export_dir")
        overwrite = bool(ctx.params.get("overwrite", False))
        error = None
        if isinstance(export_dir, str) and export_dir.strip():
            path = os.path.realpath(os.path.abspath(os.path.expanduser(export_dir.strip())))
            if os.path.exists(path) and not os.path.isdir(path):
                error = f"{path} exists and is not a folder"
            elif os.path.isdir(path) and os.listdir(path) and not overwrite:
                error = f"{path} is not empty: choose another folder or tick 'Replace its contents'"
        inputs.str("export_dir", required=True, label="Export folder",
                   description="A new or empty folder on the server", invalid=error is not None,
                   error_message=error)
        inputs.bool("overwrite", default=False, label="Replace its contents",
                    description="Clear a non-empty export folder first (links in it are removed, not followed)")
        src = types.RadioGroup()
        src.add_choice("label", label="The patch label")
        src.add_choice("attribute", label="An attribute")
        inputs.enum("class_source", src.values(), default="label", label="Class from", view=src)
        if ctx.params.get("class_source") == "attribute":
            attrs = list(PATCH_ATTRS)
            if ctx.dataset is not None and field:
                try:
                    first = ctx.dataset.exists(field).limit(1).values(f"{field}.detections")
                    for d in (first[0] if first else None) or []:
                        attrs += [n for n, _ in d.iter_attributes() if n not in attrs]
                except Exception:  # noqa: BLE001 - the form still works with the known names
                    pass
            inputs.enum("label_attr", attrs, default=attrs[0], required=True, label="Attribute")
        if ctx.params.get("format", "imagefolder") == "imagefolder":
            inputs.float("pad", default=0.0, min=0.0, max=10.0, label="Padding",
                         description="Grow each crop by this fraction of its size (half on each side)")
            inputs.bool("square", default=False, label="Square crops")
        return types.Property(inputs, view=types.View(label="Export patches"))

    def execute(self, ctx: Any):
        from xpatch_core.export import iter_export_patches

        kwargs = export_params(ctx)
        gen = iter_export_patches(ctx.target_view(), **kwargs)
        if ctx.params.get("return_report"):  # the Python API: run to completion, return the report
            while True:
                try:
                    next(gen)
                except StopIteration as stop:
                    return {"report": _report_for_app(stop.value.to_dict())}
        return self._stream(ctx, gen)

    def _stream(self, ctx: Any, gen: Any):
        report = yield from relay(ctx, gen)
        if not ctx.delegated:
            first, *rest = report.summary().splitlines()
            yield result_output(ctx, first[0].upper() + first[1:], rest, [])

    def __call__(self, sample_collection: Any, export_dir: str, format: str = "imagefolder",
                 field: str | None = None, label_attr: str | None = None, pad: float = 0.0,
                 square: bool = False, overwrite: bool = False, delegate: bool = False) -> Any:
        """Exports patches, as the App does.

        Args:
            sample_collection: a patches view, or an image collection with
                ``field``
            export_dir: the export folder (new, empty, or cleared with
                ``overwrite``)
            format: ``"imagefolder"`` or ``"coco"``
            field: the patches field (not needed for a patches view)
            label_attr: an attribute to use as the class instead of the label
            pad: crop padding as a fraction of the box size (imagefolder)
            square: square crops (imagefolder)
            overwrite: clear a non-empty folder first
            delegate: schedule as a delegated operation

        Returns:
            the :class:`fiftyone.operators.executor.ExecutionResult`; its
            ``result["report"]`` holds the :class:`xpatch_core.export.ExportReport`
            as a dict (with the first 50 files)
        """
        params: dict[str, Any] = {
            "export_dir": export_dir, "format": format, "pad": pad, "square": square, "overwrite": overwrite,
            "class_source": "attribute" if label_attr else "label", "delegate": delegate,
            "view_target": api_view_target(sample_collection), "return_report": not delegate,
        }
        if field is not None:
            params["field"] = field
        if label_attr:
            params["label_attr"] = label_attr
        ctx = {"view": sample_collection.view(), "params": params}
        return foo.execute_operator(self.uri, ctx, request_delegation=delegate)


def evaluate_params(ctx: Any) -> dict[str, Any]:
    """Validates the form's parameters on the server.

    Args:
        ctx: the execution context

    Returns:
        keyword arguments of :func:`xpatch_core.metrics.evaluate_patches`
    """
    import fiftyone as fo

    from xpatch_core.errors import ParameterError

    params = ctx.params
    pv = patches_view_of(ctx)
    patches = pv.patches_field if pv is not None else choice(params, "patches_field", patch_fields(ctx),
                                                                what="the dataset's fields ")
    gt = choice(params, "gt_field", fields_of(ctx, fo.Detections), what="the dataset's fields ")
    if gt == patches:
        raise ParameterError("the ground-truth field must differ from the patches field")
    heatmap = choice(params, "heatmap_field", fields_of(ctx, fo.Heatmap), required=False, what="the dataset's fields ")
    return {"patches_field": patches, "gt_field": gt, "radius": number(params, "radius", 15.0, lo=0.0, hi=1e6),
            "heatmap_field": heatmap, "store": flag(params, "store", True)}


#: Figures shown in the App, in order.
_FIGURES = [
    ("hit_rate", "Object-hit rate (patch centres in a ground-truth box)"),
    ("uniform_rate", "Uniform placement, same sizes, count and seed"),
    ("ratio", "Hit rate / uniform rate"),
    ("center_prior_rate", "Centre prior (boxes centred on the image)"),
    ("pointing_game", "Pointing game (heatmap peak within the radius of a box)"),
    ("patches", "Patches evaluated"),
    ("images_evaluated", "Images evaluated"),
    ("images_without_gt", "Images without a non-crowd ground-truth box (excluded)"),
]
_COUNTS = {"patches", "images_evaluated", "images_without_gt"}


class EvaluatePatches(foo.Operator):
    """Measures whether a patch run's patches land on ground-truth objects,
    against uniform placement and the centre prior, and the pointing game of
    its heatmaps; stores the figures with the run."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="evaluate_patches",
            label="Evaluate patches",
            description="Object-hit rate vs uniform and centre prior, and the pointing game",
            dynamic=True,
        )

    def resolve_input(self, ctx: Any) -> types.Property:
        import fiftyone as fo

        inputs = types.Object()
        pv = patches_view_of(ctx)
        detections = fields_of(ctx, fo.Detections)
        if pv is not None:
            inputs.view("source", types.Notice(
                label=f"Evaluates the {len(pv)} patches of this patches view ('{pv.patches_field}')"))
            patches = pv.patches_field
        else:
            fields = patch_fields(ctx)
            if not fields:
                inputs.view("nofield", types.Error(label="No patches field", description="Run 'Sample patches' first"))
                return types.Property(inputs, invalid=True)
            inputs.enum("patches_field", fields, default=fields[0], required=True, label="Patches field")
            patches = ctx.params.get("patches_field") or fields[0]
        gts = [f for f in detections if f != patches]
        if not gts:
            inputs.view("nogt", types.Error(label="No ground-truth field",
                                            description="A fo.Detections field of objects is needed"))
            return types.Property(inputs, invalid=True)
        inputs.enum("gt_field", gts, default=gts[0], required=True, label="Ground-truth objects",
                    description="Boxes with a truthy 'iscrowd' attribute are ignored")
        inputs.float("radius", default=15.0, min=0.0, label="Pointing-game radius (px)")
        heatmaps = fields_of(ctx, fo.Heatmap)
        if heatmaps:
            inputs.enum("heatmap_field", heatmaps, required=False, label="Heatmap field",
                        description="Default: the patch run's heatmap field")
        inputs.bool("store", default=True, label="Store the figures with the patch run")
        return types.Property(inputs, view=types.View(label="Evaluate patches"))

    def execute(self, ctx: Any) -> dict[str, Any]:
        from xpatch_core.metrics import evaluate_patches

        kwargs = evaluate_params(ctx)
        result = evaluate_patches(ctx.target_view(), **kwargs)
        return {"evaluation": json.loads(json.dumps(result, default=str)),
                **{k: result.get(k) for k, _ in _FIGURES}}

    def resolve_output(self, ctx: Any) -> types.Property:
        outputs = types.Object()
        for key, label in _FIGURES:
            if key in _COUNTS:
                outputs.int(key, label=label)
            else:
                outputs.float(key, label=label)
        outputs.obj("evaluation", label="All figures", view=types.JSONView())
        return types.Property(outputs, view=types.View(label="Patch evaluation"))

    def __call__(self, sample_collection: Any, patches_field: str, gt_field: str, *, radius: float = 15.0,
                 heatmap_field: str | None = None, store: bool = True) -> Any:
        """Evaluates patches, as the App does.

        Args:
            sample_collection: an image collection or a patches view
            patches_field: the patches field
            gt_field: the ground-truth ``fo.Detections`` field
            radius: the pointing-game radius in pixels
            heatmap_field: the heatmap field (default: the run's)
            store: store the figures with the patch run

        Returns:
            the :class:`fiftyone.operators.executor.ExecutionResult`; its
            ``result["evaluation"]`` holds every figure
        """
        params: dict[str, Any] = {"patches_field": patches_field, "gt_field": gt_field, "radius": radius,
                                  "store": store, "view_target": api_view_target(sample_collection)}
        if heatmap_field is not None:
            params["heatmap_field"] = heatmap_field
        ctx = {"view": sample_collection.view(), "params": params}
        return foo.execute_operator(self.uri, ctx)


def register(p: Any) -> None:
    """Registers this module's operators."""
    p.register(ExportPatches)
    p.register(EvaluatePatches)
