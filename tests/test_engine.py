"""The forward-pass engine: OpenVINO where ``engine="auto"`` picks it, the
same maps as TensorFlow, and TensorFlow kept where OpenVINO cannot run a
model (real Xception and kitchenware weights where the maps matter)."""

from __future__ import annotations

import glob
import os

import fiftyone as fo
import numpy as np
import pytest

import xpatch_core as xp
from xpatch_core import hardware, runs
from xpatch_core.errors import ModelError, ParameterError
from xpatch_core.hardware import GpuInfo, resolve_engine

pytest.importorskip("openvino", reason="the openvino package is not installed (make install adds it)")

A100 = GpuInfo("NVIDIA A100", (8, 0))


def test_auto_engine_rules(monkeypatch):
    monkeypatch.delenv("XPATCH_ENGINE", raising=False)
    assert resolve_engine("auto", "float32", gpus=(), available=True)[0] == "openvino"
    engine, reason = resolve_engine("auto", "float32", gpus=(A100,), available=True)
    assert engine == "tensorflow" and "GPU" in reason
    engine, reason = resolve_engine("auto", "mixed_bfloat16", gpus=(), available=True)
    assert engine == "tensorflow" and "bfloat16" in reason
    engine, reason = resolve_engine("auto", "float32", gpus=(), available=False)
    assert engine == "tensorflow" and "not installed" in reason
    assert resolve_engine("tensorflow", "float32", gpus=(), available=True)[0] == "tensorflow"
    assert resolve_engine("openvino", "mixed_bfloat16", gpus=(A100,), available=True)[0] == "openvino"
    with pytest.raises(ParameterError, match="needs the openvino package"):
        resolve_engine("openvino", "float32", gpus=(), available=False)
    with pytest.raises(ParameterError, match="engine must be one of"):
        resolve_engine("onnx", "float32", gpus=(), available=True)


def test_xpatch_engine_variable_sets_what_auto_means(monkeypatch):
    monkeypatch.setenv("XPATCH_ENGINE", "tensorflow")
    assert resolve_engine("auto", "float32", gpus=(), available=True)[0] == "tensorflow"
    assert resolve_engine("openvino", "float32", gpus=(), available=True)[0] == "openvino"  # explicit wins
    monkeypatch.setenv("XPATCH_ENGINE", "openvino")
    assert resolve_engine("auto", "mixed_bfloat16", gpus=(A100,), available=True)[0] == "openvino"
    with pytest.raises(ParameterError, match="XPATCH_ENGINE=openvino needs the openvino package"):
        resolve_engine("auto", "float32", gpus=(), available=False)
    monkeypatch.setenv("XPATCH_ENGINE", "torch")
    with pytest.raises(ParameterError, match="XPATCH_ENGINE"):
        resolve_engine("auto", "float32", gpus=(), available=True)


@pytest.fixture(scope="module")
def photos(kitchen):
    from tests.conftest import COCO_DIR

    coco = sorted(glob.glob(os.path.join(COCO_DIR, "images", "*.jpg")))
    from xpatch_core.offline import kitchenware_images

    return (coco[:12] + kitchenware_images()[:6]) if coco else kitchenware_images()


def _compare(a, b, photos, method):
    ia = xp.compute_saliency(photos, a, method, return_items=True)
    ib = xp.compute_saliency(photos, b, method, return_items=True)
    assert all(i.ok for i in ia + ib)
    corr = min(float(np.corrcoef(p.map.ravel(), q.map.ravel())[0, 1]) for p, q in zip(ia, ib))
    diff = max(float(np.abs(p.map - q.map).max()) for p, q in zip(ia, ib))
    return ia, ib, corr, diff


def test_openvino_maps_equal_tensorflow_maps_on_real_photos(xception_weights, photos):
    ov = xp.load_model("xception", weights=xception_weights, precision="float32", engine="openvino")
    tf_ = xp.load_model("xception", weights=xception_weights, precision="float32", engine="tensorflow")
    assert ov.source["engine"] == "openvino" and ov.ov_forward is not None
    assert tf_.source["engine"] == "tensorflow" and tf_.ov_forward is None
    assert ov.ov_forward.outputs == ("acts", "fine")  # the fused Xception: both layers from OpenVINO
    for method in ("eigencam", "activation"):
        _, _, corr, diff = _compare(ov, tf_, photos, method)
        assert corr > 0.9999 and diff < 5e-3, (method, corr, diff)


