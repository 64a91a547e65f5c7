"""One source image's patches: crops written, ground truth carried, sample
documents built. Used by :mod:`xpatch_core.patch_dataset` on a thread pool.

A :class:`RowJob` holds what the database gave for one source sample; a
:func:`process_row` call decodes its image once, cuts and writes every new
patch, carries the ground truth into each (:mod:`xpatch_core.gt_carry`) and
returns the new samples as the documents FiftyOne stores, plus what was
skipped and why. Nothing here touches the database.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from bson import ObjectId

from xpatch_core import gt_carry
from xpatch_core.errors import ImageDecodeError, XpatchError
from xpatch_core.patch_files import OutputFolder, SourceImage, crop, decode, encode, mask_png

__all__ = ["PatchJob", "RowJob", "RowResult", "Settings", "process_row"]

_MIME = {"jpg": "image/jpeg", "png": "image/png"}


@dataclass(frozen=True)
class Settings:
    """What every row shares.

    Attributes:
        folder: the output folder
        patches_field: the patches field of the source
        run_key: the xpatch run that wrote it, or None
        label_field: the patch class field of the new dataset
        gt_field: the ground-truth field (same name in the new dataset), or
            None
        gt_kind: ``"detections"``, ``"segmentation"``, ``"classification"``
            or None
        min_area_ratio: SAHI's threshold for carrying a box
        min_coverage: the least share of the patch for a class to win
        background: the label of a patch no class covers enough
        image_format: ``"auto"``, ``"jpg"`` or ``"png"``
        fill: the padding's grey level
        mask_targets: the segmentation field's mask targets, or None
    """

    folder: OutputFolder
    patches_field: str
    run_key: str | None
    label_field: str
    gt_field: str | None
    gt_kind: str | None
    min_area_ratio: float
    min_coverage: float
    background: str
    image_format: str
    fill: int
    mask_targets: dict[Any, str] | None = None


@dataclass
class PatchJob:
    """One patch to make: the detection's id, relative box and attributes."""

    id: str
    box: list[float]
    label: str | None
    attrs: dict[str, Any]


@dataclass
class RowJob:
    """One source sample and its new patches."""

    sample_id: str
    filepath: str
    patches: list[PatchJob]
    gt: Any = None


@dataclass
class RowResult:
    """What one row produced.

    Attributes:
        sample_id: the source sample
        docs: the new samples' documents (without the dataset's own keys)
        skipped: ``[(patch id, reason)]`` for patches not made
        failure: why the whole row failed, or None
        counts: ground-truth counters (``gt_kept``, ``gt_dropped``,
            ``gt_invalid``, ``gt_clipped``, ``padded``)
        files: files written
    """

    sample_id: str
    docs: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failure: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    files: int = 0

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n


def _serialize(mask: np.ndarray) -> bytes:
    import fiftyone.core.utils as fou

    return fou.serialize_numpy_array(mask)


