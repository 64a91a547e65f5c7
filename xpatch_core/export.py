"""Export patch datasets: ImageFolder crops and COCO detections.

Two targets, both written by FiftyOne's own exporters:

-   ``"imagefolder"`` (``fo.types.ImageClassificationDirectoryTree``): one
    crop per patch under ``<export_dir>/<class>/``, cut by FiftyOne
    (:func:`fiftyone.utils.patches.extract_patch`, with its ``alpha``
    padding and ``force_square`` options) and written by its
    ``ImageClassificationDirectoryTreeExporter``. Each source image is read
    once for all of its patches.
-   ``"coco"`` (``fo.types.COCODetectionDataset``): the *source images*, each
    once, with the kept patches as annotations (``labels.json`` and
    ``data/``), written by FiftyOne's ``COCODetectionDatasetExporter``.

The patches come from a patches view (only the patches it holds: filters,
selections and sorting carry over, by label id) or from a field of a sample
collection (all of its patches).

Safety: the export folder must be empty unless ``overwrite=True``, which
clears what is inside it without following symlinks. Class folder names are
sanitised (:func:`safe_class_name`) so that no label (``../x``, ``/abs``,
``..``, NUL, very long) can leave the folder, every output path is checked
before it is written, and the folder is walked afterwards to confirm that
every file lies inside it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from xpatch_core.errors import ParameterError, XpatchError
from xpatch_core.runs import Progress, drive

__all__ = ["FORMATS", "ExportReport", "check_export_dir", "export_patches", "iter_export_patches", "safe_class_name"]

#: Export formats: name -> FiftyOne dataset type name.
FORMATS = {"imagefolder": "ImageClassificationDirectoryTree", "coco": "COCODetectionDataset"}

_MAX_NAME = 80
_MAX_EXAMPLES = 100
_CHUNK = 64
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                     *(f"lpt{i}" for i in range(1, 10))}
# attributes never copied into COCO annotations: ``score`` is the COCO score
# already (= confidence) and FiftyOne's COCO writer refuses a second one
_COCO_SKIP_ATTRS = {"score", "area", "iscrowd", "visible"}


@dataclass
class ExportReport:
    """What an export wrote and skipped.

    Attributes:
        format: ``"imagefolder"`` or ``"coco"``
        export_dir: the export folder (real path)
        field: the patches field
        label_attr: the attribute giving the class, or None for the label
        patches: patches to export (kept in the view, or in the field)
        exported: crops (imagefolder) or annotations (coco) written
        images: source images that contributed at least one patch
        files_written: files written (crops; or images and ``labels.json``)
        files: their paths relative to ``export_dir``, sorted
        skipped: patches not exported
        skipped_reasons: reason -> number of patches
        skipped_examples: the first 100 ``{"id", "sample_id", "reason"}``
        classes: class value -> folder name (imagefolder) or category name
            (coco)
        labels_path: the COCO ``labels.json``, or None
        cleared: entries removed from the folder first (``overwrite=True``)
        outside: files found outside ``export_dir`` (always empty)
        elapsed: seconds
    """

    format: str
    export_dir: str
    field: str
    label_attr: str | None = None
    patches: int = 0
    exported: int = 0
    images: int = 0
    files_written: int = 0
    files: list[str] = field(default_factory=list)
    skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[dict[str, str]] = field(default_factory=list)
    classes: dict[str, str] = field(default_factory=dict)
    labels_path: str | None = None
    cleared: int = 0
    outside: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Returns the report as a JSON-serialisable dict."""
        return asdict(self)

    def summary(self, max_files: int = 0) -> str:
        """A few lines for people.

        Args:
            max_files: how many written paths to list

        Returns:
            the text
        """
        what = "crops" if self.format == "imagefolder" else "annotations"
        lines = [
            f"exported {self.exported} of {self.patches} patches as {what} ({self.format}) "
            f"from {self.images} images to {self.export_dir}",
            f"{self.files_written} files written, all inside the export folder"
            if not self.outside else f"{len(self.outside)} files OUTSIDE the export folder: {self.outside[:5]}",
        ]
        if self.classes:
            lines.append(f"{len(self.classes)} classes")
        if self.skipped:
            lines.append(f"{self.skipped} patches skipped: "
                         + "; ".join(f"{n} {r}" for r, n in sorted(self.skipped_reasons.items())))
        else:
            lines.append("no patch skipped")
        if self.cleared:
            lines.append(f"{self.cleared} entries removed from the folder first (overwrite)")
        lines += [f"  {p}" for p in self.files[:max_files]]
        return "\n".join(lines)

    def _skip(self, reason: str, n: int = 1, examples: list[dict[str, str]] | None = None) -> None:
        if n <= 0:
            return
        self.skipped += n
        self.skipped_reasons[reason] = self.skipped_reasons.get(reason, 0) + n
        for ex in examples or []:
            if len(self.skipped_examples) >= _MAX_EXAMPLES:
                break
            self.skipped_examples.append({**ex, "reason": reason})


