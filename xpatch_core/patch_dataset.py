"""Patch datasets: every patch as a FiftyOne sample of its own, with the
user's ground truth carried in, ready to train on and to export.

:func:`make_patch_dataset` turns a patches field (an xpatch patch run, or
any ``fo.Detections`` field) into a new dataset with one sample per patch:

-   **the crop** as an image file under ``output_dir`` (see
    :mod:`xpatch_core.patch_files`: JPEG crops keep a JPEG source's own
    quantisation tables, other sources give lossless PNG; EXIF orientation
    is applied, since patch boxes are expressed in the displayed frame);
-   **provenance**: ``source_sample_id``, ``source_filepath``,
    ``source_box`` (``[x0, y0, x1, y1]`` in source pixels, the patch's
    nominal box), ``patch_id`` (the patch detection's id, the key of
    incremental runs), ``patches_field``, ``run_key``, ``score``, ``rank``,
    ``scale``, ``aspect_ratio``, ``padded`` and ``valid_box`` (the part of
    the crop inside the source image, in crop pixels);
-   **a class** in ``label`` (``fo.Classification``): from the ground truth
    when ``gt_field`` is given (see :mod:`xpatch_core.gt_carry`: the class
    covering the largest share of the patch if at least ``min_coverage``,
    else ``background_label``; the share is its ``coverage`` attribute),
    else the patch detection's own label (the predicted class or the run's
    fixed text);
-   **ground truth** in a field of the same name as ``gt_field``:
    ``fo.Detections`` kept by SAHI's ``min_area_ratio`` rule and clipped to
    the patch (instance masks cut with them; each carries ``area_ratio``
    and ``source_id``), a ``fo.Segmentation`` cut to the patch (``mask``
    inline, or ``mask_path`` to a PNG under ``output_dir/masks/`` when the
    source used files), or the source's ``fo.Classification``.

Patches that extend outside the image (``border="pad"``) give crops of the
patch's full nominal size, padded with ``fill``; boxes and masks are clipped
to the image part, and coverage counts the padding as uncovered.

Runs are incremental: the new dataset is keyed by ``patch_id``, so calling
again adds only the patches it does not hold (with the same settings; other
settings are refused). Nothing is written outside ``output_dir``, and an
output folder that is not empty must carry the marker of an earlier call for
the same dataset.

The samples are written with FiftyOne's bulk insert of their stored form
(building ``fo.Sample`` objects costs more than cutting the crops); the
tests check that the documents read back equal those ``add_samples``
writes.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from xpatch_core import __version__, settings
from xpatch_core.defaults import CHOICES, PATCH_DATASET
from xpatch_core.errors import ParameterError, XpatchError
from xpatch_core.gt_carry import label_problem
from xpatch_core.patch_files import OutputFolder, prepare_output_dir
from xpatch_core.patch_rows import PatchJob, RowJob, RowResult, Settings, process_row
from xpatch_core.runs import Progress, check_image_collection, drive, list_runs

__all__ = [
    "EXPORT_FORMATS",
    "INFO_KEY",
    "PROVENANCE_FIELDS",
    "PatchDatasetReport",
    "iter_make_patch_dataset",
    "export_patch_dataset",
    "make_patch_dataset",
    "parse_export",
]

#: The key of the patch dataset's settings in ``dataset.info``.
INFO_KEY = "xpatch_patch_dataset"

#: Fields every patch sample has, with their FiftyOne field types.
PROVENANCE_FIELDS = {
    "source_sample_id": "StringField", "source_filepath": "StringField", "source_box": "IntList",
    "patch_id": "StringField", "patches_field": "StringField", "run_key": "StringField",
    "score": "FloatField", "rank": "IntField", "scale": "FloatField", "aspect_ratio": "FloatField",
    "padded": "BooleanField", "valid_box": "IntList",
}
_PATCH_ATTRS = ("score", "rank", "scale", "aspect_ratio", "confidence")
#: Export formats of a patch dataset: name -> (FiftyOne dataset type, which
#: field: ``"label"`` the patch class, ``"gt"`` the carried detections, or
#: None for every field).
EXPORT_FORMATS: dict[str, tuple[str, str | None]] = {
    "imagefolder": ("ImageClassificationDirectoryTree", "label"),
    "fiftyone-classification": ("FiftyOneImageClassificationDataset", "label"),
    "coco": ("COCODetectionDataset", "gt"),
    "yolov5": ("YOLOv5Dataset", "gt"),
    "fiftyone": ("FiftyOneDataset", None),
}
_MAX_EXAMPLES = 100
_INSERT_CHUNK = 1000
_READ_CHUNK = 256
_CONFIG_KEYS = ("source_dataset", "patches_field", "gt_field", "gt_kind", "min_area_ratio", "min_coverage",
                "background_label", "label_field", "image_format", "fill", "output_dir")


@dataclass
class PatchDatasetReport:
    """What a call made, skipped and why.

    Attributes:
        name: the patch dataset's name
        output_dir: the output folder (real path)
        source_dataset: the source dataset's name
        patches_field: the source's patches field
        gt_field: the ground-truth field, or None
        gt_kind: ``"detections"``, ``"segmentation"``, ``"classification"``
            or None
        images: source samples with new patches to make
        patches: patches considered (new and already present)
        added: patch samples added now
        already: patches present from an earlier call (not redone)
        total: patch samples in the dataset now
        files_written: crops (and mask files) written now
        padded: added patches that extend outside their image
        skipped: patches not made; ``skipped_reasons`` counts them by reason
        skipped_reasons: reason -> count
        failed: source samples that failed as a whole (image unreadable,
            ground truth missing or unusable)
        failures: the first 100 ``{"id", "filepath", "reason"}``
        gt_kept: ground-truth boxes carried into patches
        gt_dropped: overlapping boxes left out by ``min_area_ratio``
        gt_invalid: ground-truth boxes that are empty, not finite or
            outside their image (never carried)
        gt_clipped: ground-truth boxes cut to their image first
        classes: patch class -> count, over the added patches
        elapsed: seconds
        crops_per_s: added patches per second
    """

    name: str
    output_dir: str
    source_dataset: str
    patches_field: str
    gt_field: str | None = None
    gt_kind: str | None = None
    images: int = 0
    patches: int = 0
    added: int = 0
    already: int = 0
    total: int = 0
    files_written: int = 0
    padded: int = 0
    skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    gt_kept: int = 0
    gt_dropped: int = 0
    gt_invalid: int = 0
    gt_clipped: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    crops_per_s: float = 0.0
    dataset: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Returns the report as a JSON-serialisable dict (without the dataset)."""
        out = asdict(self)
        out.pop("dataset", None)
        return out

    def summary(self) -> str:
        """A few lines for people: counts and paths.

        Returns:
            the text
        """
        lines = [
            f"patch dataset {self.name!r}: {self.total} patches; {self.added} added now from {self.images} "
            f"images, {self.already} already there (source {self.source_dataset!r}, field "
            f"{self.patches_field!r})",
            f"crops in {self.output_dir} ({self.files_written} files written, "
            f"{self.crops_per_s:.1f} crops/s)",
        ]
        if self.gt_field:
            lines.append(f"ground truth from {self.gt_field!r} ({self.gt_kind}): {self.gt_kept} boxes carried, "
                         f"{self.gt_dropped} below min_area_ratio, {self.gt_invalid} invalid, "
                         f"{self.gt_clipped} clipped to their image" if self.gt_kind == "detections"
                         else f"ground truth from {self.gt_field!r} ({self.gt_kind})")
        if self.classes:
            top = sorted(self.classes.items(), key=lambda kv: (-kv[1], kv[0]))[:8]
            lines.append(f"{len(self.classes)} classes: " + ", ".join(f"{k} {v}" for k, v in top)
                         + (", ..." if len(self.classes) > 8 else ""))
        if self.padded:
            lines.append(f"{self.padded} patches extend outside their image (padded)")
        if self.skipped:
            lines.append(f"{self.skipped} patches skipped: "
                         + "; ".join(f"{n} {r}" for r, n in sorted(self.skipped_reasons.items())))
        if self.failed:
            lines.append(f"{self.failed} source images failed:")
            lines += [f"  {f['filepath']}: {f['reason']}" for f in self.failures[:10]]
        return "\n".join(lines)