def _pixel_box(rel: list[float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    x, y, w, h = (float(v) for v in rel)
    W, H = size
    return (int(np.floor(x * W + 0.5)), int(np.floor(y * H + 0.5)),
            int(np.floor((x + w) * W + 0.5)), int(np.floor((y + h) * H + 0.5)))


# -- ground truth ------------------------------------------------------------------------


@dataclass
class _Objects:
    """A sample's ground-truth detections, prepared once for all patches."""

    dets: list[Any]
    boxes: np.ndarray  # original boxes, source pixels
    visible: np.ndarray  # clipped to the image
    valid: np.ndarray
    masks: list[np.ndarray | None]


def _prepare_objects(gt: Any, size: tuple[int, int], result: RowResult) -> _Objects | str:
    dets = list(gt.detections or [])
    for d in dets:
        reason = gt_carry.label_problem(d.label)
        if reason is not None:
            return f"ground truth: {reason}"
    W, H = size
    boxes = np.zeros((len(dets), 4))
    for k, d in enumerate(dets):
        bb = d.bounding_box
        if bb is None or len(bb) != 4:
            boxes[k] = np.nan
            continue
        x, y, w, h = (float(v) if v is not None else np.nan for v in bb)
        boxes[k] = (x * W, y * H, (x + w) * W, (y + h) * H)
    visible, valid, clipped = gt_carry.clip_to_image(boxes, size)
    result.add("gt_invalid", int((~valid).sum()))
    result.add("gt_clipped", int(clipped.sum()))
    masks = []
    for d in dets:
        try:
            masks.append(d.get_mask())
        except Exception:  # noqa: BLE001 - an unreadable mask_path: the box is used
            masks.append(None)
            result.add("gt_mask_unreadable")
    return _Objects(dets, boxes, visible, valid, masks)


def _carry_detections(objs: _Objects, box: tuple[int, int, int, int], s: Settings,
                      result: RowResult) -> tuple[dict[str, Any], str, float]:
    """Returns ``(Detections document, class, coverage)`` for one patch."""
    pw, ph = box[2] - box[0], box[3] - box[1]
    index = np.flatnonzero(objs.valid)
    out = []
    labels, boxes, masks = [], [], []
    for c in gt_carry.carry_boxes(objs.visible[index], box, 0.0):
        k = int(index[c.index])
        det = objs.dets[k]
        mask = None
        if objs.masks[k] is not None:
            mask = gt_carry.crop_instance_mask(objs.masks[k], tuple(objs.boxes[k]), c.source_box)
        labels.append(det.label)
        boxes.append(c.box)
        masks.append(mask)
        if c.kept_ratio < s.min_area_ratio:  # whole-pixel areas, as SAHI decides
            result.add("gt_dropped")
            continue
        son = dict(det.to_mongo())
        son.pop("mask_path", None)
        x0, y0, x1, y1 = c.box
        son.update(_id=ObjectId(), bounding_box=[x0 / pw, y0 / ph, (x1 - x0) / pw, (y1 - y0) / ph],
                   area_ratio=c.area_ratio, source_id=str(det.id))
        if mask is not None:
            son["mask"] = _serialize(mask)
        else:
            son.pop("mask", None)
        out.append(son)
        result.add("gt_kept")
    label, share = gt_carry.classify_patch(gt_carry.class_coverage(labels, boxes, masks, (pw, ph)),
                                           s.min_coverage, s.background)
    return {"_cls": "Detections", "detections": out}, label, share


def _carry_segmentation(seg_mask: np.ndarray, rj: RowJob, pid: str, box: tuple[int, int, int, int],
                        size: tuple[int, int], s: Settings, to_file: bool,
                        result: RowResult) -> tuple[dict[str, Any], str, float]:
    cut = gt_carry.crop_segmentation(seg_mask, box, size)
    doc: dict[str, Any] = {"_id": ObjectId(), "_cls": "Segmentation", "tags": []}
    if to_file:
        doc["mask_path"] = s.folder.write(("masks", s.gt_field, rj.sample_id, f"{pid}.png"), mask_png(cut))
        result.files += 1
    else:
        doc["mask"] = _serialize(cut)
    label, share = gt_carry.segmentation_class(cut, s.mask_targets, s.min_coverage, s.background)
    return doc, label, share


# -- one row -----------------------------------------------------------------------------


def _sample_doc(rj: RowJob, pj: PatchJob, box: tuple[int, int, int, int], path: str, nbytes: int,
                src: SourceImage, cut: Any, s: Settings) -> dict[str, Any]:
    pw, ph = box[2] - box[0], box[3] - box[1]
    doc: dict[str, Any] = {
        "filepath": path, "tags": [],
        "metadata": {"_cls": "ImageMetadata", "size_bytes": nbytes, "mime_type": _MIME[src.format],
                     "width": pw, "height": ph, "num_channels": len(cut.image.getbands())},
        "_media_type": "image", "_rand": random.random() * 0.001 + 0.999,
        "source_sample_id": rj.sample_id, "source_filepath": rj.filepath, "source_box": list(box),
        "patch_id": pj.id, "patches_field": s.patches_field, "run_key": s.run_key,
        "padded": cut.padded, "valid_box": list(cut.valid_box),
    }
    for name in ("score", "rank", "scale", "aspect_ratio"):
        if pj.attrs.get(name) is not None:
            doc[name] = pj.attrs[name]
    return {k: v for k, v in doc.items() if v is not None}


def _row_problem(rj: RowJob, s: Settings) -> str | None:
    if s.gt_kind is None:
        return None
    if rj.gt is None:
        return f"no ground truth in {s.gt_field!r} on this sample (None); its patches were not made"
    if s.gt_kind == "classification":
        reason = gt_carry.label_problem(rj.gt.label)
        return None if reason is None else f"ground truth: {reason}"
    return None


def process_row(rj: RowJob, s: Settings) -> RowResult:
    """Makes one source sample's new patches.

    A problem with the sample (its image, its ground truth) fails the row
    with a reason; a problem with one patch skips that patch with a reason.

    Args:
        rj: the source sample and its new patches
        s: the shared settings

    Returns:
        a :class:`RowResult`
    """
    result = RowResult(rj.sample_id)
    result.failure = _row_problem(rj, s)
    if result.failure is not None:
        return result
    try:
        src = decode(rj.filepath, s.image_format)
    except ImageDecodeError as e:
        result.failure = e.reason
        return result
    objs: Any = None
    seg_mask = None
    if s.gt_kind == "detections":
        objs = _prepare_objects(rj.gt, src.size, result)
        if isinstance(objs, str):
            result.failure = objs
            return result
    elif s.gt_kind == "segmentation":
        try:
            seg_mask = rj.gt.get_mask()
        except Exception as e:  # noqa: BLE001 - an unreadable mask fails its sample
            seg_mask, result.failure = None, f"segmentation mask unreadable: {e}"
        if seg_mask is None:
            result.failure = result.failure or f"no segmentation mask in {s.gt_field!r}"
            return result
    for pj in rj.patches:
        try:
            _one_patch(rj, pj, src, objs, seg_mask, s, result)
        except XpatchError as e:
            result.skipped.append((pj.id, str(e)))
        except OSError as e:
            result.skipped.append((pj.id, f"could not write the crop: {e}"))
    return result


def _one_patch(rj: RowJob, pj: PatchJob, src: SourceImage, objs: Any, seg_mask: Any, s: Settings,
               result: RowResult) -> None:
    box = _pixel_box(pj.box, src.size)
    if s.gt_kind is None:
        text = pj.label if pj.label not in (None, "") else "patch"
        reason = gt_carry.label_problem(text)
        if reason is not None:
            raise XpatchError(f"patch {reason}")
    cut = crop(src, box, s.fill)
    data = encode(cut.image, src.save)
    path = s.folder.write(("images", rj.sample_id, f"{pj.id}.{src.format}"), data)
    result.files += 1
    result.add("padded", int(cut.padded))
    doc = _sample_doc(rj, pj, box, path, len(data), src, cut, s)
    cls: dict[str, Any] = {"_id": ObjectId(), "_cls": "Classification", "tags": []}
    if s.gt_kind == "detections":
        doc[s.gt_field], cls["label"], cls["coverage"] = _carry_detections(objs, box, s, result)
    elif s.gt_kind == "segmentation":
        to_file = getattr(rj.gt, "mask_path", None) is not None
        doc[s.gt_field], cls["label"], cls["coverage"] = _carry_segmentation(
            seg_mask, rj, pj.id, box, src.size, s, to_file, result)
    elif s.gt_kind == "classification":
        cls["label"] = rj.gt.label
        doc[s.gt_field] = {**dict(rj.gt.to_mongo()), "_id": ObjectId()}
    else:
        cls["label"] = text
    doc[s.label_field] = cls
    result.docs.append(doc)