# -- names and folders ---------------------------------------------------------------


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def safe_class_name(label: Any) -> str:
    """A folder name for a class value that cannot leave its parent folder.

    Letters, digits, spaces and ``- _ . + = , ( ) @ #`` are kept (Unicode
    letters included, NFC-normalised); every other character (``/``, ``\\``,
    ``:``, NUL, control characters...) becomes ``_``; leading and trailing
    dots and spaces are removed, so ``.`` and ``..`` cannot result; names
    are cut to 80 characters. Whenever the name had to change, a short hash
    of the original is appended (``"a/b"`` -> ``"a_b-1f5e0a8c"``), so
    distinct labels stay distinct and a name that needed no change is kept
    as is. An empty result is ``"_empty-<hash>"``.

    Args:
        label: the class value (converted with ``str``)

    Returns:
        a non-empty folder name without separators
    """
    text = label if isinstance(label, str) else str(label)
    norm = unicodedata.normalize("NFC", text)
    chars = [c if (c.isalnum() or c in " -_.+=,()@#") and c.isprintable() else "_" for c in norm]
    name = "".join(chars).strip(" .")
    if name.lower().split(".")[0] in _WINDOWS_RESERVED:
        name = "_" + name
    if len(name) > _MAX_NAME:
        name = name[:_MAX_NAME].rstrip(" .")
    while len(name.encode("utf-8")) > 4 * 50:  # file systems allow 255 bytes; room for the hash
        name = name[:-1].rstrip(" .")
    if not name:
        return f"_empty-{_short_hash(text)}"
    if name != text:
        name = f"{name}-{_short_hash(text)}"
    return name


def _class_folders(values: list[str]) -> dict[str, str]:
    """Maps class values to distinct folder names, also on case-insensitive
    file systems (``"Cat"`` and ``"cat"`` both get their hash)."""
    out = {v: safe_class_name(v) for v in sorted(set(values))}
    groups: dict[str, list[str]] = {}
    for v, name in out.items():
        groups.setdefault(name.casefold(), []).append(v)
    for vs in groups.values():
        if len(vs) > 1:
            for v in vs:
                if out[v] == v:  # names that changed carry their hash already
                    out[v] = f"{v}-{_short_hash(v)}"
    seen: Counter[str] = Counter()
    for v in sorted(out):  # last resort, for a hash collision
        key = out[v].casefold()
        seen[key] += 1
        if seen[key] > 1:  # pragma: no cover
            out[v] = f"{out[v]}-{seen[key]}"
    return out


