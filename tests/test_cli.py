"""The ``xpatch`` command, run as a user would (the console script, in a subprocess)."""

from __future__ import annotations

import os
import re
import shutil

import fiftyone as fo
import pytest

from tests.cli_run import xpatch as _xpatch


@pytest.fixture()
def photo_dir(tmp_path, kitchen):
    from xpatch_core.offline import kitchenware_images

    folder = tmp_path / "photos"
    folder.mkdir()
    for p in kitchenware_images()[:5]:
        shutil.copy(p, folder / os.path.basename(p))
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_help_explains_itself():
    out = _xpatch("--help")
    assert out.returncode == 0
    for word in ("run", "demo", "plugin", "examples", "XPATCH_WEIGHTS"):
        assert word in out.stdout
    out = _xpatch("run", "--help")
    assert out.returncode == 0 and "--export" in out.stdout and "--weights" in out.stdout


def test_run_on_folder_with_a_corrupt_file(photo_dir, tmp_path, xception_weights):
    name = f"cli-{os.getpid()}"
    sheet = tmp_path / "sheet.png"
    out = _xpatch("run", str(photo_dir), "--dataset", name, "--weights", xception_weights,
                  "-n", "5", "--size", "64", "--contact-sheet", str(sheet), cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "saliency: 5 processed, 0 already done, 1 failed" in text
    assert "patches: 5 processed" in text
    assert "summary: 6 images, 5 with heatmaps, 25 patches, 1 failures" in text
    assert "corrupt.jpg: truncated or corrupt image data" in text
    assert "images/s" in text and sheet.is_file()
    assert re.search(r"saliency: .*time: load model [\d.]+ s, compute [\d.]+ s.*; "
                     r"in threads, overlapped: decoding [\d.]+ s, inference [\d.]+ s", text), text
    assert re.search(r"computed on (tensorflow|openvino) in (float32|mixed_bfloat16): \S", text), text
    ds = fo.load_dataset(name)
    try:
        assert len(ds) == 6 and ds.persistent
        assert ds.count("saliency") == 5 and ds.count("patches.detections") == 25
        failed = ds.match_tags("xpatch:saliency:failed")
        assert failed.values("filepath") == [str(photo_dir / "corrupt.jpg")]
        # A second run adds new images only and resumes.
        shutil.copy(next(photo_dir.glob("0*.jpg")), photo_dir / "extra.jpg")
        out = _xpatch("run", str(photo_dir), "--dataset", name, "--weights", xception_weights,
                      "-n", "5", "--size", "64", "--contact-sheet", str(sheet), cwd=str(tmp_path))
        assert out.returncode == 0, out.stderr[-3000:]
        assert "(1 added)" in out.stdout and "saliency: 1 processed, 5 already done, 1 failed" in out.stdout
        ds.reload()
        assert len(ds) == 7 and ds.count("saliency") == 6
        # other patch parameters are refused before any work (were: after the new heatmaps)
        shutil.copy(next(photo_dir.glob("0*.jpg")), photo_dir / "extra2.jpg")
        other = _xpatch("run", str(photo_dir), "--dataset", name, "--weights", xception_weights,
                        "-n", "4", "--size", "64", "--contact-sheet", str(sheet), cwd=str(tmp_path))
        assert other.returncode == 2 and "other parameters (-n); pass --overwrite" in other.stderr, other.stderr
        assert "processed" not in other.stdout and "added" not in other.stdout, other.stdout
        # and so is another saliency method (was: after ingestion and the model load)
        other = _xpatch("run", str(photo_dir), "--dataset", name, "--weights", xception_weights, "--method",
                        "gradcam++", "-n", "5", "--size", "64", "--contact-sheet", str(sheet), cwd=str(tmp_path))
        assert other.returncode == 2 and "other parameters (--method); pass --overwrite" in other.stderr, \
            other.stderr
        assert "processed" not in other.stdout and "added" not in other.stdout, other.stdout
        ds.reload()
        assert len(ds) == 7  # extra2.jpg was not ingested
        (photo_dir / "extra2.jpg").unlink()
        # a non-empty export folder is refused before any work, naming the command's flag
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "mine.txt").write_text("keep")
        refused = _xpatch("run", str(photo_dir), "--dataset", name, "--weights", xception_weights,
                          "--export", f"imagefolder:{tmp_path / 'full'}", "--overwrite", cwd=str(tmp_path))
        assert refused.returncode == 2 and "pass --export-overwrite" in refused.stderr, refused.stderr[-2000:]
        assert "processed" not in refused.stdout and (tmp_path / "full" / "mine.txt").read_text() == "keep"
        # the run list counts what the fields hold, not only the last part
        listed = _xpatch("runs", name)
        assert listed.returncode == 0, listed.stderr[-2000:]
        assert ("saliency: saliency in 'saliency', completed: 6 of 7 samples with results, 1 failed; "
                "last run 1 processed, 5 already done") in listed.stdout, listed.stdout
        assert ("patches: patches in 'patches', completed: 6 of 7 samples with results, 0 failed, 30 patches; "
                "last run 1 processed, 5 already done") in listed.stdout, listed.stdout
    finally:
        ds.delete()


