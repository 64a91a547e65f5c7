"""The ``compute_saliency`` operator."""

from __future__ import annotations

from typing import Any

from xpatch_core.defaults import CHOICES, SALIENCY
from xpatch_core.saliency import gradient_methods, method_choices

from .common import (
    DelegableOperator,
    api_view_target,
    execute_run,
    field_name_input,
    fields_of,
    foo,
    long_running_config,
    model_call_params,
    model_inputs,
    model_param,
    number,
    offer_view_target,
    plan_notice,
    result_output,
    run_result_lines,
    shards_input,
    text,
    types,
    uri,
)


def _fuse(value: str | None) -> str | None:
    return None if value is None or value.lower() in ("none", "off", "") else value


def saliency_params(params: dict) -> dict[str, Any]:
    """Turns form parameters into :func:`xpatch_core.runs.run_saliency`
    keyword arguments, validating them on the server.

    Args:
        params: ``ctx.params``

    Returns:
        a dict of keyword arguments
    """
    from xpatch_core.errors import ParameterError

    model = model_param(params, SALIENCY["model"])
    method = text(params, "method", SALIENCY["method"])
    target_mode = text(params, "target_mode", "predicted")
    target = target_field = None
    if target_mode == "class":
        target = text(params, "target_class")
        if not target:
            raise ParameterError("give a class name or index")
    elif target_mode == "field":
        target_field = text(params, "target_field")
        if not target_field:
            raise ParameterError("choose a classification field")
    elif target_mode != "predicted":
        raise ParameterError(f"unknown target mode {target_mode!r}")
    class_names = text(params, "class_names")
    storage = text(params, "storage", "database")
    if storage not in ("database", "png"):
        raise ParameterError(f"unknown storage {storage!r}")
    map_dir = text(params, "map_dir") if storage == "png" else None
    if storage == "png" and not map_dir:
        raise ParameterError("give a folder for the heatmap PNGs")
    precision = text(params, "precision", SALIENCY["precision"])
    if precision not in CHOICES["precision"]:
        raise ParameterError(f"unknown precision {precision!r}")
    engine = text(params, "engine", SALIENCY["engine"])
    if engine not in CHOICES["engine"]:
        raise ParameterError(f"unknown engine {engine!r}")
    map_resolution = text(params, "map_resolution", SALIENCY["map_resolution"])
    if map_resolution not in CHOICES["map_resolution"]:
        raise ParameterError(f"unknown map resolution {map_resolution!r}")
    overwrite = params.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise ParameterError("overwrite must be true or false")
    size_text = text(params, "input_size")
    if size_text:
        from xpatch_core.models import parse_input_size

        input_size = parse_input_size(size_text)
    return {
        "field": text(params, "field", SALIENCY["field"]),
        "model": model,
        "method": method,
        "target": target,
        "target_field": target_field,
        "weights": text(params, "weights"),
        "layer": text(params, "layer"),
        "fuse_layer": _fuse(text(params, "fuse_layer", SALIENCY["fuse_layer"])),
        "batch_size": number(params, "batch_size", SALIENCY["batch_size"], kind=int, lo=1, hi=1024),
        "class_names": [c.strip() for c in class_names.split(",")] if class_names else None,
        "map_dir": map_dir,
        "map_resolution": map_resolution,
        "precision": precision,
        "engine": engine,
        "overwrite": overwrite,
        **({"input_size": input_size} if size_text else {}),
    }


