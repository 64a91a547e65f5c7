"""Contact sheets: the top-scoring patches of a run in one PNG (Pillow only)."""

from __future__ import annotations

import math
import os
from typing import Any

from PIL import Image, ImageDraw, ImageOps

from xpatch_core.paths import write_atomically


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
        path: the PNG to write (written to a temporary name, then renamed)
        field: the patches field
        top: how many patches
        tile: tile size in pixels
        columns: tiles per row

    Returns:
        the path written, or None if there were no patches
    """
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
    return write_atomically(path, lambda f: sheet.save(f, format="PNG"))
