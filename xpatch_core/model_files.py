"""Saved model files, checked before Keras deserialises them.

A model file is untrusted input (the App loads whatever path a user types),
so before :func:`keras.models.load_model` sees it:

-   its signature bytes must say what its name says: a zip archive for
    ``.keras``, HDF5 for ``.h5`` / ``.hdf5`` (else "not a Keras model file");
-   a ``.keras`` archive's members are bounded in number, uncompressed size
    and compression ratio, and its ``config.json`` in size, all from the
    archive's directory, without inflating anything (limits:
    :data:`xpatch_core.defaults.MODEL_FILE_LIMITS`);
-   an ``.h5`` file must hold a model configuration (not weights only), and
    its compressed datasets are bounded like archive members;
-   the configuration is read (bounded) and every class it names must be
    found: built into Keras, registered, or passed as ``custom_objects``
    (a dict, or a module path whose Keras classes are collected); the error
    names the missing classes and how to pass them;
-   code embedded in the file (a ``Lambda`` layer's bytecode) is refused
    unless safe mode is off.

:func:`file_identity` hashes the file once per load, streaming, so that a
model cache can tell a retrained model saved to the same path from the one
it holds.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import struct
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from xpatch_core.defaults import MODEL_FILE_LIMITS
from xpatch_core.errors import ModelError, ParameterError

ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_SAVED_EXTENSIONS = {".keras": "keras", ".h5": "h5", ".hdf5": "h5"}
# Serialisation markers of Keras' format that are not classes.
_NOT_CLASSES = {"function", "__lambda__", "__tensor__", "__numpy__", "__bytes__", "__typespec__",
                "__keras_tensor__", "__ellipsis__", "__slice__", "__tuple__"}
_KERAS_PACKAGES = {"keras", "keras_hub", "keras_cv", "keras_nlp"}


@dataclass(frozen=True)
class FileIdentity:
    """What a file was when it was hashed.

    Attributes:
        path: the absolute path
        size: bytes
        mtime_ns: modification time, nanoseconds
        inode: the inode number (an atomic replace changes it)
        sha256: the hex digest of the bytes read
    """

    path: str
    size: int
    mtime_ns: int
    inode: int
    sha256: str

    def unchanged(self) -> bool:
        """Whether the path still holds this file (size, mtime and inode).

        Returns:
            True or False
        """
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns, st.st_ino) == (self.size, self.mtime_ns, self.inode)


def file_identity(path: str) -> FileIdentity:
    """Hashes a file once, streaming, with its size, mtime and inode.

    Args:
        path: a file path

    Returns:
        a :class:`FileIdentity`

    Raises:
        ModelError: if the file is missing, unreadable, or changes while it
            is read
    """
    path = os.path.abspath(path)
    try:
        with open(path, "rb") as f:
            before = os.fstat(f.fileno())
            digest = hashlib.file_digest(f, "sha256").hexdigest()
            after = os.fstat(f.fileno())
    except FileNotFoundError:
        raise ModelError(f"model file not found: {path}") from None
    except OSError as e:
        raise ModelError(f"cannot read model file {path}: {e.strerror or e}") from None
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise ModelError(f"model file {path} changed while it was read; load it again once it is written")
    return FileIdentity(path, after.st_size, after.st_mtime_ns, after.st_ino, digest)


def file_format(path: str) -> str:
    """Checks a saved model's signature bytes against its name.

    Args:
        path: a ``.keras``, ``.h5`` or ``.hdf5`` file

    Returns:
        ``"keras"`` (a zip archive) or ``"h5"`` (HDF5)

    Raises:
        ModelError: if the file is missing, or is not what its name says
    """
    expected = _SAVED_EXTENSIONS.get(os.path.splitext(path)[1].lower())
    if expected is None:
        raise ModelError(f"{path} is not a Keras model file name (.keras, .h5 or .hdf5)")
    if not os.path.isfile(path):
        raise ModelError(f"model file not found: {path}")
    found = "keras" if _is_zip(path) else "h5" if is_hdf5(path) else None
    if found != expected:
        what = {"keras": "a zip archive", "h5": "an HDF5 file", None: "neither a zip archive nor HDF5"}[found]
        want = "a zip archive" if expected == "keras" else "an HDF5 file"
        raise ModelError(f"{path} is not a Keras model file: it is {what}, and a "
                         f"{os.path.splitext(path)[1]} model is {want}")
    return found


def _is_zip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in ZIP_SIGNATURES


def is_hdf5(path: str) -> bool:
    """Whether a file starts with HDF5's signature (at 0, 512, 1024, ...).

    Args:
        path: a file path

    Returns:
        True or False
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        offset = 0
        while offset + len(HDF5_SIGNATURE) <= size:
            f.seek(offset)
            if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else offset * 2
    return False