# -- parameters ----------------------------------------------------------------------------


def _number(name: str, v: Any, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= float(v) <= hi):
        raise ParameterError(f"{name} must be a number in [{lo}, {hi}], got {v!r}")
    return float(v)


def _check_params(name: Any, min_area_ratio: Any, min_coverage: Any, background_label: Any,
                  image_format: Any, fill: Any, label_field: Any) -> None:
    if not isinstance(name, str) or not name.strip() or any(ord(c) < 32 for c in name):
        raise ParameterError(f"name must be a dataset name, got {name!r}")
    _number("min_area_ratio", min_area_ratio, 0.0, 1.0)
    _number("min_coverage", min_coverage, 0.0, 1.0)
    reason = label_problem(background_label)
    if reason is not None:
        raise ParameterError(f"background_label: {reason}")
    if image_format not in CHOICES["patch_image_format"]:
        raise ParameterError(f"image_format must be one of {CHOICES['patch_image_format']}, got {image_format!r}")
    if isinstance(fill, bool) or not isinstance(fill, int) or not 0 <= fill <= 255:
        raise ParameterError(f"fill must be a grey level 0..255, got {fill!r}")
    if not isinstance(label_field, str) or not label_field.isidentifier() or label_field in PROVENANCE_FIELDS \
            or label_field in ("id", "filepath", "tags", "metadata", "media_type"):
        raise ParameterError(f"label_field must be a field name other than the provenance fields, "
                             f"got {label_field!r}")


