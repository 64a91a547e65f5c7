"""Patch runs: saliency-weighted boxes from a heatmap field into ``fo.Detections``.

Rules (besides the lifecycle's, :mod:`xpatch_core.runs.lifecycle`):

-   Only samples with a heatmap count; a sample's boxes depend only on
    ``(seed, sample id)``, so results do not depend on order, chunking or
    the number of workers.
-   A parameter is refused up front only when it is wrong for every image
    (checked on an image that fits every box shape, and against the sizes
    of all images); whatever depends on one image's size (a box shape that
    does not fit it) is that sample's outcome: with ``border="drop"`` the
    shapes that do not fit are left out for that image, and an image that
    fits none fails with the reason.
-   Image sizes come from the heatmap's ``width``/``height``, else from the
    sample's metadata, computed where missing; a stored size that is not two
    whole positive numbers within ``XPATCH_MAX_PIXELS`` (attributes written
    by another tool may hold anything) is not a size.
-   Detections are written in their stored form (:func:`detection_son`);
    the first write declares the field and its attributes so the App can
    filter on them.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from xpatch_core import settings
from xpatch_core.defaults import PATCHES
from xpatch_core.errors import ParameterError, XpatchError
from xpatch_core.heatmaps import HeatmapError, read_heatmap
from xpatch_core.runs import collections as colls
from xpatch_core.runs.lifecycle import Outcome, RunKind, execute
from xpatch_core.runs.progress import Progress, RunSummary, drive
from xpatch_core.runs.records import RunConfig

_SAMPLER_KEYS = ("scales", "aspect_ratios", "temperature", "epsilon", "replace", "max_iou", "min_distance",
                 "score", "mode", "border")
_READ_CHUNK = 256


def _size_of(w: Any, h: Any) -> tuple[int, int] | None:
    """A stored image size, or None when ``(w, h)`` is not one."""
    for v in (w, h):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            return None
        if not (math.isfinite(v) and v >= 1):
            return None
    w, h = int(w), int(h)
    return (w, h) if w * h <= settings.max_pixels() else None


@dataclass(kw_only=True)
class PatchesConfig(RunConfig):
    """The config of a patch run (every sampling parameter).

    Attributes:
        heatmap_field: the ``fo.Heatmap`` field sampled from
        n: patches per image
        size: pixels (int) or a fraction of the short side (float)
        seed: the seed
        label: ``"predicted"`` or a fixed text
        scales, aspect_ratios, temperature, epsilon, replace, max_iou,
            min_distance, score, mode, border: see
            :func:`xpatch_core.sampler.sample_patches`
    """

    kind: ClassVar[str] = "patches"
    compared: ClassVar[tuple[str, ...]] = ("heatmap_field", "n", "size", "seed", "label", *_SAMPLER_KEYS)

    heatmap_field: str
    n: int
    size: int | float
    seed: int
    label: str
    scales: list[float]
    aspect_ratios: list[float]
    temperature: float
    epsilon: float
    replace: bool
    max_iou: float | None
    min_distance: float | None
    score: str
    mode: str
    border: str


def detection_son(**fields: Any) -> dict[str, Any]:
    """Returns a ``fo.Detection`` as the BSON document FiftyOne stores.

    Building mongoengine documents costs about 0.25 ms per detection, more
    than sampling the boxes; ``set_values`` accepts the stored form directly
    (``tests/test_plugin.py`` checks it equals the document's own
    ``to_mongo()``).

    Args:
        **fields: the detection's fields and attributes

    Returns:
        a dict
    """
    from bson import ObjectId

    return {"_id": ObjectId(), "_cls": "Detection", "attributes": {}, "tags": [], **fields}


class PatchesRun(RunKind):
    """A patch run; see :func:`run_patches` for the parameters."""

    kind = "patches"
    min_chunk = _READ_CHUNK
    cheap_setup = True

    def __init__(self, heatmap_field: str = PATCHES["heatmap_field"], field: str = PATCHES["field"],
                 n: int = PATCHES["n"], size: int | float = PATCHES["size"], *, seed: int = PATCHES["seed"],
                 label: str = PATCHES["label"], common: dict[str, Any] | None = None, **sampling: Any) -> None:
        super().__init__(field, **(common or {}))
        unknown = set(sampling) - set(_SAMPLER_KEYS)
        if unknown:
            raise TypeError(f"unexpected arguments: {', '.join(sorted(unknown))}")
        self.heatmap_field, self.n, self.size, self.seed, self.label = heatmap_field, n, size, seed, label
        self.sampling = {k: sampling.get(k, PATCHES[k]) for k in _SAMPLER_KEYS}
        self.sampling["scales"] = tuple(self.sampling["scales"])
        self.sampling["aspect_ratios"] = tuple(self.sampling["aspect_ratios"])
        self.declared = False

    # -- validation -----------------------------------------------------------------
    def validate(self, view: Any) -> None:
        """Checks the fields and every sampling parameter before any work."""
        import fiftyone as fo

        dataset = view._dataset
        colls.require_field(dataset, self.heatmap_field, fo.Heatmap, "heatmap field")
        if self.field == self.heatmap_field:
            raise ParameterError("the patches field must differ from the heatmap field")
        colls.validate_field_name(view, self.field, "patches", run_key=self.run_key)
        self._check_scalars()
        self._check_sizes(view)
        self._probe()

    def _check_scalars(self) -> None:
        n = self.n
        if isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > PATCHES["max_n"]:
            raise ParameterError(f"n must be at most {PATCHES['max_n']:,} patches per image, got {n:,}")
        if not isinstance(self.label, str) or not self.label.strip():
            raise ParameterError("label must be 'predicted' or a non-empty text")
        for name in ("temperature", "epsilon"):
            v = self.sampling[name]
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
                raise ParameterError(f"{name} must be a finite number, got {v!r}")
        seed = self.seed
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")
        size = self.size
        if isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)) or not size > 0:
            raise ParameterError(f"size must be > 0 pixels (int) or a fraction (float), got {size!r}")
        if isinstance(size, (float, np.floating)) and not (math.isfinite(size) and 0 < size <= 1):
            raise ParameterError(f"a fractional size must be in (0, 1], got {size!r}")

    def _probe(self) -> None:
        """Runs the sampler once, borders aside: a parameter that fails here
        fails for every image."""
        from xpatch_core.sampler import sample_patches

        sampling = dict(self.sampling)
        if sampling["border"] in ("error", "drop"):  # sizes are checked per image and by _check_sizes
            sampling["border"] = "pad"
        try:
            sample_patches(np.ones((4, 4)), (64, 64), self.n, self.size, seed=int(self.seed), key="probe",
                           **sampling)
        except (XpatchError, ValueError, TypeError) as e:
            raise ParameterError(str(e)) from e

    def _check_sizes(self, view: Any) -> None:
        """Refuses box shapes that fit no image at all (with a ``border``
        that cannot place them); one image too small is that image's matter."""
        from xpatch_core.sampler import box_shapes

        if self.sampling["border"] not in ("error", "drop"):
            return
        # read from the dataset: the view may hide the heatmap field
        ws, hs, mws, mhs = view._dataset.select(view.values("id")).values(
            [f"{self.heatmap_field}.width", f"{self.heatmap_field}.height", "metadata.width", "metadata.height"])
        sizes = {s for s in (_size_of(w, h) or _size_of(mw, mh) for w, h, mw, mh in zip(ws, hs, mws, mhs)) if s}
        try:
            fits = any(((shapes[:, 0] <= w) & (shapes[:, 1] <= h)).any() for w, h in sizes
                       for shapes in [box_shapes((w, h), self.size, self.sampling["scales"],
                                                 self.sampling["aspect_ratios"])])
        except (XpatchError, ValueError) as e:
            raise ParameterError(str(e)) from e
        if sizes and not fits:
            big = max(sizes, key=lambda s: min(s))
            raise ParameterError(f"patch size {self.size} (scales {', '.join(map(str, self.sampling['scales']))}) "
                                 f"is larger than every image (largest short side: {min(big)} px)")

    # -- work -----------------------------------------------------------------------
    def request(self) -> dict[str, Any]:
        """The arguments as given."""
        return {"heatmap_field": self.heatmap_field, "n": self.n, "size": self.size, "seed": self.seed,
                "label": self.label, **{k: list(v) if isinstance(v, tuple) else v for k, v in self.sampling.items()}}

    def todo(self, view: Any) -> tuple[list[str], int]:
        """Samples with a heatmap (in the dataset) and no patches yet."""
        dataset = view._dataset
        ids = view.values("id")
        has_map = colls.done_ids(dataset, ids, self.heatmap_field)
        ids = [i for i in ids if i in has_map]
        done = set() if self.overwrite else colls.done_ids(dataset, ids, self.field)
        todo = [i for i in ids if i not in done]
        return todo, len(ids) - len(todo)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> PatchesRun:
        """Builds the run from :func:`iter_run_patches`' keyword arguments."""
        common = {k: kwargs.pop(k) for k in _COMMON if k in kwargs}
        return cls(**kwargs, common=common)

    @classmethod
    def speed_key(cls, request: dict[str, Any]) -> str:
        """Patch runs with one count, mode and overlap rule run at about one speed."""
        return f"patches|{request.get('n')}|{request.get('mode')}|{request.get('max_iou')}"

    def probe_ids(self, dataset: Any, todo: list[str], count: int) -> list[str]:
        """Samples whose heatmap knows its image size (timing one computes
        no metadata)."""
        hf = self.heatmap_field
        sized = dataset.select(todo[: 8 * count]).exists(f"{hf}.width").exists(f"{hf}.height")
        return sized.limit(count).values("id")

    def setup(self, view: Any, todo: list[str]) -> PatchesConfig:
        """Nothing heavy: the config."""
        req = self.request()
        return PatchesConfig(field=self.field, request=req, **{**req, "seed": int(self.seed)})

    def outcomes(self, dataset: Any, ids: list[str], summary: RunSummary) -> Iterator[Outcome]:
        """Reads heatmaps a chunk at a time and samples each image."""
        for chunk_ids in colls.chunks(ids, _READ_CHUNK):
            rows = self._read(dataset, list(chunk_ids))
            for sid in chunk_ids:
                row = rows.get(sid)
                yield Outcome(sid, vanished=True) if row is None else self._sample(sid, *row)

    def _read(self, dataset: Any, ids: list[str]) -> dict[str, tuple]:
        """Field values (not documents: building documents costs more than
        sampling), with missing image sizes computed from the files."""
        hf = self.heatmap_field
        paths = [f"{hf}.map", f"{hf}.map_path", f"{hf}.range", f"{hf}.width", f"{hf}.height", f"{hf}.predicted",
                 "metadata.width", "metadata.height"]
        cols = dataset.select(ids).values(["id", *paths])
        rows = {c[0]: list(c[1:]) for c in zip(*cols)}
        sized = {sid: _size_of(r[3], r[4]) or _size_of(r[6], r[7]) for sid, r in rows.items()}
        unsized = [i for i, s in sized.items() if s is None]
        if colls.ensure_metadata(dataset, unsized):
            for sid, mw, mh in zip(*dataset.select(unsized).values(["id", "metadata.width", "metadata.height"])):
                sized[sid] = _size_of(mw, mh)
        return {sid: (r[0], r[1], r[2], *(sized[sid] or (None, None)), r[5]) for sid, r in rows.items()}

    def _sample(self, sid: str, m: Any, map_path: Any, rng: Any, w: Any, h: Any, predicted: Any) -> Outcome:
        import fiftyone as fo

        from xpatch_core.sampler import sample_patches

        try:
            heat = read_heatmap(fo.Heatmap(map=m, map_path=map_path, range=rng))
        except HeatmapError as e:
            return Outcome(sid, reason=f"heatmap missing or unreadable: {e.reason}")
        if heat is None:
            return Outcome(sid, reason="heatmap missing or unreadable")
        if not w or not h:
            return Outcome(sid, reason="image size unknown (its metadata could not be computed)")
        try:
            ps = sample_patches(heat, (int(w), int(h)), self.n, self.size, seed=int(self.seed), key=sid,
                                **self.sampling)
        except (XpatchError, ValueError) as e:
            return Outcome(sid, reason=str(e))
        text = (predicted or "patch") if self.label == "predicted" else self.label
        dets = self._detections(ps, text)
        return Outcome(sid, {"_cls": "Detections", "detections": dets}, patches=len(dets),
                       degenerate=bool(ps.degenerate))

    def _detections(self, ps: Any, text: str) -> list[dict[str, Any]]:
        order = np.argsort(-ps.scores, kind="stable")
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(1, len(order) + 1)
        scales, aspects = self.sampling["scales"], self.sampling["aspect_ratios"]
        dets = []
        for k in range(len(ps)):
            x0, y0, x1, y1 = (int(v) for v in ps.boxes[k])
            dets.append(detection_son(
                label=text, bounding_box=[float(v) for v in ps.rel_boxes[k]], confidence=float(ps.scores[k]),
                score=float(ps.scores[k]), prob=float(ps.probs[k]), rank=int(rank[k]),
                scale=float(scales[int(ps.scale_idx[k])]), aspect_ratio=float(aspects[int(ps.aspect_idx[k])]),
                width_px=x1 - x0, height_px=y1 - y0, flagged=bool(ps.flags[k]), degenerate=bool(ps.degenerate),
                seed=int(self.seed),
            ))
        return dets

    def write(self, dataset: Any, values: dict[str, Any]) -> None:
        """Writes detections in their stored form; the first one as a real
        document, which declares the field and its attributes."""

        items = list(values.items())
        if not self.declared:
            self.first_value = first_id, first = items.pop(0)
            self._declare(dataset, first_id, first)
            self.declared = True
        if items:
            dataset.set_values(self.field, dict(items), key_field="id", validate=False, expand_schema=False)

    def _declare(self, dataset: Any, sample_id: str, value: dict[str, Any]) -> None:
        import fiftyone as fo

        doc = fo.Detections(detections=[fo.Detection.from_dict(d) for d in value["detections"]])
        dataset.set_values(self.field, {sample_id: doc}, key_field="id", validate=False, dynamic=True)

    def declare_again(self, dataset: Any) -> None:
        """Declares the detections field again if a concurrent run's schema
        change lost it (the first value this run wrote, rewritten)."""
        if self.declared:
            colls.keep_declared(dataset, self.field, lambda: self._declare(dataset, *self.first_value))

    def tally(self, values: list[Any]) -> dict[str, int]:
        """Detections and degenerate maps among stored values."""
        dets = [v.detections for v in values]
        return {"patches": sum(len(d) for d in dets),
                "degenerate": sum(1 for d in dets if d and getattr(d[0], "degenerate", False))}

    def start_message(self, count: int) -> str:
        """The first progress line."""
        return f"sampling patches on {count} samples"

    def progress_message(self, summary: RunSummary) -> str:
        """The progress line after each chunk."""
        return f"{super().progress_message(summary)}, {summary.patches:,} patches"


