"""Stored heatmaps (display resolution, provenance) and reading other tools' heatmaps."""

from __future__ import annotations

from types import SimpleNamespace

import bson
import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from xpatch_core.defaults import HEATMAP
from xpatch_core.errors import ParameterError
from xpatch_core.heatmaps import (
    HeatmapError,
    decode_network_map,
    display_map,
    display_size,
    encode_network_map,
    read_heatmap,
)
from xpatch_core.sampler import sample_patches

W, H = 400, 300
BLOB = (280, 90)  # x, y of the blob's peak, in image pixels
RADIUS = 40


def _blob(w: int = W, h: int = H) -> np.ndarray:
    """A Gaussian blob in [0, 1] at BLOB, on a (h, w) grid covering the image."""
    y = (np.arange(h) + 0.5) * H / h
    x = (np.arange(w) + 0.5) * W / w
    d2 = (x[None, :] - BLOB[0]) ** 2 + (y[:, None] - BLOB[1]) ** 2
    return np.exp(-d2 / (2 * 25.0**2))


def _check(m: np.ndarray, peak: float = 1.0, tol: float = 4.0) -> None:
    """The blob's peak comes back where it was (within ``tol`` pixels: 8-bit
    maps have a plateau at their top), at the right scale, and patches land on it."""
    assert m.dtype == np.float32 and m.ndim == 2
    assert m.min() >= 0.0 and m.max() == pytest.approx(peak, abs=2 / 255)
    y, x = np.unravel_index(int(m.argmax()), m.shape)
    px, py = (x + 0.5) * W / m.shape[1], (y + 0.5) * H / m.shape[0]
    assert abs(px - BLOB[0]) <= tol + W / m.shape[1] and abs(py - BLOB[1]) <= tol + H / m.shape[0]
    ps = sample_patches(m, (W, H), 12, 32, seed=0, key="blob", temperature=8.0, replace=False, max_iou=0.7)
    cx = (ps.boxes[:, 0] + ps.boxes[:, 2]) / 2
    cy = (ps.boxes[:, 1] + ps.boxes[:, 3]) / 2
    assert len(ps) == 12 and np.all(np.hypot(cx - BLOB[0], cy - BLOB[1]) < RADIUS)


def _png(path, arr: np.ndarray) -> str:
    Image.fromarray(arr).save(path)
    return str(path)


def test_display_size_keeps_the_aspect_ratio():
    assert display_size((640, 480), 512) == (512, 384)
    assert display_size((480, 640), 512) == (384, 512)
    assert display_size((150, 100), 512) == (150, 100), "never more pixels than the image"
    assert display_size((5000, 10), 512) == (512, 1)
    assert display_size((640, 480)) == display_size((640, 480), HEATMAP["long_side"])
    with pytest.raises(ParameterError):
        display_size((0, 10), 512)
    with pytest.raises(ParameterError):
        display_size((10, 10), 0)


def test_display_map_is_smooth_uint8_at_display_size():
    net = _blob(19, 19)  # a network-resolution map, squashed over the image
    net = net / net.max()
    d = display_map(net, (W, H), 320)
    assert d.dtype == np.uint8 and d.shape == (240, 320)
    assert d.max() == 255 and d.min() == 1  # 1, not 0: the App draws 0 as transparent
    _check(read_heatmap(fo.Heatmap(map=d, range=[0, 255])), tol=H / 19 / 2)  # half a network cell
    # The App draws the stored map scaled without smoothing: no block edges at 1000 px.
    view = np.asarray(Image.fromarray(d).resize((1000, 750), Image.Resampling.NEAREST), np.int16)
    blocks = np.asarray(Image.fromarray(np.rint(net * 255).astype(np.uint8)).resize(
        (1000, 750), Image.Resampling.NEAREST), np.int16)
    assert np.abs(np.diff(view, axis=1)).max() <= 12
    assert np.abs(np.diff(blocks, axis=1)).max() > 40, "the network map drawn as is shows blocks"
    with pytest.raises(ParameterError, match="2-D"):
        display_map(np.zeros((2, 3, 4)), (W, H))
    with pytest.raises(ParameterError, match="NaN"):
        display_map(np.full((3, 3), np.nan), (W, H))
    with pytest.raises(ParameterError, match="upsampling"):
        display_map(net, (W, H), method="lanczos")


def test_network_map_provenance_round_trips_compactly():
    net = np.random.default_rng(0).uniform(0, 1, (19, 19)).astype(np.float32)
    text = encode_network_map(net)
    assert text.startswith("u8:19x19:") and len(text) < 500
    back = decode_network_map(text)
    assert back.shape == (19, 19) and np.abs(back - net).max() <= 0.5 / 255 + 1e-6
    assert len(bson.encode({"network_map": text})) < 520
    with pytest.raises(HeatmapError):
        decode_network_map("u8:19x19:AAAA")
    with pytest.raises(HeatmapError):
        decode_network_map("not a map")