def test_usage_errors(tmp_path, photo_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (("run", str(tmp_path / "missing"), "--dataset", "x"), "folder not found"),
        (("run", str(empty), "--dataset", "x"), "no images in"),
        (("run", str(photo_dir), "--dataset", "x", "--model", "resnet9000"), "unknown model"),
        (("run", str(photo_dir), "--dataset", "x", "--method", "magic"), "unknown saliency method"),
        (("run", str(photo_dir), "--dataset", "x", "--size", "-4"), "size must be > 0"),
        (("run", str(photo_dir), "--dataset", "x", "-n", "0"), "must be >= 1"),
    ]
    for args, message in cases:
        out = _xpatch(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert message in out.stderr, (args, out.stderr)
    assert not fo.dataset_exists("x")


def test_dataset_field_in_use_by_another_run_type(photo_dir, xception_weights):
    name = f"cli-clash-{os.getpid()}"
    ds = fo.Dataset(name, persistent=True)
    try:
        ds.add_sample(fo.Sample(filepath=str(next(photo_dir.glob("0*.jpg")))))
        ds.set_values("saliency", [fo.Classification(label="x")])
        out = _xpatch("run", str(photo_dir), "--dataset", name, "--weights", xception_weights)
        assert out.returncode == 2
        assert "field 'saliency' already exists" in out.stderr
        ds.reload()
        assert ds.values("saliency.label") == ["x"]
    finally:
        ds.delete()


def test_nothing_processed_exits_1(tmp_path, xception_weights):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")
    (folder / "b.png").write_text("text")
    name = f"cli-bad-{os.getpid()}"
    out = _xpatch("run", str(folder), "--dataset", name, "--weights", xception_weights)
    try:
        assert out.returncode == 1, out.stdout + out.stderr
        assert "no image could be processed" in out.stderr
        assert "a.jpg: empty file" in out.stdout
        # the same again: the files are still broken, found without loading the model
        again = _xpatch("run", str(folder), "--dataset", name, "--weights", xception_weights)
        assert again.returncode == 1, again.stdout + again.stderr
        assert "a.jpg: empty file" in again.stdout and "b.png: not a recognised image format" in again.stdout
        assert "saliency: 0 processed, 0 already done, 2 failed" in again.stdout
        assert "load model" not in again.stdout, again.stdout
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


@pytest.mark.slow
def test_demo_runs_offline(tmp_path, kitchen):
    out = _xpatch("demo", "--dataset", f"demo-{os.getpid()}", "--out", str(tmp_path / "demo"), cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "saliency: 18 processed" in out.stdout
    assert (tmp_path / "demo" / "contact_sheet.png").is_file()
    crops = list((tmp_path / "demo" / "imagefolder").rglob("*.jpg")) + list(
        (tmp_path / "demo" / "imagefolder").rglob("*.png"))
    assert len(crops) == 18 * 8
    assert "fiftyone app launch" in out.stdout
    fo.delete_dataset(f"demo-{os.getpid()}")


@pytest.mark.parametrize("var,value,message", [
    ("XPATCH_ENGINE", "onnx", "XPATCH_ENGINE must be tensorflow, openvino or auto"),
    ("XPATCH_DECODE_WORKERS", "0", "XPATCH_DECODE_WORKERS must be >= 1, got 0"),
    ("XPATCH_DECODE_WORKERS", "abc", "XPATCH_DECODE_WORKERS must be an integer, got 'abc'"),
])
def test_a_bad_setting_fails_before_ingestion(tmp_path, monkeypatch, var, value, message):
    import fiftyone as fo
    from PIL import Image

    Image.new("RGB", (40, 30), (120, 30, 200)).save(tmp_path / "a.png")
    name = f"xpatch-bad-setting-{os.getpid()}"
    monkeypatch.setenv(var, value)
    out = _xpatch("run", str(tmp_path), "--dataset", name, timeout=300)
    assert out.returncode != 0 and message in out.stderr, out.stderr[-2000:]
    assert not fo.dataset_exists(name)  # nothing ingested


def test_a_model_that_takes_any_input_size_gets_one_from_the_command(tmp_path, photo_dir):
    """``--input-size`` (the library's ``input_size``); errors name the
    command's flags, not Python's keywords."""
    import keras

    inp = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    model = str(tmp_path / "anysize.keras")
    keras.Model(inp, out).save(model)
    name = f"cli-anysize-{os.getpid()}"
    common = ("run", str(photo_dir), "--dataset", name, "--model", model, "--method", "gradcam",
              "-n", "2", "--size", "32", "--contact-sheet", str(tmp_path / "sheet.png"))
    try:
        bad = _xpatch(*common, "--input-size", "3")
        assert bad.returncode == 2 and "sides of 8 to 8192 pixels" in bad.stderr and "'3'" in bad.stderr, bad.stderr
        missing = _xpatch(*common)
        assert missing.returncode == 2, missing.stdout + missing.stderr
        assert "accepts any input size; pass --input-size" in missing.stderr, missing.stderr
        ok = _xpatch(*common, "--input-size", "64x48")
        assert ok.returncode == 0, ok.stdout + ok.stderr[-3000:]
        assert "saliency: 5 processed" in ok.stdout, ok.stdout
        ds = fo.load_dataset(name)
        cfg = ds.get_run_info("saliency").config.serialize()
        assert cfg["input_size"] == [64, 48] and cfg["request"]["input_size"] == [64, 48]
        again = _xpatch(*common, "--input-size", "64x48")
        assert again.returncode == 0 and "saliency: 0 processed, 5 already done" in again.stdout
        assert "load model" not in again.stdout.split("patches:")[0], again.stdout
        other = _xpatch(*[a if a != "gradcam" else "gradcam++" for a in common], "--input-size", "64x48")
        assert other.returncode == 2, other.stdout + other.stderr
        assert "pass --overwrite to redo" in other.stderr and "overwrite=True" not in other.stderr, other.stderr
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_library_messages_are_spelled_as_flags():
    from xpatch_core.cli import cli_spelling

    cases = {
        "pass overwrite=True to redo every sample": "pass --overwrite to redo every sample",
        "Pass weights=PATH to a weights file": "Pass --weights PATH to a weights file",
        "use engine='tensorflow' or reinstall openvino": "use --engine tensorflow or reinstall openvino",
        "pass precision='float32'": "pass --precision float32",
        "Use map_resolution='standard'": "Use --map-resolution standard",
        "border='pad' / border='clip'": "--border pad / --border clip",
        "load it with load_model(..., layer='block4') or": "load it with --layer block4 or",
        "pass class_names= to load_model or use an index": "pass --class-names or use an index",
        "any input size; pass input_size=": "any input size; pass --input-size",
        "choose an earlier layer with layer=)": "choose an earlier layer with --layer)",
        "other parameters (n, max_iou, model_source); pass overwrite=True":
            "other parameters (-n, --max-iou, --model/--weights/--layer/--input-size); pass --overwrite",
        "export folder /e is not empty (2 entries); choose an empty or new folder, or pass overwrite=True to":
            "export folder /e is not empty (2 entries); choose an empty or new folder, or pass --export-overwrite to",
        "a file named overwrite=Truex stays": "a file named overwrite=Truex stays",  # words, not parts
        "was made with other settings: min_area_ratio=0.1 (now 0.5); output_dir='/a' (now '/b')":
            "was made with other settings: --min-area-ratio 0.1 (now 0.5); --out '/a' (now '/b')",
    }
    for message, expected in cases.items():
        assert cli_spelling(message) == expected, (message, cli_spelling(message))
