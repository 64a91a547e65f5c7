"""Contact sheets: the top-scoring patches of a run in one PNG (Pillow only).

Rules:

-   A sheet is a ``.png`` file; it carries a PNG text chunk
    (``Software: xpatch contact sheet``) that marks it as ours.
-   An existing file is replaced only when it is a sheet we wrote (it holds
    the mark): a user's file of the same name is never overwritten, and a
    folder is never a sheet path (:func:`check_sheet_path`).
"""

from __future__ import annotations

import math
import os
from typing import Any

from PIL import Image, ImageDraw, ImageOps, PngImagePlugin

from xpatch_core.errors import ParameterError
from xpatch_core.paths import write_atomically

#: The PNG text chunk that marks a contact sheet as written by xpatch.
SHEET_MARK = ("Software", "xpatch contact sheet")


def is_contact_sheet(path: str) -> bool:
    """Whether a file is a contact sheet xpatch wrote (a PNG with
    :data:`SHEET_MARK`).

    Args:
        path: a file path

    Returns:
        True or False (also for a missing or unreadable file)
    """
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.info.get(SHEET_MARK[0]) == SHEET_MARK[1]
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def check_sheet_path(path: str) -> None:
    """Checks that a contact sheet may be written at ``path``, before any work.

    Args:
        path: the sheet's path

    Raises:
        ParameterError: for a name not ending in ``.png``, a folder, or an
            existing file that is not a sheet xpatch wrote
    """
    if not str(path).lower().endswith(".png"):
        raise ParameterError(f"contact sheet {path} must be a .png file path")
    if os.path.isdir(path):
        raise ParameterError(f"contact sheet {os.path.abspath(path)} is a folder: give a .png file path")
    if os.path.lexists(path) and not is_contact_sheet(path):
        raise ParameterError(f"contact sheet {os.path.abspath(path)} exists and is not a contact sheet xpatch "
                             "wrote; it is left alone: give another path, or move that file away")


def top_patches(sample_collection: Any, field: str = "patches", top: int = 48) -> list[dict[str, Any]]:
    """Returns the best-scoring patches of a collection.

    Args:
        sample_collection: a FiftyOne collection with a ``fo.Detections`` field
        field: the patches field
        top: how many

    Returns:
        dicts with ``filepath``, ``bounding_box``, ``label`` and ``score``,
        best first
    """
    paths, dets = sample_collection.values(["filepath", f"{field}.detections"])
    rows = []
    for path, ds in zip(paths, dets):
        for d in ds or []:
            rows.append({"filepath": path, "bounding_box": list(d.bounding_box), "label": d.label,
                         "score": float(d.confidence if d.confidence is not None else 0.0)})
    rows.sort(key=lambda r: -r["score"])
    return rows[:top]


def contact_sheet(
    sample_collection: Any,
    path: str,
    field: str = "patches",
    *,
    top: int = 48,
    tile: int = 128,
    columns: int = 8,
) -> str | None:
    """Writes a PNG grid of the top-scoring patches, labelled with class and score.

    Args:
        sample_collection: a FiftyOne collection with a patches field
        path: the PNG to write (written to a temporary name, then renamed;
            see :func:`check_sheet_path`)
        field: the patches field
        top: how many patches
        tile: tile size in pixels
        columns: tiles per row

    Returns:
        the path written, or None if there were no patches

    Raises:
        ParameterError: if ``path`` is not a ``.png`` path, or holds a file
            xpatch did not write
    """
    check_sheet_path(path)
    rows = top_patches(sample_collection, field, top)
    if not rows:
        return None
    cols = min(columns, len(rows))
    nrows = math.ceil(len(rows) / cols)
    caption = 16
    sheet = Image.new("RGB", (cols * tile, nrows * (tile + caption)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    cache: dict[str, Image.Image] = {}
    for k, r in enumerate(rows):
        img = cache.get(r["filepath"])
        if img is None:
            try:
                with Image.open(r["filepath"]) as im:
                    img = ImageOps.exif_transpose(im).convert("RGB")
            except OSError:
                continue
            if len(cache) > 16:
                cache.clear()
            cache[r["filepath"]] = img
        w, h = img.size
        x, y, bw, bh = r["bounding_box"]
        box = (round(x * w), round(y * h), round((x + bw) * w), round((y + bh) * h))
        crop = img.crop(box)
        crop.thumbnail((tile, tile))
        cx, cy = (k % cols) * tile, (k // cols) * (tile + caption)
        sheet.paste(crop, (cx + (tile - crop.width) // 2, cy + (tile - crop.height) // 2))
        draw.text((cx + 3, cy + tile + 2), f"{str(r['label'])[:12]} {r['score']:.2f}", fill=(230, 230, 230))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # a fresh temporary name, never through a symlink, renamed over the sheet once complete
    mark = PngImagePlugin.PngInfo()
    mark.add_text(*SHEET_MARK)
    return write_atomically(path, lambda f: sheet.save(f, format="PNG", pnginfo=mark))
