"""The ``make_patch_dataset`` operator: patches as a dataset of their own,
ground truth carried in, opened in the App when done."""

from __future__ import annotations

import json
import os
from typing import Any

from .common import (
    DelegableOperator,
    choice,
    fields_of,
    foo,
    long_running_config,
    number,
    patch_fields,
    patches_view_of,
    relay,
    text,
    types,
)


def _gt_fields(ctx: Any, patches_field: str | None) -> list[str]:
    import fiftyone as fo

    out: list[str] = []
    for doc_type in (fo.Detections, fo.Segmentation, fo.Classification):
        out += [f for f in fields_of(ctx, doc_type) if f != patches_field and f not in out]
    return out


def dataset_params(ctx: Any) -> dict[str, Any]:
    """Validates the form's parameters on the server.

    Args:
        ctx: the execution context

    Returns:
        keyword arguments of
        :func:`xpatch_core.patch_dataset.iter_make_patch_dataset`
    """
    from xpatch_core.defaults import CHOICES, PATCH_DATASET
    from xpatch_core.errors import ParameterError
    from xpatch_core.gt_carry import label_problem

    params = ctx.params
    pv = patches_view_of(ctx)
    patches = pv.patches_field if pv is not None else choice(params, "patches_field", patch_fields(ctx),
                                                              required=True)
    gt = choice(params, "gt_field", _gt_fields(ctx, patches), required=False)
    name = text(params, "name", None, max_len=200)
    if not name:
        raise ParameterError("name is required")
    output_dir = text(params, "output_dir", None, max_len=4096)
    if not output_dir:
        raise ParameterError("output_dir is required")
    background = text(params, "background_label", PATCH_DATASET["background_label"], max_len=200)
    reason = label_problem(background)
    if reason is not None:
        raise ParameterError(f"background_label: {reason}")
    for flag in ("open_dataset", "delegate", "return_report"):
        if not isinstance(params.get(flag, False), bool):
            raise ParameterError(f"{flag} must be true or false")
    return {
        "patches_field": patches, "gt_field": gt, "name": name, "output_dir": output_dir,
        "min_area_ratio": number(params, "min_area_ratio", PATCH_DATASET["min_area_ratio"], lo=0.0, hi=1.0),
        "min_coverage": number(params, "min_coverage", PATCH_DATASET["min_coverage"], lo=0.0, hi=1.0),
        "background_label": background,
        "image_format": choice(params, "image_format", CHOICES["patch_image_format"], required=False)
        or PATCH_DATASET["image_format"],
    }


def _folder_error(output_dir: Any, name: Any) -> str | None:
    """What the form says about the output folder before running."""
    from xpatch_core.patch_files import read_marker

    if not isinstance(output_dir, str) or not output_dir.strip():
        return None
    path = os.path.realpath(os.path.abspath(os.path.expanduser(output_dir.strip())))
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{path} exists and is not a folder"
    if os.path.isdir(path) and os.listdir(path):
        marker = read_marker(path)
        if marker is None:
            return f"{path} is not empty: choose a new or empty folder"
        if marker.get("dataset") != name:
            return f"{path} holds the patch dataset {marker.get('dataset')!r}; choose another folder"
    return None