def _resolve_source(sample_collection: Any, patches_field: str | None) -> tuple[Any, str, set[str] | None]:
    """Returns ``(images, patches field, kept patch ids or None for all)``."""
    import fiftyone as fo
    import fiftyone.core.patches as fop

    if isinstance(sample_collection, fop.EvaluationPatchesView):
        raise ParameterError("evaluation patches views are not supported; pass a patches view or a field")
    if isinstance(sample_collection, fop.PatchesView):
        pf = sample_collection.patches_field
        if patches_field is not None and patches_field != pf:
            raise ParameterError(f"this patches view shows {pf!r}, not {patches_field!r}")
        kept = set(sample_collection.values(f"{pf}.id"))
        base = sample_collection._source_collection
        check_image_collection(base)
        return base.select(sample_collection.distinct("sample_id")), pf, kept
    check_image_collection(sample_collection)
    dataset = sample_collection._dataset
    if patches_field is None:
        fields = sorted({dataset.get_run_info(k).config.field for k in list_runs(dataset, type="patches")})
        if len(fields) != 1:
            raise ParameterError("give the patches field" + (f" (one of {', '.join(fields)})" if fields else ""))
        patches_field = fields[0]
    schema = dataset.get_field_schema(flat=True)
    if (not isinstance(patches_field, str) or patches_field not in schema
            or getattr(schema[patches_field], "document_type", None) is not fo.Detections):
        raise ParameterError(f"patches field {patches_field!r} does not exist or is not a fo.Detections field")
    return sample_collection, patches_field, None


def _gt_kind(dataset: Any, gt_field: str | None, patches_field: str, label_field: str) -> str | None:
    import fiftyone as fo

    if gt_field is None:
        return None
    schema = dataset.get_field_schema()
    if not isinstance(gt_field, str) or gt_field not in schema:
        raise ParameterError(f"ground-truth field {gt_field!r} does not exist on dataset {dataset.name!r}")
    if gt_field == patches_field:
        raise ParameterError("the ground-truth field must differ from the patches field")
    if gt_field in PROVENANCE_FIELDS or gt_field == label_field:
        raise ParameterError(f"the ground-truth field {gt_field!r} clashes with a patch dataset field; "
                             "clone it under another name first")
    kinds = {fo.Detections: "detections", fo.Segmentation: "segmentation", fo.Classification: "classification"}
    doc_type = getattr(schema[gt_field], "document_type", None)
    if doc_type not in kinds:
        got = getattr(doc_type, "__name__", type(schema[gt_field]).__name__)
        raise ParameterError(f"ground-truth field {gt_field!r} holds {got}; expected fo.Detections, "
                             "fo.Segmentation or fo.Classification")
    return kinds[doc_type]


