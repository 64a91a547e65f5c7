"""Curation operators over patch embeddings (:mod:`xpatch_core.curation`).

| operator | library function |
| --- | --- |
| ``compute_patch_embeddings`` | :func:`xpatch_core.runs.run_embeddings` |
| ``build_patch_similarity`` | :func:`xpatch_core.curation.compute_similarity_index` |
| ``tag_duplicate_patches`` | :func:`xpatch_core.curation.tag_duplicates` |
| ``clear_duplicate_patches`` | :func:`xpatch_core.curation.clear_duplicates` |
| ``select_diverse_patches`` | :func:`xpatch_core.curation.select_diverse` |
| ``compute_patch_map`` | :func:`xpatch_core.curation.compute_patch_map` |

Each validates every parameter on the server, reports progress, and has a
``__call__`` for Python that runs exactly what the App runs. The target is
the dataset, the current view or the selected samples (from a patches view,
the images behind it). Nothing here imports TensorFlow.
"""

from __future__ import annotations

from typing import Any

from xpatch_core.defaults import CHOICES, CURATION, EMBEDDINGS

from .common import (
    DelegableOperator,
    execute_run,
    fields_of,
    flag,
    foo,
    long_running_config,
    model_call_params,
    model_inputs,
    model_param,
    number,
    progress_event,
    shards_input,
    target_images,
    text,
    types,
)


def _name(params: dict, name: str, default: str | None, *, what: str = "a name") -> str | None:
    """A plain name: letters, digits, underscores (field, attribute, brain key)."""
    from xpatch_core.errors import ParameterError

    v = text(params, name, default, max_len=200)
    if v is not None and not v.replace("_", "").isalnum():
        raise ParameterError(f"{name} must be {what} of letters, digits and underscores, got {v!r}")
    return v


def _patches_field(ctx: Any) -> str:
    import fiftyone as fo

    from xpatch_core.errors import ParameterError

    field = _name(ctx.params, "patches_field", EMBEDDINGS["patches_field"], what="a field name")
    allowed = fields_of(ctx, fo.Detections)
    if field not in allowed:
        raise ParameterError(f"patches_field: {field!r} is not a fo.Detections field of the dataset "
                             f"({', '.join(allowed) or 'none'})")
    return field


def _common(ctx: Any) -> dict[str, Any]:
    return {"patches_field": _patches_field(ctx),
            "attribute": _name(ctx.params, "attribute", EMBEDDINGS["attribute"], what="an attribute name")}


def _tag(params: dict, name: str, default: str) -> str:
    from xpatch_core.errors import ParameterError

    v = text(params, name, default, max_len=200)
    if not v:
        raise ParameterError(f"{name} must be a non-empty text")
    return v


class _Progress:
    def __init__(self, fraction: float, message: str):
        self.fraction = fraction
        self.message = message


def _step(ctx: Any, fraction: float, message: str) -> Any:
    """A progress event for the App, or None when delegated."""
    return progress_event(ctx, _Progress(fraction, message))


class _CurationOperator(DelegableOperator):
    """Base: a form with the patches field and the embedding attribute."""

    name = ""
    label = ""
    description = ""
    delegable = False

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name=self.name, label=self.label, description=self.description, dynamic=True,
            execute_as_generator=True, allow_immediate_execution=True,
            allow_delegated_execution=self.delegable)

    def resolve_input(self, ctx: Any) -> types.Property:
        import fiftyone as fo

        inputs = types.Object()
        fields = fields_of(ctx, fo.Detections)
        if not fields:
            inputs.view("nofield", types.Error(label="No patches field",
                                               description="Run 'Sample patches' and compute patch embeddings first"))
            return types.Property(inputs, invalid=True)
        default = EMBEDDINGS["patches_field"] if EMBEDDINGS["patches_field"] in fields else fields[0]
        inputs.enum("patches_field", fields, default=default, required=True, label="Patches field")
        inputs.str("attribute", default=EMBEDDINGS["attribute"], label="Embedding attribute",
                   description="The detections' attribute holding the patch embeddings")
        self.more_inputs(ctx, inputs)
        return types.Property(inputs, view=types.View(label=self.label))

    def more_inputs(self, ctx: Any, inputs: Any) -> None:
        """Adds the operator's own inputs."""

    def call(self, sample_collection: Any, params: dict[str, Any], delegate: bool = False) -> Any:
        # NumPy scalars become plain numbers, which the App's form validation accepts
        plain = {k: (v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v)
                 for k, v in params.items()}
        ctx = {"view": sample_collection.view(), "params": dict(plain, delegate=delegate)}
        return foo.execute_operator(self.uri, ctx, request_delegation=delegate)