def test_openvino_activations_feed_tensorflow_gradients(kitchen, photos):
    ov = xp.load_model(kitchen.model_path, class_names=kitchen.class_names, precision="float32", engine="openvino")
    tf_ = xp.load_model(kitchen.model_path, class_names=kitchen.class_names, precision="float32",
                        engine="tensorflow")
    assert ov.ov_forward.outputs == ("acts", "logits")  # the nested backbone and the split-off head
    for method in ("gradcam", "gradcam++", "eigencam"):
        ia, ib, corr, diff = _compare(ov, tf_, photos, method)
        assert corr > 0.9999 and diff < 5e-3, (method, corr, diff)
        assert [i.predicted for i in ia] == [i.predicted for i in ib]
        assert [i.target for i in ia] == [i.target for i in ib]
        assert max(abs(p.confidence - q.confidence) for p, q in zip(ia, ib)) < 1e-4


def _py_relu(a):
    return np.maximum(a, 0).astype(np.float32)


def _unconvertible_model():
    """A model OpenVINO cannot convert: its middle layer calls back into
    Python (``tf.numpy_function``); returns ``(model, custom_objects)``."""
    import keras
    import tensorflow as tf

    class PyRelu(keras.layers.Layer):
        def call(self, x):
            return tf.reshape(tf.numpy_function(_py_relu, [x], tf.float32), tf.shape(x))

        def compute_output_shape(self, shape):
            return shape

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="conv1")(inp)
    x = PyRelu(name="py_relu")(x)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3)(x)), {"PyRelu": PyRelu}


def test_a_model_openvino_cannot_convert_stays_on_tensorflow(tmp_path, monkeypatch):
    monkeypatch.delenv("XPATCH_ENGINE", raising=False)
    model, custom = _unconvertible_model()
    path = str(tmp_path / "py_relu.keras")
    model.save(path)
    sm = xp.load_model(path, precision="float32", engine="auto", custom_objects=custom)
    if hardware.resolve_engine("auto", "float32")[0] == "openvino":
        assert sm.source["engine"] == "tensorflow" and "OpenVINO could not run" in sm.source["engine_reason"]
    assert sm.ov_forward is None
    maps = xp.compute_saliency([np.full((40, 40, 3), 100, np.uint8)], sm, "gradcam")
    assert maps[0].shape == (28, 28)
    # a run records why it fell back (the README says the record does)
    import fiftyone as fo
    from PIL import Image

    from xpatch_core import runs

    Image.new("RGB", (40, 40), (90, 120, 30)).save(tmp_path / "a.png")
    ds = fo.Dataset()
    try:
        ds.add_sample(fo.Sample(filepath=str(tmp_path / "a.png")))
        runs.run_saliency(ds, "sal", path, "gradcam", precision="float32", custom_objects=custom)
        cfg = runs.get_run_info(ds, "sal")["config"]
        assert cfg["engine_used"] == "tensorflow" and cfg["engine_reason"] == sm.source["engine_reason"]
        assert cfg["precision_used"] == "float32" and cfg["precision_reason"] == "float32 was asked for"
    finally:
        ds.delete()
    # asked for by name (argument or variable), it fails, even after 'auto' cached the fallback
    with pytest.raises(ModelError, match="OpenVINO cannot run model"):
        xp.load_model(path, precision="float32", engine="openvino", custom_objects=custom)
    monkeypatch.setenv("XPATCH_ENGINE", "openvino")
    with pytest.raises(ModelError, match="OpenVINO cannot run model"):
        xp.load_model(path, precision="float32", custom_objects=custom)


def test_a_keras_model_in_memory_stays_on_tensorflow_under_auto(monkeypatch):
    monkeypatch.delenv("XPATCH_ENGINE", raising=False)
    import keras

    inp = keras.Input((32, 32, 3))
    model = keras.Model(inp, keras.layers.Conv2D(4, 3, activation="relu")(inp))
    sm = xp.load_model(model, precision="float32", input_size=(32, 32))
    assert sm.source["engine"] == "tensorflow" and sm.ov_forward is None
    if hardware.resolve_engine("auto", "float32")[0] == "openvino":
        assert "in memory" in sm.source["engine_reason"]
    converted = xp.load_model(model, precision="float32", engine="openvino")
    assert converted.ov_forward is not None and converted.source["engine"] == "openvino"


def test_runs_record_the_engine_and_resume_across_engines(tmp_path, kitchen):
    from xpatch_core.offline import kitchenware_images

    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=p) for p in kitchenware_images()[:4]])
    try:
        first = runs.run_saliency(ds, "sal", kitchen.model_path, "gradcam", engine="openvino",
                                  sample_ids=ds.values("id")[:2])
        assert first.processed == 2
        assert runs.get_run_info(ds, "sal")["config"]["engine_used"] == "openvino"
        # the rest with TensorFlow: the same run goes on (the engine changes no result)
        rest = runs.run_saliency(ds, "sal", kitchen.model_path, "gradcam", engine="tensorflow")
        assert (rest.processed, rest.skipped) == (2, 2)
        info = runs.get_run_info(ds, "sal")
        assert info["config"]["engine_used"] == "tensorflow"
        assert "engine" not in info["config"]["model_source"]
        assert len(ds.exists("sal")) == 4
    finally:
        ds.delete()