def _run_key(dataset: Any, patches_field: str) -> str | None:
    for key in list_runs(dataset, type="patches"):
        if dataset.get_run_info(key).config.field == patches_field:
            return key
    return None


# -- the patch dataset ---------------------------------------------------------------------


def _real(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path).strip() or "\x00" in os.fspath(path):
        raise ParameterError(f"output_dir must be a folder path, got {path!r}")
    return os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _existing_target(name: str, config: dict[str, Any], source: Any) -> Any:
    """The patch dataset ``name`` if it exists with the same settings, None
    if it does not exist; refuses any other dataset of that name."""
    import fiftyone as fo

    if name == source.name:
        raise ParameterError("the patch dataset needs a name other than its source's")
    if not fo.dataset_exists(name):
        return None
    ds = fo.load_dataset(name)
    old = ds.info.get(INFO_KEY)
    if not isinstance(old, dict):
        raise ParameterError(f"dataset {name!r} exists and was not made by make_patch_dataset; "
                             "choose another name")
    diff = [f"{k}={old.get(k)!r} (now {config.get(k)!r})" for k in _CONFIG_KEYS if old.get(k) != config.get(k)]
    if diff:
        raise ParameterError(f"patch dataset {name!r} was made with other settings: {'; '.join(diff)}; "
                             "use the same settings to add new patches, or another name")
    return ds


def _create_target(name: str, config: dict[str, Any], persistent: bool, source: Any) -> Any:
    import fiftyone as fo

    types = {"StringField": fo.StringField, "FloatField": fo.FloatField, "IntField": fo.IntField,
             "BooleanField": fo.BooleanField}
    kinds = {"detections": fo.Detections, "segmentation": fo.Segmentation, "classification": fo.Classification}
    ds = fo.Dataset(name, persistent=persistent)
    ds.media_type = "image"
    for fname, ftype in PROVENANCE_FIELDS.items():
        if ftype == "IntList":
            ds.add_sample_field(fname, fo.ListField, subfield=fo.IntField)
        else:
            ds.add_sample_field(fname, types[ftype])
    ds.add_sample_field(config["label_field"], fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification)
    gt, kind = config["gt_field"], config["gt_kind"]
    if kind is not None:
        ds.add_sample_field(gt, fo.EmbeddedDocumentField, embedded_doc_type=kinds[kind])
    if kind == "segmentation":
        targets = source.mask_targets.get(gt) or source.default_mask_targets
        if targets:
            ds.mask_targets = {gt: dict(targets)}
    ds.info[INFO_KEY] = {**config, "xpatch_version": __version__}
    ds.save()
    return ds


def _insert(target: Any, docs: list[dict[str, Any]]) -> None:
    """Bulk-inserts sample documents in FiftyOne's stored form, with the keys
    ``Dataset.add_samples`` adds (dataset id, creation times)."""
    import fiftyone.core.odm as foo

    if not docs:
        return
    now = _dt.datetime.now(_dt.UTC).replace(tzinfo=None)
    dataset_id = target._doc.id
    for d in docs:
        d["_dataset_id"] = dataset_id
        d["created_at"] = now
        d["last_modified_at"] = now
    foo.insert_documents(docs, target._sample_collection, ordered=False, progress=False)


def _iter_jobs(images: Any, ids: list[str], pf: str, gt_field: str | None, kept: set[str] | None,
               existing: set[str], report: PatchDatasetReport) -> Iterator[RowJob]:
    """Reads the source in chunks and yields the rows with their new patches
    (rows without any yield with an empty list, for progress)."""
    dataset = images._dataset
    attrs = list(_PATCH_ATTRS)  # read whether declared or not (values() gives None when absent)
    paths = ["id", "filepath", f"{pf}.detections.id", f"{pf}.detections.bounding_box", f"{pf}.detections.label"]
    paths += [f"{pf}.detections.{a}" for a in attrs] + ([gt_field] if gt_field else [])
    for start in range(0, len(ids), _READ_CHUNK):
        cols = dataset.select(ids[start:start + _READ_CHUNK], ordered=True).values(paths)
        for k, (sid, filepath) in enumerate(zip(cols[0], cols[1])):
            det_ids, boxes, labels = cols[2][k] or [], cols[3][k] or [], cols[4][k] or []
            extra = [cols[5 + j][k] or [None] * len(det_ids) for j in range(len(attrs))]
            patches = []
            for i, did in enumerate(det_ids):
                if kept is not None and did not in kept:
                    continue
                report.patches += 1
                if did in existing:
                    report.already += 1
                    continue
                values = {a: extra[j][i] for j, a in enumerate(attrs)}
                if values.get("score") is None and values.get("confidence") is not None:
                    values["score"] = values["confidence"]
                patches.append(PatchJob(did, boxes[i], labels[i], values))
            yield RowJob(sid, filepath, patches, cols[-1][k] if gt_field else None)