def _inside(root: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real != root and os.path.commonpath([root, real]) == root


def check_export_dir(export_dir: Any, overwrite: bool = False) -> str:
    """Checks an export folder before any work: a folder path (not the root
    or the home folder), and empty unless ``overwrite``. Writes nothing.

    Args:
        export_dir: the folder
        overwrite (False): whether its contents may be replaced

    Returns:
        its real path

    Raises:
        ParameterError: if the folder cannot be used
    """
    if not isinstance(export_dir, (str, os.PathLike)):
        raise ParameterError(f"export_dir must be a folder path, got {type(export_dir).__name__}")
    raw = os.fspath(export_dir)
    if not raw.strip() or "\x00" in raw:
        raise ParameterError(f"invalid export folder {raw!r}")
    root = os.path.realpath(os.path.abspath(os.path.expanduser(raw)))
    if os.path.exists(root) and not os.path.isdir(root):
        raise ParameterError(f"export folder {root} exists and is not a folder")
    protected = {os.path.realpath(os.sep), os.path.realpath(os.path.expanduser("~"))}
    if root in protected:
        raise ParameterError(f"refusing to export into {root}: choose a dedicated folder")
    entries = list(os.scandir(root)) if os.path.isdir(root) else []
    if entries and not overwrite:
        raise ParameterError(
            f"export folder {root} is not empty ({len(entries)} entries); "
            "choose an empty or new folder, or pass overwrite=True to replace its contents"
        )
    return root


def _prepare_dir(export_dir: Any, overwrite: bool, sources: list[str]) -> tuple[str, int]:
    """Validates the export folder (:func:`check_export_dir`) and empties it
    if allowed.

    Returns:
        ``(real path, entries removed)``
    """
    root = check_export_dir(export_dir, overwrite)
    cleared = 0
    if os.path.isdir(root):
        entries = list(os.scandir(root))
        if entries:
            for src in sources:
                if os.path.commonpath([root, src]) == root:
                    raise ParameterError(f"refusing to clear {root}: it holds source images or files the "
                                         f"dataset points to ({src})")
            for entry in entries:
                # never follow a symlink: remove the link itself
                if entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
                    os.unlink(entry.path)
                else:
                    shutil.rmtree(entry.path)
                cleared += 1
    try:
        os.makedirs(root, exist_ok=True)
        probe = os.path.join(root, f".xpatch-probe-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ParameterError(f"export folder {root} is not writable: {e}") from e
    return root, cleared


def _walk(root: str) -> tuple[list[str], list[str]]:
    """Every file under ``root`` (links not followed): (relative paths, outside)."""
    files, outside = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            if _inside(root, path):
                files.append(os.path.relpath(path, root))
            else:
                outside.append(path)
    return sorted(files), outside


def _guard(exporter: Any, root: str, written: list[str]) -> None:
    """Checks every output path of a FiftyOne exporter's media writer before
    it is written (call after ``setup()``)."""
    media = exporter._media_exporter

    def check(path: str) -> str:
        if not _inside(root, path):
            raise XpatchError(f"refused to write {path}: outside the export folder {root}")
        written.append(path)
        return path

    maker = getattr(media, "_filename_maker", None)
    if maker is not None:
        original_maker = maker.get_output_path

        def get_output_path(*args: Any, **kwargs: Any) -> str:
            return check(original_maker(*args, **kwargs))

        maker.get_output_path = get_output_path
    original = media.export

    def export(media_or_path: Any, outpath: str | None = None) -> Any:
        if outpath is not None:
            check(outpath)
        return original(media_or_path, outpath=outpath)

    media.export = export


# -- parameters ----------------------------------------------------------------------


def _resolve(sample_collection: Any, field_name: str | None) -> tuple[Any, str, set[str] | None]:
    """Returns ``(images view, field, kept label ids or None for all)``."""
    from xpatch_core.runs.collections import select_patches
    from xpatch_core.runs.records import fields_of_runs

    sel = select_patches(sample_collection, field_name,
                         runs_of_field=lambda: fields_of_runs(sample_collection._dataset, "patches"))
    return sel.images, sel.field, sel.kept


def _class_value(det: Any, label_attr: str | None) -> tuple[str | None, str | None]:
    """Returns ``(class text, skip reason)``."""
    if label_attr is None or label_attr == "label":
        v = det.label
        what = "label"
    else:
        v = det.get_attribute_value(label_attr, None)
        what = f"attribute {label_attr!r}"
    if v is None or (isinstance(v, str) and not v.strip()):
        return None, f"no class: the patch has no {what}"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)), None
    if isinstance(v, (int, float, str, np.integer, np.floating)):
        return str(v.item() if isinstance(v, np.generic) else v), None
    return None, f"no class: {what} is a {type(v).__name__}, not a text or number"


def _checked(det: Any, label_attr: str | None) -> tuple[str | None, str | None]:
    """Returns ``(class text, skip reason)`` of a patch whose box must be four
    finite numbers with a positive width and height (labels written by
    another tool may hold anything)."""
    try:
        box = [float(v) for v in det.bounding_box]
    except (TypeError, ValueError):
        box = []
    if len(box) != 4 or not np.isfinite(box).all() or box[2] <= 0 or box[3] <= 0:
        return None, "invalid box: not four finite numbers with a positive width and height"
    return _class_value(det, label_attr)