_COMMON = ("overwrite", "run_key", "sample_ids", "id_range")


def check_patch_parameters(n: int = PATCHES["n"], size: int | float = PATCHES["size"], *,
                           seed: int = PATCHES["seed"], label: str = PATCHES["label"], **sampling: Any) -> None:
    """Checks the sampling parameters that do not depend on the images, with
    no dataset: a command that computes heatmaps first calls it before any
    work. (Sizes against the images are checked by the run itself.)

    Args:
        n: patches per image
        size: pixels (int) or a fraction of the short side (float)
        seed: the seed
        label: ``"predicted"`` or a fixed text
        **sampling: the sampling parameters of :func:`run_patches`

    Raises:
        ParameterError: for a parameter wrong for every image
    """
    run = PatchesRun(PATCHES["heatmap_field"], PATCHES["field"], n, size, seed=seed, label=label, **sampling)
    run._check_scalars()
    run._probe()


def iter_run_patches(sample_collection: Any, heatmap_field: str = PATCHES["heatmap_field"],
                     field: str = PATCHES["field"], n: int = PATCHES["n"], size: int | float = PATCHES["size"], *,
                     shard: Any = None, **kwargs: Any) -> Generator[Progress, None, RunSummary]:
    """Samples saliency-weighted patches into a ``fo.Detections`` field,
    yielding progress. See :func:`run_patches` for the arguments, and
    :func:`xpatch_core.runs.iter_run_saliency` for ``id_range`` and
    ``shard``.

    Returns:
        a generator of :class:`Progress` whose return value is the
        :class:`RunSummary`
    """
    run = PatchesRun.from_kwargs(heatmap_field=heatmap_field, field=field, n=n, size=size, **kwargs)
    return execute(run, sample_collection, shard)


