"""Saliency runs: heatmaps from a Keras CNN into a ``fo.Heatmap`` field.

Rules (besides the lifecycle's, :mod:`xpatch_core.runs.lifecycle`):

-   The model is loaded only when there is work; parameters are checked
    before it (a method, a batch size, a target, the heatmap folder). A
    rerun whose samples left all failed before and whose files still
    cannot be decoded loads no model (:meth:`SaliencyRun.recheck`).
-   One decoding stream covers the whole run, so decoding keeps overlapping
    inference across write chunks; file paths are read a chunk at a time,
    and a sample deleted meanwhile is counted as vanished, not failed.
-   A map is stored in the database as a ``fo.Heatmap`` with ``range`` set,
    written in its stored form (:func:`heatmap_son`: FiftyOne's own array
    encoding at a cheaper zlib level, read back by FiftyOne unchanged),
    or with ``map_dir`` as an 8-bit PNG written before the database update
    (see :mod:`xpatch_core.runs.heatmap_files`); a file that cannot be
    written fails its sample. A run with work to do never writes into a
    heatmap folder that another dataset's heatmaps point into (a clone has
    the same sample ids, so the same file names).
-   The precision is compared between runs of a field: a run resumes one
    that asked for the same precision (``auto`` resumes on any hardware) or
    that used the precision this one uses (``float32`` resumes a run whose
    ``auto`` gave float32); the precision actually used is recorded.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from xpatch_core import settings
from xpatch_core.defaults import CHOICES, HEATMAP, SALIENCY
from xpatch_core.errors import ParameterError
from xpatch_core.hardware import ENGINE_SOURCE_KEYS
from xpatch_core.runs import collections as colls
from xpatch_core.runs import heatmap_files, records
from xpatch_core.runs.lifecycle import Outcome, RunKind, execute
from xpatch_core.runs.progress import Progress, RunSummary, drive
from xpatch_core.runs.records import RunConfig


@dataclass(kw_only=True)
class SaliencyConfig(RunConfig):
    """The config of a saliency run.

    Attributes:
        model_source: how the model was loaded (kind, name, weights, layer,
            input size, precision used, ...)
        method: the saliency method
        layer: the layer(s) the maps come from (``"a*b"`` for a fusion)
        target: the class to explain (gradient methods), or None
        target_field: the ``fo.Classification`` field giving each sample's
            class, or None
        batch_size: images per model call
        input_size: the network's input ``(height, width)``
        precision: the precision requested (``auto`` resolves per machine)
        precision_used: the precision used
        engine_used: what ran the forward pass, ``"tensorflow"``,
            ``"openvino"``, or ``"openvino+tensorflow"`` (high-resolution
            maps: their second pass runs on TensorFlow)
        precision_reason: why that precision (for people)
        engine_reason: why that engine (for people; says why OpenVINO
            could not run a model it fell back from)
        map_dir: the folder of the PNG maps, or None
        storage: ``"database"`` or ``"png"``
    """

    kind: ClassVar[str] = "saliency"
    compared: ClassVar[tuple[str, ...]] = ("model_source", "method", "layer", "target", "target_field",
                                          "input_size", "precision", "map_dir", "map_resolution")

    model_source: dict[str, Any]
    method: str
    layer: str
    target: Any = None
    target_field: str | None = None
    batch_size: int = SALIENCY["batch_size"]
    input_size: list[int]
    precision: str = SALIENCY["precision"]
    precision_used: str = SALIENCY["precision"]
    engine_used: str = "tensorflow"
    precision_reason: str = ""
    engine_reason: str = ""
    map_dir: str | None = None
    storage: str = "database"
    map_resolution: str = SALIENCY["map_resolution"]
    display_long_side: int = HEATMAP["long_side"]

    def differences(self, stored: dict[str, Any]) -> list[str]:
        """Names the compared parameters that differ from a stored config;
        the precision differs only if both the precision asked for and the
        one used differ (``float32`` resumes a run whose ``auto`` gave
        float32, and ``auto`` one run in the precision it gives here). The
        last part's request is the one stored: after a ``float32`` part,
        ``auto`` resumes only where it gives float32.

        Args:
            stored: a stored config

        Returns:
            a list of parameter names
        """
        diff = super().differences(stored)
        if "precision" in diff and stored.get("precision_used") == self.precision_used:
            diff.remove("precision")
        if "target" in diff and canonical_target(stored.get("target")) == canonical_target(self.target):
            diff.remove("target")  # "3" (an older record, from the CLI) is the index 3
        return diff


#: Model-source entries that describe this machine, not the model: a run resumed on
#: other hardware (``precision="auto"``) keeps its parameters.
_MACHINE_KEYS = ("wnids", "precision", "precision_requested", "precision_reason", *ENGINE_SOURCE_KEYS)


def _engine_used(sm: Any, map_resolution: str) -> str:
    """What runs a run's forward passes (the high-resolution pass runs on
    TensorFlow: OpenVINO's model is compiled for the standard input size)."""
    engine = str(sm.source.get("engine", "tensorflow"))
    return f"{engine}+tensorflow" if map_resolution == "high" and engine != "tensorflow" else engine


