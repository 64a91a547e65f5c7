"""Reliability and security: bad input, faults, concurrent runs, untrusted models and paths.

Every case runs against the real embedded database. Real ImageNet Xception
weights (and the fine-tuned kitchenware classifier) are used where the result
depends on the model; a tiny random Keras model elsewhere, and in the
subprocess cases, which must start quickly. ``docs/reliability.md`` lists each
case, what a user gets, and the test that checks it.
"""

from __future__ import annotations

import errno
import glob
import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import zlib

import fiftyone as fo
import fiftyone.core.odm as foodm
import fiftyone.operators as foo
import numpy as np
import pymongo
import pytest
from fiftyone.operators.executor import ExecutionError
from PIL import Image

from xpatch_core import runs
from xpatch_core.errors import ImageDecodeError, ModelError, ParameterError, XpatchError
from xpatch_core.heatmaps import decode_network_map, display_size
from xpatch_core.images import load_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HEX_PNG = r"[0-9a-f]{24}\.png"


# -- helpers ---------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _write_png_header(path: str, width: int, height: int) -> None:
    """A tiny PNG whose header claims ``width x height`` RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                + _png_chunk(b"IEND", b""))


def _photo(k: int = 0) -> str:
    from xpatch_core.offline import kitchenware_images

    return kitchenware_images()[k]


def _tiny_keras(path: str) -> str:
    """Saves a tiny random conv classifier (32x32 input, 3 classes)."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="feat")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3)(x)
    keras.Model(inp, out, name="tiny").save(path)
    return path


def _raw_docs(ds: fo.Dataset) -> list[dict]:
    coll = foodm.get_db_conn()[ds._sample_collection_name]
    return [{k: v for k, v in d.items() if k != "last_modified_at"} for d in coll.find({}, sort=[("_id", 1)])]


def _state(ds: fo.Dataset) -> dict:
    """Everything a refused call must leave unchanged."""
    ds.reload()
    schema = {k: (type(v).__name__, getattr(getattr(v, "document_type", None), "__name__", None))
              for k, v in ds.get_field_schema(flat=True).items()}
    infos = {k: runs.get_run_info(ds, k) for k in runs.list_runs(ds)}
    locks = list(runs.locks.collection().find({"dataset": ds.name}))
    return {"schema": schema, "runs": sorted(ds.list_runs()), "infos": infos, "docs": _raw_docs(ds),
            "locks": locks}


def _field_count(ds: fo.Dataset, field: str) -> int:
    coll = foodm.get_db_conn()[ds._sample_collection_name]
    return coll.count_documents({field: {"$exists": True, "$ne": None}})


def _plugin_module(suffix: str):
    foo.list_operators()
    return next(m for name, m in sys.modules.items() if name.endswith(f"xpatch.{suffix}"))


def _subprocess_env(**extra: str) -> dict[str, str]:
    env = os.environ.copy()
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", XPATCH_DECODE_WORKERS="1", **extra)
    return env