def _collect(result: RowResult, filepath: str, report: PatchDatasetReport) -> None:
    if result.failure is not None:
        report.failed += 1
        if len(report.failures) < _MAX_EXAMPLES:
            report.failures.append({"id": result.sample_id, "filepath": filepath, "reason": result.failure})
    for _pid, reason in result.skipped:
        report.skipped += 1
        report.skipped_reasons[reason] = report.skipped_reasons.get(reason, 0) + 1
    report.files_written += result.files
    for key in ("gt_kept", "gt_dropped", "gt_invalid", "gt_clipped", "padded"):
        setattr(report, key, getattr(report, key) + result.counts.get(key, 0))
    report.added += len(result.docs)


def iter_make_patch_dataset(
    sample_collection: Any,
    patches_field: str | None = None,
    name: str | None = None,
    output_dir: str | None = None,
    gt_field: str | None = None,
    min_area_ratio: float = PATCH_DATASET["min_area_ratio"],
    *,
    min_coverage: float = PATCH_DATASET["min_coverage"],
    background_label: str = PATCH_DATASET["background_label"],
    label_field: str = PATCH_DATASET["label_field"],
    image_format: str = PATCH_DATASET["image_format"],
    fill: int = PATCH_DATASET["fill"],
    persistent: bool = True,
    workers: int | None = None,
) -> Generator[Progress, None, PatchDatasetReport]:
    """Makes or extends a patch dataset, yielding progress events. See
    :func:`make_patch_dataset` for the arguments.

    Returns:
        a generator of :class:`xpatch_core.runs.Progress` events whose return
        value is the :class:`PatchDatasetReport` (its ``dataset`` attribute
        holds the patch dataset)
    """
    t0 = time.perf_counter()
    _check_params(name, min_area_ratio, min_coverage, background_label, image_format, fill, label_field)
    images, pf, kept = _resolve_source(sample_collection, patches_field)
    source = images._dataset
    kind = _gt_kind(source, gt_field, pf, label_field)
    config = {"source_dataset": source.name, "patches_field": pf, "gt_field": gt_field, "gt_kind": kind,
              "min_area_ratio": float(min_area_ratio), "min_coverage": float(min_coverage),
              "background_label": background_label, "label_field": label_field, "image_format": image_format,
              "fill": fill, "output_dir": _real(output_dir)}
    target = _existing_target(name, config, source)
    root = prepare_output_dir(output_dir, name, {"source_dataset": source.name, "patches_field": pf})
    if target is None:
        target = _create_target(name, config, persistent, source)
    report = PatchDatasetReport(name=name, output_dir=root, source_dataset=source.name, patches_field=pf,
                                gt_field=gt_field, gt_kind=kind, dataset=target)
    shared = Settings(OutputFolder(root), pf, _run_key(source, pf), label_field, gt_field, kind,
                      float(min_area_ratio), float(min_coverage), background_label, image_format, fill,
                      (target.mask_targets or {}).get(gt_field) if kind == "segmentation" else None)
    from fiftyone import ViewField as F

    ids = images.match(F(f"{pf}.detections").length() > 0).values("id")
    existing = set(target.values("patch_id"))
    yield from _run_rows(images, ids, pf, kept, existing, shared, report, workers, target)
    fields = [label_field] + ([gt_field] if kind in ("detections", "segmentation", "classification") else [])
    target.add_dynamic_sample_fields(fields=fields)
    target.reload()
    report.total = len(target)
    report.elapsed = time.perf_counter() - t0
    report.crops_per_s = report.added / report.elapsed if report.elapsed > 0 else 0.0
    return report


