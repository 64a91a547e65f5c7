"""Network input sizes: as people write them, checked, and as a model takes them.

Rules: a size is one or two whole numbers of pixels, ``(height, width)``,
each from 8 to :data:`MAX_INPUT_SIDE`; text may read ``299`` or
``224x320``. A model whose input fixes both sides takes only that size; a
model that leaves a side free (``None``) needs a size, whose fixed side
must match. Nothing here imports TensorFlow.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xpatch_core.errors import ParameterError

#: The largest network input side accepted (a 8192 x 8192 float32 batch of one is 800 MB).
MAX_INPUT_SIDE = 8192


def normalize_input_size(input_size: Any) -> tuple[int, int]:
    """Checks a network input size and returns it as ``(height, width)``.

    Args:
        input_size: an int (a square input), a pair ``(height, width)``,
            or text (``"299"``, ``"224x320"``)

    Returns:
        ``(height, width)``

    Raises:
        ParameterError: if it is not one or two whole numbers from 8 to
            :data:`MAX_INPUT_SIDE`
    """
    if isinstance(input_size, str):
        return parse_input_size(input_size)
    if isinstance(input_size, (int, np.integer)) and not isinstance(input_size, bool):
        input_size = (int(input_size), int(input_size))
    try:
        pair = tuple(input_size)
        ok = len(pair) == 2 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair)
    except TypeError:
        ok = False
    if not ok or not all(8 <= int(v) <= MAX_INPUT_SIDE for v in pair):
        raise ParameterError(f"input_size must be one or two whole numbers of pixels (height, width) from 8 to "
                             f"{MAX_INPUT_SIDE}, got {input_size!r}")
    return int(pair[0]), int(pair[1])


def parse_input_size(text: str) -> tuple[int, int]:
    """Reads an input size as people write it: ``"299"`` or ``"224x320"``
    (height x width; a comma works too).

    Args:
        text: the text

    Returns:
        ``(height, width)``

    Raises:
        ParameterError: if it is not one or two sides of 8 to
            :data:`MAX_INPUT_SIDE` pixels
    """
    import re

    try:
        parts = [int(v) for v in re.split(r"\s*[x,]\s*", str(text).strip().lower())]
        return normalize_input_size(parts[0] if len(parts) == 1 else parts)
    except (ValueError, ParameterError):
        raise ParameterError(f"input size must be one or two sides of 8 to {MAX_INPUT_SIDE} pixels, e.g. 299 or "
                             f"224x320 (height x width), got {text!r}") from None


def model_input_size(backbone: Any, name: str, input_size: tuple[int, int] | None) -> tuple[int, int]:
    """The input size a model is fed: its own, or the one asked for where
    the model takes any height or width (a fixed side must match).

    Args:
        backbone: the model's part from the input on (a Keras model)
        name: the model's name, for messages
        input_size: ``(height, width)`` asked for, or None

    Returns:
        ``(height, width)``

    Raises:
        ParameterError: if a size is needed and not given, or differs
    """
    in_shape = tuple(backbone.inputs[0].shape[1:3])
    if None in in_shape:
        if input_size is None:
            free = ("any input size" if in_shape == (None, None) else
                    f"any {'height' if in_shape[0] is None else 'width'} (its "
                    f"{'width' if in_shape[0] is None else 'height'} is {in_shape[1] or in_shape[0]})")
            raise ParameterError(f"model {name!r} accepts {free}; pass input_size=")
        fixed = [(d, want, side) for d, want, side in zip(in_shape, input_size, ("height", "width"))
                 if d is not None and int(d) != int(want)]
        if fixed:
            d, want, side = fixed[0]
            raise ParameterError(f"model {name!r} takes inputs of {side} {d}; the input size asked for has "
                                 f"{side} {want}")
        return tuple(input_size)
    size = (int(in_shape[0]), int(in_shape[1]))
    if input_size is not None and tuple(input_size) != size:
        raise ParameterError(f"model {name!r} takes {size[0]}x{size[1]} inputs (height x width); the input size "
                             f"asked for, {input_size[0]}x{input_size[1]}, differs")
    return size


__all__ = ["MAX_INPUT_SIDE", "model_input_size", "normalize_input_size", "parse_input_size"]
