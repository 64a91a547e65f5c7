"""Image decoding: EXIF orientation, odd modes to RGB, a pixel limit.

Everything here uses Pillow and NumPy only.
"""

from __future__ import annotations

import collections
import itertools
import os
import re
import stat
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

from xpatch_core import settings
from xpatch_core.errors import ImageDecodeError, ParameterError

#: Batches of images decoded ahead of the model (:func:`iter_decoded_batches`).
DECODE_PREFETCH = 2

#: Default refusal limit for decoded pixels (width * height). A decompression
#: bomb is refused from its header, before any pixel is decoded.
DEFAULT_MAX_PIXELS = settings.max_pixels()
# Pillow refuses images over twice its own MAX_IMAGE_PIXELS before xpatch can look at
# them; a larger limit asked for through XPATCH_MAX_PIXELS raises Pillow's accordingly.
if Image.MAX_IMAGE_PIXELS is not None and DEFAULT_MAX_PIXELS > 2 * Image.MAX_IMAGE_PIXELS:
    Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS // 2 + 1

_ROTATING_ORIENTATIONS = (5, 6, 7, 8)


@dataclass(frozen=True)
class DecodedImage:
    """An image prepared for a network.

    Attributes:
        array: float32 ``(height, width, 3)`` RGB array in ``[0, 255]`` at the
            requested network size (or the original size if none was asked)
        size: ``(width, height)`` of the image as displayed (after EXIF
            orientation), the frame in which boxes are expressed
        mode: the original Pillow mode
    """

    array: np.ndarray
    size: tuple[int, int]
    mode: str


def _name(src: Any) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return f"<{type(src).__name__}>"


def _open(src: Any, max_pixels: int) -> Image.Image:
    """Opens ``src`` lazily and checks it before decoding."""
    name = _name(src)
    if isinstance(src, Image.Image):
        img = src
    else:
        path = os.fspath(src)
        if not os.path.exists(path):
            raise ImageDecodeError(name, "broken symbolic link (its target is missing, or it loops)"
                                   if os.path.islink(path) else "file not found")
        if os.path.isdir(path):
            raise ImageDecodeError(name, "is a directory, not an image file")
        if not stat.S_ISREG(os.stat(path).st_mode):  # opening a named pipe would wait for a writer
            raise ImageDecodeError(name, "not a regular file (a named pipe, socket or device)")
        if os.path.getsize(path) == 0:
            raise ImageDecodeError(name, "empty file (0 bytes)")
        try:
            with warnings.catch_warnings():
                # xpatch's own limit, checked below from the header, governs: Pillow's
                # warning threshold is half of it.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(path)
        except Image.DecompressionBombError as e:
            found = re.search(r"\((\d+) pixels\)", str(e))
            count = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
            limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or 0)) or max_pixels
            raise ImageDecodeError(
                name,
                f"refused before decoding: {count} exceeds the limit of {limit:,} "
                "(a decompression bomb, or set XPATCH_MAX_PIXELS to allow larger images)",
            ) from e
        except Image.UnidentifiedImageError as e:
            raise ImageDecodeError(name, "not a recognised image format") from e
        except OSError as e:
            if "truncat" in str(e).lower():
                raise ImageDecodeError(name, f"truncated or corrupt image data ({e})") from e
            raise ImageDecodeError(name, f"cannot open: {e}") from e
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageDecodeError(name, f"invalid size {w}x{h}")
    if w * h > max_pixels:
        raise ImageDecodeError(
            name,
            f"refused before decoding: {w}x{h} = {w * h:,} pixels exceeds the limit of "
            f"{max_pixels:,} (set XPATCH_MAX_PIXELS to change it)",
        )
    if getattr(img, "n_frames", 1) > 1 and img.format not in ("GIF", "PNG", "WEBP", "TIFF", "MPO"):
        raise ImageDecodeError(name, f"multi-frame {img.format} is not a still image")
    return img


def _display_size(img: Image.Image) -> tuple[int, int]:
    w, h = img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - broken EXIF is ignored, not fatal
        orientation = 1
    if orientation in _ROTATING_ORIENTATIONS:
        return h, w
    return w, h