class MakePatchDataset(DelegableOperator):
    """Makes a FiftyOne dataset with one sample per patch (the crop as an
    image, its provenance, the ground truth carried in), then opens it."""

    @property
    def config(self) -> foo.OperatorConfig:
        return long_running_config(
            "make_patch_dataset", "Make patch dataset",
            "Every patch as a sample of a new dataset, with the ground truth carried in",
        )

    def resolve_input(self, ctx: Any) -> types.Property:
        from xpatch_core.defaults import CHOICES, PATCH_DATASET

        inputs = types.Object()
        pv = patches_view_of(ctx)
        if pv is not None:
            inputs.view("source", types.Notice(
                label=f"Uses the {len(pv)} patches of this patches view ('{pv.patches_field}')"))
            patches = pv.patches_field
        else:
            fields = patch_fields(ctx)
            if not fields:
                inputs.view("nofield", types.Error(label="No patches field",
                                                   description="Run 'Sample patches' first"))
                return types.Property(inputs, invalid=True)
            inputs.enum("patches_field", fields, default=fields[0], required=True, label="Patches field")
            patches = ctx.params.get("patches_field") or fields[0]
        gts = _gt_fields(ctx, patches)
        inputs.enum("gt_field", gts, required=False, label="Ground-truth field",
                    description="Detections, Segmentation or Classification to carry into the patches; "
                                "empty keeps the patch labels")
        default_name = f"{ctx.dataset.name}-patches" if ctx.dataset is not None else "patches"
        inputs.str("name", default=default_name, required=True, label="New dataset name",
                   description="A new name, or a patch dataset made earlier with the same settings (extended)")
        error = _folder_error(ctx.params.get("output_dir"), ctx.params.get("name") or default_name)
        inputs.str("output_dir", required=True, label="Output folder",
                   description="A new or empty folder on the server for the crops",
                   invalid=error is not None, error_message=error)
        if ctx.params.get("gt_field"):
            inputs.float("min_area_ratio", default=PATCH_DATASET["min_area_ratio"], min=0.0, max=1.0,
                         label="Min area ratio",
                         description="Keep a ground-truth box when this share of it lies in the patch (SAHI)")
            inputs.float("min_coverage", default=PATCH_DATASET["min_coverage"], min=0.0, max=1.0,
                         label="Min coverage", description="Share of the patch a class must cover to be its class")
            inputs.str("background_label", default=PATCH_DATASET["background_label"], label="Background label")
        inputs.enum("image_format", list(CHOICES["patch_image_format"]), default=PATCH_DATASET["image_format"],
                    label="Crop format", description="auto: JPEG for JPEG sources (same quality), else PNG")
        inputs.bool("open_dataset", default=True, label="Open the new dataset when done")
        return types.Property(inputs, view=types.View(label="Make patch dataset"))

    def execute(self, ctx: Any):
        from xpatch_core.patch_dataset import iter_make_patch_dataset

        kwargs = dataset_params(ctx)
        gen = iter_make_patch_dataset(ctx.target_view(), **kwargs)
        if ctx.params.get("return_report"):  # the Python API: run to completion, return the report
            while True:
                try:
                    next(gen)
                except StopIteration as stop:
                    return {"report": json.loads(json.dumps(stop.value.to_dict(), default=str))}
        return self._stream(ctx, gen)

    def _stream(self, ctx: Any, gen: Any):
        report = yield from relay(ctx, gen)
        if not ctx.delegated and ctx.params.get("open_dataset", True):
            yield ctx.ops.open_dataset(report.name)

    def __call__(self, sample_collection: Any, name: str, output_dir: str, patches_field: str | None = None,
                 gt_field: str | None = None, *, min_area_ratio: float | None = None,
                 min_coverage: float | None = None, background_label: str | None = None,
                 image_format: str | None = None, delegate: bool = False) -> Any:
        """Makes a patch dataset, as the App does.

        Args:
            sample_collection: an image collection, or a patches view
            name: the new dataset's name
            output_dir: the folder for the crops
            patches_field: the patches field (not needed for a patches view)
            gt_field: the ground-truth field to carry in, or None
            min_area_ratio: SAHI's threshold (default 0.1)
            min_coverage: the patch class threshold (default 0.5)
            background_label: the class of uncovered patches
            image_format: ``"auto"``, ``"jpg"`` or ``"png"``
            delegate: schedule as a delegated operation

        Returns:
            the :class:`fiftyone.operators.executor.ExecutionResult`; its
            ``result["report"]`` holds the
            :class:`xpatch_core.patch_dataset.PatchDatasetReport` as a dict
        """
        params: dict[str, Any] = {"name": name, "output_dir": output_dir, "delegate": delegate,
                                  "view_target": "CURRENT_VIEW", "return_report": not delegate,
                                  "open_dataset": False}
        for key, value in (("patches_field", patches_field), ("gt_field", gt_field),
                           ("min_area_ratio", min_area_ratio), ("min_coverage", min_coverage),
                           ("background_label", background_label), ("image_format", image_format)):
            if value is not None:
                params[key] = value
        ctx = {"view": sample_collection.view(), "params": params}
        return foo.execute_operator(self.uri, ctx, request_delegation=delegate)


def register(p: Any) -> None:
    """Registers this module's operators."""
    p.register(MakePatchDataset)
