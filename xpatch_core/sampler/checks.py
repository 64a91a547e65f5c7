"""Argument checks of the sampler, run before any work.

Rules:

-   Every check raises :class:`~xpatch_core.errors.ParameterError` (a
    ``ValueError``) naming the parameter and the value it got, and returns
    the value in a canonical Python type (``int``, ``float``, ``tuple``).
-   ``bool`` is never accepted where a number is expected, NumPy integer and
    floating scalars are.
-   :func:`check_params` checks every argument of
    :func:`~xpatch_core.sampler.sample_patches` except the map, in a fixed
    order (so that with several bad arguments the same one is named every
    time), and the enumerated ones against
    :data:`xpatch_core.defaults.CHOICES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from xpatch_core.defaults import CHOICES
from xpatch_core.errors import ParameterError
from xpatch_core.sampler.seeding import check_seed, stable_key_hash

__all__ = [
    "SampleParams",
    "check_image_size",
    "check_params",
    "check_positive_seq",
    "check_size",
    "check_stride",
    "is_int",
    "is_real",
]


def is_int(x: Any) -> bool:
    """Whether ``x`` is an integer (Python or NumPy), not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def is_real(x: Any) -> bool:
    """Whether ``x`` is a real number (Python or NumPy), not a bool."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def check_image_size(image_size: Any) -> tuple[int, int]:
    """Checks ``(width, height)``: two ints ``>= 1``.

    Args:
        image_size: the value to check

    Returns:
        ``(W, H)`` as Python ints

    Raises:
        ParameterError: if it is not two positive ints
    """
    try:
        W, H = image_size
    except (TypeError, ValueError):
        raise ParameterError(f"image_size must be (width, height), got {image_size!r}") from None
    if not (is_int(W) and is_int(H)) or W < 1 or H < 1:
        raise ParameterError(f"image_size must be two positive ints (width, height), got {image_size!r}")
    return int(W), int(H)


def check_size(size: Any, W: int, H: int) -> int:
    """Checks a box size and turns it into pixels.

    Args:
        size: an int ``>= 1`` (pixels) or a float in ``(0, 1]`` (fraction of
            the image's short side, rounded half up, at least 1)
        W: the image width
        H: the image height

    Returns:
        the size in pixels

    Raises:
        ParameterError: for any other value
    """
    if is_int(size):
        if size < 1:
            raise ParameterError(f"size must be >= 1 pixel, got {size}")
        return int(size)
    if is_real(size):
        s = float(size)
        if not (0.0 < s <= 1.0):
            raise ParameterError(
                "a float size is a fraction of the image's short side and must "
                f"be in (0, 1], got {size!r}; pass an int for pixels"
            )
        return max(1, int(math.floor(s * min(W, H) + 0.5)))
    raise ParameterError(f"size must be an int (pixels) or a float fraction, got {size!r}")


def check_positive_seq(values: Any, name: str) -> tuple[float, ...]:
    """Checks a non-empty sequence of finite numbers ``> 0`` (or one number).

    Args:
        values: the value to check
        name: the parameter's name, for the message

    Returns:
        a tuple of floats

    Raises:
        ParameterError: if it is empty, not a sequence, or holds a bad value
    """
    if is_real(values):
        values = (values,)
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ParameterError(f"{name} must be a sequence of positive numbers, got {values!r}")
    out = []
    for v in values:
        if not is_real(v) or not (math.isfinite(v) and v > 0):
            raise ParameterError(f"{name} must contain finite numbers > 0, got {v!r}")
        out.append(float(v))
    if not out:
        raise ParameterError(f"{name} must not be empty")
    return tuple(out)


def check_stride(stride: Any) -> tuple[int, int] | None:
    """Checks a grid stride: ``None``, an int or ``(x, y)``, ints ``>= 1``.

    Args:
        stride: the value to check

    Returns:
        ``(sx, sy)`` or ``None``

    Raises:
        ParameterError: for any other value
    """
    if stride is None:
        return None
    if is_int(stride):
        sx = sy = stride
    else:
        try:
            sx, sy = stride
        except (TypeError, ValueError):
            raise ParameterError(f"stride must be an int or (x, y), got {stride!r}") from None
    if not (is_int(sx) and is_int(sy)) or sx < 1 or sy < 1:
        raise ParameterError(f"stride must be positive ints, got {stride!r}")
    return int(sx), int(sy)


@dataclass(slots=True)
class SampleParams:
    """The checked arguments of one :func:`sample_patches` call.

    Attributes mirror the arguments of
    :func:`~xpatch_core.sampler.sample_patches`; ``base`` is the size in
    pixels, ``key_hash`` the key's
    :func:`~xpatch_core.sampler.seeding.stable_key_hash`, ``strides`` the
    checked ``stride`` and ``constrained`` whether overlap control is on
    (``max_iou < 1`` or ``min_distance > 0``).
    """

    W: int
    H: int
    n: int | None
    base: int
    seed: int
    key_hash: int
    scales: tuple[float, ...]
    aspect_ratios: tuple[float, ...]
    temperature: float
    epsilon: float
    replace: bool
    max_iou: float | None
    min_distance: float | None
    constrained: bool
    score: str
    mode: str
    border: str
    on_degenerate: str
    max_tries: int | None
    strides: tuple[int, int] | None


def _choice_error(name: str, value: Any) -> ParameterError:
    return ParameterError(f"{name} must be one of {CHOICES[name]}, got {value!r}")


def _check_numbers(temperature: Any, epsilon: Any, max_iou: Any, min_distance: Any) -> None:
    if not is_real(temperature) or not (math.isfinite(temperature) and temperature >= 0):
        raise ParameterError(f"temperature must be finite and >= 0, got {temperature!r}")
    if not is_real(epsilon) or not (0.0 <= epsilon <= 1.0):
        raise ParameterError(f"epsilon must be in [0, 1], got {epsilon!r}")
    if max_iou is not None and (not is_real(max_iou) or not (0.0 <= max_iou <= 1.0)):
        raise ParameterError(f"max_iou must be in [0, 1] or None, got {max_iou!r}")
    if min_distance is not None and (
        not is_real(min_distance) or not (math.isfinite(min_distance) and min_distance >= 0)
    ):
        raise ParameterError(f"min_distance must be finite and >= 0 or None, got {min_distance!r}")


def check_params(
    image_size: Any,
    n: Any,
    size: Any,
    *,
    seed: Any,
    key: Any,
    scales: Any,
    aspect_ratios: Any,
    temperature: Any,
    epsilon: Any,
    replace: Any,
    max_iou: Any,
    min_distance: Any,
    score: Any,
    mode: Any,
    border: Any,
    on_degenerate: Any,
    max_tries: Any,
    stride: Any,
) -> SampleParams:
    """Checks every argument of :func:`sample_patches` but the map.

    The arguments are those of
    :func:`~xpatch_core.sampler.sample_patches`, checked in this order:
    ``image_size``, ``mode``, ``n``, ``size``, ``seed``, ``key``,
    ``scales``, ``aspect_ratios``, ``temperature``, ``epsilon``,
    ``max_iou``, ``min_distance``, ``score``, ``border``,
    ``on_degenerate``, ``max_tries``, ``replace``, ``stride``.

    Args:
        image_size: ``(width, height)``
        n: the number of boxes (``None``: every tile, grid mode only)
        size: the box size, pixels (int) or fraction of the short side
        seed: a non-negative int
        key: the sample key
        scales: size multipliers
        aspect_ratios: width / height ratios
        temperature: the weight exponent, finite and ``>= 0``
        epsilon: the uniform mixture weight in ``[0, 1]``
        replace: a bool
        max_iou: ``None`` or in ``[0, 1]``
        min_distance: ``None`` or finite and ``>= 0``
        score: one of ``CHOICES["score"]``
        mode: one of ``CHOICES["mode"]``
        border: one of ``CHOICES["border"]``
        on_degenerate: one of ``CHOICES["on_degenerate"]``
        max_tries: ``None`` or an int ``>= 1``
        stride: ``None``, an int or ``(x, y)``, ints ``>= 1``

    Returns:
        a :class:`SampleParams`

    Raises:
        ParameterError: naming the first bad argument
    """
    W, H = check_image_size(image_size)
    if mode not in CHOICES["mode"]:
        raise _choice_error("mode", mode)
    if n is None:
        if mode != "grid":
            raise ParameterError("n=None (all tiles) is only allowed with mode='grid'")
    elif not is_int(n) or n < 1:
        raise ParameterError(f"n must be an int >= 1, got {n!r}")
    else:
        n = int(n)
    base = check_size(size, W, H)
    seed = check_seed(seed)
    key_hash = stable_key_hash(key)
    sc = check_positive_seq(scales, "scales")
    ar = check_positive_seq(aspect_ratios, "aspect_ratios")
    _check_numbers(temperature, epsilon, max_iou, min_distance)
    for name, value in (("score", score), ("border", border), ("on_degenerate", on_degenerate)):
        if value not in CHOICES[name]:
            raise _choice_error(name, value)
    if max_tries is not None and (not is_int(max_tries) or max_tries < 1):
        raise ParameterError(f"max_tries must be an int >= 1 or None, got {max_tries!r}")
    if not isinstance(replace, (bool, np.bool_)):
        raise ParameterError(f"replace must be a bool, got {replace!r}")
    strides = check_stride(stride)
    max_iou = None if max_iou is None else float(max_iou)
    min_distance = None if min_distance is None else float(min_distance)
    constrained = (max_iou is not None and max_iou < 1.0) or bool(min_distance)
    return SampleParams(
        W=W, H=H, n=n, base=base, seed=seed, key_hash=key_hash, scales=sc, aspect_ratios=ar,
        temperature=float(temperature), epsilon=float(epsilon), replace=replace, max_iou=max_iou,
        min_distance=min_distance, constrained=constrained, score=score, mode=mode, border=border,
        on_degenerate=on_degenerate, max_tries=max_tries, strides=strides,
    )
