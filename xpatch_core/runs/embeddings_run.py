"""Embedding runs: one embedding per patch, pooled from one forward pass per image.

Rules (besides the lifecycle's, :mod:`xpatch_core.runs.lifecycle`):

-   The run writes the attribute ``attribute`` (``embedding`` by default) of
    the detections of a ``fo.Detections`` patches field, the convention of
    FiftyOne's ``compute_patch_embeddings``, where FiftyOne Brain and the App
    find it. The attribute is declared as a ``VectorField``; vectors are
    float32 and L2-normalised (:mod:`xpatch_core.embeddings`).
-   The run's field is the label path ``<patches_field>.detections.<attribute>``
    (its lock, its failure tag ``xpatch:<path>:failed``, what deleting the run
    removes); its run key is ``<patches_field>_<attribute>`` by default.
-   A sample is done when one of its detections has an embedding; a patch
    run that replaces the detections makes it pending again. Samples
    without detections are skipped.
-   An attribute that already holds values not written by this run key
    (FiftyOne's ``compute_patch_embeddings``, another tool, another run) is
    refused unless ``overwrite``; one declared with a non-vector type is
    always refused.
-   Embeddings are written by label id (``set_label_values``), so a
    detection replaced while the run went on is left alone.
-   A patch that cannot be pooled (an empty box, a box wholly outside the
    image, or partly outside with ``border="error"``) gets no embedding (None,
    replacing an old one); a sample none of whose patches can be pooled, or
    whose image cannot be read, fails with the reason.
-   Memory stays bounded: one decoding stream for the whole run (two batches
    of images in memory), boxes read and embeddings written a chunk of
    samples at a time (``XPATCH_WRITE_CHUNK``).
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from xpatch_core import settings
from xpatch_core.defaults import CHOICES, EMBEDDINGS, SALIENCY
from xpatch_core.errors import ParameterError
from xpatch_core.hardware import ENGINE_SOURCE_KEYS
from xpatch_core.runs import collections as colls
from xpatch_core.runs import records
from xpatch_core.runs.lifecycle import Outcome, RunKind, execute
from xpatch_core.runs.progress import Progress, RunSummary, drive
from xpatch_core.runs.records import RunConfig

#: Attributes every ``fo.Detection`` has; never an embedding attribute.
_DETECTION_FIELDS = {"id", "label", "bounding_box", "confidence", "index", "mask", "mask_path", "tags",
                     "attributes"}


@dataclass(kw_only=True)
class EmbeddingsConfig(RunConfig):
    """The config of an embedding run.

    Attributes:
        patches_field: the ``fo.Detections`` field
        attribute: the detections' embedding attribute
        model_source: how the model was loaded
        layers: the pooled layers, coarse first
        pooling: ``"align"`` or ``"area"``
        sampling_ratio: ``"align"`` sampling points per feature cell
        border: ``"pad"``, ``"clip"`` or ``"error"``
        batch_size: images per model call
        input_size: the network's input ``(height, width)``
        dim: the embedding dimension
        normalised: ``"l2"``
    """

    kind: ClassVar[str] = "embeddings"
    compared: ClassVar[tuple[str, ...]] = ("patches_field", "attribute", "model_source", "layers", "pooling",
                                          "sampling_ratio", "border", "input_size")

    patches_field: str
    attribute: str
    model_source: dict[str, Any]
    layers: list[str]
    pooling: str
    sampling_ratio: int
    border: str
    batch_size: int
    input_size: list[int]
    dim: int
    normalised: str = "l2"


def _describe_model(model: Any) -> Any:
    return model if isinstance(model, str) else f"<{type(model).__name__} {getattr(model, 'name', '')}>"


class EmbeddingsRun(RunKind):
    """An embedding run; see :func:`run_embeddings` for the parameters."""

    kind = "embeddings"
    setup_stage = "load_model"

    def __init__(self, patches_field: str = EMBEDDINGS["patches_field"], *, attribute: str = EMBEDDINGS["attribute"],
                 model: Any = EMBEDDINGS["model"], weights: str | None = None, layer: str | None = None,
                 fine_layer: str | None = EMBEDDINGS["fine_layer"], pooling: str = EMBEDDINGS["pooling"],
                 sampling_ratio: int = EMBEDDINGS["sampling_ratio"], border: str = EMBEDDINGS["border"],
                 batch_size: int = EMBEDDINGS["batch_size"], allow_unsafe: bool = False,
                 precision: str = SALIENCY["precision"], engine: str = SALIENCY["engine"],
                 run_key: str | None = None, **common: Any) -> None:
        super().__init__(f"{patches_field}.detections.{attribute}",
                         run_key=run_key or f"{patches_field}_{attribute}", **common)
        self.patches_field, self.attribute = patches_field, attribute
        self.model, self.weights, self.layer, self.fine_layer = model, weights, layer, fine_layer
        self.pooling, self.sampling_ratio, self.border = pooling, sampling_ratio, border
        self.batch_size, self.allow_unsafe, self.precision = batch_size, allow_unsafe, precision
        self.engine = engine
        self.declared = False
        self.embedder: Any = None
        self.patch_failures = 0

    # -- validation -------------------------------------------------------------------
    def validate(self, view: Any) -> None:
        """Checks the field, the attribute and every parameter (no model)."""
        import fiftyone as fo

        dataset = view._dataset
        colls.require_field(dataset, self.patches_field, fo.Detections, "patches_field")
        if not colls.is_identifier(self.attribute) or self.attribute in _DETECTION_FIELDS:
            raise ParameterError(f"attribute must be a new attribute name (letters, digits, underscores; not "
                                 f"one of {', '.join(sorted(_DETECTION_FIELDS))}), got {self.attribute!r}")
        if not colls.is_identifier(self.run_key):
            raise ParameterError(f"invalid run key {self.run_key!r}")
        for name, key, value in (("pooling", "pooling", self.pooling),
                                 ("border", "embedding_border", self.border)):
            if value not in CHOICES[key]:
                raise ParameterError(f"{name} must be one of {', '.join(CHOICES[key])}, got {value!r}")
        self.batch_size = settings.batch_size_override() or self.batch_size
        for name in ("batch_size", "sampling_ratio"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ParameterError(f"{name} must be a positive integer, got {v!r}")
        self._check_attribute(dataset)

    def _check_attribute(self, dataset: Any) -> None:
        """Refuses an attribute that holds something this run did not write."""
        import fiftyone.core.fields as fof

        path = self.field
        declared = dataset.get_field(path)
        if declared is not None and not isinstance(declared, fof.VectorField):
            raise ParameterError(f"attribute {self.attribute!r} of field {self.patches_field!r} is declared as "
                                 f"{type(declared).__name__}, not a vector field; choose another attribute")
        owner = records.run_of_field(dataset, path, self.kind)
        if owner is not None and owner != self.run_key:
            raise ParameterError(f"attribute {self.attribute!r} of field {self.patches_field!r} belongs to the "
                                 f"xpatch run {owner!r}; use that run key or another attribute")
        if owner is None and not self.overwrite and (declared is not None or dataset.count(path) > 0):
            raise ParameterError(
                f"attribute {self.attribute!r} of field {self.patches_field!r} already holds values that no "
                "xpatch embedding run wrote (FiftyOne's compute_patch_embeddings?); pass overwrite=True to "
                "replace them, or choose another attribute")

    # -- work -------------------------------------------------------------------------
    def request(self) -> dict[str, Any]:
        """The arguments as given (the batch size aside: it changes no result)."""
        return {"patches_field": self.patches_field, "attribute": self.attribute,
                "model": _describe_model(self.model), "weights": self.weights, "layer": self.layer,
                "fine_layer": self.fine_layer, "pooling": self.pooling, "sampling_ratio": self.sampling_ratio,
                "border": self.border, "precision": self.precision}

    def known_differences(self, stored: dict[str, Any]) -> list[str]:
        """The parameters known before the model loads that differ from a
        stored run's: the model's kind or ``keras.applications`` name, the
        pooling, its sampling ratio and the border rule (the layers are
        compared after the load).

        Args:
            stored: the stored run's config

        Returns:
            a list of parameter names
        """
        from xpatch_core.embeddings import PatchEmbedder
        from xpatch_core.runs.saliency_run import model_differs

        model, mine = self.model, {"border": self.border}
        if isinstance(model, PatchEmbedder):  # built already: its own pooling is used
            model = model.model
        else:
            mine.update(pooling=self.pooling, sampling_ratio=self.sampling_ratio)
        return ["model_source"] * model_differs(model, stored.get("model_source") or {}) + [
            k for k, v in mine.items() if k in stored and stored[k] != v]

    @classmethod
    def speed_key(cls, request: dict[str, Any]) -> str:
        """Embedding runs of one model and layers run at about one speed."""
        return f"embeddings|{request.get('model')}|{request.get('layer')}|{request.get('fine_layer')}"

    def todo(self, view: Any) -> tuple[list[str], int]:
        """Samples with detections (in the dataset) and no embedding yet."""
        from fiftyone import ViewField as F

        dataset = view._dataset
        ids = view.values("id")
        pf = self.patches_field
        chosen = dataset.select(ids)
        with_patches = set(chosen.match(F(f"{pf}.detections").length() > 0).values("id"))
        ids = [i for i in ids if i in with_patches]
        done = set() if self.overwrite else set(
            chosen.filter_labels(pf, F(self.attribute) != None).values("id"))  # noqa: E711
        todo = [i for i in ids if i not in done]
        return todo, len(ids) - len(todo)

    def setup(self, view: Any, todo: list[str]) -> EmbeddingsConfig:
        """Loads the model and checks its layers."""
        from xpatch_core.embeddings import load_embedder

        self.embedder = emb = load_embedder(
            self.model, weights=self.weights, layer=self.layer, fine_layer=self.fine_layer, pooling=self.pooling,
            sampling_ratio=int(self.sampling_ratio), precision=self.precision, allow_unsafe=self.allow_unsafe,
            engine=self.engine)
        return EmbeddingsConfig(
            field=self.field, request=self.request(), patches_field=self.patches_field, attribute=self.attribute,
            model_source={k: v for k, v in emb.model.source.items() if k not in ("wnids", *ENGINE_SOURCE_KEYS)},
            layers=list(emb.layers),
            pooling=emb.pooling, sampling_ratio=emb.sampling_ratio, border=self.border,
            batch_size=int(self.batch_size), input_size=list(emb.model.input_size), dim=int(emb.dim))

    def outcomes(self, dataset: Any, ids: list[str], summary: RunSummary) -> Iterator[Outcome]:
        """Streams every pending image and its boxes through the model, in order."""
        from xpatch_core.embeddings import iter_patch_embeddings

        meta: dict[int, tuple[str, str | None, list[str]]] = {}
        items = iter_patch_embeddings(self._pairs(dataset, ids, meta), None, self.embedder, box_format="relative",
                                      border=self.border, batch_size=int(self.batch_size))
        while True:
            t = time.perf_counter()
            item = next(items, None)
            summary.add_time("compute", time.perf_counter() - t)
            if item is None:
                return
            sid, path, label_ids = meta.pop(item.index)
            if path is None:
                yield Outcome(sid, vanished=True)
            elif item.error is not None:
                yield Outcome(sid, reason=item.error, filepath=path)
            else:
                yield self._outcome(sid, path, label_ids, item)

    def _pairs(self, dataset: Any, ids: list[str], meta: dict[int, tuple]) -> Iterator[tuple[str, list]]:
        """``(filepath, relative boxes)`` a chunk of samples at a time."""
        pf = self.patches_field
        size = max(settings.write_chunk(), int(self.batch_size))
        for start, chunk in zip(range(0, len(ids), size), colls.chunks(ids, size)):
            cols = dataset.select(list(chunk)).values(["id", "filepath", f"{pf}.detections.id",
                                                       f"{pf}.detections.bounding_box"])
            rows = {sid: (path, lids or [], boxes or []) for sid, path, lids, boxes in zip(*cols)}
            for k, sid in enumerate(chunk):
                row = rows.get(sid)
                if row is None:
                    meta[start + k] = (sid, None, [])
                    yield f"<sample {sid} was deleted>", []
                    continue
                path, lids, boxes = row
                meta[start + k] = (sid, path, list(lids))
                yield path, [b if b is not None and len(b) == 4 else [np.nan] * 4 for b in boxes]

    def _outcome(self, sid: str, path: str, label_ids: list[str], item: Any) -> Outcome:
        good = int(item.valid.sum())
        self.patch_failures += len(label_ids) - good
        if good == 0:
            first = next((r for r in item.reasons if r), "no patches")
            return Outcome(sid, reason=f"no patch could be embedded: {first}", filepath=path)
        values = [(lid, item.embeddings[k] if item.valid[k] else None) for k, lid in enumerate(label_ids)]
        return Outcome(sid, values, filepath=path, patches=good)

    def write(self, dataset: Any, values: dict[str, Any]) -> None:
        """Writes each detection's embedding by label id (declaring the
        attribute as a vector field first)."""
        import fiftyone.core.fields as fof

        if not self.declared:
            if dataset.get_field(self.field) is None:
                dataset.add_sample_field(self.field, fof.VectorField)
            self.declared = True
        rows = [{"sample_id": sid, "label_id": lid, "value": vec}
                for sid, pairs in values.items() for lid, vec in pairs]
        dataset.set_label_values(self.field, rows, validate=False)

    def tally(self, values: list[Any]) -> dict[str, int]:
        """Embeddings among stored values (lists of per-detection vectors)."""
        return {"patches": sum(1 for v in values for e in (v or []) if e is not None), "degenerate": 0}

    def start_message(self, count: int) -> str:
        """The first progress line."""
        return f"embedding the patches of {count} samples"

    def progress_message(self, summary: RunSummary) -> str:
        """The progress line after each chunk."""
        skipped = f", {self.patch_failures} patches not poolable" if self.patch_failures else ""
        return f"{summary.patches} patches embedded on {summary.processed} samples{skipped}"


def iter_run_embeddings(sample_collection: Any, patches_field: str = EMBEDDINGS["patches_field"], *,
                        shard: Any = None, **kwargs: Any) -> Generator[Progress, None, RunSummary]:
    """Embeds every patch of a patches field, yielding progress. See
    :func:`run_embeddings` for the arguments, and
    :func:`xpatch_core.runs.iter_run_saliency` for ``id_range`` and ``shard``.

    Returns:
        a generator of :class:`Progress` whose return value is the
        :class:`RunSummary`
    """
    return execute(EmbeddingsRun(patches_field, **kwargs), sample_collection, shard)


def run_embeddings(sample_collection: Any, patches_field: str = EMBEDDINGS["patches_field"], *,
                   progress: Any = False, **kwargs: Any) -> RunSummary:
    """Computes one embedding per patch, at the cost of one forward pass per image.

    The network runs once per image and each detection's embedding is pooled
    from its feature map inside the detection's box
    (:mod:`xpatch_core.embeddings`); the vectors are stored on the
    detections' ``attribute`` (default ``embedding``), where FiftyOne Brain
    (:mod:`xpatch_core.curation`) and the App find them. Batched, streamed,
    resumable: only samples whose patches have no embedding are processed
    unless ``overwrite=True``.

    Args:
        sample_collection: a FiftyOne image collection (a patches view stands
            for the images of its patches)
        patches_field: the ``fo.Detections`` field (a patch run's, or any
            other tool's boxes)
        progress: True for a progress bar, or a callable
        **kwargs: ``attribute``, ``model`` (a ``keras.applications`` name,
            a saved classifier, a Keras model, a
            :class:`~xpatch_core.models.SaliencyModel` or a
            :class:`~xpatch_core.embeddings.PatchEmbedder`), ``weights``,
            ``layer``, ``fine_layer``, ``pooling``, ``sampling_ratio``,
            ``border`` (defaults in
            :data:`xpatch_core.defaults.EMBEDDINGS`, chosen by
            ``benchmarks/bench_embeddings.py``), ``batch_size``,
            ``allow_unsafe``, ``precision``, ``engine`` (see
            :func:`xpatch_core.load_model`), ``overwrite``, ``run_key``
            (default ``<patches_field>_<attribute>``), ``sample_ids``,
            ``id_range``

    Returns:
        a :class:`RunSummary`
    """
    return drive(iter_run_embeddings(sample_collection, patches_field, **kwargs), progress)


__all__ = ["EmbeddingsConfig", "EmbeddingsRun", "iter_run_embeddings", "run_embeddings"]