def _zip_member_count(path: str) -> int:
    """The member count from the archive's end record, read without parsing
    the central directory (which a hostile archive can make huge)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        start = max(0, size - (65535 + 22))
        f.seek(start)
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            raise ModelError(f"{path} is not a Keras model file: a damaged zip archive (no end record)")
        count = struct.unpack("<H", tail[at + 10 : at + 12])[0]
        if count == 0xFFFF and at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07":
            (offset,) = struct.unpack("<Q", tail[at - 12 : at - 4])
            f.seek(offset)
            record = f.read(56)
            if record[:4] == b"PK\x06\x06" and len(record) == 56:
                count = struct.unpack("<Q", record[32:40])[0]
    return count


def _check_member(path: str, name: str, size: int, stored: int) -> None:
    lim = MODEL_FILE_LIMITS
    if size > lim["max_member_bytes"]:
        raise ModelError(f"refused {path}: member {name!r} declares {_mib(size)} uncompressed, over the "
                         f"{_mib(lim['max_member_bytes'])} limit")
    if size > lim["ratio_floor_bytes"] and size > lim["max_ratio"] * max(stored, 1):
        raise ModelError(f"refused {path}: member {name!r} inflates from {_mib(stored)} to {_mib(size)} "
                         f"(over {lim['max_ratio']}x), a decompression bomb")


def _mib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):,.1f} MiB"


def check_keras_archive(path: str) -> dict[str, Any]:
    """Checks a ``.keras`` archive's bounds and reads its configuration.

    Args:
        path: the ``.keras`` file

    Returns:
        the parsed ``config.json``

    Raises:
        ModelError: if a bound is exceeded or the archive is not a model
    """
    lim = MODEL_FILE_LIMITS
    count = _zip_member_count(path)
    if count > lim["max_members"]:
        raise ModelError(f"refused {path}: {count:,} archive members, over the {lim['max_members']:,} limit")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > lim["max_members"]:
                raise ModelError(f"refused {path}: {len(infos):,} archive members, over the limit")
            for info in infos:
                _check_member(path, info.filename, info.file_size, info.compress_size)
            names = {info.filename: info for info in infos}
            if "config.json" not in names:
                raise ModelError(f"{path} is not a Keras model file: the archive has no config.json")
            if names["config.json"].file_size > lim["max_config_bytes"]:
                raise ModelError(f"refused {path}: config.json declares {_mib(names['config.json'].file_size)}, "
                                 f"over the {_mib(lim['max_config_bytes'])} limit")
            with zf.open("config.json") as f:
                raw = f.read(lim["max_config_bytes"] + 1)
    except zipfile.BadZipFile as e:
        raise ModelError(f"{path} is not a Keras model file: a damaged zip archive ({e})") from None
    return _parse_config(path, raw)


def _parse_config(path: str, raw: bytes | str) -> dict[str, Any]:
    if len(raw) > MODEL_FILE_LIMITS["max_config_bytes"]:
        raise ModelError(f"refused {path}: its model configuration is over "
                         f"{_mib(MODEL_FILE_LIMITS['max_config_bytes'])}")
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ModelError(f"{path} is not a Keras model file: its configuration is not valid JSON ({e})"[:300]) from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelError(f"{path} is not a Keras model file: its configuration describes no model")
    return config


def check_hdf5_model(path: str) -> dict[str, Any]:
    """Checks a legacy ``.h5`` model and reads its configuration.

    Args:
        path: the ``.h5`` / ``.hdf5`` file

    Returns:
        the parsed ``model_config`` attribute

    Raises:
        ModelError: if it holds no model, or a dataset is a decompression bomb
    """
    import h5py

    lim = MODEL_FILE_LIMITS
    try:
        with h5py.File(path, "r") as f:
            if "model_config" not in f.attrs:
                raise ModelError(f"{path} is not a Keras model file: it holds no model configuration "
                                 "(a weights-only file? pass it as weights= with the model's name)")
            raw = f.attrs["model_config"]  # attributes are stored uncompressed: bounded by the file
            datasets: list[Any] = []
            f.visititems(lambda _name, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
            if len(datasets) > lim["max_members"]:
                raise ModelError(f"refused {path}: {len(datasets):,} datasets, over the {lim['max_members']:,} limit")
            for ds in datasets:
                _check_member(path, ds.name, int(ds.nbytes), int(ds.id.get_storage_size()))
    except OSError as e:
        raise ModelError(f"{path} is not a Keras model file: HDF5 could not read it ({e})") from None
    return _parse_config(path, raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw))


def check_weights_file(path: str) -> None:
    """Checks that a weights file exists and is HDF5.

    Args:
        path: a ``.h5`` / ``.weights.h5`` file

    Raises:
        ModelError: if it is missing or not HDF5
    """
    if not os.path.isfile(path):
        raise ModelError(f"weights file not found: {path}")
    if not is_hdf5(path):
        raise ModelError(f"{path} is not a Keras weights file (not HDF5)")


def _walk(obj: Any) -> Iterator[dict[str, Any]]:
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def classes_needed(config: dict[str, Any], legacy: bool = False) -> list[tuple[str, str, str | None]]:
    """The classes a configuration names that are not built into Keras.

    Args:
        config: a parsed model configuration
        legacy: True for an ``.h5`` file's configuration (no module names;
            layers are looked up in ``keras.layers``)

    Returns:
        sorted ``(class name, registered name, module)`` triples
    """
    import keras

    out = set()
    for d in _walk(config):
        if legacy:
            layers = d.get("layers")
            for layer in layers if isinstance(layers, list) else ():
                cls = layer.get("class_name") if isinstance(layer, dict) else None
                if isinstance(cls, str) and not (hasattr(keras.layers, cls) or hasattr(keras.models, cls)
                                                 or cls in ("Functional", "Model")):
                    out.add((cls, cls, None))
            continue
        cls, module = d.get("class_name"), d.get("module")
        if not isinstance(cls, str) or cls in _NOT_CLASSES or not isinstance(module, str):
            continue
        if module.split(".")[0] in _KERAS_PACKAGES or module == "builtins":
            continue
        out.add((cls, d.get("registered_name") or cls, module))
    return sorted(out)


def embedded_code(config: dict[str, Any]) -> list[str]:
    """Names of the layers that carry Python bytecode (``Lambda``).

    Args:
        config: a parsed model configuration

    Returns:
        layer names
    """
    found = []
    for d in _walk(config):
        fn = d.get("config", {}).get("function") if isinstance(d.get("config"), dict) else None
        if isinstance(fn, dict) and fn.get("class_name") == "__lambda__":
            found.append(str(d.get("name") or d["config"].get("name") or d.get("class_name")))
        elif d.get("class_name") == "Lambda" and isinstance(d.get("config"), dict) and \
                isinstance(d["config"].get("function"), (list, str)) and "module" not in d:
            found.append(str(d["config"].get("name", "lambda")))  # legacy marshalled code
    return sorted(found)


def _keras_classes(module: Any) -> dict[str, Any]:
    import keras

    bases = (keras.layers.Layer, keras.initializers.Initializer, keras.regularizers.Regularizer,
             keras.constraints.Constraint, keras.losses.Loss, keras.metrics.Metric,
             keras.optimizers.schedules.LearningRateSchedule)
    out: dict[str, Any] = {}
    for name, obj in vars(module).items():
        if name.startswith("_") or str(getattr(obj, "__module__", "") or "").split(".")[0] in _KERAS_PACKAGES:
            continue
        registered = keras.saving.get_registered_name(obj) if callable(obj) else None
        if (isinstance(obj, type) and issubclass(obj, bases)) or (registered and registered != getattr(
                obj, "__name__", registered)):
            out[name] = obj
            out[getattr(obj, "__name__", name)] = obj
            if registered:
                out[registered] = obj
    return out


def resolve_custom_objects(custom_objects: Mapping[str, Any] | str | Sequence[str] | None) -> dict[str, Any]:
    """Turns a ``custom_objects`` argument into Keras' dict.

    Args:
        custom_objects: None; a dict of name to class or function; a module
            path (``"my_pkg.layers"``), or a sequence of them, whose Keras
            classes (layers, initialisers, regularisers, constraints, losses,
            metrics, schedules) and registered functions are collected.
            Importing a module runs its code: pass only modules you trust

    Returns:
        a dict keyed by class name and by registered name

    Raises:
        ParameterError: if a module cannot be imported or holds no Keras class
    """
    if custom_objects is None:
        return {}
    if isinstance(custom_objects, Mapping):
        out = dict(custom_objects)
        for obj in list(out.values()):
            name = getattr(obj, "__name__", None)
            if name:
                out.setdefault(name, obj)
        return out
    modules = [custom_objects] if isinstance(custom_objects, str) else list(custom_objects)
    out = {}
    for spec in modules:
        if not isinstance(spec, str) or not spec.strip():
            raise ParameterError(f"custom_objects must be a dict or module paths, got {spec!r}")
        try:
            module = importlib.import_module(spec.strip())
        except Exception as e:  # noqa: BLE001 - any import failure is the user's module
            raise ParameterError(f"custom objects module {spec!r} cannot be imported: {e}") from e
        found = _keras_classes(module)
        if not found:
            raise ParameterError(f"custom objects module {spec!r} defines no Keras layer or other Keras class")
        out.update(found)
    return out


def _complete(needed: Sequence[tuple[str, str, str | None]], objects: dict[str, Any]) -> dict[str, Any]:
    """Adds the registered names Keras looks for (``"pkg>Name"``) where the
    class was given by its plain name."""
    out = dict(objects)
    for cls, registered, _module in needed:
        plain = registered.split(">")[-1]
        if registered not in out and (cls in out or plain in out):
            out[registered] = out.get(cls, out.get(plain))
    return out


def missing_classes(needed: Sequence[tuple[str, str, str | None]], objects: dict[str, Any]) -> list[str]:
    """The needed classes that are neither given nor registered.

    Args:
        needed: what :func:`classes_needed` returned
        objects: the custom objects dict (see :func:`resolve_custom_objects`)

    Returns:
        descriptions such as ``"ScaleLayer (from module my_pkg.layers)"``
    """
    import keras

    missing = []
    for cls, registered, module in needed:
        if keras.saving.get_registered_object(registered, custom_objects=objects) is None:
            where = f" (from module {module})" if module and module not in ("__main__", "builtins") else ""
            missing.append(f"{cls}{where}")
    return missing


def custom_objects_error(path: str, missing: Sequence[str]) -> ModelError:
    """The error for classes a model needs and was not given.

    Args:
        path: the model file
        missing: descriptions of the missing classes

    Returns:
        a :class:`ModelError` that says how to pass them
    """
    modules = [m.split("from module ")[-1].rstrip(")") for m in missing if "from module" in m]
    example = modules[0] if modules else "my_pkg.layers"
    first = missing[0].split(" ")[0]
    return ModelError(
        f"model {os.path.basename(path)} needs custom classes that are not registered: {', '.join(missing)}. "
        f"Pass them with load_model(path, custom_objects={{'{first}': {first}}}) or with the module that "
        f"defines them, load_model(path, custom_objects='{example}') (CLI: --custom-objects {example})."
    )


_MISSING_PATTERNS = (
    re.compile(r"Could not locate (?:class|function) '([^']+)'"),
    re.compile(r"Unknown (?:layer|object|activation|initializer|regularizer|constraint|loss|metric)"
               r"(?: type)?: '([^']+)'"),
)


def _deserialise(path: str, safe_mode: bool, objects: dict[str, Any]) -> Any:
    import keras

    try:
        return keras.models.load_model(path, custom_objects=objects or None, compile=False, safe_mode=safe_mode)
    except Exception as e:  # noqa: BLE001 - every Keras failure becomes a short ModelError
        msg = str(e)
        for pattern in _MISSING_PATTERNS:
            names = pattern.findall(msg)
            if names:
                raise custom_objects_error(path, sorted(set(names))) from None
        if "safe_mode" in msg or "Lambda" in msg or "unsafe" in msg.lower():
            raise unsafe_error(path) from None
        short = msg if len(msg) <= 400 else msg[:400] + "..."
        raise ModelError(f"could not load model {path}: {short}") from None


def unsafe_error(path: str) -> ModelError:
    """The error for a file that carries code while safe mode is on.

    Args:
        path: the model file

    Returns:
        a :class:`ModelError`
    """
    return ModelError(
        f"refused to load {path}: it contains code (e.g. a Lambda layer) that Keras' safe "
        "mode will not deserialize. Only if you trust this file, load it with "
        "allow_unsafe=True (CLI: --allow-unsafe-model)."
    )


def load_saved_model(
    path: str,
    identity: FileIdentity,
    *,
    safe_mode: bool = True,
    custom_objects: Mapping[str, Any] | str | Sequence[str] | None = None,
) -> Any:
    """Checks and loads a saved Keras model (uncompiled).

    Args:
        path: a ``.keras``, ``.h5`` or ``.hdf5`` file
        identity: the file as hashed before loading (:func:`file_identity`);
            the load fails if the file changes meanwhile
        safe_mode: Keras' safe mode (refuses embedded code)
        custom_objects: see :func:`resolve_custom_objects`

    Returns:
        the Keras model

    Raises:
        ModelError: if the file fails a check, needs classes that are not
            given, carries code in safe mode, or changes while loading
        ParameterError: for an unusable ``custom_objects``
    """
    kind = file_format(path)
    config = check_keras_archive(path) if kind == "keras" else check_hdf5_model(path)
    needed = classes_needed(config, legacy=kind == "h5")
    objects = _complete(needed, resolve_custom_objects(custom_objects))
    missing = missing_classes(needed, objects)
    if missing:
        raise custom_objects_error(path, missing)
    if safe_mode and embedded_code(config):
        raise unsafe_error(path)
    model = _deserialise(path, safe_mode, objects)
    if not identity.unchanged():
        raise ModelError(f"model file {path} changed while it was loaded; load it again once it is written")
    return model


def weights_have_top(path: str) -> bool | None:
    """Whether a weights file holds a classifier top (a dense layer), read
    from its layer names without loading a weight.

    Args:
        path: an HDF5 weights file (Keras 3's ``.weights.h5`` or legacy)

    Returns:
        True or False, or None if unsure (not HDF5, no layer names)
    """
    try:
        import h5py

        with h5py.File(path, "r") as f:
            names = [str(n.decode() if isinstance(n, bytes) else n) for n in f.attrs.get("layer_names", [])]
            if not names and isinstance(f.get("layers"), h5py.Group):  # Keras 3's .weights.h5
                names = list(f["layers"].keys())
    except Exception:  # noqa: BLE001 - not HDF5, or unreadable: try both forms
        return None
    if not names:
        return None
    return any(n == "predictions" or n.startswith("dense") for n in names)


__all__ = [
    "weights_have_top",
    "FileIdentity",
    "check_hdf5_model",
    "check_keras_archive",
    "check_weights_file",
    "classes_needed",
    "custom_objects_error",
    "embedded_code",
    "file_format",
    "file_identity",
    "is_hdf5",
    "load_saved_model",
    "missing_classes",
    "resolve_custom_objects",
    "unsafe_error",
]
