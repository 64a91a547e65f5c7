"""Heatmap PNG files: one folder per field, written so a crash leaves no half file.

Rules:

-   A run with ``map_dir`` writes ``map_dir/<field>/<sample id>.png``; the
    field name may not lead out of ``map_dir`` (no ``..``, no symlink out).
-   A file is written under a fresh temporary name (created exclusively,
    never through a symlink), renamed over its final name only once
    complete, and the database is updated after the rename. Temporary files
    of a killed run are removed when the next run of the field starts.
-   Deleting the run removes only files named ``<24-hex-digit id>.png`` (or
    their temporary names) from its folder, and the folder if then empty.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable

import numpy as np

from xpatch_core.errors import ParameterError
from xpatch_core.paths import write_atomically

_FILE = re.compile(r"[0-9a-f]{24}")


def safe_dir(root: str, field_name: str) -> str:
    """The folder of a field's heatmaps under ``root``, refusing escapes.

    Args:
        root: the user's heatmap folder
        field_name: the field

    Returns:
        the real path of ``root/field_name``

    Raises:
        ParameterError: if the folder would not be directly inside ``root``
    """
    root_real = os.path.realpath(os.path.abspath(os.path.expanduser(root)))
    target = os.path.realpath(os.path.join(root_real, field_name))
    if os.path.dirname(target) != root_real:
        raise ParameterError(f"heatmap folder for field {field_name!r} would leave {root_real}")
    return target


def prepare_map_dir(root: str, field_name: str) -> str:
    """Creates a field's heatmap folder and checks that it is writable.

    Args:
        root: the user's heatmap folder
        field_name: the field

    Returns:
        the folder's real path

    Raises:
        ParameterError: if it cannot be created or written
    """
    folder = safe_dir(root, field_name)
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".probe.{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ParameterError(f"heatmap folder {folder} is not writable: {e}") from e
    return folder


def write_png(path: str, m: np.ndarray) -> None:
    """Writes a map in ``[0, 1]`` (or uint8) as an 8-bit grayscale PNG, atomically.

    Args:
        path: the final path
        m: a 2-D map
    """
    from PIL import Image

    a = np.asarray(m)
    arr = a if a.dtype == np.uint8 else np.clip(np.round(a.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    write_atomically(path, lambda f: Image.fromarray(arr, mode="L").save(f, format="PNG"))


def remove_temporary(folder: str, ids: Iterable[str] | None = None) -> int:
    """Removes temporary files a killed run left (only those of ``ids``).

    Args:
        folder: a field's heatmap folder
        ids: sample ids whose files to clean, or None for all

    Returns:
        the number of files removed
    """
    mine = None if ids is None else set(ids)
    removed = 0
    for tmp in glob.glob(os.path.join(folder, "*.tmp")):
        if mine is None or os.path.basename(tmp).split(".")[0] in mine:
            os.remove(tmp)
            removed += 1
    return removed


def remove_map_files(folder: str) -> int:
    """Removes a field's heatmap files, and the folder if then empty.

    Args:
        folder: a field's heatmap folder

    Returns:
        the number of files removed
    """
    if not folder or not os.path.isdir(folder):
        return 0
    removed = 0
    for path in glob.glob(os.path.join(folder, "*.png")) + glob.glob(os.path.join(folder, "*.tmp")):
        if _FILE.fullmatch(os.path.basename(path).split(".")[0]):
            os.remove(path)
            removed += 1
    if not os.listdir(folder):
        os.rmdir(folder)
    return removed


__all__ = ["prepare_map_dir", "remove_map_files", "remove_temporary", "safe_dir", "write_png"]
