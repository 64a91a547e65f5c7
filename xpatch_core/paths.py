"""Where things are written: outputs never overlap each other, the inputs, or
files the dataset points to.

Rules:

-   Paths are compared after ``~`` expansion, made absolute and with
    symlinks resolved, so two spellings of one folder are one folder.
-   Of the paths one command writes (an export folder, a heatmap folder, a
    contact sheet, a patch dataset's folder), none may equal, contain or sit
    inside another, nor an input of the same command (the images folder),
    and a folder that may be cleared may not contain a folder that a stored
    field points into (source images, heatmap PNGs, masks). Such a command
    is refused before any work.
-   Every file xpatch writes (heatmap PNGs, patch crops, contact sheets) goes
    through :func:`write_atomically`: a fresh temporary name, created
    exclusively and never through a link, then renamed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

from xpatch_core.errors import ParameterError


def real(path: Any) -> str:
    """The absolute, symlink-free spelling of a path.

    Args:
        path: a path (``~`` is expanded)

    Returns:
        a path
    """
    return os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def contains(outer: Any, inner: Any) -> bool:
    """Whether ``inner`` is ``outer`` or lies inside it (after :func:`real`).

    Args:
        outer: a folder
        inner: a path

    Returns:
        True or False
    """
    a, b = real(outer), real(inner)
    return a == b or os.path.commonpath([a, b]) == a


def check_disjoint(outputs: Mapping[str, Any], inputs: Mapping[str, Any] | None = None) -> None:
    """Refuses outputs that overlap each other or an input.

    Args:
        outputs: what the command writes, by the name a user knows it by
            (``"--export"``); None values are ignored
        inputs: what the command reads, by name

    Raises:
        ParameterError: naming both paths, for the first overlap found
    """
    outs = [(k, v) for k, v in outputs.items() if v]
    ins = [(k, v) for k, v in (inputs or {}).items() if v]
    for i, (name, path) in enumerate(outs):
        for other, opath in outs[i + 1:]:
            if contains(path, opath) or contains(opath, path):
                raise ParameterError(f"{name} ({real(path)}) and {other} ({real(opath)}) overlap: one would "
                                     "overwrite or clear the other; give them separate folders")
        for other, ipath in ins:
            if contains(path, ipath) or contains(ipath, path):
                raise ParameterError(f"{name} ({real(path)}) overlaps the input {other} ({real(ipath)}); "
                                     "write outputs outside the input folder")


def check_not_holding(folder: Any, what: str, protected: Iterable[str]) -> None:
    """Refuses a folder (to be cleared or filled) that holds or is a protected one.

    Args:
        folder: the folder
        what: its name for the message
        protected: folders that stored fields point into

    Raises:
        ParameterError: for the first protected folder inside ``folder``
    """
    for p in protected:
        if contains(folder, p):
            raise ParameterError(f"{what} {real(folder)} holds files the dataset points to ({p}); "
                                 "choose a folder of its own")


def check_apart(path: Any, what: str, protected: Iterable[str]) -> None:
    """Refuses an output that equals, holds or sits inside a protected folder.

    Args:
        path: the output (a file or a folder)
        what: its name for the message
        protected: folders that stored fields point into

    Raises:
        ParameterError: for the first protected folder it overlaps
    """
    for p in protected:
        if contains(p, path) or contains(path, p):
            raise ParameterError(f"{what} {real(path)} overlaps {p}, a folder of files the dataset points to "
                                 "(its images or label files); write it elsewhere")



def write_atomically(path: str, write: Callable[[IO[bytes]], Any], mode: int = 0o666) -> str:
    """Writes a file through a fresh temporary name, then renames it over ``path``.

    The temporary name (``<path>.<pid>.<random>.tmp``) is created exclusively
    and never through a symbolic link, so a link planted at a predictable
    name cannot redirect the write; it is removed if writing fails, and a
    reader never sees a half-written file.

    Args:
        path: the final path
        write: a function writing the contents to a binary file object
        mode: the file's permissions (before the umask)

    Returns:
        ``path``
    """
    tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    return path

__all__ = ["write_atomically", "check_apart", "check_disjoint", "check_not_holding", "contains", "real"]
