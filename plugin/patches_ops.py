"""The ``sample_patches`` operator."""

from __future__ import annotations

from typing import Any

from xpatch_core.defaults import CHOICES, PATCHES

from .common import (
    DelegableOperator,
    api_view_target,
    execute_run,
    field_name_input,
    fields_of,
    foo,
    long_running_config,
    number,
    number_list,
    offer_view_target,
    plan_notice,
    result_output,
    run_result_lines,
    shards_input,
    text,
    types,
)


def patch_params(params: dict) -> dict[str, Any]:
    """Turns form parameters into :func:`xpatch_core.runs.run_patches`
    keyword arguments, validating them on the server.

    Args:
        params: ``ctx.params``

    Returns:
        a dict of keyword arguments
    """
    from xpatch_core.errors import ParameterError

    size_mode = text(params, "size_mode", "pixels")
    if size_mode == "pixels":
        size: int | float = number(params, "size", PATCHES["size"], kind=int, lo=1, hi=100_000)
    elif size_mode == "fraction":
        size = number(params, "size_fraction", PATCHES["size_fraction"], lo=1e-6, hi=1.0)
    else:
        raise ParameterError(f"unknown size mode {size_mode!r}")
    overlap = text(params, "overlap", "iou")
    max_iou = min_distance = None
    if overlap == "iou":
        max_iou = number(params, "max_iou", PATCHES["max_iou"], lo=0.0, hi=1.0)
    elif overlap == "distance":
        min_distance = number(params, "min_distance", PATCHES["min_distance_form"], lo=0.0)
    elif overlap != "none":
        raise ParameterError(f"unknown overlap control {overlap!r}")
    label_mode = text(params, "label_mode", "predicted")
    label = PATCHES["label"] if label_mode == "predicted" else (text(params, "label", "patch") or "patch")
    mode = text(params, "mode", PATCHES["mode"])
    if mode not in CHOICES["mode"]:
        raise ParameterError(f"unknown mode {mode!r}")
    score = text(params, "score", PATCHES["score"])
    if score not in CHOICES["score"]:
        raise ParameterError(f"unknown score {score!r}")
    border = text(params, "border", PATCHES["border"])
    if border not in CHOICES["border"]:
        raise ParameterError(f"unknown border rule {border!r}")
    for flag in ("overwrite", "replace", "open_view"):
        if not isinstance(params.get(flag, False), bool):
            raise ParameterError(f"{flag} must be true or false")
    return {
        "heatmap_field": text(params, "heatmap_field", PATCHES["heatmap_field"]),
        "field": text(params, "field", PATCHES["field"]),
        "n": number(params, "n", PATCHES["n"], kind=int, lo=1, hi=PATCHES["max_n"]),
        "size": size,
        "scales": number_list(params, "scales", PATCHES["scales"]),
        "aspect_ratios": number_list(params, "aspect_ratios", PATCHES["aspect_ratios"]),
        "temperature": number(params, "temperature", PATCHES["temperature"], lo=0.0, hi=100.0),
        "epsilon": number(params, "epsilon", PATCHES["epsilon"], lo=0.0, hi=1.0),
        "max_iou": max_iou,
        "min_distance": min_distance,
        "replace": params.get("replace", PATCHES["replace"]),
        "score": score,
        "mode": mode,
        "border": border,
        "seed": number(params, "seed", PATCHES["seed"], kind=int, lo=0, hi=2**63 - 1),
        "label": label,
        "overwrite": params.get("overwrite", False),
    }


