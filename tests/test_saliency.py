"""Saliency engine: real weights where results depend on them, tiny models elsewhere."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import xpatch_core as xp
from xpatch_core.errors import ModelError, ParameterError
from xpatch_core.saliency import METHODS, normalize_maps

# Hand-drawn object boxes [x0, y0, x1, y1] in the scikit-image photos.
OBJECTS = {
    "chelsea": (60, 20, 390, 300),  # the cat's face
    "coffee": (75, 15, 480, 390),  # cup, spoon and saucer
    "rocket": (265, 110, 375, 427),  # the rocket on its pad
}


def _peak_xy(m: np.ndarray, width: int, height: int) -> tuple[int, int]:
    up = xp.upsample(m, (height, width))
    y, x = np.unravel_index(int(up.argmax()), up.shape)
    return int(x), int(y)


@pytest.fixture(scope="module")
def photos():
    from skimage import data

    return {name: getattr(data, name)() for name in OBJECTS}


@pytest.mark.parametrize("fuse", ["auto", None])
@pytest.mark.parametrize("method", ["activation", "eigencam"])
def test_real_xception_peaks_on_object(xception_weights, photos, method, fuse):
    # float32: the fused activation map of "chelsea" has a near tie (0.98 vs 1.0) between the cat's
    # face and the top-right corner, which bfloat16 flips; tests/test_models.py measures bf16 vs
    # float32 maps on the COCO subset (correlation, patch hit rate)
    model = xp.load_model("xception", weights=xception_weights, fuse_layer=fuse, precision="float32")
    names = list(photos)
    maps = xp.compute_saliency([photos[n] for n in names], model=model, method=method)
    grid = (19, 19) if fuse == "auto" else (10, 10)
    for name, m in zip(names, maps, strict=False):
        assert m.shape == grid and m.dtype == np.float32
        assert m.min() == 0.0 and m.max() == 1.0
        h, w = photos[name].shape[:2]
        x, y = _peak_xy(m, w, h)
        x0, y0, x1, y1 = OBJECTS[name]
        assert x0 <= x < x1 and y0 <= y < y1, f"{method} peak of {name} at {(x, y)} is off the object"


def test_gradcam_nested_kitchenware_targets_differ(kitchen, kitchen_model):
    from xpatch_core.offline import kitchenware_images

    images = kitchenware_images()
    assert kitchen_model.target_layer == "xception/block14_sepconv2_act"
    assert kitchen_model.head is not None, "the head should be split off the nested backbone"
    items = xp.compute_saliency(images, model=kitchen_model, method="gradcam", return_items=True)
    labelled = [(it, kitchen.labels[os.path.basename(p)[:-4]]) for it, p in zip(items, images, strict=False)
                if os.path.basename(p)[:-4] in kitchen.labels]
    correct = sum(kitchen.class_names[it.predicted] == lab for it, lab in labelled)
    assert correct >= len(labelled) - 1, "the fine-tuned classifier should recognise its own photos"
    for it in items:
        assert it.target == it.predicted and it.map.shape == (5, 5)
    a = xp.compute_saliency(images[:3], model=kitchen_model, method="gradcam", target="cup")
    b = xp.compute_saliency(images[:3], model=kitchen_model, method="gradcam", target="knife")
    for ma, mb in zip(a, b, strict=False):
        assert np.abs(ma - mb).mean() > 0.05
    per_image = xp.compute_saliency(images[:2], model=kitchen_model, method="gradcam++",
                                    target=["cup", 3], return_items=True)
    assert [it.target for it in per_image] == [0, 3]


@pytest.mark.parametrize("method", list(METHODS))
def test_batched_equals_one_at_a_time(kitchen_model, method):
    from xpatch_core.offline import kitchenware_images

    images = kitchenware_images()[:5]
    batched = xp.compute_saliency(images, model=kitchen_model, method=method, batch_size=4)
    single = [xp.compute_saliency([p], model=kitchen_model, method=method)[0] for p in images]
    for a, b in zip(batched, single, strict=False):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.slow
def test_coco_peak_beats_centre(xception, coco_dir):
    with open(os.path.join(coco_dir, "annotations.json")) as f:
        coco = json.load(f)
    boxes: dict[int, list] = {}
    for ann in coco["annotations"]:
        if not ann.get("iscrowd"):
            boxes.setdefault(ann["image_id"], []).append(ann["bbox"])
    images = [im for im in coco["images"] if im["id"] in boxes]
    paths = [os.path.join(coco_dir, "images", im["file_name"]) for im in images]
    maps = xp.compute_saliency(paths, model=xception, method="eigencam", batch_size=16)

    def hit(x, y, bxs):
        return any(bx <= x < bx + bw and by <= y < by + bh for bx, by, bw, bh in bxs)

    peak_hits = centre_hits = 0
    for im, m in zip(images, maps, strict=False):
        w, h = im["width"], im["height"]
        x, y = _peak_xy(m, w, h)
        peak_hits += hit(x, y, boxes[im["id"]])
        centre_hits += hit(w / 2, h / 2, boxes[im["id"]])
    n = len(images)
    print(f"\nCOCO subset ({n} images): saliency peak in a box {peak_hits / n:.3f}, "
          f"image centre in a box {centre_hits / n:.3f}")
    assert peak_hits > centre_hits


# -- tiny random models: structure, not weights, matters ---------------------------


def _nested_model(head: bool = True, dotted: bool = False):
    import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv.a" if dotted else "conv_a")(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv_b")(x)
    inner = keras.Model(inp, x, name="backbone")
    outer_in = keras.Input((32, 32, 3))
    y = inner(outer_in, training=False)
    if not head:
        return keras.Model(outer_in, y, name="nohead")
    y = keras.layers.GlobalAveragePooling2D()(y)
    y = keras.layers.Dense(4, activation="softmax", name="pred")(y)
    return keras.Model(outer_in, y, name="outer")


def test_auto_layer_in_nested_model_and_override():
    model = _nested_model(dotted=True)
    sm = xp.load_model(model, cache=False)
    assert sm.target_layer == "backbone/conv_b"
    sm2 = xp.load_model(model, layer="conv.a", cache=False)
    assert sm2.target_layer == "backbone/conv.a" and sm2.feature_shape[:2] == (30, 30)
    sm3 = xp.load_model(model, layer="backbone/conv.a", cache=False)
    assert sm3.target_layer == "backbone/conv.a"
    with pytest.raises(ModelError, match="no layer"):
        xp.load_model(model, layer="conv_zz", cache=False)
    with pytest.raises(ModelError, match="4-D"):
        xp.load_model(model, layer="pred", cache=False)


def test_gradcam_uses_logits_not_softmax():
    import keras

    model = _nested_model()
    sm = xp.load_model(model, cache=False, precision="float32")  # compared with the float32 model
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    pre = sm.preprocess(x)
    logits = np.asarray(sm.head(sm.backbone(pre)))
    probs = np.asarray(model(pre))
    np.testing.assert_allclose(np.asarray(keras.ops.softmax(logits)), probs, atol=1e-5)
    assert not np.allclose(logits.sum(axis=1), 1.0)


def test_gradcam_without_head_is_a_clear_error():
    sm = xp.load_model(_nested_model(head=False), cache=False)
    assert not sm.has_head
    with pytest.raises(ModelError, match="classifier head"):
        xp.compute_saliency([np.zeros((32, 32, 3))], model=sm, method="gradcam")
    maps = xp.compute_saliency([np.full((32, 32, 3), 9.0)], model=sm, method="eigencam")
    assert maps[0].shape == (14, 14)


def test_constant_map_is_uniform_and_flagged():
    raw = np.stack([np.full((4, 4), 3.0), np.full((4, 4), np.nan), np.arange(16.0).reshape(4, 4)])
    maps, degenerate = normalize_maps(raw)
    assert degenerate.tolist() == [True, True, False]
    assert np.all(maps[0] == 1.0) and np.all(maps[1] == 1.0) and np.isfinite(maps).all()
    assert maps[2].min() == 0.0 and maps[2].max() == 1.0
    sm = xp.load_model(_nested_model(head=False), cache=False)
    items = xp.compute_saliency([np.zeros((32, 32, 3))], model=sm, method="activation",
                                return_items=True)
    assert items[0].degenerate and np.all(items[0].map == 1.0)
    # a constant map up to float32 rounding (convolutions round a little differently per position) is
    # constant; a map of tiny values with structure is not (numpy and TensorFlow alike)
    from xpatch_core.saliency.methods import normalize_maps_tf

    rounding = np.full((3, 4, 4), 0.7, np.float32)
    rounding[0, 1, 2] = np.nextafter(np.float32(0.7), np.float32(1)) * 1.0000001
    rounding[1] = 0.0
    rounding[2] = np.arange(16, dtype=np.float32).reshape(4, 4) * 1e-12
    for got in (normalize_maps(rounding)[1], np.asarray(normalize_maps_tf(rounding)[1])):
        assert got.tolist() == [True, True, False], got


def test_applications_by_name_have_their_own_preprocessing():
    seen = {}
    for name in ("resnet50", "EfficientNetB0", "mobilenet_v2"):
        sm = xp.load_model(name, weights="random", cache=False)
        assert sm.has_head and sm.num_classes == 1000
        seen[name] = sm.source["preprocess"]
        x = np.full((1, 224, 224, 3), 200.0, np.float32)
        seen[name + ":value"] = float(sm.preprocess(x)[0, 0, 0, 0])
    assert seen["resnet50"] == "resnet" and seen["mobilenet_v2"] == "mobilenet_v2"
    assert seen["resnet50:value"] != seen["mobilenet_v2:value"] != seen["EfficientNetB0:value"]


def test_imagenet_weights_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    import keras

    def no_download(*args, **kwargs):
        raise Exception("URL fetch failure: no internet")

    monkeypatch.setattr(keras.utils, "get_file", no_download)
    monkeypatch.setattr("keras.src.applications.xception.file_utils.get_file", no_download)
    with pytest.raises(ModelError, match="weights=PATH"):
        xp.load_model("xception", cache=False)


def test_xpatch_weights_env_selects_offline_file(monkeypatch, xception_weights):
    monkeypatch.setenv("XPATCH_WEIGHTS", xception_weights)
    sm = xp.load_model("xception", cache=False)
    assert sm.source["weights_source"] == "env:XPATCH_WEIGHTS"
    assert sm.source["weights"] == xception_weights
    monkeypatch.setenv("XPATCH_WEIGHTS", "/nonexistent/x.weights.h5")
    with pytest.raises(ModelError, match="not found"):
        xp.load_model("xception", cache=False)


def test_bad_parameters_fail_before_work(kitchen_model):
    with pytest.raises(ParameterError, match="unknown saliency method"):
        xp.compute_saliency(["/nonexistent.jpg"], model=kitchen_model, method="magic")
    with pytest.raises(ParameterError, match="unknown class name"):
        xp.compute_saliency(["/nonexistent.jpg"], model=kitchen_model, method="gradcam", target="teapot")
    with pytest.raises(ParameterError, match="out of range"):
        xp.compute_saliency(["/nonexistent.jpg"], model=kitchen_model, method="gradcam", target=6)
    with pytest.raises(ParameterError, match="targets given"):
        xp.compute_saliency(["/a.jpg", "/b.jpg"], model=kitchen_model, method="gradcam", target=[1])
    with pytest.raises(ModelError, match="unknown model"):
        xp.load_model("not_a_model")


def test_imagenet_class_names_resolve(xception_weights):
    from tests.conftest import CLASS_INDEX

    if not os.path.isfile(CLASS_INDEX):
        pytest.skip("shared ImageNet class index not found")
    sm = xp.load_model("xception", weights="random", cache=False)
    assert sm.class_index("tabby") == 281
    assert sm.class_index("Egyptian cat") == 285
    assert sm.class_index("n02123045") == 281


def test_upsample_shapes_and_range():
    m = np.array([[0.0, 1.0], [0.5, 0.25]], np.float32)
    up = xp.upsample(m, (480, 640))
    assert up.shape == (480, 640) and up.dtype == np.float32
    assert up.min() >= 0.0 and up.max() <= 1.0
    assert up[0, -1] == pytest.approx(1.0) and up[0, 0] == pytest.approx(0.0)


def test_paths_pil_and_arrays_give_the_same_map(kitchen_model, tmp_path):
    from PIL import Image

    from xpatch_core.offline import kitchenware_images

    path = kitchenware_images()[0]
    img = Image.open(path).convert("RGB")
    png = tmp_path / "same.png"
    img.save(png)
    maps = xp.compute_saliency([str(png), img, np.asarray(img)], model=kitchen_model, method="eigencam")
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-5)
    np.testing.assert_allclose(maps[0], maps[2], atol=1e-5)


def test_mixed_bfloat16_backbone_float32_head_and_gradients():
    import tensorflow as tf

    sm = xp.load_model("mobilenetv2", weights="random", precision="mixed_bfloat16", cache=False)
    assert sm.source["precision"] == "mixed_bfloat16" and sm.source["precision_requested"] == "mixed_bfloat16"
    policies = {op.name: op.dtype_policy.name for op in sm.backbone.operations if op.weights}
    assert set(policies.values()) == {"mixed_bfloat16"}, "every backbone layer with weights computes in bf16"
    target = sm.backbone.outputs[0]._keras_history[0]
    assert target.dtype_policy.name == "float32", "the target layer's activations are float32"
    assert {op.dtype_policy.name for op in sm.head.operations if op.weights} == {"float32"}
    x = np.random.default_rng(1).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
    feats = sm.backbone(x)
    assert feats.dtype == tf.float32
    with tf.GradientTape() as tape:
        tape.watch(feats)
        logits = sm.head(feats)
        score = tf.reduce_sum(logits[:, 3])
    assert logits.dtype == tf.float32 and tape.gradient(score, feats).dtype == tf.float32
    items = xp.compute_saliency([x[0] * 127 + 128], model=sm, method="gradcam", return_items=True)
    assert items[0].map.dtype == np.float32 and items[0].map.shape == (7, 7)
    full = xp.load_model("mobilenetv2", weights="random", precision="float32", cache=False)
    assert {op.dtype_policy.name for op in full.backbone.operations if op.weights} == {"float32"}
    alias = xp.load_model("mobilenetv2", weights="random", precision="bfloat16", cache=False)
    assert alias.source["precision"] == "mixed_bfloat16" and alias.source["precision_requested"] == "bfloat16"
    with pytest.raises(ParameterError, match="precision"):
        xp.load_model("mobilenetv2", weights="random", precision="float16", cache=False)


def test_fusion_is_the_geometric_mean_of_the_two_layer_maps(xception_weights, photos):
    fused = xp.load_model("xception", weights=xception_weights)
    assert fused.fuse_layer == "block13_sepconv1_act" and fused.target_layer == "block14_sepconv2_act"
    coarse = xp.load_model("xception", weights=xception_weights, fuse_layer=None)
    fine = xp.load_model("xception", weights=xception_weights, layer="block13_sepconv1_act")
    assert fine.fuse_layer is None, "an explicit layer turns automatic fusion off"
    images = [photos["coffee"], photos["rocket"]]
    got = xp.compute_saliency(images, model=fused, method="eigencam")
    a = xp.compute_saliency(images, model=coarse, method="eigencam")
    b = xp.compute_saliency(images, model=fine, method="eigencam")
    for g, ma, mb in zip(got, a, b):
        geo = np.sqrt(xp.upsample(ma, mb.shape) * mb)
        expected = (geo - geo.min()) / (geo.max() - geo.min())
        np.testing.assert_allclose(g, expected, atol=1e-3)
        # the same ranking as the product of the two maps (what the sampler's temperature sharpens)
        prod = (xp.upsample(ma, mb.shape) * mb).ravel()
        assert np.corrcoef(np.argsort(np.argsort(prod)), np.argsort(np.argsort(g.ravel())))[0, 1] > 0.99


def test_fusion_rules():
    model = _nested_model()
    with pytest.raises(ModelError, match="at least as fine"):
        xp.load_model(model, layer="conv_a", fuse_layer="conv_b", cache=False)
    sm = xp.load_model(model, fuse_layer="conv_a", cache=False)
    assert xp.compute_saliency([np.full((32, 32, 3), 50.0)], model=sm, method="activation")[0].shape == (30, 30)
    with pytest.raises(ParameterError, match="fusion"):
        xp.compute_saliency([np.zeros((32, 32, 3))], model=sm, method="gradcam")


def test_eigencam_block_iteration_matches_full_eigendecomposition(xception, photos):
    from xpatch_core.images import load_image
    from xpatch_core.saliency import EigenCAM, eigencam_reference

    x = np.stack([load_image(photos[n], (299, 299)).array for n in photos])
    coarse, fine = xception.fused(xception.preprocess(x))
    for acts in (np.asarray(coarse), np.asarray(fine)):
        got, _ = normalize_maps(EigenCAM(xception).combine(acts, None))
        ref, _ = normalize_maps(eigencam_reference(acts))
        np.testing.assert_allclose(got, ref, atol=1e-3)


# -- other input sizes and map_resolution="high" ------------------------------------


def test_backbone_for_other_sizes(xception, kitchen_model):
    sized = xception.backbone_for(448, 597)
    assert sized.input_size == (448, 597) and sized.feature_shape == (14, 19, 2048)
    assert [tuple(t.shape[1:3]) for t in sized.fused.outputs] == [(14, 19), (28, 37)]
    assert xception.backbone_for(448, 597) is sized, "cached per size"
    assert xception.backbone_for(299, 299) is xception
    # a saved classifier's nested backbone, with its pooling head, takes another size
    k = kitchen_model.backbone_for(224, 300)
    assert k.feature_shape[:2] == (7, 10) and k.head is not None
    x = np.random.default_rng(0).uniform(0, 255, (2, 224, 300, 3)).astype(np.float32)
    maps, _, info = METHODS["gradcam"](k).run_batch(k.preprocess(x))
    assert maps.shape == (2, 7, 10) and info["predicted"].shape == (2,)
    with pytest.raises(ParameterError, match="at least 32"):
        xception.backbone_for(16, 300)


def test_backbone_for_refuses_what_the_layers_cannot_take():
    import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="c1")(inp)
    x = keras.layers.Reshape((15, 15, 4), name="fixed")(x)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="c2")(x)
    y = keras.layers.Dense(3)(keras.layers.Flatten()(x))
    sm = xp.load_model(keras.Model(inp, y), cache=False)
    with pytest.raises(ModelError, match="cannot take a 64x64 input"):
        sm.backbone_for(64, 64)
    flat = xp.load_model(keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(
        keras.layers.Conv2D(4, 3, name="c")(inp)))), cache=False)
    sized = flat.backbone_for(48, 40)
    assert sized.feature_shape[:2] == (46, 38) and not sized.has_head and "does not take" in sized.source["head_error"]
    with pytest.raises(ModelError, match="any size"):
        xp.compute_saliency([np.zeros((40, 40, 3))], model=flat, method="gradcam", map_resolution="high")
    with pytest.raises(ParameterError, match="map_resolution"):
        xp.compute_saliency([np.zeros((40, 40, 3))], model=flat, map_resolution="ultra")


def test_high_resolution_maps_peak_on_objects_in_input_order(xception, photos, tmp_path):
    from PIL import Image

    tall = np.ascontiguousarray(np.rot90(photos["rocket"]))  # landscape -> portrait
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    images = [photos["chelsea"], str(broken), photos["coffee"], photos["rocket"], tall]
    items = xp.compute_saliency(images, model=xception, return_items=True, on_error="none", batch_size=2,
                                map_resolution="high")
    assert [it.index for it in items] == list(range(5)) and items[1].error and items[1].map is None
    for it, name in zip([items[0], items[2], items[3]], ["chelsea", "coffee", "rocket"]):
        assert it.map.shape[0] > 19 and it.map.min() == 0.0 and it.map.max() == 1.0
        h, w = photos[name].shape[:2]
        assert it.image_size == (w, h) and abs(it.map.shape[1] / it.map.shape[0] - w / h) < 0.5
        x, y = _peak_xy(it.map, w, h)
        x0, y0, x1, y1 = OBJECTS[name]
        assert x0 <= x < x1 and y0 <= y < y1, f"high-resolution peak of {name} at {(x, y)} is off the object"
    assert items[4].map.shape[0] > items[4].map.shape[1], "a portrait image gets a portrait grid"
    # bucketing and windows do not change a map: batched equals one at a time
    single = [xp.compute_saliency([im], model=xception, map_resolution="high")[0] for im in (images[0], images[4])]
    np.testing.assert_allclose(single[0], items[0].map, atol=1e-4)
    np.testing.assert_allclose(single[1], items[4].map, atol=1e-4)
    Image.fromarray(photos["coffee"]).save(tmp_path / "coffee.png")
    same = xp.compute_saliency([str(tmp_path / "coffee.png")], model=xception, map_resolution="high")[0]
    np.testing.assert_allclose(same, items[2].map, atol=1e-4)


def test_high_resolution_gradcam_on_a_pooling_head(kitchen_model):
    from xpatch_core.offline import kitchenware_images

    images = kitchenware_images()[:3]
    std = xp.compute_saliency(images, model=kitchen_model, method="gradcam", return_items=True)
    high = xp.compute_saliency(images, model=kitchen_model, method="gradcam", return_items=True,
                               map_resolution="high")
    for a, b in zip(std, high):
        assert b.predicted == a.predicted and b.target == a.target
        assert b.map.shape[0] * b.map.shape[1] > a.map.shape[0] * a.map.shape[1]


def test_decoding_pipeline_prefetch_and_callable_size(monkeypatch):
    from xpatch_core import settings
    from xpatch_core.images import iter_decoded_batches

    rng = np.random.default_rng(0)
    arrays = [rng.uniform(0, 255, (h, w, 3)).astype(np.uint8) for h, w in ((40, 60), (60, 40), (50, 50))] * 3
    seen = []
    batches = list(iter_decoded_batches(arrays, lambda s: seen.append(s) or (s[0] // 2, s[1] // 2), 2,
                                        workers=3, prefetch=3))
    assert [len(b) for b in batches] == [2, 2, 2, 2, 1]
    flat = [d for b in batches for _, _, d in b]
    assert [d.array.shape[:2] for d in flat[:3]] == [(20, 30), (30, 20), (25, 25)] and len(seen) == 9
    with pytest.raises(ParameterError, match="prefetch"):
        list(iter_decoded_batches(arrays, None, 2, prefetch=0))
    monkeypatch.delenv("XPATCH_DECODE_WORKERS", raising=False)
    assert settings.decode_workers() == min(16, settings.usable_cores())
    monkeypatch.setenv("XPATCH_DECODE_WORKERS", "5")
    assert settings.decode_workers() == 5


def test_eigencam_on_a_layer_with_more_positions_than_channels_matches_the_svd():
    """A 60x60 layer of 16 channels: EigenCAM iterates on the 16x16 Gram
    matrix (not 3600x3600), on both of its TensorFlow paths."""
    import tensorflow as tf

    from xpatch_core.saliency import EigenCAM, eigencam_reference
    from xpatch_core.saliency.methods import _gram_side

    assert _gram_side(3600, 16) == "channels" and _gram_side(361, 728) == "positions"
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:60, 0:60] / 60.0
    blobs = np.stack([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02) for cy, cx in ((0.3, 0.4), (0.7, 0.6))], -1)
    mix = rng.uniform(0, 1, (2, 2, 16)) * np.array([[3.0], [1.0]])  # the first blob dominates
    acts = np.maximum(np.einsum("hwk,bkc->bhwc", blobs, mix) + rng.normal(0, 0.05, (2, 60, 60, 16)), 0)
    acts = acts.astype(np.float32)
    ref, _ = normalize_maps(eigencam_reference(acts))
    e = EigenCAM.__new__(EigenCAM)
    got, _ = normalize_maps(e.combine(acts, None))
    np.testing.assert_allclose(got, ref, atol=2e-3)
    fused = tf.function(e.combine_tf, input_signature=[tf.TensorSpec([None, 60, 60, 16], tf.float32)])
    got_tf, _ = normalize_maps(np.asarray(fused(acts)))
    np.testing.assert_allclose(got_tf, ref, atol=2e-3)
    assert np.corrcoef(got[0].ravel(), blobs[..., 0].ravel())[0, 1] > 0.9  # and it is the dominant blob


def test_eigencam_memory_does_not_grow_with_the_square_of_the_layer(tmp_path):
    """A model whose target layer is 126x126 with 8 channels: a Gram matrix
    over positions would take 1 GB per image (4 GB for this batch of 4)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import resource, numpy as np, keras, xpatch_core as xp
        inp = keras.Input((128, 128, 3))
        x = keras.layers.Conv2D(8, 3, activation="relu", name="big")(inp)
        out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
        sm = xp.load_model(keras.Model(inp, out), layer="big", cache=False)
        imgs = [np.random.default_rng(i).uniform(0, 255, (128, 128, 3)) for i in range(4)]
        xp.compute_saliency(imgs[:1], model=sm, method="eigencam", batch_size=4)  # warm-up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        maps = xp.compute_saliency(imgs, model=sm, method="eigencam", batch_size=4)
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print("SHAPE", maps[0].shape, "GREW_KB", grew)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("SHAPE")][-1]
    assert "(126, 126)" in line
    assert int(line.split("GREW_KB")[1]) < 300_000, line  # KB: far below one 1 GB Gram matrix