def heatmap_son(map: np.ndarray | None = None, range: Sequence[float] = (0, 255), *,
                map_path: str | None = None, **attrs: Any) -> dict[str, Any]:
    """Returns a ``fo.Heatmap`` as the BSON document FiftyOne stores.

    The array is encoded as FiftyOne encodes it (``np.save``, then zlib),
    at zlib level ``HEATMAP["zlib_level"]`` instead of zlib's default 6:
    measured on 512 px display maps, 2.2x less compression time for about
    6% more bytes (FiftyOne's reader does not depend on the level).
    ``tests/test_plugin.py`` checks the result equals the document's own
    ``to_mongo()`` and reads back to the same array.

    Args:
        map (None): a 2-D array
        range ((0, 255)): the map's value range
        map_path (None): a map file instead of an array
        **attrs: the heatmap's attributes

    Returns:
        a dict
    """
    import io
    import zlib

    from bson import Binary, ObjectId

    son: dict[str, Any] = {"_id": ObjectId(), "_cls": "Heatmap", "tags": []}
    if map is not None:
        with io.BytesIO() as f:
            np.save(f, np.asarray(map), allow_pickle=False)
            son["map"] = Binary(zlib.compress(f.getvalue(), HEATMAP["zlib_level"]))
    if map_path is not None:
        son["map_path"] = map_path
    son["range"] = [float(v) for v in range]
    son.update(attrs)
    return son


def _size_text(input_size: Any) -> Any:
    """An input size as a request stores it, ``[h, w]`` (as given if it is
    not one: :meth:`SaliencyRun.validate` refuses it)."""
    from xpatch_core.errors import ParameterError
    from xpatch_core.models import normalize_input_size

    try:
        return list(normalize_input_size(input_size))
    except ParameterError:
        return repr(input_size)


def _describe_model(model: Any) -> Any:
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    return f"<{type(model).__name__} {getattr(model, 'name', '')} at {id(model):x}>"


def canonical_target(target: Any) -> Any:
    """A target as runs store and compare it: a class index given as text
    (``"3"``, as the command line and the App's form give it) or as a NumPy
    number is the int it names (:meth:`~xpatch_core.models.SaliencyModel.class_index`
    reads it so), a sequence a list; anything else as given.

    Args:
        target: a run's ``target``

    Returns:
        the target
    """
    if isinstance(target, np.ndarray):
        target = target.tolist()
    if isinstance(target, (list, tuple)):
        return [canonical_target(t) for t in target]
    if isinstance(target, np.integer):
        return int(target)
    if isinstance(target, str) and target.strip().isdigit():
        return int(target)
    return target