def embedding_params(params: dict) -> dict[str, Any]:
    """Turns form parameters into :func:`xpatch_core.runs.run_embeddings`
    keyword arguments, validating them on the server.

    Args:
        params: ``ctx.params``

    Returns:
        a dict of keyword arguments
    """
    from xpatch_core.errors import ParameterError

    model = model_param(params, EMBEDDINGS["model"])
    pooling = text(params, "pooling", EMBEDDINGS["pooling"])
    border = text(params, "border", EMBEDDINGS["border"])
    for name, key, value in (("pooling", "pooling", pooling), ("border", "embedding_border", border)):
        if value not in CHOICES[key]:
            raise ParameterError(f"{name} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    fine = text(params, "fine_layer", EMBEDDINGS["fine_layer"] or "none")
    attribute = _name(params, "attribute", EMBEDDINGS["attribute"], what="an attribute name")
    patches_field = _name(params, "patches_field", EMBEDDINGS["patches_field"], what="a field name")
    return {
        "patches_field": patches_field,
        "attribute": attribute,
        "run_key": f"{patches_field}_{attribute}",
        "model": model,
        "weights": text(params, "weights", max_len=4096),
        "layer": text(params, "layer"),
        "fine_layer": None if fine.lower() in ("none", "off") else fine,
        "pooling": pooling,
        "border": border,
        "batch_size": number(params, "batch_size", EMBEDDINGS["batch_size"], kind=int, lo=1, hi=1024),
        "overwrite": flag(params, "overwrite"),
    }


class ComputePatchEmbeddings(DelegableOperator):
    """One embedding per patch, pooled from one forward pass per image, stored
    on each detection's ``embedding`` attribute (a FiftyOne run)."""

    @property
    def config(self) -> foo.OperatorConfig:
        return long_running_config(
            "compute_patch_embeddings", "Compute patch embeddings",
            "One embedding per patch from one forward pass per image (Xception by default)")

    def resolve_input(self, ctx: Any) -> types.Property:
        import fiftyone as fo

        inputs = types.Object()
        ctx.target_view()
        fields = fields_of(ctx, fo.Detections)
        if not fields:
            inputs.view("nofield", types.Error(label="No patches field", description="Run 'Sample patches' first"))
            return types.Property(inputs, invalid=True)
        default = EMBEDDINGS["patches_field"] if EMBEDDINGS["patches_field"] in fields else fields[0]
        inputs.enum("patches_field", fields, default=default, required=True, label="Patches field")
        inputs.str("attribute", default=EMBEDDINGS["attribute"], label="Embedding attribute",
                   description="Stored on each detection, where FiftyOne Brain finds it")
        model_inputs(ctx, inputs, EMBEDDINGS["model"])
        inputs.str("layer", label="Layer (optional)", description="Default: the last spatial layer")
        inputs.str("fine_layer", default=EMBEDDINGS["fine_layer"] or "none", label="Also pool a finer layer",
                   description="'none', 'auto' (the saliency fusion layer) or a layer name")
        inputs.enum("pooling", list(CHOICES["pooling"]), default=EMBEDDINGS["pooling"], label="Pooling",
                    description="align: RoI Align (bilinear samples); area: area-weighted cells")
        inputs.enum("border", list(CHOICES["embedding_border"]), default=EMBEDDINGS["border"], label="Boxes outside the image",
                    description="pad / clip: pool the part inside; error: skip such patches")
        inputs.int("batch_size", default=EMBEDDINGS["batch_size"], min=1, max=1024, label="Batch size")
        inputs.bool("overwrite", default=False, label="Recompute (and replace an attribute of another tool)")
        shards_input(inputs)
        return types.Property(inputs, view=types.View(label="Compute patch embeddings"))

    def execute(self, ctx: Any):
        from xpatch_core import runs

        summary = yield from execute_run(ctx, runs.iter_run_embeddings, embedding_params(ctx.params), self.uri)
        if not ctx.delegated:
            yield ctx.ops.notify(
                f"{summary.patches} patches embedded on {summary.processed} samples, {summary.skipped} already "
                f"done, {summary.failed} failed", variant="success" if not summary.failed else "warning")

    def __call__(self, sample_collection: Any, patches_field: str = EMBEDDINGS["patches_field"], *,
                 attribute: str = EMBEDDINGS["attribute"], model: str = EMBEDDINGS["model"],
                 weights: str | None = None, layer: str | None = None,
                 fine_layer: str | None = EMBEDDINGS["fine_layer"], pooling: str = EMBEDDINGS["pooling"],
                 border: str = EMBEDDINGS["border"], batch_size: int = EMBEDDINGS["batch_size"],
                 overwrite: bool = False, delegate: bool = False, num_shards: int = 1) -> Any:
        """Computes patch embeddings, as the App does.

        Args:
            sample_collection: a FiftyOne image collection
            patches_field: the ``fo.Detections`` field
            attribute: the detections' attribute to write
            model: a ``keras.applications`` name or a saved classifier path
            weights: an offline weights file
            layer: the layer to pool (default: the last spatial layer)
            fine_layer: a finer layer pooled too, ``"auto"``, or None
            pooling: ``"align"`` or ``"area"``
            border: ``"pad"``, ``"clip"`` or ``"error"``
            batch_size: images per model call
            overwrite: recompute every sample (and replace another tool's
                attribute)
            delegate: schedule as a delegated operation
            num_shards: split the run into this many delegated operations

        Returns:
            the :class:`fiftyone.operators.executor.ExecutionResult`
        """

        params: dict[str, Any] = {
            "patches_field": patches_field, "attribute": attribute, "weights": weights, "layer": layer,
            "fine_layer": fine_layer or "none", "pooling": pooling, "border": border, "batch_size": batch_size,
            "overwrite": overwrite, "delegate": delegate, "view_target": "CURRENT_VIEW", "num_shards": num_shards}
        params.update(model_call_params(model))
        ctx = {"view": sample_collection.view(), "params": params}
        return foo.execute_operator(self.uri, ctx, request_delegation=delegate)


class BuildPatchSimilarity(_CurationOperator):
    """A FiftyOne Brain similarity index over the patches, for the App's
    "sort by similarity" on the patches view."""

    name = "build_patch_similarity"
    label = "Build patch similarity index"
    description = "A Brain similarity index over the patch embeddings"
    delegable = True

    def more_inputs(self, ctx: Any, inputs: Any) -> None:
        inputs.str("brain_key", default="", label="Brain key", description="Default: xpatch_<field>_sim")
        inputs.bool("overwrite", default=False, label="Replace an existing index with this key")

    def execute(self, ctx: Any):
        from xpatch_core.curation import compute_similarity_index

        kwargs = _common(ctx)
        kwargs.update(brain_key=_name(ctx.params, "brain_key", None, what="a brain key"),
                      overwrite=flag(ctx.params, "overwrite"))
        target = target_images(ctx)
        event = _step(ctx, 0.0, "building the similarity index")
        if event is not None:
            yield event
        index = compute_similarity_index(target, progress=False, **kwargs)
        event = _step(ctx, 1.0, f"similarity index over {int(index.total_index_size)} patches")
        if event is not None:
            yield event
        if not ctx.delegated:
            yield ctx.ops.set_view(view=ctx.dataset.to_patches(kwargs["patches_field"]))
            yield ctx.ops.notify(f"Similarity index {index.key!r} over {int(index.total_index_size)} patches; "
                                 "select a patch and sort by similarity", variant="success")

    def __call__(self, sample_collection: Any, patches_field: str = EMBEDDINGS["patches_field"], *,
                 attribute: str = EMBEDDINGS["attribute"], brain_key: str | None = None, overwrite: bool = False,
                 delegate: bool = False) -> Any:
        """Builds the index, as the App does.

        Args:
            sample_collection: the images (a dataset or a view of it)
            patches_field: the ``fo.Detections`` field
            attribute: the detections' embedding attribute
            brain_key: the Brain key (default ``xpatch_<field>_sim``)
            overwrite: replace an existing index with this key
            delegate: schedule as a delegated operation

        Returns:
            the :class:`fiftyone.operators.executor.ExecutionResult`
        """
        return self.call(sample_collection, {"patches_field": patches_field, "attribute": attribute,
                                             "brain_key": brain_key or "", "overwrite": overwrite}, delegate)


class TagDuplicatePatches(_CurationOperator):
    """Tags near-duplicate patches (never deletes): one kept per group, the
    highest score first."""

    name = "tag_duplicate_patches"
    label = "Tag near-duplicate patches"
    description = "Label tags on patches within a cosine distance of a better-scored one"

    def more_inputs(self, ctx: Any, inputs: Any) -> None:
        inputs.float("threshold", default=CURATION["duplicate_threshold"], min=0.0, max=2.0,
                     label="Cosine distance threshold", description="1 - cosine similarity; 0 = identical")
        inputs.str("keep_by", default=CURATION["keep_by"], label="Keep the patch with the highest",
                   description="A numeric detection attribute; empty keeps the first in dataset order")
        inputs.str("tag", default=CURATION["duplicate_tag"], label="Tag")
        inputs.bool("same_image", default=CURATION["same_image"], label="Also compare patches of the same image",
                    description="Off: only patches of different images can be duplicates")
        inputs.bool("open_view", default=True, label="Show the duplicates when done")

    def execute(self, ctx: Any):
        from xpatch_core.curation import tag_duplicates

        kwargs = _common(ctx)
        kwargs.update(threshold=number(ctx.params, "threshold", CURATION["duplicate_threshold"], lo=0.0, hi=1.999),
                      keep_by=_name(ctx.params, "keep_by", None, what="an attribute name"),
                      tag=_tag(ctx.params, "tag", CURATION["duplicate_tag"]),
                      same_image=flag(ctx.params, "same_image", CURATION["same_image"]))
        open_view = flag(ctx.params, "open_view", True)
        target = target_images(ctx)
        event = _step(ctx, 0.0, "comparing the patches")
        if event is not None:
            yield event
        res = tag_duplicates(target, **kwargs)
        if not ctx.delegated:
            field = kwargs["patches_field"]
            if open_view and res.tagged:
                yield ctx.ops.set_view(view=ctx.dataset.select_labels(tags=res.tag, fields=field).to_patches(field))
            else:
                yield ctx.ops.reload_dataset()
            yield ctx.ops.notify(f"{res.tagged} of {res.patches} patches tagged {res.tag!r} in {len(res.groups)} "
                                 f"groups ({res.missing} without an embedding)", variant="success")


    def __call__(self, sample_collection: Any, patches_field: str = EMBEDDINGS["patches_field"],
                 threshold: float = CURATION["duplicate_threshold"], *, attribute: str = EMBEDDINGS["attribute"],
                 keep_by: str | None = CURATION["keep_by"], tag: str = CURATION["duplicate_tag"],
                 same_image: bool = CURATION["same_image"]) -> Any:
        """Tags near-duplicates, as the App does.

        Args:
            sample_collection: the images (a dataset or a view of it)
            patches_field: the ``fo.Detections`` field
            threshold: cosine distance
            attribute: the detections' embedding attribute
            keep_by: a numeric detection attribute, highest kept; None for
                dataset order
            tag: the label tag
            same_image: also compare patches of the same image

        Returns:
            the :class:`fiftyone.operators.executor.ExecutionResult`
        """
        return self.call(sample_collection, {"patches_field": patches_field, "threshold": threshold,
                                             "attribute": attribute, "keep_by": keep_by or "", "tag": tag,
                                             "same_image": same_image, "open_view": False})


class ClearDuplicatePatches(_CurationOperator):
    """Removes the near-duplicate tags (undoes *Tag near-duplicate patches*)."""

    name = "clear_duplicate_patches"
    label = "Clear near-duplicate tags"
    description = "Removes the duplicate label tags; nothing else changes"

    def resolve_input(self, ctx: Any) -> types.Property:
        import fiftyone as fo

        inputs = types.Object()
        fields = fields_of(ctx, fo.Detections)
        if not fields:
            inputs.view("nofield", types.Error(label="No patches field"))
            return types.Property(inputs, invalid=True)
        inputs.enum("patches_field", fields, default=fields[0], required=True, label="Patches field")
        inputs.str("tag", default=CURATION["duplicate_tag"], label="Tag")
        return types.Property(inputs, view=types.View(label=self.label))

    def execute(self, ctx: Any):
        from xpatch_core.curation import clear_duplicates

        field = _patches_field(ctx)
        tag = _tag(ctx.params, "tag", CURATION["duplicate_tag"])
        n = clear_duplicates(target_images(ctx), field, tag)
        if not ctx.delegated:
            yield ctx.ops.reload_dataset()
            yield ctx.ops.notify(f"{n} patches untagged", variant="success")

    def __call__(self, sample_collection: Any, patches_field: str = EMBEDDINGS["patches_field"],
                 tag: str = CURATION["duplicate_tag"]) -> Any:
        """Clears the duplicate tags, as the App does.

        Args:
            sample_collection: the images (a dataset or a view of it)
            patches_field: the ``fo.Detections`` field
            tag: the label tag

        Returns:
            the :class:`fiftyone.operators.executor.ExecutionResult`
        """
        return self.call(sample_collection, {"patches_field": patches_field, "tag": tag})


class SelectDiversePatches(_CurationOperator):
    """Tags ``count`` patches spread over the embedding space (k-centre
    greedy), optionally saved as a view."""

    name = "select_diverse_patches"
    label = "Select diverse patches"
    description = "k-centre greedy selection over the patch embeddings, as label tags and a saved view"

    def more_inputs(self, ctx: Any, inputs: Any) -> None:
        inputs.int("count", default=CURATION["diverse_count"], min=1, label="Patches to select")
        inputs.int("seed", default=CURATION["seed"], min=0, label="Seed (first pick)")
        inputs.str("tag", default=CURATION["diverse_tag"], label="Tag")
        inputs.bool("exclude_duplicates", default=True, label="Leave out patches tagged as duplicates")
        inputs.str("view_name", default="", label="Save as view", description="Optional saved view name")
        inputs.bool("overwrite", default=False, label="Replace a saved view of that name")
        inputs.bool("open_view", default=True, label="Show the selection when done")

    def execute(self, ctx: Any):
        from xpatch_core.curation import select_diverse

        kwargs = _common(ctx)
        kwargs.update(
            count=number(ctx.params, "count", CURATION["diverse_count"], kind=int, lo=1, hi=10_000_000),
            seed=number(ctx.params, "seed", CURATION["seed"], kind=int, lo=0, hi=2**63 - 1),
            tag=_tag(ctx.params, "tag", CURATION["diverse_tag"]),
            exclude_tag=CURATION["duplicate_tag"] if flag(ctx.params, "exclude_duplicates", True) else None,
            view_name=text(ctx.params, "view_name", None, max_len=200) or None,
            overwrite=flag(ctx.params, "overwrite"))
        open_view = flag(ctx.params, "open_view", True)
        event = _step(ctx, 0.0, f"selecting {kwargs['count']} patches")
        if event is not None:
            yield event
        sel = select_diverse(target_images(ctx), **kwargs)
        if not ctx.delegated:
            field = kwargs["patches_field"]
            if open_view:
                yield ctx.ops.set_view(view=ctx.dataset.select_labels(tags=sel.tag, fields=field).to_patches(field))
            else:
                yield ctx.ops.reload_dataset()
            saved = f", saved as view {sel.view_name!r}" if sel.view_name else ""
            yield ctx.ops.notify(f"{len(sel.label_ids)} of {sel.patches} patches tagged {sel.tag!r}{saved}",
                                 variant="success")


    def __call__(self, sample_collection: Any, patches_field: str = EMBEDDINGS["patches_field"],
                 count: int = CURATION["diverse_count"], *, attribute: str = EMBEDDINGS["attribute"],
                 seed: int = CURATION["seed"], tag: str = CURATION["diverse_tag"], exclude_duplicates: bool = True,
                 view_name: str | None = None, overwrite: bool = False) -> Any:
        """Selects a diverse subset, as the App does.

        Args:
            sample_collection: the images (a dataset or a view of it)
            patches_field: the ``fo.Detections`` field
            count: how many patches
            attribute: the detections' embedding attribute
            seed: the seed of the first pick
            tag: the label tag
            exclude_duplicates: leave out patches tagged as duplicates
            view_name: also save the selection as this view
            overwrite: replace a saved view of that name

        Returns:
            the :class:`fiftyone.operators.executor.ExecutionResult`
        """
        return self.call(sample_collection, {
            "patches_field": patches_field, "count": count, "attribute": attribute, "seed": seed, "tag": tag,
            "exclude_duplicates": exclude_duplicates, "view_name": view_name or "", "overwrite": overwrite,
            "open_view": False})


class ComputePatchMap(_CurationOperator):
    """A 2-D map of the patches (FiftyOne Brain) for the App's embeddings
    panel."""

    name = "compute_patch_map"
    label = "Compute patch map"
    description = "A 2-D map of the patch embeddings for the embeddings panel"
    delegable = True

    def more_inputs(self, ctx: Any, inputs: Any) -> None:
        inputs.enum("method", list(CHOICES["visualization_method"]), default=CURATION["visualization_method"],
                    label="Method", description="pca: fast at any size; tsne; umap (needs umap-learn)")
        inputs.str("brain_key", default="", label="Brain key", description="Default: xpatch_<field>_map")
        inputs.int("seed", default=CURATION["seed"], min=0, label="Seed")
        inputs.bool("overwrite", default=False, label="Replace an existing map with this key")

    def execute(self, ctx: Any):
        from xpatch_core.curation import compute_patch_map
        from xpatch_core.errors import ParameterError

        kwargs = _common(ctx)
        method = text(ctx.params, "method", CURATION["visualization_method"])
        if method not in CHOICES["visualization_method"]:
            raise ParameterError(f"method must be one of {', '.join(CHOICES['visualization_method'])}")
        kwargs.update(method=method, brain_key=_name(ctx.params, "brain_key", None, what="a brain key"),
                      seed=number(ctx.params, "seed", CURATION["seed"], kind=int, lo=0, hi=2**32 - 1),
                      overwrite=flag(ctx.params, "overwrite"))
        event = _step(ctx, 0.0, f"computing a 2-D map ({method})")
        if event is not None:
            yield event
        res = compute_patch_map(target_images(ctx), progress=False, **kwargs)
        if not ctx.delegated:
            yield ctx.ops.reload_dataset()
            yield ctx.ops.open_panel("Embeddings", layout="horizontal")
            yield ctx.ops.notify(f"2-D map {res.key!r} of {len(res.points)} patches", variant="success")

    def __call__(self, sample_collection: Any, patches_field: str = EMBEDDINGS["patches_field"], *,
                 attribute: str = EMBEDDINGS["attribute"], method: str = CURATION["visualization_method"],
                 brain_key: str | None = None, seed: int = CURATION["seed"], overwrite: bool = False,
                 delegate: bool = False) -> Any:
        """Computes the map, as the App does.

        Args:
            sample_collection: the images (a dataset or a view of it)
            patches_field: the ``fo.Detections`` field
            attribute: the detections' embedding attribute
            method: ``"pca"``, ``"tsne"`` or ``"umap"``
            brain_key: the Brain key (default ``xpatch_<field>_map``)
            seed: the random seed
            overwrite: replace an existing map with this key
            delegate: schedule as a delegated operation

        Returns:
            the :class:`fiftyone.operators.executor.ExecutionResult`
        """
        return self.call(sample_collection, {"patches_field": patches_field, "attribute": attribute,
                                             "method": method, "brain_key": brain_key or "", "seed": seed,
                                             "overwrite": overwrite}, delegate)


OPERATORS = (ComputePatchEmbeddings, BuildPatchSimilarity, TagDuplicatePatches, ClearDuplicatePatches,
             SelectDiversePatches, ComputePatchMap)


def register(p: Any) -> None:
    """Registers this module's operators."""
    for op in OPERATORS:
        p.register(op)