@pytest.mark.parametrize(
    "form",
    ["float32", "float64-range", "float-signed-range", "uint8", "uint8-range", "uint16-small", "uint16-range",
     "rgb-array"],
)
def test_read_in_database_maps_with_fiftyone_semantics(form):
    blob = _blob()
    heatmap, peak = {
        "float32": (fo.Heatmap(map=blob.astype(np.float32)), 1.0),
        "float64-range": (fo.Heatmap(map=blob * 10.0, range=[0, 20]), 0.5),
        "float-signed-range": (fo.Heatmap(map=blob * 2.0 - 1.0, range=[-1, 1]), 1.0),
        "uint8": (fo.Heatmap(map=np.rint(blob * 255).astype(np.uint8)), 1.0),
        "uint8-range": (fo.Heatmap(map=np.rint(blob * 100).astype(np.uint8), range=[0, 100]), 1.0),
        "uint16-small": (fo.Heatmap(map=np.rint(blob * 255).astype(np.uint16)), 1.0),
        "uint16-range": (fo.Heatmap(map=np.rint(blob * 65535).astype(np.uint16), range=[0, 65535]), 1.0),
        "rgb-array": (fo.Heatmap(map=np.stack([np.rint(blob * 255), np.zeros_like(blob), np.full_like(blob, 255)],
                                              axis=2).astype(np.uint8)), 1.0),
    }[form]
    ds = fo.Dataset()
    try:
        ds.add_sample(fo.Sample(filepath="/tmp/xpatch-heatmap-test.jpg", heat=heatmap))
        stored = ds.first().heat  # through the real database
        _check(read_heatmap(stored), peak)
    finally:
        ds.delete()


@pytest.mark.parametrize("form", ["png8", "png8-range", "png16", "png16-range", "png-rgb", "png-rgba", "png-la",
                                  "fiftyone-export"])
def test_read_map_files_with_fiftyone_semantics(form, tmp_path):
    blob = _blob()
    u8 = np.rint(blob * 255).astype(np.uint8)
    path = tmp_path / "map.png"
    peak = 1.0
    if form == "png8":
        heatmap = fo.Heatmap(map_path=_png(path, u8))
    elif form == "png8-range":
        heatmap = fo.Heatmap(map_path=_png(path, (blob * 200).astype(np.uint8)), range=[0, 250])
        peak = 0.8
    elif form in ("png16", "png16-range"):
        Image.fromarray(np.rint(blob * 65535).astype(np.uint16)).save(path)
        heatmap = fo.Heatmap(map_path=str(path), range=[0, 65535] if form == "png16-range" else None)
    elif form == "png-rgb":
        heatmap = fo.Heatmap(map_path=_png(path, np.stack([u8, 255 - u8, np.zeros_like(u8)], axis=2)))
    elif form == "png-rgba":
        heatmap = fo.Heatmap(map_path=_png(path, np.stack([u8, u8, u8, np.full_like(u8, 255)], axis=2)))
    elif form == "png-la":
        Image.fromarray(np.stack([u8, np.full_like(u8, 255)], axis=2), mode="LA").save(path)
        heatmap = fo.Heatmap(map_path=str(path))
    else:  # FiftyOne's own export of an in-database uint8 map: range cleared, 8-bit PNG
        heatmap = fo.Heatmap(map=u8)
        heatmap.export_map(str(path), update=True)
        assert heatmap.map is None and heatmap.range is None
    _check(read_heatmap(heatmap), peak)


def test_sampling_from_the_stored_display_map_lands_on_the_blob():
    net = _blob(19, 19)
    d = display_map(net / net.max(), (W, H))
    _check(read_heatmap(fo.Heatmap(map=d, range=[0, 255])), tol=H / 19 / 2)
    _check(read_heatmap(fo.Heatmap(map=d)), tol=H / 19 / 2)  # uint8 without range: [0, 255]


def test_maps_that_cannot_be_interpreted_raise_with_the_reason(tmp_path):
    blob = _blob()
    assert read_heatmap(None) is None
    assert read_heatmap(fo.Heatmap()) is None
    cases = [
        (fo.Heatmap(map=blob.ravel()), "2-D"),
        (fo.Heatmap(map=np.zeros((2, 3, 4, 5))), "2-D"),
        (fo.Heatmap(map=np.zeros((30, 40, 2), np.uint8)), "2 channels"),
        (fo.Heatmap(map=np.full((30, 40), np.nan)), "no finite value"),
        # FiftyOne validates the range of a Heatmap it builds, not of values read with values()
        (SimpleNamespace(map=blob, map_path=None, range=[1, 1]), "max must exceed min"),
        (SimpleNamespace(map=blob, map_path=None, range=[2, 1]), "max must exceed min"),
        (SimpleNamespace(map=blob, map_path=None, range=[0]), "not"),
        (SimpleNamespace(map=np.array([["a", "b"]]), map_path=None, range=None), "not numbers"),
        (fo.Heatmap(map=blob * 255.0), r"set the heatmap's range"),  # a 0..255 float map without range
        (fo.Heatmap(map=np.rint(blob * 65535).astype(np.uint16)), r"\[0, 65535\]"),
        (fo.Heatmap(map_path=str(tmp_path / "missing.png")), "not found"),
    ]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    cases.append((fo.Heatmap(map_path=str(bad)), "cannot read"))
    for heatmap, reason in cases:
        with pytest.raises(HeatmapError, match=reason):
            read_heatmap(heatmap)


def test_nan_is_background_and_values_outside_an_explicit_range_clip():
    blob = _blob()
    m = blob.copy()
    m[:10, :10] = np.nan
    out = read_heatmap(fo.Heatmap(map=m))
    assert np.all(out[:10, :10] == 0.0)
    _check(out)
    clipped = read_heatmap(fo.Heatmap(map=blob * 4.0 - 1.0, range=[0, 2]))
    assert clipped.min() == 0.0 and clipped.max() == 1.0