class SamplePatches(DelegableOperator):
    """Draws saliency-weighted patch boxes from a heatmap field into a
    ``fo.Detections`` field, then opens the patches view sorted by score."""

    run_kind = "patches"
    overwrite_label = "Redo samples that already have patches"

    @property
    def config(self) -> foo.OperatorConfig:
        return long_running_config(
            "sample_patches", "Sample patches",
            "Saliency-weighted patch boxes as fo.Detections, opened as a patches view",
        )

    def run_kwargs(self, ctx: Any) -> dict[str, Any]:
        """The run's keyword arguments (:func:`patch_params`), with the form's
        default heatmap field (the dataset's first) when none is chosen yet."""
        import fiftyone as fo

        params = dict(ctx.params)
        if not params.get("heatmap_field"):
            heatmaps = fields_of(ctx, fo.Heatmap)
            if heatmaps:
                params["heatmap_field"] = heatmaps[0]
        return patch_params(params)

    def resolve_input(self, ctx: Any) -> types.Property:
        import fiftyone as fo

        inputs = types.Object()
        offer_view_target(ctx, inputs)
        heatmaps = fields_of(ctx, fo.Heatmap)
        if not heatmaps:
            inputs.view("noheat", types.Error(label="No heatmap field",
                                              description="Run 'Compute saliency' first"))
            return types.Property(inputs, invalid=True)
        plan = plan_notice(self, ctx, inputs)
        inputs.enum("heatmap_field", heatmaps, default=heatmaps[0], required=True, label="Heatmap field")
        field_name_input(ctx, inputs, "field", PATCHES["field"], "patches", "Patches field", plan=plan,
                         overwrite_label=self.overwrite_label)
        inputs.int("n", default=PATCHES["n"], min=1, label="Patches per image")
        sm = types.RadioGroup()
        sm.add_choice("pixels", label="Pixels")
        sm.add_choice("fraction", label="Fraction of the short side")
        inputs.enum("size_mode", sm.values(), default="pixels", label="Patch size in", view=sm)
        if ctx.params.get("size_mode", "pixels") == "pixels":
            inputs.int("size", default=PATCHES["size"], min=1, label="Patch size (px)")
        else:
            inputs.float("size_fraction", default=PATCHES["size_fraction"], min=0.0, max=1.0,
                         label="Patch size (fraction)")
        inputs.str("scales", default="1.0", label="Scales", description="Comma-separated, e.g. 1, 1.5, 2")
        inputs.str("aspect_ratios", default="1.0", label="Aspect ratios", description="width / height, e.g. 1, 2, 0.5")
        ov = types.RadioGroup()
        ov.add_choice("iou", label="Max IoU (NMS)")
        ov.add_choice("distance", label="Min centre distance")
        ov.add_choice("none", label="None")
        inputs.enum("overlap", ov.values(), default="iou", label="Overlap control", view=ov)
        if ctx.params.get("overlap", "iou") == "iou":
            inputs.float("max_iou", default=PATCHES["max_iou"], min=0.0, max=1.0, label="Max IoU")
        elif ctx.params.get("overlap") == "distance":
            inputs.float("min_distance", default=PATCHES["min_distance_form"], min=0.0,
                         label="Min centre distance (px)")
        inputs.float("temperature", default=PATCHES["temperature"], min=0.0, label="Temperature (weights ** t)")
        inputs.float("epsilon", default=PATCHES["epsilon"], min=0.0, max=1.0, label="Uniform mix")
        mode = types.Dropdown(label="Mode")
        for v, lab in (("random", "Random, weighted by saliency"), ("topk", "Top-k (deterministic)"),
                       ("grid", "Grid")):
            mode.add_choice(v, label=lab)
        inputs.enum("mode", mode.values(), default=PATCHES["mode"], view=mode)
        inputs.enum("score", list(CHOICES["score"]), default=PATCHES["score"], label="Score",
                    description="Window mean of the map, or its value at the centre")
        border = types.Dropdown(label="Shapes larger than an image")
        for v, lab in (("drop", "Leave them out for that image"), ("pad", "Keep them, centred past the border"),
                       ("clip", "Cut them to the image"), ("error", "Fail that image")):
            if v in CHOICES["border"]:
                border.add_choice(v, label=lab)
        inputs.enum("border", border.values(), default=PATCHES["border"], view=border)
        inputs.int("seed", default=PATCHES["seed"], min=0, label="Seed")
        lm = types.RadioGroup()
        lm.add_choice("predicted", label="The predicted class")
        lm.add_choice("text", label="A fixed text")
        inputs.enum("label_mode", lm.values(), default="predicted", label="Label", view=lm)
        if ctx.params.get("label_mode") == "text":
            inputs.str("label", default="patch", label="Label text")
        inputs.bool("overwrite", default=False, label=self.overwrite_label)
        inputs.bool("open_view", default=True, label="Open the patches view when done")
        shards_input(inputs)
        return types.Property(inputs, view=types.View(label="Sample patches"))

    def execute(self, ctx: Any):
        from xpatch_core import runs
        from xpatch_core.runs import patches_view

        kwargs = patch_params(ctx.params)
        summary = yield from execute_run(ctx, runs.iter_run_patches, kwargs, self.uri)
        if ctx.delegated:
            return
        title, lines = run_result_lines(summary, "patches")
        opened = ctx.params.get("open_view", True) and summary.status != "queued" and ctx.dataset.count(
            f"{kwargs['field']}.detections")
        if opened:
            yield ctx.ops.set_view(view=patches_view(ctx.dataset, kwargs["field"]))
            lines.append(f"The patches view of '{kwargs['field']}' is open, best scores first.")
        steps = [] if summary.status == "queued" else [
            ("Export these patches", "export_patches", {"field": kwargs["field"]}),
            ("Evaluate them against ground truth", "evaluate_patches", {"patches_field": kwargs["field"]}),
        ]
        if not opened and summary.status != "queued":
            steps.insert(0, ("Open the patches view", "load_xpatch_run_view", {"run_key": summary.run_key}))
        yield result_output(ctx, title, lines, steps)

    def __call__(self, sample_collection: Any, heatmap_field: str = PATCHES["heatmap_field"],
                 field: str = PATCHES["field"], n: int = PATCHES["n"], size: int | float = PATCHES["size"], *,
                 scales: tuple[float, ...] = PATCHES["scales"], aspect_ratios: tuple[float, ...] = PATCHES["aspect_ratios"],
                 max_iou: float | None = PATCHES["max_iou"], min_distance: float | None = None,
                 temperature: float = PATCHES["temperature"], epsilon: float = PATCHES["epsilon"],
                 mode: str = PATCHES["mode"], score: str = PATCHES["score"], border: str = PATCHES["border"],
                 seed: int = PATCHES["seed"], label: str = PATCHES["label"], overwrite: bool = False,
                 delegate: bool = False, num_shards: int = 1) -> Any:
        """Samples patches, as the App does.

        Args:
            sample_collection: a FiftyOne image collection
            heatmap_field: the heatmap field to sample from
            field: the ``fo.Detections`` field to write
            n: patches per image
            size: pixels (int) or a fraction of the short side (float)
            scales: size multipliers
            aspect_ratios: width / height ratios
            max_iou: NMS threshold, or None
            min_distance: minimum centre distance in pixels, or None
            temperature: weights are raised to this power
            epsilon: share of uniform sampling
            mode: ``"random"``, ``"topk"`` or ``"grid"``
            score: ``"mean"`` or ``"center"``
            border: ``"drop"``, ``"pad"``, ``"clip"`` or ``"error"``: what to
                do with a patch shape larger than an image
            seed: the seed (each sample's generator comes from it and the
                sample id)
            label: ``"predicted"`` or a fixed text
            overwrite: redo samples that have patches
            delegate: schedule as a delegated operation
            num_shards: split the run into this many delegated operations
                (by sample id ranges) for several workers

        Returns:
            the :class:`fiftyone.operators.executor.ExecutionResult`
        """
        params: dict[str, Any] = {
            "heatmap_field": heatmap_field, "field": field, "n": n, "scales": ",".join(map(str, scales)),
            "aspect_ratios": ",".join(map(str, aspect_ratios)), "temperature": temperature, "epsilon": epsilon,
            "mode": mode, "score": score, "border": border, "seed": seed, "overwrite": overwrite, "open_view": False,
            "delegate": delegate, "view_target": api_view_target(sample_collection), "num_shards": num_shards,
        }
        if isinstance(size, float):
            params.update(size_mode="fraction", size_fraction=size)
        else:
            params.update(size_mode="pixels", size=size)
        if max_iou is not None:
            params.update(overlap="iou", max_iou=max_iou)
        elif min_distance is not None:
            params.update(overlap="distance", min_distance=min_distance)
        else:
            params["overlap"] = "none"
        if label == "predicted":
            params["label_mode"] = "predicted"
        else:
            params.update(label_mode="text", label=label)
        ctx = {"view": sample_collection.view(), "params": params}
        return foo.execute_operator(self.uri, ctx, request_delegation=delegate)


def register(p: Any) -> None:
    """Registers this module's operators."""
    p.register(SamplePatches)