def _snapped(det: Any, width: int, height: int) -> Any:
    """A copy of a detection whose box FiftyOne's cropper maps to the intended
    whole pixels.

    FiftyOne converts relative coordinates with ``int(W * x)``, which
    truncates ``95.99999`` to 95; the corners are rounded to whole pixels and
    put at pixel centres (``(x0 + 0.5) / W``) so the truncation lands on
    them exactly.
    """
    import fiftyone as fo

    x, y, w, h = det.bounding_box
    x0, x1 = round(x * width), round((x + w) * width)
    y0, y1 = round(y * height), round((y + h) * height)
    return fo.Detection(
        label=det.label,
        bounding_box=[(x0 + 0.5) / width, (y0 + 0.5) / height, (x1 - x0) / width, (y1 - y0) / height],
    )


# -- export ----------------------------------------------------------------------------


def iter_export_patches(
    sample_collection: Any,
    export_dir: str,
    format: str = "imagefolder",
    field: str | None = None,
    label_attr: str | None = None,
    pad: float = 0.0,
    square: bool = False,
    overwrite: bool = False,
    *,
    image_format: str | None = None,
) -> Generator[Any, None, ExportReport]:
    """Exports patches, yielding progress events. See :func:`export_patches`.

    Returns:
        a generator of progress events (``done``, ``total``, ``message``,
        ``fraction``) whose return value is the :class:`ExportReport`
    """
    t0 = time.perf_counter()
    if format not in FORMATS:
        raise ParameterError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if isinstance(pad, bool) or not isinstance(pad, (int, float)) or not (np.isfinite(pad) and 0 <= pad <= 10):
        raise ParameterError(f"pad must be a number in [0, 10] (a fraction of the box size), got {pad!r}")
    if not isinstance(square, bool) or not isinstance(overwrite, bool):
        raise ParameterError("square and overwrite must be True or False")
    if label_attr is not None and (not isinstance(label_attr, str) or not label_attr.strip()):
        raise ParameterError(f"label_attr must be an attribute name or None, got {label_attr!r}")
    if format == "coco" and (pad or square):
        raise ParameterError("pad and square shape ImageFolder crops; a COCO export keeps the patch boxes")
    if image_format is not None and image_format not in (".jpg", ".png", ".jpeg", ".bmp", ".tif", ".webp"):
        raise ParameterError(f"unsupported image_format {image_format!r}")

    images, field_name, kept = _resolve(sample_collection, field)
    if kept is not None:
        images = images.select_labels(ids=list(kept), fields=field_name) if kept else images.limit(0)
    else:
        from fiftyone import ViewField as F

        images = images.match(F(f"{field_name}.detections").length() > 0).select_fields(field_name)
    from xpatch_core.runs.collections import stored_folders

    root, cleared = _prepare_dir(export_dir, overwrite, stored_folders(images))
    report = ExportReport(format=format, export_dir=root, field=field_name, label_attr=label_attr,
                          cleared=cleared)
    written: list[str] = []
    gen = (_export_imagefolder if format == "imagefolder" else _export_coco)(
        images, field_name, kept, root, report, written, label_attr, float(pad), square, image_format
    )
    yield from gen
    report.files, report.outside = _walk(root)
    report.outside += [p for p in written if not _inside(root, p)]
    report.files_written = len(report.files)
    report.elapsed = time.perf_counter() - t0
    if report.outside:
        raise XpatchError(f"files were found outside the export folder {root}: {report.outside[:5]}")
    return report


def _iter_samples(images: Any, field_name: str) -> Generator[tuple[list[Any], Any], None, None]:
    ids = images.values("id")
    for start in range(0, len(ids), _CHUNK):
        chunk = images.select(ids[start : start + _CHUNK], ordered=True)
        yield ids[start : start + _CHUNK], chunk