class ComputeSaliency(DelegableOperator):
    """Computes saliency heatmaps over a dataset, view or selection and
    stores them as ``fo.Heatmap`` fields (a FiftyOne run keyed by the field).
    """

    run_kind = "saliency"
    overwrite_label = "Recompute samples that already have a heatmap"

    @property
    def config(self) -> foo.OperatorConfig:
        return long_running_config(
            "compute_saliency", "Compute saliency",
            "Saliency heatmaps from a Keras CNN (Xception by default)",
        )

    def run_kwargs(self, ctx: Any) -> dict[str, Any]:
        """The run's keyword arguments (:func:`saliency_params`)."""
        return saliency_params(ctx.params)

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        offer_view_target(ctx, inputs)  # dataset / current view / selected samples
        plan = plan_notice(self, ctx, inputs)
        picked = model_inputs(ctx, inputs, SALIENCY["model"])
        if picked == "saved":
            inputs.str("class_names", label="Class names",
                       description="Comma-separated, in output order (optional)")
        inputs.str("input_size", label="Input size (optional)",
                   description="The network's input in pixels, e.g. 299 or 224x320 (height x width): needed "
                               "for a saved model that takes any size; default: the model's own")
        methods = types.RadioGroup()
        for value, label, _ in method_choices():
            methods.add_choice(value, label=label)
        inputs.enum("method", methods.values(), default=SALIENCY["method"], label="Method", view=methods)
        if ctx.params.get("method") in gradient_methods():
            tm = types.RadioGroup()
            tm.add_choice("predicted", label="Predicted class")
            tm.add_choice("class", label="A named class")
            tm.add_choice("field", label="Each sample's class from a field")
            inputs.enum("target_mode", tm.values(), default="predicted", label="Explain", view=tm)
            mode = ctx.params.get("target_mode", "predicted")
            if mode == "class":
                inputs.str("target_class", required=True, label="Class name or index")
            elif mode == "field":
                import fiftyone as fo

                choices = fields_of(ctx, fo.Classification)
                if not choices:
                    inputs.view("nofield", types.Warning(label="No classification field in this dataset"))
                else:
                    inputs.enum("target_field", choices, required=True, label="Classification field")
        inputs.str("layer", label="Target layer (optional)",
                   description="Default: the last 4-D layer, nested backbones included; "
                               "'outer/inner' for a nested layer")
        inputs.str("fuse_layer", default=SALIENCY["fuse_layer"], label="Fuse with a finer layer",
                   description="activation/EigenCAM: multiply by a finer layer's map; 'auto' = "
                               "block13_sepconv1_act for Xception (chosen by the quality benchmark), "
                               "'none' = off")
        res = types.RadioGroup()
        res.add_choice("standard", label="Standard (the image squashed to the network's input)")
        res.add_choice("high", label="Sharper: add a pass at a higher resolution keeping the aspect ratio "
                                     "(about 4x the time)")
        inputs.enum("map_resolution", res.values(), default=SALIENCY["map_resolution"], label="Map resolution",
                    view=res)
        prec = types.Dropdown(label="Precision")
        for value, label in (("auto", "Auto: bfloat16 where the hardware has it"), ("float32", "float32"),
                             ("mixed_bfloat16", "bfloat16 (mixed)")):
            prec.add_choice(value, label=label)
        inputs.enum("precision", prec.values(), default=SALIENCY["precision"], view=prec)
        eng = types.Dropdown(label="Engine")
        for value, label in (("auto", "Auto: OpenVINO on a CPU without bfloat16, else TensorFlow"),
                             ("tensorflow", "TensorFlow"), ("openvino", "OpenVINO (CPU)")):
            eng.add_choice(value, label=label)
        inputs.enum("engine", eng.values(), default=SALIENCY["engine"], view=eng)
        inputs.int("batch_size", default=SALIENCY["batch_size"], label="Batch size", min=1, max=1024)
        field_name_input(ctx, inputs, "field", SALIENCY["field"], "saliency", "Heatmap field", plan=plan,
                         overwrite_label=self.overwrite_label)
        storage = types.RadioGroup()
        storage.add_choice("database", label="In the database (small maps)")
        storage.add_choice("png", label="8-bit PNG files in a folder")
        inputs.enum("storage", storage.values(), default="database", label="Storage", view=storage)
        if ctx.params.get("storage") == "png":
            inputs.str("map_dir", required=True, label="Heatmap folder")
        inputs.bool("overwrite", default=False, label=self.overwrite_label)
        shards_input(inputs)
        return types.Property(inputs, view=types.View(label="Compute saliency"))

    def execute(self, ctx: Any):
        from xpatch_core import runs

        from .colours import colour_scheme_event, saved_scheme

        kwargs = saliency_params(ctx.params)
        before = None if ctx.delegated else saved_scheme(ctx)
        summary = yield from execute_run(ctx, runs.iter_run_saliency, kwargs, self.uri)
        if not ctx.delegated:
            event = colour_scheme_event(ctx, before)  # the new field's colormap, shown now
            if event is not None:
                yield event
            yield _summary_output(ctx, summary, kwargs.get("map_dir"))

    def __call__(self, sample_collection: Any, field: str = SALIENCY["field"], model: str = SALIENCY["model"],
                 method: str = SALIENCY["method"], *, target: str | None = None, target_field: str | None = None,
                 weights: str | None = None, layer: str | None = None, batch_size: int = SALIENCY["batch_size"],
                 class_names: list[str] | None = None, map_dir: str | None = None,
                 map_resolution: str = SALIENCY["map_resolution"], precision: str = SALIENCY["precision"],
                 engine: str = SALIENCY["engine"], input_size: int | str | None = None, overwrite: bool = False,
                 delegate: bool = False, num_shards: int = 1) -> Any:
        """Computes saliency heatmaps, as the App does.

        Args:
            sample_collection: a FiftyOne image collection
            field: the heatmap field
            model: a ``keras.applications`` name or a saved model path
            method: ``"eigencam"``, ``"activation"``, ``"gradcam"`` or
                ``"gradcam++"``
            target: a class name/index to explain (gradient methods)
            target_field: a ``fo.Classification`` field giving each sample's class
            weights: an offline weights file
            layer: the target layer override
            batch_size: images per model call
            class_names: a saved model's class names
            map_dir: write 8-bit PNG heatmaps under this folder
            map_resolution: ``"standard"`` or ``"high"`` (sharper maps, about
                4x the time)
            precision: ``"auto"``, ``"float32"`` or ``"mixed_bfloat16"``
            engine: ``"auto"``, ``"tensorflow"`` or ``"openvino"`` (what
                runs the forward pass)
            input_size: the network's input, e.g. 299 or ``"224x320"``
                (height x width), for a model that takes any size
            overwrite: recompute samples that have a heatmap
            delegate: schedule as a delegated (background) operation
            num_shards: split the run into this many delegated operations
                (by sample id ranges) for several workers; the call (or its
                delegated operation, with ``delegate=True``) registers the
                run and queues them

        Returns:
            the :class:`fiftyone.operators.executor.ExecutionResult`
        """

        params: dict[str, Any] = {"field": field, "method": method, "batch_size": batch_size,
                                  "layer": layer, "weights": weights, "overwrite": overwrite,
                                  "delegate": delegate, "view_target": api_view_target(sample_collection),
                                  "num_shards": num_shards, "map_resolution": map_resolution,
                                  "precision": precision, "engine": engine}
        if input_size is not None:
            params["input_size"] = (str(input_size) if isinstance(input_size, (int, str))
                                    else "x".join(str(v) for v in input_size))
        params.update(model_call_params(model))
        if class_names:
            params["class_names"] = ",".join(class_names)
        if target is not None:
            params.update(target_mode="class", target_class=str(target))
        elif target_field is not None:
            params.update(target_mode="field", target_field=target_field)
        if map_dir:
            params.update(storage="png", map_dir=map_dir)
        ctx = {"view": sample_collection.view(), "params": params}
        return foo.execute_operator(self.uri, ctx, request_delegation=delegate)


def _summary_output(ctx: Any, summary: Any, map_dir: str | None) -> Any:
    """Shows the run's result in the App, with the next step."""
    title, lines = run_result_lines(summary, "heatmaps")
    if map_dir and summary.processed:
        lines.append(f"Heatmap PNGs written to `{map_dir}`.")
    steps = [("Sample patches from these heatmaps", "sample_patches", {"heatmap_field": summary.field})]
    return result_output(ctx, title, lines, steps if summary.status != "queued" else [])


def register(p: Any) -> None:
    """Registers this module's operators."""
    p.register(ComputeSaliency)


__all__ = ["ComputeSaliency", "register", "saliency_params", "uri"]