def test_patch_embeddings_from_openvino_features_equal_tensorflow_ones(xception_weights, photos):
    from xpatch_core.embeddings import PatchEmbedder

    ov = xp.load_model("xception", weights=xception_weights, precision="float32", engine="openvino")
    tf_ = xp.load_model("xception", weights=xception_weights, precision="float32", engine="tensorflow")
    h, w = ov.input_size
    from xpatch_core.images import load_image

    x = np.asarray(ov.preprocess(np.stack([load_image(p, (w, h)).array for p in photos[:4]])), np.float32)
    layers = (ov.target_layer, ov.fuse_layer)
    a = PatchEmbedder(ov, layers, ov.fused, "align", 2).features(x)
    b = PatchEmbedder(tf_, layers, tf_.fused, "align", 2).features(x)
    assert [f.shape for f in a] == [f.shape for f in b]
    for fa, fb in zip(a, b):
        assert np.abs(fa - fb).max() < 1e-3 * max(1.0, float(np.abs(fb).max()))


_NO_TELEMETRY = """
import os, sys
import numpy as np
import keras
import xpatch_core as xp
inp = keras.Input((32, 32, 3))
x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
sm = xp.load_model(model, engine="openvino", precision="float32", cache=False)
xp.compute_saliency([np.zeros((40, 40, 3), np.uint8)], sm, "gradcam")
import openvino.tools.ovc.convert_impl as ci
print(sm.source["engine"], ci.tm.__name__, "openvino_telemetry" in sys.modules)
"""


def test_openvino_sends_no_telemetry_and_writes_nothing_in_home(tmp_path):
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home))
    env.pop("CI", None)  # OpenVINO turns its telemetry off by itself in CI; not on a user's machine
    out = subprocess.run([sys.executable, "-c", _NO_TELEMETRY], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-3:] == ["openvino", "openvino.tools.ovc.telemetry_stub", "False"]
    assert not (home / "intel").exists()  # OpenVINO's client id and stats files


def _tiny_saved(path, seed):
    import keras

    init = keras.initializers.GlorotUniform(seed=seed)  # seeded here: global seeds would change other tests' models
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv", kernel_initializer=init)(inp)
    out = keras.layers.Dense(3, kernel_initializer=init)(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inp, out).save(str(path))
    return str(path)


def test_converted_models_are_kept_on_disk_keyed_by_their_weights(tmp_path, monkeypatch):
    """A second load reads the conversion (tracing and converting Xception
    costs about 2 s); other weights at the same path are converted again; a
    damaged entry is replaced; the cache keeps the most recent KEEP entries;
    a cache that cannot be written, or none, changes nothing but the time."""
    from xpatch_core import model_openvino

    cache = tmp_path / "ovcache"
    monkeypatch.setenv("XPATCH_OPENVINO_CACHE", str(cache))
    path = _tiny_saved(tmp_path / "m.keras", 1)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)

    def load():
        sm = xp.load_model(path, engine="openvino", cache=False)
        assert sm.source["engine"] == "openvino"
        return sm.source["openvino_cache"], sm.ov_forward(sm.preprocess(x))

    state, first = load()
    assert state == "stored" and len(os.listdir(cache)) == 1
    state, again = load()
    assert state == "read" and all(np.array_equal(first[k], again[k]) for k in first)
    _tiny_saved(path, 2)  # other weights, same file name
    state, other = load()
    assert state == "stored" and len(os.listdir(cache)) == 2
    assert not np.allclose(first["acts"], other["acts"])
    newest = max(cache.iterdir(), key=lambda p: p.stat().st_mtime)
    (newest / "model.xml").write_text("<broken")
    state, mended = load()
    assert state == "stored" and all(np.array_equal(other[k], mended[k]) for k in other)
    monkeypatch.setattr(model_openvino, "KEEP", 2)
    (cache / ("f" * 40)).mkdir()  # named like an entry, but a folder of someone else's: never removed
    (cache / ("f" * 40) / "notes.txt").write_text("mine")
    _tiny_saved(path, 3)
    assert load()[0] == "stored" and len(os.listdir(cache)) == 3  # the oldest entry went, not the user's
    assert (cache / ("f" * 40) / "notes.txt").read_text() == "mine"
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]
    monkeypatch.setenv("XPATCH_OPENVINO_CACHE", "off")
    assert load()[0] == "off"
    blocked = tmp_path / "a-file"
    blocked.write_text("mine")
    monkeypatch.setenv("XPATCH_OPENVINO_CACHE", str(blocked))
    state, out = load()
    assert state == "not stored" and blocked.read_text() == "mine" and out["acts"].shape[0] == 2
    # the cache entry is the machine's matter: a run's compared model source does not carry it
    assert "openvino_cache" in hardware.ENGINE_SOURCE_KEYS
