"""Files of a patch dataset: the output folder, decoding, cropping, writing.

Pillow and NumPy only (no FiftyOne).

-   **The output folder** holds a marker file, ``.xpatch-patch-dataset.json``,
    naming the dataset it belongs to. A folder that exists, is not empty and
    has no marker for the same dataset is refused (:func:`prepare_output_dir`).
-   **Paths** are made only of sample and label ids (24 hexadecimal
    characters): ``images/<source sample id>/<patch id>.jpg`` and
    ``masks/<field>/<source sample id>/<patch id>.png``; no label text ever
    becomes a path. Every folder is checked to resolve inside the output
    folder (a symlink leaving it is refused), and files are written to a
    temporary name opened with ``O_EXCL | O_NOFOLLOW`` and renamed.
-   **Crops** are cut from the image as displayed (EXIF orientation applied,
    the frame in which patch boxes are expressed). A JPEG source gives JPEG
    crops encoded with the source's own quantisation tables and chroma
    subsampling (its quality, exactly); other sources give PNG crops in the
    source's mode where PNG has it (L, LA, RGB, RGBA, I;16...), so nothing
    is lost. ``image_format`` forces one of the two (JPEG then uses the
    source's tables when it is a JPEG, else quality 95).
-   **Padding**: a patch box that extends outside the image
    (``border="pad"``) gives a crop of the box's full nominal size; the part
    outside the image is filled with ``fill`` (a grey level; transparent for
    images with alpha) and the part inside is reported as ``valid_box``.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import re
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

from xpatch_core import __version__
from xpatch_core.defaults import PATCH_DATASET
from xpatch_core.errors import ImageDecodeError, ParameterError, XpatchError
from xpatch_core.images import DEFAULT_MAX_PIXELS, to_rgb
from xpatch_core.paths import write_atomically

__all__ = [
    "MARKER",
    "Crop",
    "OutputFolder",
    "SourceImage",
    "crop",
    "decode",
    "encode",
    "mask_png",
    "prepare_output_dir",
    "read_marker",
]

#: The marker file's name inside an output folder.
MARKER = ".xpatch-patch-dataset.json"

_HEX_ID = re.compile(r"\A[0-9a-f]{24}\Z")
_FIELD = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,99}\Z")
_PNG_MODES = {"1", "L", "LA", "RGB", "RGBA", "I;16", "I"}


# -- the output folder -------------------------------------------------------------------


def read_marker(root: str) -> dict[str, Any] | None:
    """Reads an output folder's marker.

    Args:
        root: the folder

    Returns:
        the marker's content, or None when there is none (or it is unreadable)
    """
    path = os.path.join(root, MARKER)
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def prepare_output_dir(output_dir: Any, dataset_name: str, source: dict[str, Any]) -> str:
    """Checks and claims the output folder.

    Args:
        output_dir: the folder (created if missing)
        dataset_name: the patch dataset's name
        source: what to record in the marker (source dataset, patches field)

    Returns:
        the folder's real path

    Raises:
        ParameterError: if the path is invalid, is not a folder, is a
            protected folder, is not writable, or is not empty and holds no
            marker for ``dataset_name``
    """
    if not isinstance(output_dir, (str, os.PathLike)):
        raise ParameterError(f"output_dir must be a folder path, got {type(output_dir).__name__}")
    raw = os.fspath(output_dir)
    if not raw.strip() or "\x00" in raw:
        raise ParameterError(f"invalid output folder {raw!r}")
    root = os.path.realpath(os.path.abspath(os.path.expanduser(raw)))
    if root in {os.path.realpath(os.sep), os.path.realpath(os.path.expanduser("~"))}:
        raise ParameterError(f"refusing to write patches into {root}: choose a dedicated folder")
    if os.path.exists(root) and not os.path.isdir(root):
        raise ParameterError(f"output folder {root} exists and is not a folder")
    marker = read_marker(root) if os.path.isdir(root) else None
    if os.path.isdir(root) and os.listdir(root):
        if marker is None:
            raise ParameterError(
                f"output folder {root} is not empty and was not made by make_patch_dataset; "
                "choose an empty or new folder")
        if marker.get("dataset") != dataset_name:
            raise ParameterError(
                f"output folder {root} holds the patch dataset {marker.get('dataset')!r}, "
                f"not {dataset_name!r}; choose another folder")
    try:
        os.makedirs(root, exist_ok=True)
        if marker is None:
            content = {"dataset": dataset_name, **source, "created": _dt.datetime.now().isoformat(),
                       "xpatch_version": __version__}
            OutputFolder(root).write((MARKER,), json.dumps(content, indent=1).encode("utf-8"))
    except OSError as e:
        raise ParameterError(f"output folder {root} is not writable: {e}") from e
    return root


class OutputFolder:
    """Writes files under an output folder and nowhere else.

    Each folder part must be an id or a field name and each file name an id
    with ``.jpg`` or ``.png``; every folder on the way must resolve inside
    the output folder (a link leaving it is refused). Files are written to a
    temporary name opened with ``O_EXCL | O_NOFOLLOW``, then renamed.

    Args:
        root: the output folder (a real path, see :func:`prepare_output_dir`)
    """

    def __init__(self, root: str):
        self.root = root
        self._checked: set[str] = set()
        self._lock = threading.Lock()

    def path(self, parts: tuple[str, ...]) -> str:
        """The path of ``parts`` (folders, then the file name), its folders
        created and checked.

        Raises:
            XpatchError: if a part is not a plain name or a folder is a link
                leaving the output folder
        """
        *folders, name = parts
        for part in folders:
            if not (_HEX_ID.match(part) or _FIELD.match(part)):
                raise XpatchError(f"refused path part {part!r}")
        if name != MARKER and not re.fullmatch(r"[0-9a-f]{24}\.(jpg|png)", name):
            raise XpatchError(f"refused file name {name!r}")
        folder = os.path.join(self.root, *folders)
        if folder not in self._checked:
            current = self.root
            for part in folders:  # one level at a time: nothing is created through a link
                current = os.path.join(current, part)
                if os.path.islink(current) or (os.path.exists(current) and os.path.realpath(current) != current):
                    raise XpatchError(f"{current} is a link or lies outside the output folder {self.root}; refused")
                try:
                    os.mkdir(current)
                except FileExistsError:
                    if not os.path.isdir(current) or os.path.realpath(current) != current:
                        raise XpatchError(f"{current} is not a folder inside {self.root}; refused") from None
            with self._lock:
                self._checked.add(folder)
        return os.path.join(folder, name)

    def write(self, parts: tuple[str, ...], data: bytes) -> str:
        """Writes a file atomically, never through a link.

        Args:
            parts: folders, then the file name
            data: the bytes

        Returns:
            the file's path
        """
        return write_atomically(self.path(parts), lambda f: f.write(data), 0o644)


# -- decoding and cropping ---------------------------------------------------------------


@dataclass
class SourceImage:
    """A decoded source image.

    Attributes:
        image: the Pillow image as displayed (EXIF orientation applied), in
            a mode its crop format can store
        size: ``(width, height)`` as displayed
        format: ``"jpg"`` or ``"png"``, the crops' format
        save: keyword arguments of ``Image.save`` for the crops
    """

    image: Image.Image
    size: tuple[int, int]
    format: str
    save: dict[str, Any]


def _jpeg_options(src: Image.Image, mode: str) -> dict[str, Any]:
    """The source JPEG's quantisation tables and subsampling, when they
    apply to a crop in ``mode``; otherwise the default quality."""
    tables = getattr(src, "quantization", None)
    if src.format == "JPEG" and tables and ((mode == "L" and len(tables) == 1)
                                            or (mode == "RGB" and len(tables) in (2, 3))):
        opts: dict[str, Any] = {"qtables": [list(tables[k]) for k in sorted(tables)]}
        sampling = JpegImagePlugin.get_sampling(src)
        if sampling in (0, 1, 2):
            opts["subsampling"] = sampling
        return opts
    return {"quality": PATCH_DATASET["jpeg_quality"]}


def decode(path: str, image_format: str = "auto") -> SourceImage:
    """Decodes a source image once for all of its patches.

    Args:
        path: the image file
        image_format: ``"auto"`` (JPEG for JPEG sources, PNG otherwise),
            ``"jpg"`` or ``"png"``

    Returns:
        a :class:`SourceImage`

    Raises:
        ImageDecodeError: if the image cannot be read, with the reason
    """
    if not os.path.isfile(path):
        raise ImageDecodeError(path, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            src = Image.open(path)
        w, h = src.size
        if w * h > DEFAULT_MAX_PIXELS:
            raise ImageDecodeError(path, f"refused before decoding: {w}x{h} pixels exceeds the limit of "
                                         f"{DEFAULT_MAX_PIXELS:,} (XPATCH_MAX_PIXELS)")
        src.load()
        img = ImageOps.exif_transpose(src)
    except ImageDecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is this image's failure
        raise ImageDecodeError(path, f"cannot decode: {e or type(e).__name__}") from e
    fmt = image_format if image_format != "auto" else ("jpg" if src.format == "JPEG" else "png")
    if fmt == "jpg":
        if img.mode not in ("L", "RGB"):
            img = to_rgb(img)
        save: dict[str, Any] = {"format": "JPEG", **_jpeg_options(src, img.mode)}
    else:
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif img.mode not in _PNG_MODES:
            img = to_rgb(img)
        save = {"format": "PNG", "compress_level": 1}
    return SourceImage(img, img.size, fmt, save)


@dataclass
class Crop:
    """One cut patch.

    Attributes:
        image: the crop, of the patch box's full size
        valid_box: ``[x0, y0, x1, y1]`` of the image's pixels in the crop
        padded: True if part of the crop lies outside the image
    """

    image: Image.Image
    valid_box: tuple[int, int, int, int]
    padded: bool


def _fill_value(mode: str, fill: int) -> Any:
    if mode in ("RGBA", "LA"):
        return (fill,) * (len(mode) - 1) + (0,)
    if mode == "RGB":
        return (fill, fill, fill)
    if mode == "1":
        return int(fill > 127)
    return fill


def crop(src: SourceImage, box: tuple[int, int, int, int], fill: int = 0) -> Crop:
    """Cuts a patch, padding the part outside the image.

    Args:
        src: the decoded image
        box: ``[x0, y0, x1, y1]`` in whole pixels (may extend outside)
        fill: grey level of the padding, ``0..255``

    Returns:
        a :class:`Crop`

    Raises:
        XpatchError: if the box is empty or entirely outside the image
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    w, h = src.size
    if x1 <= x0 or y1 <= y0:
        raise XpatchError(f"empty patch box {[x0, y0, x1, y1]}")
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if ix1 <= ix0 or iy1 <= iy0:
        raise XpatchError(f"patch box {[x0, y0, x1, y1]} lies outside the {w}x{h} image")
    part = src.image.crop((ix0, iy0, ix1, iy1))
    valid = (ix0 - x0, iy0 - y0, ix1 - x0, iy1 - y0)
    if (ix0, iy0, ix1, iy1) == (x0, y0, x1, y1):
        return Crop(part, valid, False)
    canvas = Image.new(part.mode, (x1 - x0, y1 - y0), _fill_value(part.mode, fill))
    canvas.paste(part, valid[:2])
    return Crop(canvas, valid, True)