def _export_imagefolder(images: Any, field_name: str, kept: set[str] | None, root: str, report: ExportReport,
                        written: list[str], label_attr: str | None, pad: float, square: bool,
                        image_format: str | None) -> Generator[Progress, None, None]:
    import cv2
    import fiftyone as fo
    import fiftyone.utils.image as foui
    from fiftyone.utils.data.exporters import ImageClassificationDirectoryTreeExporter
    from fiftyone.utils.patches import extract_patch

    # classes first: every folder name is known (and checked) before writing
    rows = []  # (sample id, filepath, [(det, class text)])
    values: list[str] = []
    total = 0
    for _ids, chunk in _iter_samples(images, field_name):
        for sid, path, dets in zip(*chunk.values(["id", "filepath", f"{field_name}.detections"])):
            dets = [d for d in (dets or []) if kept is None or d.id in kept]
            total += len(dets)
            keep = []
            for d in dets:
                text, reason = _checked(d, label_attr)
                if reason is not None:
                    report._skip(reason, 1, [{"id": d.id, "sample_id": sid}])
                    continue
                values.append(text)
                keep.append((d, text))
            rows.append((sid, path, keep))
    report.patches = total
    folders = _class_folders(values)
    for name in folders.values():
        if not _inside(root, os.path.join(root, name)) or os.path.dirname(os.path.join(root, name)) != root:
            raise XpatchError(f"class folder {name!r} would leave the export folder")  # pragma: no cover
    report.classes = folders

    dtype = fo.types.ImageClassificationDirectoryTree
    exporter_cls = dtype().get_dataset_exporter_cls()
    if not issubclass(exporter_cls, ImageClassificationDirectoryTreeExporter):  # pragma: no cover
        raise XpatchError("unexpected FiftyOne exporter for ImageClassificationDirectoryTree")
    exporter = exporter_cls(export_dir=root, image_format=image_format)
    yield Progress(0, len(rows), 0, f"cropping {total} patches from {len(rows)} images")
    with exporter:
        _guard(exporter, root, written)
        for k, (sid, path, keep) in enumerate(rows):
            if keep:
                try:
                    img = foui.read(path, flag=cv2.IMREAD_COLOR)  # RGB, EXIF orientation applied
                except Exception:  # noqa: BLE001 - one bad image skips its own patches
                    img = None
                if img is None:
                    report._skip("image could not be read", len(keep),
                                 [{"id": d.id, "sample_id": sid} for d, _ in keep])
                else:
                    height, width = img.shape[:2]
                    used = False
                    for d, text in keep:
                        crop = extract_patch(img, _snapped(d, width, height), force_square=square,
                                             alpha=pad or None)
                        if crop.size == 0 or min(crop.shape[:2]) == 0:
                            report._skip("empty crop: the box lies outside the image", 1,
                                         [{"id": d.id, "sample_id": sid}])
                            continue
                        exporter.export_sample(crop, fo.Classification(label=folders[text]))
                        report.exported += 1
                        used = True
                    report.images += int(used)
            if (k + 1) % 16 == 0 or k + 1 == len(rows):
                yield Progress(k + 1, len(rows), 0, f"{report.exported} crops written")