def model_differs(model: Any, source: dict[str, Any]) -> bool:
    """Whether a model as given (a name, a path, a Keras model, a loaded
    :class:`~xpatch_core.models.SaliencyModel`) is certainly not the one a
    stored run's ``model_source`` describes, known without loading it: a
    model of another kind, or another ``keras.applications`` model.

    Args:
        model: the model argument of a run
        source: the stored run's ``model_source``

    Returns:
        True or False (False when it cannot be told without the model, or
        when the model cannot be loaded at all)
    """
    from xpatch_core.applications import application_constructor, check_model_name
    from xpatch_core.errors import ModelError
    from xpatch_core.models import SaliencyModel

    try:
        check_model_name(model)
    except ModelError:
        return False  # an unknown name or a missing file: loading it says so
    if isinstance(model, SaliencyModel):  # loaded already: its own source says what it is
        kind, name = model.source.get("kind"), model.source.get("model")
    else:
        name = application_constructor(model) if isinstance(model, str) else None
        kind = "application" if name else "saved" if isinstance(model, str) else "in-memory"
    return bool((kind is not None and source.get("kind") not in (None, kind))
                or (kind == "application" and name is not None and source.get("model") not in (None, name)))


class SaliencyRun(RunKind):
    """A saliency run; see :func:`run_saliency` for the parameters."""

    kind = "saliency"
    setup_stage = "load_model"

    def __init__(self, field: str = SALIENCY["field"], model: Any = SALIENCY["model"],
                 method: str = SALIENCY["method"], *, target: Any = None, target_field: str | None = None,
                 weights: str | None = None, layer: str | None = None, fuse_layer: str | None = SALIENCY["fuse_layer"],
                 batch_size: int = SALIENCY["batch_size"], map_dir: str | None = None,
                 class_names: Sequence[str] | None = None, allow_unsafe: bool = False,
                 custom_objects: Any = None,
                 precision: str = SALIENCY["precision"], map_resolution: str = SALIENCY["map_resolution"],
                 engine: str = SALIENCY["engine"], input_size: Any = None, **common: Any) -> None:
        super().__init__(field, **common)
        self.input_size = input_size
        self.model, self.method, self.target_field = model, method, target_field
        self.target = canonical_target(target)  # "3" from the CLI or the App is the index 3
        self.weights, self.layer, self.fuse_layer = weights, layer, fuse_layer
        self.batch_size, self.map_dir, self.class_names = batch_size, map_dir, class_names
        self.allow_unsafe, self.precision, self.map_resolution = allow_unsafe, precision, map_resolution
        self.custom_objects, self.engine = custom_objects, engine
        self.declared = False
        self.map_root: str | None = None
        self.sm: Any = None
        #: samples whose ``target_field`` label the model does not know, with the reason
        self.target_errors: dict[str, str] = {}

    def validate(self, view: Any) -> None:
        """Checks the field, method, batch size, targets and heatmap folder."""
        import fiftyone as fo

        from xpatch_core.saliency import get_method

        colls.validate_field_name(view, self.field, "saliency", run_key=self.run_key)
        self.method_cls = get_method(self.method)
        self.batch_size = settings.batch_size_override() or self.batch_size
        settings.decode_workers()  # a bad XPATCH_DECODE_WORKERS fails here, before the model loads
        bs = self.batch_size
        if not isinstance(bs, (int, np.integer)) or isinstance(bs, bool) or bs < 1:
            raise ParameterError(f"batch_size must be a positive integer, got {bs!r}")
        if self.input_size is not None:
            from xpatch_core.models import normalize_input_size

            self.input_size = normalize_input_size(self.input_size)
        if self.map_resolution not in CHOICES["map_resolution"]:
            raise ParameterError(f"map_resolution must be one of {', '.join(CHOICES['map_resolution'])}, "
                                 f"got {self.map_resolution!r}")
        if self.target is not None and self.target_field is not None:
            raise ParameterError("give either target or target_field, not both")
        if self.target_field is not None:
            colls.require_field(view._dataset, self.target_field, fo.Classification, "target_field")
        if self.map_dir:
            self.map_root = heatmap_files.prepare_map_dir(self.map_dir, self.field)

    def request(self) -> dict[str, Any]:
        """The arguments as given (the batch size aside: it changes no result)."""
        return {"model": _describe_model(self.model), "method": self.method, "target": self.target,
                "target_field": self.target_field, "weights": self.weights, "layer": self.layer,
                "fuse_layer": self.fuse_layer, "map_dir": self.map_root, "precision": self.precision,
                "map_resolution": self.map_resolution,
                "class_names": list(self.class_names) if self.class_names else None,
                # given only when asked for, so that older records still match a rerun's request
                **({"input_size": _size_text(self.input_size)} if self.input_size is not None else {})}

    def same_request(self, dataset: Any) -> bool:
        """The same request, or one that differs only in asking explicitly
        for the precision the stored run used (``float32`` after an
        ``auto`` that gave float32), or in spelling a class index as text
        (``"3"``, an older record's): its results would be the same."""
        if super().same_request(dataset):
            return True
        stored = records.run_config(dataset, self.run_key)
        old = dict(stored.get("request") or {})
        if stored.get("xpatch_type") != self.kind or not old:
            return False
        old["target"] = records.jsonable(canonical_target(old.get("target")))
        mine = records.jsonable(self.request())
        if self.precision != "auto" and stored.get("precision_used") == self.precision:
            mine["precision"] = old.get("precision")
        return mine == old

    def known_differences(self, stored: dict[str, Any]) -> list[str]:
        """The parameters known before the model loads that differ from a
        stored run's: the method, target, target field, heatmap folder, map
        resolution, an input size given, and a ``keras.applications`` name
        (or a model of another kind). The precision and a saved model's
        file are compared after the load (``auto``, and OpenVINO, decide
        the precision used; a path's contents decide the model).

        Args:
            stored: the stored run's config

        Returns:
            a list of parameter names
        """
        from xpatch_core.errors import ParameterError
        from xpatch_core.models import SaliencyModel, normalize_input_size
        from xpatch_core.saliency import get_method

        method = getattr(self, "method_cls", None) or get_method(self.method)  # before validate: a form's plan
        mine: dict[str, Any] = {"method": method.name, "target": records.jsonable(self.target),
                                "target_field": self.target_field, "map_resolution": self.map_resolution}
        if self.map_root is not None or not self.map_dir:  # a folder given is compared once prepared
            mine["map_dir"] = self.map_root
        if self.input_size is not None and not isinstance(self.model, SaliencyModel):  # a loaded one keeps its size
            try:
                mine["input_size"] = list(normalize_input_size(self.input_size))
            except ParameterError:
                pass  # validate refuses it
        other_model = model_differs(self.model, stored.get("model_source") or {})
        theirs = dict(stored, target=canonical_target(stored.get("target")))
        return ["model_source"] * bool(other_model) + [k for k, v in mine.items() if k in stored and theirs[k] != v]

    @classmethod
    def speed_key(cls, request: dict[str, Any]) -> str:
        """Saliency runs of one model, method, fusion and input size run at one speed."""
        size = f"|{request['input_size']}" if request.get("input_size") is not None else ""
        return f"saliency|{request.get('model')}|{request.get('method')}|{request.get('fuse_layer')}{size}"

    def setup(self, view: Any, todo: list[str]) -> SaliencyConfig:
        """Loads the model and resolves the targets."""
        from xpatch_core.models import load_model
        from xpatch_core.saliency import resolve_targets

        others = colls.datasets_pointing_into(self.map_root, exclude=view._dataset) if self.map_root else []
        if others:  # a clone shares sample ids: writing <id>.png would change the other dataset's maps
            raise ParameterError(f"heatmap folder {self.map_root} holds heatmaps of other datasets "
                                 f"({', '.join(others)}); give this run a map_dir of its own")
        self.sm = sm = load_model(self.model, weights=self.weights, layer=self.layer, fuse_layer=self.fuse_layer,
                                  class_names=self.class_names, allow_unsafe=self.allow_unsafe,
                                  precision=self.precision, custom_objects=self.custom_objects,
                                  engine=self.engine, input_size=self.input_size)
        self.runner = self.method_cls(sm)  # raises for gradient methods on a model without a head
        if self.target_field is None:
            self.targets: Any = resolve_targets(sm, self.target, None)
        else:
            self.targets = self._field_targets(view, todo)
        return SaliencyConfig(
            field=self.field, request=self.request(),
            model_source={k: v for k, v in sm.source.items() if k not in _MACHINE_KEYS},
            method=self.method_cls.name, layer=self.runner.layer_description, target=self.target,
            target_field=self.target_field, batch_size=int(self.batch_size), input_size=list(sm.input_size),
            precision=self.precision, precision_used=str(sm.source.get("precision", self.precision)),
            engine_used=_engine_used(sm, self.map_resolution),
            precision_reason=str(sm.source.get("precision_reason", "")),
            engine_reason=str(sm.source.get("engine_reason", "")),
            map_dir=self.map_root, storage="png" if self.map_root else "database",
            map_resolution=self.map_resolution,
        )

    def recheck(self, dataset: Any, ids: list[str]) -> dict[str, str]:
        """Decodes the images of samples that failed before, without the
        model (small sizes: a JPEG decodes at a reduced scale): those whose
        file still cannot be read fail again without a model load."""
        from xpatch_core.images import decode_error

        reasons = {}
        for sid, path in colls.filepaths(dataset, ids).items():
            reason = decode_error(path)
            if reason is None:
                break  # one image that decodes: the run goes on, so the rest need no decode
            reasons[sid] = reason
        return reasons

    def _field_targets(self, view: Any, todo: list[str]) -> list[int]:
        """Each sample's class index from the target field (-1: predicted);
        a label the model does not know fails that sample (a label is one
        sample's matter), noted in :attr:`target_errors`, unless no sample's
        label is known: then the target field is wrong for the run."""
        if not todo:
            return []
        ids, labels = view._dataset.select(todo).values(["id", f"{self.target_field}.label"])
        resolved: dict[Any, int | str] = {}
        for lab in {lab for lab in labels if lab is not None}:
            try:
                resolved[lab] = self.sm.class_index(lab)
            except ParameterError as e:
                resolved[lab] = f"target field {self.target_field!r}: {e}"
        by_id = {}
        for i, lab in zip(ids, labels):
            t = resolved[lab] if lab is not None else -1
            if isinstance(t, str):
                self.target_errors[i], t = t, -1
            by_id[i] = t
        if len(self.target_errors) == len(ids):  # wrong for every image: the parameter is wrong
            raise ParameterError(next(iter(self.target_errors.values())))
        return [by_id.get(i, -1) for i in todo]

    def outcomes(self, dataset: Any, ids: list[str], summary: RunSummary) -> Iterator[Outcome]:
        """Streams every pending image through the model, in order."""
        from xpatch_core.saliency import iter_saliency

        if self.map_root:
            heatmap_files.remove_temporary(self.map_root, ids)
        targets = self.targets
        if self.target_errors:
            yield from (Outcome(sid, reason=self.target_errors[sid]) for sid in ids if sid in self.target_errors)
            keep = [k for k, sid in enumerate(ids) if sid not in self.target_errors]
            ids, targets = [ids[k] for k in keep], [targets[k] for k in keep]
        paths: dict[int, str | None] = {}
        lock = threading.Lock()

        def clock(stage: str, seconds: float) -> None:  # from the decoding and model threads
            with lock:
                summary.add_time(stage, seconds)

        items = iter_saliency(self._paths(dataset, ids, paths), self.sm, self.method_cls.name, targets,
                              self.batch_size, map_resolution=self.map_resolution, clock=clock)
        names = self._class_names()
        while True:
            t = time.perf_counter()
            item = next(items, None)
            clock("compute", time.perf_counter() - t)
            if item is None:
                return
            sid, path = ids[item.index], paths.pop(item.index, None)
            if path is None:
                yield Outcome(sid, vanished=True)
            elif item.error is not None:
                yield Outcome(sid, reason=item.error, filepath=path)
            else:
                yield self._stored(sid, path, item, names)

    def _class_names(self) -> list[str] | None:
        """The model's class names for the ``predicted`` and ``target``
        attributes; where they cannot be had (ImageNet's class index neither
        cached nor downloadable, for a model with random weights), class
        numbers, with a warning: the maps do not need names."""
        import warnings

        from xpatch_core.errors import XpatchError

        if not self.sm.has_head:
            return None
        try:
            return self.sm.class_names
        except XpatchError as e:
            warnings.warn(f"classes are recorded as numbers: {e}", stacklevel=2)
            return None

    def _paths(self, dataset: Any, ids: list[str], paths: dict[int, str | None]) -> Iterator[str | None]:
        """File paths a chunk at a time (None for a sample deleted meanwhile)."""
        size = max(settings.write_chunk(), int(self.batch_size))
        for start, chunk in zip(range(0, len(ids), size), colls.chunks(ids, size)):
            by_id = colls.filepaths(dataset, chunk)
            for k, sid in enumerate(chunk):
                paths[start + k] = by_id.get(sid)
                yield by_id.get(sid) or f"<sample {sid} was deleted>"

    def _stored(self, sid: str, path: str, item: Any, names: list[str] | None) -> Outcome:
        """The ``fo.Heatmap`` of one item: the map smoothly upsampled to a
        display size with the image's aspect ratio (8-bit, ``range=[0, 255]``),
        the network's own map kept as ``network_map``; with ``map_dir`` the
        PNG is written first."""
        from xpatch_core.heatmaps import display_map, encode_network_map

        attrs: dict[str, Any] = {"method": self.method_cls.name, "degenerate": bool(item.degenerate),
                                 "width": int(item.image_size[0]), "height": int(item.image_size[1]),
                                 "network_map": encode_network_map(item.map)}
        if item.predicted is not None:
            attrs["predicted"] = names[item.predicted] if names else str(item.predicted)
            attrs["confidence"] = float(item.confidence)
        if item.target is not None:
            attrs["target"] = names[item.target] if names else str(item.target)
        shown = display_map(item.map, tuple(item.image_size))
        if not self.map_root:
            return Outcome(sid, heatmap_son(shown, **attrs), filepath=path, degenerate=bool(item.degenerate))
        png = os.path.join(self.map_root, f"{sid}.png")
        try:
            heatmap_files.write_png(png, shown)
        except OSError as e:
            return Outcome(sid, reason=f"cannot write heatmap file: {e}", filepath=path)
        return Outcome(sid, heatmap_son(map_path=png, **attrs), filepath=path, degenerate=bool(item.degenerate))

    def finish(self, dataset: Any, summary: RunSummary) -> None:
        """Shows the field with a value colormap in the App, unless the user
        chose colours for it already (:func:`default_colorscale`)."""
        default_colorscale(dataset, self.field)

    def write(self, dataset: Any, values: dict[str, Any]) -> None:
        """Writes heatmaps in their stored form; the first one of a run as a
        real document, which declares the field."""
        import fiftyone as fo

        items = list(values.items())
        if not self.declared:
            self.first_value = first_id, first = items.pop(0)
            dataset.set_values(self.field, {first_id: fo.Heatmap.from_dict(first)}, key_field="id")
            self.declared = True
        if items:
            dataset.set_values(self.field, dict(items), key_field="id", validate=False, expand_schema=False)

    def declare_again(self, dataset: Any) -> None:
        """Declares the heatmap field again if a concurrent run's schema
        change lost it (the first value this run wrote, rewritten)."""
        import fiftyone as fo

        if self.declared:
            first_id, first = self.first_value
            colls.keep_declared(dataset, self.field, lambda: dataset.set_values(
                self.field, {first_id: fo.Heatmap.from_dict(first)}, key_field="id"))

    def start_message(self, count: int) -> str:
        """The first progress line."""
        return f"computing {self.method_cls.name} saliency on {count} samples"