def to_rgb(img: Image.Image) -> Image.Image:
    """Converts any Pillow mode to 8-bit RGB.

    Transparent images are composited over white; 16-bit and 32-bit
    integer or float images are scaled to 8 bits by their value range
    rather than clipped.

    Args:
        img: a decoded Pillow image

    Returns:
        an RGB Pillow image
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            hi = 65535.0
        else:
            finite = arr[np.isfinite(arr)]
            hi = float(finite.max()) if finite.size else 1.0
            hi = 255.0 if hi <= 255.0 else (65535.0 if hi <= 65535.0 else hi)
        arr = np.clip(np.nan_to_num(arr) / hi * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("LA", "PA", "La"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def load_image(
    src: Any,
    size: tuple[int, int] | Callable[[tuple[int, int]], tuple[int, int]] | None = None,
    *,
    max_pixels: int | None = None,
) -> DecodedImage:
    """Decodes an image for a network.

    Honours EXIF orientation, converts L, LA, P, RGBA, I;16, CMYK and other
    modes to RGB, refuses images over a pixel limit from their header, and
    resizes (squashing, so that a map covers the whole image) to ``size``.

    Args:
        src: a path, a Pillow image or an ``(H, W)``, ``(H, W, 1|3|4)`` array
            (uint8 or float in ``[0, 255]``)
        size: ``(width, height)`` to resize to, a function from the displayed
            ``(width, height)`` to that size, or None for the original size
        max_pixels: the pixel limit; defaults to :data:`DEFAULT_MAX_PIXELS`

    Returns:
        a :class:`DecodedImage`

    Raises:
        ImageDecodeError: if the image cannot be used, with the reason
    """
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    name = _name(src)
    if isinstance(src, np.ndarray):
        if callable(size):
            a = np.asarray(src)
            size = size((a.shape[1], a.shape[0])) if a.ndim >= 2 else None
        return _from_array(src, size)
    img = _open(src, limit)
    try:
        display = _display_size(img)
        if callable(size):
            size = tuple(size(display))
        if size is not None and img.format == "JPEG" and img.mode in ("RGB", "L", "CMYK"):
            # Decode at a reduced DCT scale when much larger than needed.
            tw, th = size
            if display != img.size:
                tw, th = th, tw
            img.draft(img.mode, (tw, th))
        img.load()
        img = ImageOps.exif_transpose(img)
        mode = img.mode
        rgb = to_rgb(img)
    except ImageDecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is this image's failure
        reason = str(e) or type(e).__name__
        if "truncated" in reason.lower() or isinstance(e, (SyntaxError, EOFError)):
            reason = f"truncated or corrupt image data ({reason})"
        raise ImageDecodeError(name, f"cannot decode: {reason}") from e
    if size is not None and rgb.size != tuple(size):
        rgb = rgb.resize(tuple(size), Image.Resampling.BILINEAR)
    return DecodedImage(np.asarray(rgb, dtype=np.float32), display, mode)


def _from_array(arr: np.ndarray, size: tuple[int, int] | None) -> DecodedImage:
    a = np.asarray(arr)
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3:
        # Same resampling as a decoded file, so an array and its file agree.
        img = Image.fromarray(a, mode="RGB")
        if size is not None and img.size != tuple(size):
            img = img.resize(tuple(size), Image.Resampling.BILINEAR)
        return DecodedImage(np.asarray(img, dtype=np.float32), (a.shape[1], a.shape[0]), "array")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ImageDecodeError("<array>", f"expected (H, W[, 1|3|4]) array, got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.shape[2] == 4:
        alpha = a[:, :, 3:4].astype(np.float32) / (255.0 if a.dtype == np.uint8 else max(1.0, float(a[:, :, 3].max())))
        a = a[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    h, w = a.shape[:2]
    if h < 1 or w < 1:
        raise ImageDecodeError("<array>", f"invalid size {w}x{h}")
    if not np.all(np.isfinite(a)):
        raise ImageDecodeError("<array>", "array holds NaN or inf")
    a32 = a.astype(np.float32, copy=False)
    if size is not None and (w, h) != tuple(size):
        chans = [
            np.asarray(Image.fromarray(a32[:, :, c], mode="F").resize(tuple(size), Image.Resampling.BILINEAR))
            for c in range(3)
        ]
        a32 = np.stack(chans, axis=2)
    return DecodedImage(np.ascontiguousarray(a32, dtype=np.float32), (w, h), "array")


def image_size(path: str | os.PathLike, *, max_pixels: int | None = None) -> tuple[int, int]:
    """Returns the displayed ``(width, height)`` of an image from its header.

    Args:
        path: the image file
        max_pixels: the pixel limit

    Returns:
        ``(width, height)`` after EXIF orientation

    Raises:
        ImageDecodeError: if the header cannot be read
    """
    img = _open(path, DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    return _display_size(img)


def _decode_one(index: int, src: Any, size: Any,
                max_pixels: int | None) -> DecodedImage | ImageDecodeError:
    try:
        return load_image(src, size, max_pixels=max_pixels)
    except ImageDecodeError as e:
        return e
    except Exception as e:  # noqa: BLE001 - a bad input fails its own sample only
        return ImageDecodeError(_name(src)[:200], f"{type(e).__name__}: {e}")


def decode_error(src: Any, *, max_pixels: int | None = None) -> str | None:
    """Why an image cannot be used, found by decoding it as a run would
    (at a small size: JPEGs decode at a reduced scale), or None if it can.

    Args:
        src: a path or a Pillow image
        max_pixels: the pixel limit; defaults to :data:`DEFAULT_MAX_PIXELS`

    Returns:
        the reason, or None
    """
    got = _decode_one(0, src, (8, 8), max_pixels)
    return got.reason if isinstance(got, ImageDecodeError) else None


def _decode_timed(clock: Callable[[str, float], None], index: int, src: Any, size: Any,
                  max_pixels: int | None) -> DecodedImage | ImageDecodeError:
    t = time.perf_counter()
    try:
        return _decode_one(index, src, size, max_pixels)
    finally:
        clock("decode", time.perf_counter() - t)


def iter_decoded_batches(
    sources: Iterable[Any],
    size: tuple[int, int] | Callable[[tuple[int, int]], tuple[int, int]] | None,
    batch_size: int,
    *,
    workers: int | None = None,
    max_pixels: int | None = None,
    prefetch: int | None = None,
    clock: Callable[[str, float], None] | None = None,
) -> Iterator[list[tuple[int, Any, DecodedImage | ImageDecodeError]]]:
    """Decodes images in batches on a thread pool, ahead of their use.

    While the caller works on one batch (a model call), the next
    ``prefetch`` batches are decoded, so at most ``prefetch + 1`` batches
    are in memory. A bad image comes back as an :class:`ImageDecodeError`
    in its place and does not stop the others.

    Args:
        sources: paths, Pillow images or arrays (read lazily)
        size: ``(width, height)`` to resize to, a function from an image's
            displayed ``(width, height)`` to the size to resize it to (e.g.
            to keep its aspect ratio), or None
        batch_size: images per batch
        workers: decoding threads (default ``XPATCH_DECODE_WORKERS``: the
            usable cores, at most 16)
        max_pixels: the pixel limit (default :data:`DEFAULT_MAX_PIXELS`)
        prefetch: batches decoded ahead (default ``DECODE_PREFETCH``, 2)
        clock: called as ``clock("decode", seconds)`` after each image, from
            the decoding threads (it must be thread-safe), or None

    Returns:
        an iterator of batches, each a list of ``(index, source, decoded
        image or error)`` in input order
    """
    ahead = DECODE_PREFETCH if prefetch is None else int(prefetch)
    if ahead < 1:
        raise ParameterError(f"prefetch must be >= 1, got {prefetch!r}")
    it = enumerate(sources)
    pool = ThreadPoolExecutor(max_workers=workers or settings.decode_workers(), thread_name_prefix="xpatch-decode")

    def submit() -> list[tuple[int, Any, Any]] | None:
        chunk = list(itertools.islice(it, batch_size))
        if not chunk:
            return None
        if clock is None:
            return [(i, src, pool.submit(_decode_one, i, src, size, max_pixels)) for i, src in chunk]
        return [(i, src, pool.submit(_decode_timed, clock, i, src, size, max_pixels)) for i, src in chunk]

    try:
        queue: collections.deque = collections.deque()
        while len(queue) < ahead and (nxt := submit()) is not None:
            queue.append(nxt)
        while queue:
            current = queue.popleft()
            if (nxt := submit()) is not None:
                queue.append(nxt)
            yield [(i, src, fut.result()) for i, src, fut in current]
    finally:
        # a consumer that stops early does not wait for the batches decoded ahead
        pool.shutdown(wait=True, cancel_futures=True)


ImageFile.LOAD_TRUNCATED_IMAGES = False