def _export_coco(images: Any, field_name: str, kept: set[str] | None, root: str, report: ExportReport,
                 written: list[str], label_attr: str | None, pad: float, square: bool,
                 image_format: str | None) -> Generator[Progress, None, None]:
    import fiftyone as fo
    import fiftyone.core.metadata as fom
    from fiftyone.utils.coco import COCODetectionDatasetExporter

    dtype = fo.types.COCODetectionDataset
    exporter_cls = dtype().get_dataset_exporter_cls()
    if not issubclass(exporter_cls, COCODetectionDatasetExporter):  # pragma: no cover
        raise XpatchError("unexpected FiftyOne exporter for COCODetectionDataset")
    # the extra attributes to copy: those of the first labels, minus COCO's own
    attrs: set[str] = set()
    for dets in images.limit(20).values(f"{field_name}.detections"):
        for d in dets or []:
            attrs.update(name for name, _ in d.iter_attributes())
    extra = sorted(attrs - _COCO_SKIP_ATTRS)
    labels_path = os.path.join(root, "labels.json")
    exporter = exporter_cls(export_dir=root, data_path=os.path.join(root, "data"), labels_path=labels_path,
                            export_media=True, image_format=image_format, extra_attrs=extra or False)
    ids = images.values("id")
    total = 0
    yield Progress(0, len(ids), 0, f"exporting {len(ids)} images")
    categories: dict[str, str] = {}
    with exporter:
        _guard(exporter, root, written)
        exporter.log_collection(images)
        done = 0
        for chunk_ids, chunk in _iter_samples(images, field_name):
            for sid, path, meta, dets in zip(*chunk.values(["id", "filepath", "metadata", field_name])):
                dets = [d for d in (dets.detections if dets else []) if kept is None or d.id in kept]
                total += len(dets)
                out = []
                for d in dets:
                    text, reason = _checked(d, label_attr)
                    if reason is not None:
                        report._skip(reason, 1, [{"id": d.id, "sample_id": sid}])
                        continue
                    if text != d.label:
                        d = d.copy()
                        d.label = text
                    categories[text] = text
                    out.append(d)
                if not out:
                    continue
                if not os.path.isfile(path):
                    report._skip("image file not found", len(out), [{"id": d.id, "sample_id": sid} for d in out])
                    continue
                try:
                    if meta is None or not meta.width or not meta.height:
                        meta = fom.ImageMetadata.build_for(path)
                except Exception:  # noqa: BLE001 - one bad image skips its own patches
                    report._skip("image could not be read", len(out), [{"id": d.id, "sample_id": sid} for d in out])
                    continue
                exporter.export_sample(path, fo.Detections(detections=out), metadata=meta)
                report.exported += len(out)
                report.images += 1
            done += len(chunk_ids)
            yield Progress(done, len(ids), 0, f"{report.exported} annotations on {report.images} images")
    report.patches = total
    report.classes = dict(sorted(categories.items()))
    report.labels_path = labels_path


def export_patches(
    sample_collection: Any,
    export_dir: str,
    format: str = "imagefolder",
    field: str | None = None,
    label_attr: str | None = None,
    pad: float = 0.0,
    square: bool = False,
    overwrite: bool = False,
    *,
    image_format: str | None = None,
    progress: bool | Callable[[Any], None] = False,
) -> ExportReport:
    """Exports patches as an ImageFolder tree of crops or as a COCO dataset.

    From a patches view, exactly the patches it holds are exported (filters
    and selections carry over, by label id); from any other collection,
    every patch of ``field`` on its samples.

    ``"imagefolder"`` writes one crop per patch to
    ``<export_dir>/<class>/<n>.jpg``; the class is the patch label (the
    predicted class or run label) or the value of ``label_attr`` (e.g.
    ``"rank"``, ``"flagged"``), made safe by :func:`safe_class_name`. The
    crop is the patch box in whole pixels, grown by ``pad`` (FiftyOne's
    ``alpha``: each side moves out by ``pad / 2`` of the box size) and made
    square by extending the shorter side (``square``), both clamped to the
    image.

    ``"coco"`` writes ``labels.json`` and ``data/`` with each source image
    once and its kept patches as annotations (``score`` = the patch score,
    plus the patch attributes); ``label_attr`` sets the category.

    Args:
        sample_collection: a patches view, or an image collection with
            ``field``
        export_dir: the export folder: new, empty, or emptied first with
            ``overwrite=True``
        format: ``"imagefolder"`` or ``"coco"``
        field: the ``fo.Detections`` patches field (default: the patches
            view's field, or the dataset's only patch run)
        label_attr: a detection attribute to use as the class instead of
            the label
        pad: crop padding as a fraction of the box size, in ``[0, 10]``
            (imagefolder)
        square: make crops square (imagefolder)
        overwrite: clear a non-empty export folder first (symlinks inside
            it are removed, never followed)
        image_format: crop file format such as ``".png"`` (default:
            FiftyOne's, ``".jpg"``)
        progress: True for a progress bar, or a callable taking progress
            events

    Returns:
        an :class:`ExportReport`

    Raises:
        ParameterError: for bad parameters, an unknown field or a non-empty
            folder without ``overwrite``, before anything is written
    """
    gen = iter_export_patches(sample_collection, export_dir, format, field, label_attr, pad, square, overwrite,
                              image_format=image_format)
    return drive(gen, progress)
