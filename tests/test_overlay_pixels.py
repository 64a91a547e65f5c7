"""The browser test's pixel measures (tests/overlay_pixels.py), checked on
overlays composed here: they tell a smooth colour-mapped overlay from a
blocky one and from a single-colour one."""

from __future__ import annotations

import numpy as np
import pytest

from tests import overlay_pixels as px
from xpatch_core.heatmaps import display_map

OPACITY = 0.6


@pytest.fixture(scope="module")
def photo(kitchen):  # noqa: ARG001 - skips without the kitchenware package
    from PIL import Image

    from xpatch_core.offline import kitchenware_images

    path = next(p for p in kitchenware_images() if p.endswith("0026.jpg"))  # a plate on a wooden table
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((450, 600)), dtype=np.float64)


def _net_map() -> np.ndarray:
    """A 5x5 map peaking at the centre (the kitchenware classifier's size)."""
    yy, xx = np.mgrid[0:5, 0:5]
    m = np.exp(-((xx - 2.0) ** 2 + (yy - 2.2) ** 2) / 3.0)
    return ((m - m.min()) / (m.max() - m.min())).astype(np.float32)


def test_smooth_blocky_and_single_colour_overlays_are_told_apart(photo):
    scale = px.colorscale()
    h, w = photo.shape[:2]
    stored = display_map(_net_map(), (w, h))  # what a run stores: smooth, display size
    smooth_v = px.resize_map(stored, (w, h))
    blocky_v = px.resize_map(np.rint(_net_map() * 255), (w, h), nearest=True)
    smooth = px.composite(photo, smooth_v, OPACITY, scale)
    blocky = px.composite(photo, blocky_v, OPACITY, scale)

    s, b = px.unexplained_jumps(smooth, photo), px.unexplained_jumps(blocky, photo)
    assert s < 0.001 < b and s < b / 5, (s, b)

    mask = smooth_v > 0
    colours = px.overlay_colours(smooth, photo, OPACITY)
    bands = px.colour_by_value(colours, smooth_v, mask)
    assert len(bands) >= 6
    for v, mean, _ in bands:
        assert np.abs(mean - scale[int(round(v * 255))]).max() < 20, (v, mean)
    assert px.hue(bands[0][1]) - px.hue(bands[-1][1]) > 150  # purple to yellow
    opacity, residual = px.fitted_opacity(smooth, photo, scale[np.rint(smooth_v * 255).astype(int)], mask)
    assert abs(opacity - OPACITY) < 0.02 and residual < 2

    # one colour whose alpha follows the value (FiftyOne's "colour by field"): the bands keep one hue
    field = photo + (smooth_v * OPACITY)[..., None] * (np.array([0.0, 200.0, 200.0]) - photo)
    one = px.colour_by_value(px.overlay_colours(field, photo, OPACITY), smooth_v, mask)
    assert max(np.abs(mean - scale[int(round(v * 255))]).max() for v, mean, _ in one) > 60

    # stronger on the plate than on the wood, read back from the colours
    tinted = np.abs(smooth - photo).max(axis=2) > 2
    vh = px.value_from_colour(colours, tinted, scale)
    centre, border = px.region(vh.shape, (0.3, 0.35, 0.7, 0.65)), ~px.region(vh.shape, (0.1, 0.1, 0.9, 0.9))
    assert abs(vh[centre].mean() - smooth_v[centre].mean()) < 0.03
    assert vh[centre].mean() > 0.7 > 0.3 > vh[border].mean()


def test_image_rect_is_where_the_overlay_changes_pixels():
    off = np.zeros((100, 200, 3))
    on = off.copy()
    on[20:70, 50:90] = 40.0
    assert px.image_rect(on, off, {"x": 10, "y": 5, "width": 150, "height": 90}) == (50, 20, 90, 70)
    with pytest.raises(AssertionError, match="changes no pixel"):
        px.image_rect(off, off, {"x": 0, "y": 0, "width": 200, "height": 100})