# A worker that runs one saliency run in its own process, slowed by a sleep after every
# written chunk so that the test can act while it is in the middle of the run, and held
# (after a chunk) while its hold file exists.
_WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    import fiftyone as fo
    from xpatch_core import runs

    name, field, model, map_dir, pause, hold = sys.argv[1:7]

    def slow(progress):
        time.sleep(float(pause))
        while hold and progress.done and os.path.exists(hold):
            time.sleep(0.05)

    ds = fo.load_dataset(name)
    summary = runs.run_saliency(ds, field, model, "activation", batch_size=4, map_dir=map_dir or None,
                                progress=slow)
    print("SUMMARY " + json.dumps(summary.to_dict()))
    """
)


def _start_worker(tmp_path, name: str, field: str, model: str, map_dir: str = "", pause: float = 0.3,
                  hold: str = ""):
    script = tmp_path / "xpatch_worker.py"
    script.write_text(_WORKER)
    return subprocess.Popen(
        [sys.executable, str(script), name, field, model, map_dir, str(pause), hold],
        cwd=ROOT, env=_subprocess_env(XPATCH_WRITE_CHUNK="4"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )


def _worker_summary(proc: subprocess.Popen, timeout: float = 150) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    line = next(ln for ln in out.splitlines() if ln.startswith("SUMMARY "))
    return json.loads(line[len("SUMMARY "):])


def _wait_until(pred, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited early while waiting for {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _persistent_photos(tmp_path, name: str, count: int) -> fo.Dataset:
    """A persistent dataset of ``count`` samples: the photos under distinct file names."""
    from xpatch_core.offline import kitchenware_images

    photos = kitchenware_images()
    folder = tmp_path / "imgs"
    folder.mkdir(exist_ok=True)
    paths = []
    for k in range(count):
        p = folder / f"img_{k:03d}.jpg"
        if not p.exists():
            os.symlink(photos[k % len(photos)], p)
        paths.append(str(p))
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name, persistent=True)
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    return ds


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory, kitchen) -> str:  # noqa: ARG001 - needs the kitchenware photos
    return _tiny_keras(str(tmp_path_factory.mktemp("tiny") / "tiny.keras"))


@pytest.fixture(scope="module")
def tiny(tiny_path):
    import xpatch_core as xp

    return xp.load_model(tiny_path)


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory, kitchen) -> dict[str, str]:  # noqa: ARG001
    """Broken, odd and extreme image files, by case name."""
    d = tmp_path_factory.mktemp("odd")
    photo = Image.open(_photo(0)).convert("RGB")  # 750x1000, portrait
    small = photo.resize((160, 120))
    out: dict[str, str] = {}

    def put(name: str) -> str:
        out[name.split(".")[0]] = str(d / name)
        return str(d / name)

    # broken
    open(put("zero.jpg"), "wb").close()
    data = open(_photo(1), "rb").read()
    with open(put("truncated.jpg"), "wb") as f:
        f.write(data[: len(data) // 2])
    with open(put("text.jpg"), "w") as f:
        f.write("This is a text file with an image extension.\n" * 20)
    put("missing.jpg")
    os.mkdir(put("folder.jpg"))
    _write_png_header(put("bomb.png"), 100_000, 100_000)
    # odd but fine
    shutil.copy(_photo(0), put("orig.jpg"))
    small.convert("L").save(put("gray.png"))
    la = small.convert("L").convert("LA")
    la.putalpha(Image.linear_gradient("L").resize(small.size))
    la.save(put("la.png"))
    small.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(put("palette.png"))
    rgba = small.convert("RGBA")
    alpha = np.full((120, 160), 255, np.uint8)
    alpha[:, :80] = 0  # left half fully transparent
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(put("rgba.png"))
    ramp = np.tile(np.linspace(0, 65535, 160).round().astype(np.uint16), (120, 1))
    Image.fromarray(ramp).save(put("gray16.png"))
    photo.convert("CMYK").save(put("cmyk.jpg"), quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: a viewer turns it 90 degrees clockwise
    photo.transpose(Image.Transpose.ROTATE_90).save(put("exif6.jpg"), exif=exif.tobytes(), quality=95)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(put("one.png"))
    small.resize((20, 20)).save(put("small.png"))
    return out


BROKEN = {
    "zero": "empty file",
    "truncated": "truncated",
    "text": "not a recognised image format",
    "missing": "file not found",
    "folder": "directory",
    "bomb": "limit",
}
DISPLAYED = {
    "orig": (750, 1000), "gray": (160, 120), "la": (160, 120), "palette": (160, 120), "rgba": (160, 120),
    "gray16": (160, 120), "cmyk": (750, 1000), "exif6": (750, 1000), "one": (1, 1), "small": (20, 20),
}


# -- bad images ------------------------------------------------------------------------------


def test_bad_images_fail_per_sample_and_odd_ones_succeed(xception, odd_images):
    ds = fo.Dataset()
    try:
        ds.add_samples([fo.Sample(filepath=p) for p in odd_images.values()])
        ids = dict(zip([os.path.basename(p).split(".")[0] for p in ds.values("filepath")], ds.values("id")))
        summary = runs.run_saliency(ds, "sal", xception, "activation", batch_size=8)

        # broken files: one failure each, with its reason; the run went on
        assert summary.failed == len(BROKEN) and summary.processed == len(DISPLAYED)
        reasons = {f["id"]: f["reason"] for f in summary.failures}
        for name, words in BROKEN.items():
            assert words in reasons[ids[name]], (name, reasons[ids[name]])
        assert "10,000,000,000 pixels exceeds the limit of 178,956,970" in reasons[ids["bomb"]]
        assert "XPATCH_MAX_PIXELS" in reasons[ids["bomb"]]
        stored = runs.get_run_info(ds, "sal")["results"]
        assert stored["failed"] == len(BROKEN) and stored["status"] == "completed"
        assert {f["id"]: f["reason"] for f in stored["failures"]} == reasons
        assert all(f["filepath"] == odd_images[n] for n in BROKEN for f in stored["failures"] if f["id"] == ids[n])
        failed = ds.match_tags("xpatch:sal:failed")
        assert sorted(failed.values("id")) == sorted(ids[n] for n in BROKEN)
        assert ds.exists("sal", False).values("id") == failed.values("id")

        # odd modes succeed, with the displayed size
        for name, size in DISPLAYED.items():
            hm = ds[ids[name]].sal
            assert (hm.width, hm.height) == size, name
            assert (hm.map.shape[1], hm.map.shape[0]) == display_size(size) and np.isfinite(hm.map).all()
            assert decode_network_map(hm.network_map).shape == (19, 19)
        # the EXIF-rotated copy is explained in its displayed orientation: same map as the original
        net = {k: decode_network_map(ds[ids[k]].sal.network_map) for k in ("orig", "exif6")}
        a, b = net["orig"].ravel(), net["exif6"].ravel()
        assert np.corrcoef(a, b)[0, 1] > 0.9
        rotated_back = np.rot90(net["exif6"], 1).ravel()  # what an ignored EXIF tag gives
        assert np.corrcoef(a, b)[0, 1] > np.corrcoef(a, rotated_back)[0, 1] + 0.2

        # patches larger than an image: a per-sample failure that says so; others get boxes
        ps = runs.run_patches(ds, "sal", "pp", n=4, size=64, border="error")
        preasons = {f["id"]: f["reason"] for f in ps.failures}
        assert set(preasons) == {ids["one"], ids["small"]}
        assert "patch 64x64 is larger than the image 1x1" in preasons[ids["one"]]
        assert "larger than the image 20x20" in preasons[ids["small"]] and "border=" in preasons[ids["small"]]
        assert sorted(ds.match_tags("xpatch:pp:failed").values("id")) == sorted(preasons)
        assert ps.processed == len(DISPLAYED) - 2 and ps.patches == 4 * ps.processed
        w, h = DISPLAYED["exif6"]
        for det in ds[ids["exif6"]].pp.detections:
            x, y, bw, bh = det.bounding_box
            assert 0 <= x and 0 <= y and x + bw <= 1 + 1e-9 and y + bh <= 1 + 1e-9
            assert round(bw * w) == 64 and round(bh * h) == 64  # 64 px in the displayed frame
        # with border="clip" the tiny images get boxes cut to the image
        clip = runs.run_patches(ds.select([ids["one"], ids["small"]]), "sal", "pclip", n=2, size=64,
                                border="clip")
        assert clip.failed == 0 and clip.processed == 2
        for det in ds[ids["one"]].pclip.detections:
            assert det.bounding_box == pytest.approx([0, 0, 1, 1])

        # fixing a file and running again resumes only the failed samples, and clears their tag
        shutil.copy(_photo(2), odd_images["zero"])
        again = runs.run_saliency(ds, "sal", xception, "activation", batch_size=8)
        assert (again.processed, again.skipped, again.failed) == (1, len(DISPLAYED), len(BROKEN) - 1)
        assert ids["zero"] not in ds.match_tags("xpatch:sal:failed").values("id")
    finally:
        open(odd_images["zero"], "wb").close()
        ds.delete()


def test_odd_modes_decode_to_sensible_rgb(odd_images):
    ref = np.asarray(Image.open(odd_images["orig"]).convert("RGB"), np.float32)
    cmyk = load_image(odd_images["cmyk"])
    assert cmyk.mode == "CMYK" and cmyk.size == (750, 1000)
    assert np.abs(cmyk.array - ref).mean() < 12  # not inverted, not washed out
    g16 = load_image(odd_images["gray16"]).array
    assert g16.shape == (120, 160, 3) and (g16[..., 0] == g16[..., 2]).all()
    assert g16[0, 0, 0] == 0 and g16[0, -1, 0] == 255 and abs(g16[0, 80, 0] - 128) <= 2  # scaled, not clipped
    small = np.asarray(Image.open(odd_images["orig"]).convert("RGB").resize((160, 120)), np.float32)
    gray = load_image(odd_images["gray"]).array
    assert (gray[..., 0] == gray[..., 1]).all() and abs(gray.mean() - small.mean()) < 8
    rgba = load_image(odd_images["rgba"]).array
    assert (rgba[:, :80] == 255).all()  # transparent over white
    np.testing.assert_allclose(rgba[:, 80:], small[:, 80:], atol=1)
    assert np.abs(load_image(odd_images["palette"]).array - small).mean() < 12
    la = load_image(odd_images["la"]).array
    assert la[:, :, 0].min() >= 0 and la[0, 0, 0] > 250  # alpha 0 at the top: white
    ex = load_image(odd_images["exif6"])
    assert ex.size == (750, 1000) and ex.array.shape == (1000, 750, 3)
    assert np.abs(ex.array - ref).mean() < 6  # turned upright, not left as stored
    one = load_image(odd_images["one"], (32, 32))
    assert one.size == (1, 1) and one.array.shape == (32, 32, 3)


def test_decompression_bomb_refused_from_header(odd_images, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(ImageDecodeError) as e:
        load_image(odd_images["bomb"], (299, 299))
    assert time.perf_counter() - t0 < 3.0  # a decode would take many seconds; the header is read in milliseconds
    assert "refused before decoding" in e.value.reason and "limit of 178,956,970" in e.value.reason
    # the documented limit governs, not Pillow's warning threshold (89M): 120M pixels pass the header check
    big = str(tmp_path / "big.png")
    _write_png_header(big, 12_000, 10_000)
    from xpatch_core.images import image_size

    assert image_size(big) == (12_000, 10_000)
    # and a smaller limit refuses a real photo before decoding it
    with pytest.raises(ImageDecodeError, match=r"exceeds the limit of 1,000 \(set XPATCH_MAX_PIXELS"):
        load_image(odd_images["orig"], max_pixels=1000)


def test_video_3d_and_grouped_datasets_are_refused_up_front(tmp_path):
    for name, media in (("clip.mp4", "video"), ("scene.fo3d", "3d")):
        f = tmp_path / name
        f.write_bytes(b"\x00" * 64)
        ds = fo.Dataset()
        try:
            ds.add_sample(fo.Sample(filepath=str(f)))
            assert ds.media_type == media
            before = _state(ds)
            # refused before the model is even looked at (the model name is bogus)
            with pytest.raises(ParameterError, match=f"media type is '{media}'"):
                runs.run_saliency(ds, "sal", "no-such-model")
            with pytest.raises(ParameterError, match="image datasets"):
                runs.run_patches(ds, "sal", "pp")
            assert _state(ds) == before
        finally:
            ds.delete()
    ds = fo.Dataset()
    try:
        ds.add_group_field("group", default="left")
        group = fo.Group()
        ds.add_samples([fo.Sample(filepath=_photo(0), group=group.element("left"))])
        with pytest.raises(ParameterError, match="select an image slice"):
            runs.run_saliency(ds, "sal", "no-such-model")
    finally:
        ds.delete()


# -- bad parameters --------------------------------------------------------------------------


@pytest.fixture()
def photos_ds(kitchen):  # noqa: ARG001
    from xpatch_core.offline import kitchenware_images

    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=p, notes="keep", gt=fo.Classification(label="cup"))
                    for p in kitchenware_images()[:3]])
    yield ds
    ds.delete()


def test_bad_saliency_parameters_fail_before_any_work(photos_ds, xception, xception_weights, kitchen_model,
                                                      tmp_path):
    ds = photos_ds
    runs.run_saliency(ds, "sal", xception, "activation")
    before = _state(ds)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases = [
        (dict(field="sal2", model="resnet9000"), ModelError, "unknown model 'resnet9000'"),
        (dict(field="sal2", model=xception, method="saliency-magic"), ParameterError, "unknown saliency method"),
        (dict(field="sal2", model="xception", weights=xception_weights, layer="block99_conv"), ModelError,
         "has no layer 'block99_conv'"),
        (dict(field="sal2", model=xception, layer="block99_conv"), ModelError, "has no layer 'block99_conv'"),
        (dict(field="sal2", model=kitchen_model, method="gradcam", target="teapot"), ParameterError,
         "unknown class name 'teapot'"),
        (dict(field="sal2", model=kitchen_model, method="gradcam", target=17), ParameterError, "out of range"),
        (dict(field="sal2", model=kitchen_model, method="gradcam", target_field="notes"), ParameterError,
         "fo.Classification"),
        (dict(field="notes", model=xception), ParameterError, "already exists with type StringField"),
        (dict(field="gt", model=xception), ParameterError, "already exists with type EmbeddedDocumentField"),
        (dict(field="sal", model=xception, method="eigencam"), ParameterError, "other parameters"),
        (dict(field="sal2", model=xception, batch_size=0), ParameterError, "batch_size"),
        (dict(field="sal2", model=xception, batch_size=-4), ParameterError, "batch_size"),
        (dict(field="sal2", model=xception, batch_size=float("nan")), ParameterError, "batch_size"),
        (dict(field="sal2", model=xception, batch_size="8"), ParameterError, "batch_size"),
        (dict(field="sal2", model=xception, map_dir=str(blocker / "maps")), ParameterError, "not writable"),
        (dict(field="sal2", model=xception, target=1, target_field="gt"), ParameterError, "not both"),
    ]
    for kwargs, exc, match in cases:
        field = kwargs.pop("field")
        model = kwargs.pop("model")
        with pytest.raises(exc, match=match):
            runs.run_saliency(ds, field, model, kwargs.pop("method", "activation"), **kwargs)
    for bad in ("../x", "a/b", "x.y", "sal\n", "", "$where", "x y", "filepath", "tags", "é"):
        with pytest.raises(ParameterError, match="field name"):
            runs.run_saliency(ds, bad, xception, "activation")
    assert _state(ds) == before
    assert not os.path.exists(blocker / "maps")


def test_bad_patch_parameters_fail_before_any_work(photos_ds, tiny):
    ds = photos_ds
    runs.run_saliency(ds, "sal", tiny, "activation")
    runs.run_patches(ds, "sal", "pp", n=3, size=64)
    before = _state(ds)
    huge = 10**7
    cases = [
        dict(n=0), dict(n=-2), dict(n=float("nan")), dict(n=2.5), dict(n=True), dict(n="4"),
        dict(size=0), dict(size=-3), dict(size=float("nan")), dict(size=float("inf")), dict(size=1.5),
        dict(size=huge), dict(size="64"), dict(scales=(0.0,)), dict(scales=(float("nan"),)),
        dict(aspect_ratios=(-1.0,)), dict(temperature=float("nan")), dict(temperature=-1.0),
        dict(epsilon=float("nan")), dict(epsilon=2.0), dict(max_iou=float("nan")), dict(max_iou=1.5),
        dict(min_distance=float("nan")), dict(seed=-1), dict(seed=1.5), dict(mode="spiral"),
        dict(score="median"), dict(border="wrap"), dict(label=""), dict(heatmap_field="nope"),
        dict(heatmap_field="gt"), dict(field="notes"), dict(field="gt"), dict(field="sal"),
        dict(field="../x"), dict(field="a/b"), dict(field="x.y"), dict(field="pp\n"),
        dict(field="pp", n=5),  # the existing run with other parameters
    ]
    for case in cases:
        args = dict(heatmap_field="sal", field="pp2", n=3, size=64)
        args.update(case)
        t0 = time.perf_counter()
        with pytest.raises(XpatchError):
            runs.run_patches(ds, args.pop("heatmap_field"), args.pop("field"), args.pop("n"), args.pop("size"),
                             **args)
        assert time.perf_counter() - t0 < 5.0, case  # refused before any work (loose: a shared runner)
    with pytest.raises(ParameterError, match="larger than every image"):
        runs.run_patches(ds, "sal", "pp2", n=3, size=huge)
    assert _state(ds) == before


def test_plugin_parameters_are_validated_on_the_server(photos_ds, xception_weights):
    ds = photos_ds
    sal = _plugin_module("saliency_ops")
    pat = _plugin_module("patches_ops")
    ok = sal.saliency_params({"field": "heat", "batch_size": "8", "allow_unsafe": True})
    assert ok["batch_size"] == 8 and "allow_unsafe" not in ok  # the App cannot switch safe mode off
    assert "input_size" not in ok  # not given: the model's own (older requests stay the same)
    assert sal.saliency_params({"input_size": " 224 x 320 "})["input_size"] == (224, 320)
    assert sal.saliency_params({"input_size": "299"})["input_size"] == (299, 299)
    for params, match in (
        ({"model": "resnet9000"}, "unknown model"),
        ({"model": "other", "model_name": "os.system"}, "unknown keras.applications model"),
        ({"model": ["xception"]}, "model must be text"),
        ({"model": "saved"}, "path of your saved classifier"),
        ({"method": 3}, "method must be text"),
        ({"batch_size": "abc"}, "batch_size must be a number"),
        ({"batch_size": float("nan")}, "finite"),
        ({"batch_size": -1}, ">= 1"),
        ({"batch_size": 10**9}, "<= 1024"),
        ({"batch_size": 2.5}, "integer"),
        ({"batch_size": [4]}, "batch_size must be a number"),
        ({"field": ["a"]}, "field must be text"),
        ({"field": {"$ne": 1}}, "field must be text"),
        ({"layer": "a\nb"}, "control characters"),
        ({"overwrite": "yes"}, "true or false"),
        ({"storage": "s3"}, "unknown storage"),
        ({"storage": "png"}, "folder for the heatmap"),
        ({"storage": "png", "map_dir": 5}, "map_dir must be text"),
        ({"target_mode": "class"}, "class name or index"),
        ({"target_mode": "everything"}, "unknown target mode"),
        ({"input_size": "big"}, "input size must be one or two sides"),
        ({"input_size": "4"}, "sides of 8 to 8192 pixels"),
        ({"input_size": "224x320x3"}, "sides of 8 to 8192 pixels"),
        ({"input_size": 299}, "input_size must be text"),
    ):
        with pytest.raises(ParameterError, match=match):
            sal.saliency_params(params)
    for params, match in (
        ({"n": "abc"}, "n must be a number"),
        ({"n": float("nan")}, "finite"),
        ({"n": float("inf")}, "finite"),
        ({"n": -1}, ">= 1"),
        ({"n": 0}, ">= 1"),
        ({"n": 10**9}, "<="),
        ({"n": 2.5}, "integer"),
        ({"n": None, "size": [1]}, "size must be a number"),
        ({"size": 0}, ">= 1"),
        ({"size": -5}, ">= 1"),
        ({"size_mode": "fraction", "size_fraction": 2}, "<= 1.0"),
        ({"size_mode": "fraction", "size_fraction": float("nan")}, "finite"),
        ({"size_mode": "inches"}, "unknown size mode"),
        ({"scales": "1,nan"}, "positive finite"),
        ({"scales": "1,abc"}, "not a number"),
        ({"aspect_ratios": "-1"}, "positive finite"),
        ({"temperature": float("inf")}, "finite"),
        ({"epsilon": 3}, "<= 1.0"),
        ({"max_iou": -0.1}, ">= 0.0"),
        ({"overlap": "magic"}, "unknown overlap"),
        ({"seed": -1}, ">= 0"),
        ({"seed": 1.5}, "integer"),
        ({"mode": "spiral"}, "unknown mode"),
        ({"score": "median"}, "unknown score"),
        ({"field": ["x"]}, "field must be text"),
        ({"heatmap_field": {"a": 1}}, "heatmap_field must be text"),
        ({"overwrite": "true"}, "true or false"),
        ({"label_mode": "text", "label": "a\x00b"}, "control characters"),
    ):
        with pytest.raises(ParameterError, match=match):
            pat.patch_params(params)

    # through the operators, as the App calls them: a clear error and nothing created
    runs.run_saliency(ds, "sal", "xception", "activation", weights=xception_weights)
    before = _state(ds)
    sal_uri, pat_uri = "@xpatch/xpatch/compute_saliency", "@xpatch/xpatch/sample_patches"
    for uri, params, match in (
        (sal_uri, {"field": "../x", "weights": xception_weights}, "invalid field name"),
        (sal_uri, {"field": ["heat"], "weights": xception_weights}, "field must be text|invalid field name"),
        (sal_uri, {"field": "notes", "weights": xception_weights}, "already exists"),
        (sal_uri, {"field": "heat", "batch_size": float("nan"), "weights": xception_weights},
         "finite|Path: batch_size"),
        (sal_uri, {"field": "heat", "model": "other", "model_name": "evil"}, "unknown keras.applications"),
        (pat_uri, {"heatmap_field": "sal", "field": "pp", "n": "abc"}, "n must be a number|Invalid value type"),
        (pat_uri, {"heatmap_field": "sal", "field": "pp", "n": -3}, "n must be >= 1|Path: n. Reason: Value must be"),
        (pat_uri, {"heatmap_field": "sal", "field": "pp", "size": 10**5}, "larger than every image"),
        (pat_uri, {"heatmap_field": "sal", "field": "a/b"}, "invalid field name"),
        (pat_uri, {"heatmap_field": "gt", "field": "pp"}, "not a fo.Heatmap|Path: heatmap_field"),
    ):
        with pytest.raises(ExecutionError, match=match):
            foo.execute_operator(uri, {"view": ds.view(), "params": dict(params, delegate=False)})
    assert _state(ds) == before


# -- faults ----------------------------------------------------------------------------------


def test_unwritable_heatmap_folder_is_refused_before_work(photos_ds, tiny, tmp_path):
    ds = photos_ds
    blocker = tmp_path / "regular_file"
    blocker.write_text("not a folder")
    before = _state(ds)
    for map_dir in (str(blocker / "maps"), "/proc/xpatch-maps"):
        with pytest.raises(ParameterError, match="not writable"):
            runs.run_saliency(ds, "heat", tiny, "activation", map_dir=map_dir)
    assert _state(ds) == before


def test_full_disk_fails_those_samples_without_touching_the_database(photos_ds, tiny, tmp_path, monkeypatch):
    ds = photos_ds
    map_dir = tmp_path / "maps"
    ids = ds.values("id")
    full = set(ids[:2])  # the disk is full for these two
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        if os.path.basename(str(dst))[:24] in full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    summary = runs.run_saliency(ds, "heat", tiny, "activation", map_dir=str(map_dir))
    monkeypatch.setattr(os, "replace", real_replace)
    assert summary.failed == 2 and summary.processed == 1
    assert {f["id"] for f in summary.failures} == full
    assert all("cannot write heatmap file" in f["reason"] and "No space left" in f["reason"]
               for f in summary.failures)
    assert set(ds.exists("heat", False).values("id")) == full  # no database value for them
    assert set(ds.match_tags("xpatch:heat:failed").values("id")) == full
    files = sorted(os.listdir(map_dir / "heat"))
    assert files == [f"{ids[2]}.png"]  # no temporary file, no file for the failed samples
    assert ds[ids[2]].heat.map_path == str(map_dir / "heat" / f"{ids[2]}.png")
    # with space again, the run resumes only the failed samples
    again = runs.run_saliency(ds, "heat", tiny, "activation", map_dir=str(map_dir))
    assert (again.processed, again.skipped, again.failed) == (2, 1, 0)
    assert sorted(os.listdir(map_dir / "heat")) == sorted(f"{i}.png" for i in ids)
    assert len(ds.match_tags("xpatch:heat:failed")) == 0


def test_interrupted_write_leaves_no_half_result(photos_ds, tiny, tmp_path, monkeypatch):
    """An exception between the PNG files and the database update (the worst moment)."""
    ds = photos_ds
    map_dir = tmp_path / "maps"

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fo.Dataset, "set_values", boom)
    with pytest.raises(KeyboardInterrupt):
        runs.run_saliency(ds, "heat", tiny, "activation", map_dir=str(map_dir))
    monkeypatch.undo()
    ds.reload()
    assert "heat" not in ds.get_field_schema() or ds.count("heat") == 0
    assert runs.get_run_info(ds, "heat")["results"]["status"] == "interrupted"
    assert list(runs.locks.collection().find({"dataset": ds.name})) == []  # the lock was released
    summary = runs.run_saliency(ds, "heat", tiny, "activation", map_dir=str(map_dir))
    assert summary.processed == len(ds)
    _check_png_field(ds, "heat", str(map_dir))
    # a heatmap file deleted behind xpatch's back: that sample fails in a patch run, with the reason
    gone = ds.first()
    os.remove(gone.heat.map_path)
    ps = runs.run_patches(ds, "heat", "pp", n=2, size=32)
    assert ps.processed == len(ds) - 1 and [f["id"] for f in ps.failures] == [gone.id]
    assert ps.failures[0]["reason"].startswith("heatmap missing or unreadable")


def _check_png_field(ds: fo.Dataset, field: str, map_dir: str) -> None:
    """Every stored heatmap's file exists and is whole; every file is referenced; no temporary file."""
    ds.reload()
    folder = os.path.join(map_dir, field)
    referenced = set()
    for sid, hm in zip(*ds.values(["id", field])):
        if hm is None:
            continue
        assert hm.map_path == os.path.join(folder, f"{sid}.png") and os.path.isfile(hm.map_path)
        m = runs.read_heatmap(hm)
        assert m is not None and m.ndim == 2 and np.isfinite(m).all()
        referenced.add(os.path.basename(hm.map_path))
    names = set(os.listdir(folder))
    assert names == referenced, f"orphans: {names - referenced}"
    assert not glob.glob(os.path.join(folder, "*.tmp"))