def default_colorscale(dataset: Any, field: str) -> bool:
    """Gives a heatmap field a value colormap in the App's saved colour scheme.

    Without a saved colour scheme, one is created that colours by value with
    the :data:`~xpatch_core.defaults.HEATMAP` ``colorscale`` for this field.
    With one, a colorscale for this field is added only if the user has none
    for it; nothing else of theirs changes.

    Args:
        dataset: the dataset
        field: the heatmap field

    Returns:
        True if the colour scheme was changed
    """
    import fiftyone as fo

    scheme = dataset.app_config.color_scheme
    entry = {"path": field, "name": HEATMAP["colorscale"]}
    if scheme is None:
        dataset.app_config.color_scheme = fo.ColorScheme(color_by="value", colorscales=[entry],
                                                         opacity=HEATMAP["opacity"])
    elif any(c.get("path") == field for c in (scheme.colorscales or [])):
        return False
    else:
        scheme.colorscales = [*(scheme.colorscales or []), entry]
    dataset.save()
    return True


def iter_run_saliency(sample_collection: Any, field: str = SALIENCY["field"], model: Any = SALIENCY["model"],
                      method: str = SALIENCY["method"], *, shard: Any = None,
                      **kwargs: Any) -> Generator[Progress, None, RunSummary]:
    """Computes saliency heatmaps into a field, yielding progress.

    See :func:`run_saliency` for the arguments. ``id_range`` restricts the
    run to the samples with ``lo <= _id < hi``; ``shard`` is the role of a
    sharded run's parent or child (:mod:`xpatch_core.runs.shards`). The
    environment variable ``XPATCH_BATCH_SIZE``, when set, overrides
    ``batch_size`` (a per-worker setting).

    Returns:
        a generator of :class:`Progress` whose return value is the
        :class:`RunSummary`
    """
    return execute(SaliencyRun(field, model, method, **kwargs), sample_collection, shard)