def run_patches(sample_collection: Any, heatmap_field: str = PATCHES["heatmap_field"],
                field: str = PATCHES["field"], n: int = PATCHES["n"], size: int | float = PATCHES["size"], *,
                progress: Any = False, **kwargs: Any) -> RunSummary:
    """Samples saliency-weighted patch boxes into a ``fo.Detections`` field.

    Each sample's boxes depend only on ``(seed, sample id)``, so results do
    not depend on order, batching or the number of workers. Every detection
    carries ``confidence`` (= ``score``), ``prob``, ``rank``, ``scale``,
    ``aspect_ratio``, pixel size, ``flagged``, ``degenerate`` and ``seed``,
    for sorting and filtering in the App.

    Args:
        sample_collection: a FiftyOne image collection
        heatmap_field: the ``fo.Heatmap`` field to sample from
        field: the ``fo.Detections`` field to write (the run key by default)
        n: patches per image
        size: patch size in pixels (int) or as a fraction of the short side
            (float)
        progress: True for a progress bar, or a callable
        **kwargs: the sampling parameters ``scales``, ``aspect_ratios``,
            ``temperature``, ``epsilon``, ``replace``, ``max_iou``,
            ``min_distance``, ``score``, ``mode``, ``border`` (defaults in
            :data:`xpatch_core.defaults.PATCHES`, chosen by
            ``benchmarks/bench_quality.py``; see
            :func:`xpatch_core.sampler.sample_patches`), ``seed``, ``label``
            (``"predicted"`` or a fixed text), ``overwrite``, ``run_key``,
            ``sample_ids``, ``id_range``

    Returns:
        a :class:`RunSummary`
    """
    return drive(iter_run_patches(sample_collection, heatmap_field, field, n, size, **kwargs), progress)


__all__ = ["PatchesConfig", "PatchesRun", "check_patch_parameters", "detection_son", "iter_run_patches", "run_patches"]