def _run_rows(images: Any, ids: list[str], pf: str, kept: set[str] | None, existing: set[str], shared: Settings,
              report: PatchDatasetReport, workers: int | None, target: Any) -> Generator[Progress, None, None]:
    """Cuts the rows on a thread pool, in order, inserting samples in bulk."""
    n_workers = workers or settings.decode_workers()
    classes: Counter = Counter()
    buffer: list[dict[str, Any]] = []
    done, last = 0, time.perf_counter()
    yield Progress(0, len(ids), 0, f"cutting patches from {len(ids)} images")
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="xpatch-patches") as pool:
        pending: deque = deque()

        def finish_one() -> None:
            nonlocal done
            rj, fut = pending.popleft()
            result = fut.result()
            _collect(result, rj.filepath, report)
            for d in result.docs:
                classes[d[shared.label_field]["label"]] += 1
            buffer.extend(result.docs)
            done += 1

        try:
            for rj in _iter_jobs(images, ids, pf, shared.gt_field, kept, existing, report):
                if not rj.patches:
                    done += 1
                    continue
                report.images += 1
                pending.append((rj, pool.submit(process_row, rj, shared)))
                while len(pending) >= 4 * n_workers:
                    finish_one()
                if len(buffer) >= _INSERT_CHUNK:
                    _insert(target, buffer)
                    buffer = []
                if time.perf_counter() - last > 0.5:
                    last = time.perf_counter()
                    yield Progress(done, len(ids), report.failed, f"{report.added} patches from {done} images")
            while pending:
                finish_one()
        finally:
            _insert(target, buffer)
            buffer = []
    report.classes = dict(sorted(classes.items()))
    yield Progress(done, len(ids), report.failed, f"{report.added} patches from {done} images")


def make_patch_dataset(
    sample_collection: Any,
    patches_field: str | None = None,
    name: str | None = None,
    output_dir: str | None = None,
    gt_field: str | None = None,
    min_area_ratio: float = PATCH_DATASET["min_area_ratio"],
    *,
    min_coverage: float = PATCH_DATASET["min_coverage"],
    background_label: str = PATCH_DATASET["background_label"],
    label_field: str = PATCH_DATASET["label_field"],
    image_format: str = PATCH_DATASET["image_format"],
    fill: int = PATCH_DATASET["fill"],
    persistent: bool = True,
    workers: int | None = None,
    progress: bool | Callable[[Progress], None] = False,
) -> Any:
    """Makes a FiftyOne dataset with one sample per patch, the user's ground
    truth carried in (see the module docstring for every field).

    Calling again with the same name and settings adds only the patches the
    dataset does not hold yet.

    Args:
        sample_collection: an image collection holding ``patches_field``, or
            a patches view (exactly its patches are used)
        patches_field: the ``fo.Detections`` patches field (default: the
            patches view's, or the dataset's only patch run)
        name: the new dataset's name (or the name of one made earlier with
            the same settings, to extend it)
        output_dir: the folder for the crops: new, empty, or made by an
            earlier call for the same dataset
        gt_field: a ``fo.Detections``, ``fo.Segmentation`` or
            ``fo.Classification`` field of the source to carry into the
            patches, or None to keep the patch labels
        min_area_ratio: a ground-truth box is kept in a patch when at least
            this share of its area lies inside the patch (SAHI's rule and
            default, 0.1)
        min_coverage: the least share of a patch that a class must cover to
            become the patch's class (default 0.5)
        background_label: the class of patches no ground-truth class covers
            enough (default ``"background"``)
        label_field: the patch class field (default ``"label"``)
        image_format: ``"auto"`` (JPEG crops from JPEG sources, with their
            quantisation tables; PNG otherwise), ``"jpg"`` or ``"png"``
        fill: grey level of the padding of patches that extend outside the
            image (``border="pad"``)
        persistent: whether the new dataset persists (default True)
        workers: threads cutting crops (default ``XPATCH_DECODE_WORKERS``)
        progress: True for a progress bar, or a callable taking
            :class:`xpatch_core.runs.Progress` events

    Returns:
        the patch dataset (a :class:`fiftyone.core.dataset.Dataset`)

    Raises:
        ParameterError: for a bad parameter, a missing or wrongly typed field,
            an output folder that is not empty and not this dataset's, or an
            existing dataset of that name made otherwise, before any work
    """
    gen = iter_make_patch_dataset(sample_collection, patches_field, name, output_dir, gt_field, min_area_ratio,
                                  min_coverage=min_coverage, background_label=background_label,
                                  label_field=label_field, image_format=image_format, fill=fill,
                                  persistent=persistent, workers=workers)
    return drive(gen, progress).dataset