def test_kill9_in_the_middle_of_a_run_then_resume(tmp_path, tiny_path):
    total = 36
    ds = _persistent_photos(tmp_path, "xpatch_rel_kill9", total)
    map_dir = str(tmp_path / "maps")
    try:
        proc = _start_worker(tmp_path, ds.name, "heat", tiny_path, map_dir, pause=0.3)
        _wait_until(lambda: 0 < _field_count(ds, "heat") < total - 8, 120, "the run to be half-way", proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        done = _field_count(ds, "heat")
        assert 0 < done < total
        dead = runs.locks.collection().find_one({"dataset": ds.name, "field": "heat"})
        assert dead is not None and dead["pid"] == proc.pid  # left behind by the dead run

        summary = runs.run_saliency(ds, "heat", tiny_path, "activation", batch_size=4, map_dir=map_dir)
        assert summary.skipped == done and summary.processed == total - done and summary.failed == 0
        assert _field_count(ds, "heat") == total
        _check_png_field(ds, "heat", map_dir)
        assert runs.locks.collection().find_one({"dataset": ds.name, "field": "heat"}) is None
        info = runs.get_run_info(ds, "heat")["results"]
        assert info["status"] == "completed" and info["history"][-1]["processed"] == total - done
    finally:
        ds.delete()


# -- concurrency -----------------------------------------------------------------------------


def test_two_runs_on_different_fields_at_once_and_same_field_refused(tmp_path, tiny_path, tiny):
    total = 24
    ds = _persistent_photos(tmp_path, "xpatch_rel_concurrent", total)
    try:
        hold = tmp_path / "hold-a"
        hold.touch()  # run a waits after its first chunk until the refusals below are done
        pa = _start_worker(tmp_path, ds.name, "a", tiny_path, pause=0.3, hold=str(hold))
        pb = _start_worker(tmp_path, ds.name, "b", tiny_path, pause=0.3)
        _wait_until(lambda: 0 < _field_count(ds, "a") < total, 120, "run a to be under way", pa)
        # a third run on the field that run a is writing is refused, and changes nothing
        with pytest.raises(XpatchError, match=r"field 'a' of dataset .* is being written by another run \(pid"):
            runs.run_saliency(ds, "a", tiny_path, "activation", batch_size=4)
        with pytest.raises(XpatchError, match="being written by another run"):
            runs.run_saliency(ds, "a", tiny_path, "activation", batch_size=4, overwrite=True)
        hold.unlink()
        sa, sb = _worker_summary(pa), _worker_summary(pb)
        assert (sa["processed"], sa["failed"], sb["processed"], sb["failed"]) == (total, 0, total, 0)
        ds.reload()
        schema = ds.get_field_schema()
        assert schema["a"].document_type is fo.Heatmap and schema["b"].document_type is fo.Heatmap
        assert ds.count("a") == ds.count("b") == total
        assert sorted(runs.list_runs(ds)) == ["a", "b"]
        for key in ("a", "b"):
            res = runs.get_run_info(ds, key)["results"]
            assert res["status"] == "completed" and res["processed"] == total
        assert list(runs.locks.collection().find({"dataset": ds.name})) == []
    finally:
        (tmp_path / "hold-a").unlink(missing_ok=True)
        ds.delete()


# -- database restart ------------------------------------------------------------------------


_RESTART_DRIVER = textwrap.dedent(
    """
    import json, sys
    import fiftyone as fo
    from xpatch_core import runs
    from xpatch_core.offline import kitchenware_images

    def say(tag, *summaries):
        print(tag + " " + json.dumps([s.to_dict() for s in summaries]), flush=True)
        sys.stdin.readline()  # the test restarts the database here

    model = sys.argv[1]
    ds = fo.Dataset("xpatch_rel_restart", persistent=True, overwrite=True)
    ds.add_samples([fo.Sample(filepath=p) for p in kitchenware_images()[:6]])
    say("FIRST", runs.run_saliency(ds, "sal", model, "activation"))
    # after a clean restart, in the same process
    say("CLEAN", runs.run_saliency(ds, "sal2", model, "activation"),
        runs.run_saliency(ds, "sal", model, "activation"))
    # after a crash of the database right after the last run
    say("CRASH", runs.run_saliency(ds, "sal3", model, "activation"),
        runs.run_saliency(ds, "sal2", model, "activation"))
    """
)

_RESTART_CHECK = textwrap.dedent(
    """
    import json
    import fiftyone as fo
    from xpatch_core import runs

    ds = fo.load_dataset("xpatch_rel_restart")
    out = {k: [ds.count(k), runs.get_run_info(ds, k)["results"]["status"]] for k in ("sal", "sal2", "sal3")}
    out["locks"] = runs.locks.collection().count_documents({"dataset": ds.name})
    print("CHECK " + json.dumps(out), flush=True)
    ds.delete()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_mongod(dbpath: str, port: int) -> subprocess.Popen:
    from fiftyone.core.service import DatabaseService

    os.makedirs(dbpath, exist_ok=True)
    proc = subprocess.Popen(
        [DatabaseService.find_mongod(), "--dbpath", dbpath, "--port", str(port), "--bind_ip", "127.0.0.1",
         "--nounixsocket", "--logpath", os.path.join(dbpath, "mongod.log"), "--logappend"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    _wait_until(up, 60, "mongod to listen", proc)
    # make sure that it is this mongod that answers on the port, not someone else's
    client = pymongo.MongoClient(port=port, serverSelectionTimeoutMS=5000)
    try:
        assert client.admin.command("getCmdLineOpts")["parsed"]["storage"]["dbPath"] == dbpath
    finally:
        client.close()
    return proc


def _read_tagged(proc: subprocess.Popen, tag: str) -> list[dict]:
    line = "\n"
    while line and not line.startswith(tag + " "):  # progress bars print to stdout too
        line = proc.stdout.readline()
    assert line, proc.stderr.read()[-3000:]
    return json.loads(line[len(tag) + 1:])


def test_database_restarted_between_two_runs(tmp_path, tiny_path):
    """A private mongod (the binary FiftyOne ships), restarted cleanly, then killed and
    restarted, between runs of one long-lived process; then a fresh process checks.

    FiftyOne's own service attaches every process of this user to one running
    ``mongod``, so stopping that one would hit other sessions: this test starts
    its own and points FiftyOne at it with ``FIFTYONE_DATABASE_URI``.
    """
    dbpath, port = str(tmp_path / "mongo"), _free_port()
    env = _subprocess_env(FIFTYONE_DATABASE_URI=f"mongodb://127.0.0.1:{port}/")
    env.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)
    (tmp_path / "driver.py").write_text(_RESTART_DRIVER)
    (tmp_path / "check.py").write_text(_RESTART_CHECK)
    mongod = _start_mongod(dbpath, port)
    driver = None
    try:
        driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), tiny_path], cwd=ROOT, env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        (first,) = _read_tagged(driver, "FIRST")
        assert first["processed"] == 6
        mongod.terminate()  # a clean restart
        mongod.wait(timeout=60)
        mongod = _start_mongod(dbpath, port)
        driver.stdin.write("go\n")
        driver.stdin.flush()
        second, resumed = _read_tagged(driver, "CLEAN")
        assert (second["processed"], second["failed"]) == (6, 0)
        assert (resumed["processed"], resumed["skipped"]) == (0, 6)  # nothing of the first run was lost
        mongod.kill()  # a crash, right after the run: its lock release must not come back
        mongod.wait()
        mongod = _start_mongod(dbpath, port)
        driver.stdin.write("go\n")
        driver.stdin.flush()
        third, again = _read_tagged(driver, "CRASH")
        assert (third["processed"], third["failed"]) == (6, 0)
        # a crash may drop the last ~100 ms of unjournaled writes: those samples are redone
        assert again["processed"] + again["skipped"] == 6 and again["failed"] == 0
        driver.stdin.close()
        assert driver.wait(timeout=60) == 0, driver.stderr.read()[-3000:]
        check = subprocess.run([sys.executable, str(tmp_path / "check.py")], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=120)
        assert check.returncode == 0, check.stderr[-3000:]
        result = json.loads(next(ln for ln in check.stdout.splitlines() if ln.startswith("CHECK "))[6:])
        assert result == {"sal": [6, "completed"], "sal2": [6, "completed"], "sal3": [6, "completed"],
                          "locks": 0}
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait()
        mongod.terminate()
        mongod.wait(timeout=60)


# -- untrusted models and paths --------------------------------------------------------------


def _lambda_model():
    import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inp)
    x = keras.layers.Lambda(lambda t: t * 2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(2)(x))


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_lambda_model_file_refused_unless_unsafe_allowed(tmp_path, photos_ds, ext):
    import xpatch_core as xp

    path = str(tmp_path / f"lambda{ext}")
    _lambda_model().save(path)
    with pytest.raises(ModelError, match=r"safe\s+mode.*allow_unsafe=True"):
        xp.load_model(path)
    before = _state(photos_ds)
    with pytest.raises(ModelError, match="Lambda"):
        runs.run_saliency(photos_ds, "sal", path, "activation")
    with pytest.raises(ExecutionError, match="safe"):
        foo.execute_operator("@xpatch/xpatch/compute_saliency",
                             {"view": photos_ds.view(),
                              "params": {"model": "saved", "model_path": path, "allow_unsafe": True,
                                         "field": "sal", "delegate": False}})
    assert _state(photos_ds) == before
    sm = xp.load_model(path, allow_unsafe=True, cache=False)
    assert sm.source["safe_mode"] is False and sm.target_layer


def test_folders_cannot_be_escaped_through_names(tmp_path, tiny):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("untouched")
    root = tmp_path / "maps"
    root.mkdir()
    with pytest.raises(ParameterError, match="would leave"):
        runs.heatmap_files.safe_dir(str(root), "../outside")
    # a field folder that is a symlink to elsewhere is refused
    os.symlink(outside, root / "linked")
    ds = fo.Dataset()
    try:
        for bad in ("../x", "a/b", "x.y", "..", "/etc", "x\n", "x\x00", ".", "~", "x\\y"):
            with pytest.raises(ParameterError, match="invalid field name"):
                runs.validate_field_name(ds, bad, "saliency")
        # nasty file names and labels never become file names: the PNGs are named by sample id
        nasty = tmp_path / "imgs" / "..%2F..%2Foutside" / "$(touch pwned) ..\\x;name.jpg"
        nasty.parent.mkdir(parents=True)
        os.symlink(_photo(0), nasty)
        ds.add_samples([fo.Sample(filepath=str(nasty), gt=fo.Classification(label="../../outside/victim.txt")),
                        fo.Sample(filepath=_photo(1), gt=fo.Classification(label="/etc/passwd"))])
        before = _state(ds)
        with pytest.raises(ParameterError, match="would leave"):
            runs.run_saliency(ds, "linked", tiny, "activation", map_dir=str(root))
        assert _state(ds) == before
        # a file symlink planted where a heatmap goes is replaced, not followed
        sid = ds.first().id
        (root / "heat").mkdir()
        os.symlink(victim, root / "heat" / f"{sid}.png")
        snapshot = {p for p in glob.glob(str(tmp_path / "**"), recursive=True)}
        runs.run_saliency(ds, "heat", tiny, "activation", map_dir=str(root))
        created = {p for p in glob.glob(str(tmp_path / "**"), recursive=True)} - snapshot
        assert all(os.path.dirname(p) == str(root / "heat") and re.fullmatch(_HEX_PNG,
                   os.path.basename(p)) for p in created), created
        assert victim.read_text() == "untouched" and sorted(os.listdir(outside)) == ["victim.txt"]
        assert not os.path.islink(root / "heat" / f"{sid}.png")
        _check_png_field(ds, "heat", str(root))
        # runs.delete_run removes only the run's own files
        runs.delete_run(ds, "heat")
        assert not os.path.exists(root / "heat") and victim.read_text() == "untouched"
    finally:
        ds.delete()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nan_and_inf_never_reach_the_database(photos_ds):
    """Non-finite activations are stored as a flagged uniform map, never as NaN."""
    import keras

    ds = photos_ds
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inp)
    x = keras.layers.Rescaling(math.inf, name="explode")(x)
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    summary = runs.run_saliency(ds, "sal", model, "activation")
    assert summary.processed == len(ds) and summary.degenerate == len(ds)
    for hm in ds.values("sal"):
        assert np.isfinite(hm.map).all() and hm.degenerate is True


def test_a_field_declaration_lost_to_a_concurrent_run_is_restored(tmp_path, tiny_path, monkeypatch):
    """FiftyOne saves a schema change from the process's own copy of the field list: two runs
    declaring two fields at the same moment can lose one (seen once in CI). Here the loss is
    made on purpose, in the middle of each run, as the other process's write makes it."""
    monkeypatch.setenv("XPATCH_WRITE_CHUNK", "4")
    total = 12
    ds = _persistent_photos(tmp_path, "xpatch_rel_lost_field", total)
    datasets = foodm.get_db_conn().datasets

    def lose(field):
        def on_progress(event):
            if event.done and field in ds.get_field_schema():
                datasets.update_one({"_id": ds._doc.id}, {"$pull": {"sample_fields": {"name": field}}})
        return on_progress

    try:
        s = runs.run_saliency(ds, "sal", tiny_path, "activation", batch_size=4, progress=lose("sal"))
        p = runs.run_patches(ds, "sal", "pat", n=3, size=24, progress=lose("pat"))
        assert s.processed == p.processed == total
        ds.reload()
        schema = ds.get_field_schema()
        assert schema["sal"].document_type is fo.Heatmap and schema["pat"].document_type is fo.Detections
        assert ds.count("sal") == ds.count("pat") == total
        assert ds.count("pat.detections") == 3 * total
        assert "pat.detections.score" in ds.get_field_schema(flat=True)
    finally:
        ds.delete()