def encode(img: Image.Image, save: dict[str, Any]) -> bytes:
    """Encodes an image with the given ``Image.save`` options.

    Args:
        img: the image
        save: ``Image.save`` keyword arguments, ``format`` included

    Returns:
        the file's bytes
    """
    buf = io.BytesIO()
    img.save(buf, **save)
    return buf.getvalue()


def mask_png(mask: np.ndarray) -> bytes:
    """Encodes a segmentation mask as a lossless PNG (8 or 16 bits, or RGB).

    Args:
        mask: ``(H, W)`` integer or ``(H, W, 3)`` uint8 mask

    Returns:
        the PNG bytes

    Raises:
        XpatchError: for values a PNG cannot hold
    """
    m = np.asarray(mask)
    if m.ndim == 3:
        img = Image.fromarray(m[..., :3].astype(np.uint8), mode="RGB")
    elif m.dtype == bool or (m.size and int(m.max(initial=0)) <= 255 and int(m.min(initial=0)) >= 0):
        img = Image.fromarray(m.astype(np.uint8), mode="L")
    elif int(m.min(initial=0)) >= 0 and int(m.max(initial=0)) <= 65535:
        img = Image.fromarray(m.astype(np.uint16))
    else:
        raise XpatchError("segmentation values outside 0..65535 cannot be written as PNG")
    return encode(img, {"format": "PNG"})