# -- export --------------------------------------------------------------------------------


def parse_export(text: str) -> tuple[str, str]:
    """Parses ``FORMAT:DIR`` (the CLI's ``--export``).

    Args:
        text: e.g. ``"coco:out/coco"``

    Returns:
        ``(format, folder)``

    Raises:
        ParameterError: for an unknown format or a missing folder
    """
    fmt, sep, path = str(text).partition(":")
    if not sep or fmt not in EXPORT_FORMATS or not path.strip():
        raise ParameterError(f"expected FORMAT:DIR with FORMAT one of {', '.join(EXPORT_FORMATS)}, got {text!r}")
    return fmt, path


def _export_field(dataset: Any, fmt: str, label_field: str | None) -> str | None:
    info = dataset.info.get(INFO_KEY)
    if not isinstance(info, dict):
        raise ParameterError(f"dataset {dataset.name!r} is not a patch dataset (made by make_patch_dataset)")
    role = EXPORT_FORMATS[fmt][1]
    if label_field is not None or role is None:
        return label_field
    if role == "label":
        field_name = info["label_field"]
        for value in dataset.distinct(f"{field_name}.label"):
            reason = label_problem(value)
            if reason is not None:
                raise ParameterError(f"cannot export {field_name!r} as folders: {reason}")
        return field_name
    if info.get("gt_kind") != "detections":
        raise ParameterError(f"{fmt} needs ground-truth detections; this patch dataset was made "
                             + (f"from {info.get('gt_field')!r} ({info.get('gt_kind')})" if info.get("gt_field")
                                else "without a ground-truth field (give gt_field)"))
    return info["gt_field"]


def export_patch_dataset(dataset: Any, export_dir: str, format: str = "imagefolder", *,
                         label_field: str | None = None) -> dict[str, Any]:
    """Exports a patch dataset with FiftyOne's own exporter for ``format``.

    ``"imagefolder"`` and ``"fiftyone-classification"`` export the patch
    class (``label``); ``"coco"`` and ``"yolov5"`` the carried ground-truth
    detections; ``"fiftyone"`` everything, crops included.

    Args:
        dataset: a patch dataset (or a view of one)
        export_dir: a new or empty folder
        format: one of :data:`EXPORT_FORMATS`
        label_field: the field to export instead of the format's default

    Returns:
        ``{"format", "export_dir", "label_field", "samples", "files"}``

    Raises:
        ParameterError: for an unknown format, a folder that is not empty,
            or a patch dataset without the field the format needs
        XpatchError: if a file was found outside ``export_dir`` afterwards
    """
    import fiftyone as fo

    if format not in EXPORT_FORMATS:
        raise ParameterError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    field_name = _export_field(dataset._dataset, format, label_field)
    root = _real(export_dir)
    if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
        raise ParameterError(f"export folder {root} exists and is not an empty folder")
    crops = dataset._dataset.info[INFO_KEY].get("output_dir")
    if crops and (root == crops or root.startswith(crops + os.sep)):
        raise ParameterError(f"export folder {root} lies inside the patch dataset's own folder {crops}")
    dtype = getattr(fo.types, EXPORT_FORMATS[format][0])
    kwargs: dict[str, Any] = {"export_media": True} if format == "fiftyone" else {"label_field": field_name}
    dataset.export(export_dir=root, dataset_type=dtype, progress=False, **kwargs)
    files = 0
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            path = os.path.join(dirpath, n)
            if not os.path.realpath(path).startswith(root + os.sep):
                raise XpatchError(f"{path} lies outside the export folder {root}")
            files += 1
    return {"format": format, "export_dir": root, "label_field": field_name, "samples": len(dataset),
            "files": files}
