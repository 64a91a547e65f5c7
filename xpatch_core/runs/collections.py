"""What a run reads: the images behind a collection, checked fields, sizes.

Rules:

-   Runs work on images. A patches view stands for the images of the
    patches it shows (all of its source images when nothing is filtered);
    video, 3D and grouped collections are refused up front.
-   An output field is either new, or the field of an earlier xpatch run of
    the same kind (then resumed or overwritten); a field of another type or
    written by something else is never clobbered.
-   "Already done" is decided from the dataset, never from the fields a
    view happens to show.
-   Image sizes come from the heatmap's attributes, else from the sample's
    metadata, which is computed (once, from the file headers) where missing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from xpatch_core.errors import ParameterError

#: Tag set on samples that failed in a run, as ``xpatch:<field>:failed``.
FAILED_TAG = "xpatch:{field}:failed"

_HEX = re.compile(r"\A[0-9a-f]{24}\Z")
_IDENT = re.compile(r"\A[A-Za-z][A-Za-z0-9_]*\Z")  # \Z: "$" would accept a trailing newline
_RESERVED = {"id", "filepath", "tags", "metadata", "media_type", "created_at", "last_modified_at", "frames"}


def is_identifier(name: Any) -> bool:
    """Whether ``name`` is a plain field identifier (letters, digits, ``_``)."""
    return isinstance(name, str) and bool(_IDENT.match(name))


def chunks(seq: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    """Splits a sequence into consecutive pieces of at most ``n`` items.

    Args:
        seq: a sequence
        n: the piece length

    Returns:
        an iterator of slices
    """
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def is_patches_view(sample_collection: Any) -> bool:
    """Whether a collection is a patches view (of any kind, evaluation
    patches included)."""
    import fiftyone.core.patches as fop

    return isinstance(sample_collection, (fop.PatchesView, fop.EvaluationPatchesView))


def images_of(sample_collection: Any) -> Any:
    """The image samples a collection stands for.

    For a patches view, the images of the patches it shows (its whole source
    collection when nothing was filtered); any other collection as it is.

    Args:
        sample_collection: a FiftyOne collection

    Returns:
        a collection of image samples
    """
    if not is_patches_view(sample_collection):
        return sample_collection
    base = sample_collection._source_collection
    ids = sample_collection.distinct("sample_id")
    return base if len(ids) == len(base) else base.select(ids)


def check_range(id_range: Sequence[Any]) -> tuple[str | None, str | None]:
    """Validates an id range ``(lo, hi)`` of hex sample ids (None: open).

    Args:
        id_range: a pair

    Returns:
        the pair, with empty strings as None

    Raises:
        ParameterError: for a malformed or empty range
    """
    if not isinstance(id_range, (list, tuple)) or len(id_range) != 2:
        raise ParameterError(f"an id range is a pair (lo, hi), got {id_range!r}")
    out = []
    for v in id_range:
        if v is None or v == "":
            out.append(None)
        elif isinstance(v, str) and _HEX.match(v):
            out.append(v)
        else:
            raise ParameterError(f"an id range bound is a 24-hex-digit sample id or None, got {v!r}")
    lo, hi = out
    if lo is not None and hi is not None and not lo < hi:
        raise ParameterError(f"empty id range [{lo}, {hi})")
    return lo, hi


def range_name(id_range: Sequence[Any]) -> str:
    """Returns ``"lo-hi"`` for a range (``min`` / ``max`` for open ends)."""
    lo, hi = check_range(id_range)
    return f"{lo or 'min'}-{hi or 'max'}"


def restrict(sample_collection: Any, id_range: Sequence[Any] | None) -> Any:
    """Restricts a collection to the samples of an id range.

    Args:
        sample_collection: a FiftyOne collection
        id_range: ``(lo, hi)`` hex ids (None for unbounded), or None

    Returns:
        the view ``lo <= _id < hi`` (the collection itself for None)
    """
    if id_range is None:
        return sample_collection
    from bson import ObjectId
    from fiftyone import ViewField as F

    lo, hi = check_range(id_range)
    expr = None
    if lo is not None:
        expr = F("_id") >= ObjectId(lo)
    if hi is not None:
        upper = F("_id") < ObjectId(hi)
        expr = upper if expr is None else expr & upper
    return sample_collection if expr is None else sample_collection.match(expr)


def check_image_collection(sample_collection: Any) -> None:
    """Refuses collections whose samples are not images.

    A new empty dataset (no media type yet) is accepted: there is nothing
    to do. A view of a grouped dataset is refused even when it shows image
    slices: a run reads and writes through the dataset, which shows one
    slice at a time, so the other slices' samples would be lost.

    Args:
        sample_collection: a FiftyOne collection

    Raises:
        ParameterError: for video, 3D, point-cloud or grouped collections
    """
    media = sample_collection.media_type
    if media is None and not len(sample_collection):
        return
    hint = ("select an image slice and clone it into an image dataset: "
            "dataset.select_group_slices('<slice>').clone()")
    if media != "image":
        raise ParameterError(f"xpatch works on image datasets; this collection's media type is {media!r} "
                             f"({hint if media == 'group' else 'select an image slice or an image dataset'})")
    if sample_collection._dataset.media_type == "group":
        raise ParameterError(f"xpatch works on image datasets; this collection is a view of the grouped dataset "
                             f"{sample_collection._dataset.name!r}, whose slices a run cannot write ({hint})")


def image_view(sample_collection: Any) -> Any:
    """The images a run works on, checked, with the dataset reloaded so that
    fields and runs written by other processes (a worker, a killed run) are
    seen.

    Args:
        sample_collection: a FiftyOne collection

    Returns:
        the image collection
    """
    view = images_of(sample_collection)
    check_image_collection(view)
    view._dataset.reload()
    return view


@dataclass
class PatchSelection:
    """The patches a collection designates.

    Attributes:
        images: the image samples holding them
        field: the ``fo.Detections`` field
        kept: the ids of the detections a patches view shows, or None for
            every detection of ``field`` on ``images``
    """

    images: Any
    field: str
    kept: set[str] | None


def select_patches(sample_collection: Any, field_name: str | None, *, runs_of_field: Any = None) -> PatchSelection:
    """Resolves a patches view or an image collection plus a field.

    Args:
        sample_collection: a patches view (its field and filters apply) or an
            image collection
        field_name: the ``fo.Detections`` field; None for the view's, or the
            only patch run's field (``runs_of_field`` lists the candidates)
        runs_of_field: a callable returning the fields of the dataset's patch
            runs (used when ``field_name`` is None on an image collection)

    Returns:
        a :class:`PatchSelection`

    Raises:
        ParameterError: for evaluation patches views, a field that does not
            match the view, or a field that is not ``fo.Detections``
    """
    import fiftyone as fo
    import fiftyone.core.patches as fop

    if isinstance(sample_collection, fop.EvaluationPatchesView):
        raise ParameterError("evaluation patches views are not supported; pass the patches or the images")
    if isinstance(sample_collection, fop.PatchesView):
        pf = sample_collection.patches_field
        if field_name is not None and field_name != pf:
            raise ParameterError(f"this patches view shows {pf!r}, not {field_name!r}")
        kept = set(sample_collection.values(f"{pf}.id"))
        images = images_of(sample_collection)
        check_image_collection(images)
        return PatchSelection(images, pf, kept)
    check_image_collection(sample_collection)
    if field_name is None:
        fields = sorted(runs_of_field() if runs_of_field is not None else [])
        if len(fields) != 1:
            raise ParameterError("give the patches field" + (f" (one of {', '.join(fields)})" if fields else ""))
        field_name = fields[0]
    require_field(sample_collection._dataset, field_name, fo.Detections, "patches_field")
    images = sample_collection
    if field_name not in sample_collection.get_field_schema(flat=True):  # the view hides the field
        images = sample_collection._dataset.select(sample_collection.values("id"), ordered=True)
    return PatchSelection(images, field_name, None)


def require_field(dataset: Any, name: Any, doc_type: Any, what: str) -> str:
    """Checks that a top-level field exists and holds ``doc_type`` labels.

    Args:
        dataset: a FiftyOne dataset
        name: the field name
        doc_type: the label class (``fo.Heatmap``, ``fo.Detections``, ...)
        what: how to call the field in the error message

    Returns:
        the name

    Raises:
        ParameterError: if the field is missing or of another type
    """
    if not isinstance(name, str) or not name:
        raise ParameterError(f"{what} must be a field name, got {name!r}")
    schema = dataset.get_field_schema(flat=True)
    if name not in schema or getattr(schema[name], "document_type", None) is not doc_type:
        raise ParameterError(f"{what} {name!r} does not exist or is not a fo.{doc_type.__name__} field")
    return name


def field_exists(dataset: Any, name: str) -> bool:
    """Whether the dataset has a (flat) field of this name."""
    return name in dataset.get_field_schema(flat=True)


def validate_field_name(sample_collection: Any, name: str, kind: str, *, run_key: str | None = None) -> bool:
    """Validates an output field name before any work.

    A name is accepted if it is a new identifier, or the field of an earlier
    xpatch run of the same kind (which is then resumed or overwritten). A
    field of another type, or one not written by xpatch, is never clobbered;
    nor is the record of a run key held by another run (another tool's run,
    an xpatch run of another kind, or of another field), ``overwrite`` or
    not.

    Args:
        sample_collection: a FiftyOne collection
        name: the field name
        kind: ``"saliency"`` (a ``fo.Heatmap`` field) or ``"patches"`` (a
            ``fo.Detections`` field)
        run_key: the run key that would own the field (default: ``name``)

    Returns:
        True if the field exists (from an earlier run), False if it is new

    Raises:
        ParameterError: if the name is invalid or the field is taken
    """
    import fiftyone as fo

    from xpatch_core.runs.records import run_config, run_type

    if not is_identifier(name):
        raise ParameterError(
            f"invalid field name {name!r}: use letters, digits and underscores, starting with a letter"
        )
    if name in _RESERVED:
        raise ParameterError(f"{name!r} is a built-in field name")
    if run_key is not None and not is_identifier(run_key):
        raise ParameterError(f"invalid run key {run_key!r}")
    dataset = sample_collection._dataset
    key = run_key or name
    if key in dataset.list_runs():  # a run key belongs to one run: of this kind, for this field
        owner = run_config(dataset, key).get("field") if run_type(dataset, key) == kind else None
        if owner != name:
            whose = f"the xpatch run of field {owner!r}" if owner else "another kind of run or another tool"
            raise ParameterError(f"run key {key!r} belongs to {whose}; xpatch will not overwrite it: "
                                 "choose another run key")
    schema = dataset.get_field_schema(flat=True)
    if name not in schema:
        return False
    expected = fo.Heatmap if kind == "saliency" else fo.Detections
    fld = schema[name]
    doc_type = getattr(fld, "document_type", None)
    if doc_type is not expected:
        raise ParameterError(
            f"field {name!r} already exists with type {type(fld).__name__}"
            f"({getattr(doc_type, '__name__', '')}); xpatch will not overwrite it: choose another name"
        )
    if not (key in dataset.list_runs() and run_type(dataset, key) == kind):
        raise ParameterError(
            f"field {name!r} already exists and was not written by an xpatch {kind} run; choose another name"
        )
    return True


def keep_declared(dataset: Any, field_name: str, declare: Any, tries: int = 5) -> bool:
    """Makes sure a field a run declared is still in the dataset's schema.

    FiftyOne saves a schema change as a ``$set`` of the dataset document's
    field list from the process's own copy, so two processes declaring two
    different fields at the same moment can lose one of them (seen with two
    saliency runs started together). This reads the stored schema and, where
    the field is missing, reloads the dataset and declares it again until it
    stays.

    Args:
        dataset: a FiftyOne dataset
        field_name: the top-level field
        declare: a callable that declares it again (writes one value the
            run wrote, through the declaring path)
        tries: attempts before giving up

    Returns:
        True if the field had to be declared again
    """
    import time

    import fiftyone.core.odm as foodm

    datasets = foodm.get_db_conn().datasets
    again = False
    for attempt in range(tries):
        doc = datasets.find_one({"_id": dataset._doc.id}, {"sample_fields.name": 1}) or {}
        if any(f.get("name") == field_name for f in doc.get("sample_fields", [])):
            return again
        dataset.reload()  # only now: the schema in memory is stale
        declare()
        again = True
        time.sleep(0.05 * (attempt + 1))
    return again


def done_ids(dataset: Any, ids: Sequence[str], field_name: str) -> set[str]:
    """The samples among ``ids`` that have a value in ``field_name``, read
    from the dataset (whatever fields a view shows).

    Args:
        dataset: the dataset
        ids: sample ids
        field_name: the field

    Returns:
        a set of ids
    """
    if not ids or not field_exists(dataset, field_name):
        return set()
    return set(dataset.select(list(ids)).exists(field_name).values("id"))


def present_ids(dataset: Any, ids: Sequence[str]) -> set[str]:
    """The samples among ``ids`` that still exist (one query)."""
    return set(dataset.select(list(ids)).values("id")) if ids else set()


def filepaths(dataset: Any, ids: Sequence[str]) -> dict[str, str]:
    """The file paths of samples, by id (deleted samples are absent)."""
    if not ids:
        return {}
    return dict(zip(*dataset.select(list(ids)).values(["id", "filepath"])))


def ensure_metadata(dataset: Any, ids: Sequence[str]) -> int:
    """Computes the metadata (image size) of the samples that lack it (or
    whose stored size is not a positive number).

    Args:
        dataset: the dataset
        ids: the samples that need a size

    Returns:
        the number of samples whose metadata was computed
    """
    if not ids:
        return 0
    from fiftyone import ViewField as F

    # missing, or written by something else with a size that is not positive
    missing = dataset.select(list(ids)).match(~((F("metadata.width") > 0) & (F("metadata.height") > 0)))
    n = len(missing)
    if n:
        missing.compute_metadata(overwrite=True, skip_failures=True, warn_failures=False, progress=False)
    return n


def stored_folders(sample_collection: Any) -> list[str]:
    """The folders that the samples' files and stored label files lie in.

    Source images (``filepath``), heatmap PNGs (``map_path``) and mask
    files (``mask_path``) of the top-level label fields: an export or a
    patch dataset may not clear or fill a folder holding any of them.

    Args:
        sample_collection: a FiftyOne collection

    Returns:
        a sorted list of real folder paths
    """
    import fiftyone as fo

    from xpatch_core.paths import real

    paths = ["filepath"]
    schema = sample_collection._dataset.get_field_schema(flat=True)
    for name, fld in schema.items():
        doc = getattr(fld, "document_type", None)
        if "." not in name and doc is fo.Heatmap:
            paths.append(f"{name}.map_path")
        elif "." not in name and doc is fo.Segmentation:
            paths.append(f"{name}.mask_path")
    folders = set()
    for values in sample_collection._dataset.values(paths):
        folders.update(os.path.dirname(v) for v in values if isinstance(v, str) and v)
    return sorted({real(f) for f in folders})


def datasets_pointing_into(folder: str, exclude: Any = None) -> list[str]:
    """The datasets whose heatmaps are files in ``folder``: any dataset with a
    top-level ``fo.Heatmap`` field whose ``map_path`` lies in it (a clone, a
    clone of a view, or a dataset sharing a heatmap folder), whether or not
    it holds an xpatch run record. Generated views (patches) are left out.

    Args:
        folder: a real folder path
        exclude: a dataset to leave out (the caller's)

    Returns:
        a sorted list of dataset names
    """
    import fiftyone.core.odm as foo

    heat = "fiftyone.core.labels.Heatmap"
    db = foo.get_db_conn()
    prefix = {"$regex": "^" + re.escape(folder.rstrip(os.sep) + os.sep)}
    query: dict[str, Any] = {"sample_fields.embedded_doc_type": heat, "sample_collection_name": {"$regex": "^samples[.]"}}
    if exclude is not None:
        query["_id"] = {"$ne": exclude._doc.id}
    names = []
    for doc in db.datasets.find(query, {"name": 1, "sample_collection_name": 1, "sample_fields": 1}):
        fields = [f["name"] for f in doc.get("sample_fields") or [] if f.get("embedded_doc_type") == heat]
        samples = db[doc["sample_collection_name"]]
        if any(samples.find_one({f"{f}.map_path": prefix}, {"_id": 1}) for f in fields):
            names.append(doc["name"])
    return sorted(names)


def tag_failed(dataset: Any, field_name: str, ok_ids: Sequence[str], failed_ids: Sequence[str]) -> None:
    """Tags the samples that failed in a run and untags those that now succeeded.

    Args:
        dataset: the dataset
        field_name: the run's field (the tag is ``xpatch:<field>:failed``)
        ok_ids: samples that succeeded
        failed_ids: samples that failed
    """
    tag = FAILED_TAG.format(field=field_name)
    if ok_ids:
        ok_view = dataset.select(list(ok_ids))
        if tag in ok_view.distinct("tags"):
            ok_view.untag_samples(tag)
    if failed_ids:
        dataset.select(list(failed_ids)).tag_samples(tag)


__all__ = [
    "FAILED_TAG",
    "PatchSelection",
    "check_image_collection",
    "check_range",
    "chunks",
    "datasets_pointing_into",
    "done_ids",
    "ensure_metadata",
    "field_exists",
    "filepaths",
    "image_view",
    "images_of",
    "is_identifier",
    "is_patches_view",
    "present_ids",
    "range_name",
    "require_field",
    "restrict",
    "select_patches",
    "stored_folders",
    "tag_failed",
    "validate_field_name",
]