def run_saliency(sample_collection: Any, field: str = SALIENCY["field"], model: Any = SALIENCY["model"],
                 method: str = SALIENCY["method"], *, progress: Any = False, **kwargs: Any) -> RunSummary:
    """Computes saliency heatmaps and stores them as ``fo.Heatmap`` fields.

    Only samples without a heatmap in ``field`` are processed unless
    ``overwrite=True``, so an interrupted run resumes; a rerun with nothing
    left to do returns at once without loading the model. A sample whose
    image cannot be read fails with a reason (kept in the run's results,
    and the sample tagged ``xpatch:<field>:failed``); the run goes on.

    Args:
        sample_collection: a FiftyOne image collection (a patches view
            stands for the images of its patches)
        field: the heatmap field (also the run key by default)
        model: a ``keras.applications`` name, a saved model path, a Keras
            model or a :class:`xpatch_core.models.SaliencyModel`
        method: ``"activation"``, ``"eigencam"``, ``"gradcam"`` or
            ``"gradcam++"``
        progress: True for a progress bar, or a callable taking
            :class:`Progress` events
        **kwargs: ``target`` (class index/name, or None for predicted),
            ``target_field`` (a ``fo.Classification`` field giving each
            sample's class), ``weights``, ``layer``, ``fuse_layer`` (see
            :func:`xpatch_core.load_model`), ``batch_size``,
            ``map_dir`` (write 8-bit PNGs under ``map_dir/field/`` instead
            of storing maps in the database), ``overwrite``, ``run_key``,
            ``class_names``, ``allow_unsafe``, ``custom_objects`` (a dict
            or a module path, for models with custom layers), ``precision``
            (``"auto"``: bfloat16 where the hardware has it), ``engine``
            (``"auto"``, ``"tensorflow"`` or ``"openvino"``: what runs the
            forward pass, see :func:`xpatch_core.load_model`),
            ``map_resolution`` (``"standard"``, or ``"high"`` for sharper
            maps from a second, aspect-kept pass at a higher resolution),
            ``input_size`` (the network's input, an int or ``(height,
            width)``: needed for a model that takes any size, and a
            ``keras.applications`` model built at another size),
            ``sample_ids``, ``id_range``

    Returns:
        a :class:`RunSummary`
    """
    return drive(iter_run_saliency(sample_collection, field, model, method, **kwargs), progress)


__all__ = ["SaliencyConfig", "SaliencyRun", "default_colorscale", "heatmap_son", "iter_run_saliency", "run_saliency"]
