"""The ``keras.applications`` models xpatch loads by name, and the check of
a model argument given by name, without TensorFlow.

Rules: a name is matched case-insensitively, ignoring ``_``, ``-`` and
spaces (``"ResNet-50"`` is ``ResNet50``); a name that is no application must
be a ``.keras``/``.h5``/``.hdf5`` file that exists.
"""

from __future__ import annotations

import os
from typing import Any

from xpatch_core.errors import ModelError

# name -> (constructor, preprocessing module, default input size)
APPLICATIONS: dict[str, tuple[str, str, int]] = {
    "xception": ("Xception", "xception", 299),
    "vgg16": ("VGG16", "vgg16", 224),
    "vgg19": ("VGG19", "vgg19", 224),
    "resnet50": ("ResNet50", "resnet", 224),
    "resnet101": ("ResNet101", "resnet", 224),
    "resnet152": ("ResNet152", "resnet", 224),
    "resnet50v2": ("ResNet50V2", "resnet_v2", 224),
    "resnet101v2": ("ResNet101V2", "resnet_v2", 224),
    "resnet152v2": ("ResNet152V2", "resnet_v2", 224),
    "inceptionv3": ("InceptionV3", "inception_v3", 299),
    "inceptionresnetv2": ("InceptionResNetV2", "inception_resnet_v2", 299),
    "mobilenet": ("MobileNet", "mobilenet", 224),
    "mobilenetv2": ("MobileNetV2", "mobilenet_v2", 224),
    "mobilenetv3small": ("MobileNetV3Small", "mobilenet_v3", 224),
    "mobilenetv3large": ("MobileNetV3Large", "mobilenet_v3", 224),
    "densenet121": ("DenseNet121", "densenet", 224),
    "densenet169": ("DenseNet169", "densenet", 224),
    "densenet201": ("DenseNet201", "densenet", 224),
    "nasnetmobile": ("NASNetMobile", "nasnet", 224),
    "nasnetlarge": ("NASNetLarge", "nasnet", 331),
    "efficientnetb0": ("EfficientNetB0", "efficientnet", 224),
    "efficientnetb1": ("EfficientNetB1", "efficientnet", 240),
    "efficientnetb2": ("EfficientNetB2", "efficientnet", 260),
    "efficientnetb3": ("EfficientNetB3", "efficientnet", 300),
    "efficientnetb4": ("EfficientNetB4", "efficientnet", 380),
    "efficientnetb5": ("EfficientNetB5", "efficientnet", 456),
    "efficientnetb6": ("EfficientNetB6", "efficientnet", 528),
    "efficientnetb7": ("EfficientNetB7", "efficientnet", 600),
    "efficientnetv2b0": ("EfficientNetV2B0", "efficientnet_v2", 224),
    "efficientnetv2b1": ("EfficientNetV2B1", "efficientnet_v2", 240),
    "efficientnetv2b2": ("EfficientNetV2B2", "efficientnet_v2", 260),
    "efficientnetv2b3": ("EfficientNetV2B3", "efficientnet_v2", 300),
    "efficientnetv2s": ("EfficientNetV2S", "efficientnet_v2", 384),
    "convnexttiny": ("ConvNeXtTiny", "convnext", 224),
    "convnextsmall": ("ConvNeXtSmall", "convnext", 224),
    "convnextbase": ("ConvNeXtBase", "convnext", 224),
    "regnetx002": ("RegNetX002", "regnet", 224),
    "regnety002": ("RegNetY002", "regnet", 224),
}


def normalize_name(name: str) -> str:
    """A model name as :data:`APPLICATIONS` keys it (``"ResNet-50"`` -> ``"resnet50"``).

    Args:
        name: a model name

    Returns:
        the name, lower case, without ``_``, ``-`` and spaces
    """
    return name.lower().replace("_", "").replace("-", "").replace(" ", "")


def list_applications() -> list[str]:
    """Returns the ``keras.applications`` names :func:`load_model` accepts.

    Returns:
        a sorted list of names
    """
    return sorted(APPLICATIONS)


def is_application(name: str) -> bool:
    """Whether ``name`` names a ``keras.applications`` model.

    Args:
        name: a model name such as ``"ResNet50"``

    Returns:
        True or False
    """
    return normalize_name(name) in APPLICATIONS


def application_constructor(name: str) -> str | None:
    """The ``keras.applications`` constructor a model name stands for.

    Args:
        name: a model name such as ``"resnet-50"``

    Returns:
        the constructor's name (``"ResNet50"``), or None if ``name`` names
        no application
    """
    entry = APPLICATIONS.get(normalize_name(name))
    return entry[0] if entry else None


def check_model_name(model: Any) -> None:
    """Checks, without loading anything, that a model given by name names a
    ``keras.applications`` model or an existing ``.keras``/``.h5`` file.

    Args:
        model: a run's model argument (anything but a string passes)

    Raises:
        ModelError: for an unknown name or a missing file
    """
    if not isinstance(model, str) or is_application(model):
        return
    if os.path.splitext(model)[1].lower() not in (".keras", ".h5", ".hdf5"):
        raise ModelError(
            f"unknown model {model!r}: not a keras.applications name (e.g. "
            f"{', '.join(['xception', 'resnet50', 'efficientnetb0', 'mobilenetv2'])}) "
            "nor a .keras/.h5 file"
        )
    if not os.path.exists(model):
        raise ModelError(f"model file not found: {model}")


__all__ = ["APPLICATIONS", "application_constructor", "check_model_name", "is_application", "list_applications",
           "normalize_name"]
