"""What the hardware computes natively, and the precision ``"auto"`` picks.

bfloat16 pays where the hardware has it natively: on a CPU with the
``amx_bf16`` or ``avx512_bf16`` instructions (recent Xeons, Zen 4 and
later; TensorFlow reaches them through oneDNN) and on NVIDIA GPUs of
compute capability 8.0 or more (Ampere and later). Elsewhere it is emulated
and slower than float32, so ``"auto"`` keeps float32.

:func:`auto_precision` reads ``/proc/cpuinfo`` and imports nothing heavy
when no GPU can be present; it imports TensorFlow (once per process) only
when an NVIDIA driver is installed and ``CUDA_VISIBLE_DEVICES`` does not hide
the GPUs, to ask which GPUs TensorFlow sees and their compute capability.
When TensorFlow sees a GPU, the GPU decides, since the model runs there.

:func:`resolve_engine` picks what runs the forward pass. OpenVINO's CPU
runtime computes Xception's float32 forward 1.36x faster than TensorFlow on
a CPU without bfloat16 (measured on an AVX2 AMD EPYC, 2 cores,
``benchmarks/bench_pipeline.py``), with the same numbers (largest
difference of the activations 3e-5); so ``engine="auto"`` uses it where the
precision resolves to float32 and no GPU is visible, and TensorFlow
elsewhere: on a GPU (OpenVINO does not drive NVIDIA GPUs) and where the CPU
computes bfloat16 natively (TensorFlow's ``mixed_bfloat16`` path is the one
measured there, 1.55x). Gradients always come from TensorFlow.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from xpatch_core import settings
from xpatch_core.defaults import CHOICES
from xpatch_core.errors import ParameterError

#: Where the CPU's flags are read (Linux).
CPUINFO_PATH = "/proc/cpuinfo"
#: CPU flags that mean native bfloat16 arithmetic.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
#: The lowest NVIDIA compute capability with native bfloat16 (Ampere).
BF16_MIN_COMPUTE_CAPABILITY = (8, 0)
#: Files whose presence means an NVIDIA driver is installed.
NVIDIA_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl")

#: Precisions :func:`resolve_precision` accepts (``"bfloat16"`` is an alias
#: of ``"mixed_bfloat16"``).
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "bfloat16")
#: Engines :func:`resolve_engine` accepts.
ENGINES = CHOICES["engine"]
#: The entries of a model's ``source`` that name the engine: they describe
#: the machine, not the model (runs resume across engines).
ENGINE_SOURCE_KEYS = ("engine", "engine_requested", "engine_reason", "openvino_cache")


@dataclass(frozen=True)
class GpuInfo:
    """A GPU TensorFlow can use.

    Attributes:
        name: the device's name, e.g. ``"NVIDIA H200"``
        compute_capability: ``(major, minor)``, or None when TensorFlow does
            not report one (not an NVIDIA GPU)
    """

    name: str
    compute_capability: tuple[int, int] | None

    @property
    def native_bfloat16(self) -> bool:
        """Whether the GPU computes bfloat16 natively."""
        cc = self.compute_capability
        return cc is not None and tuple(cc) >= BF16_MIN_COMPUTE_CAPABILITY


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags.

    Args:
        cpuinfo: the text of ``/proc/cpuinfo``; default: read
            :data:`CPUINFO_PATH` (empty when it cannot be read)

    Returns:
        the set of flags common to the listed processors
    """
    if cpuinfo is None:
        try:
            with open(CPUINFO_PATH, encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return frozenset()
    common: set[str] | None = None
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            flags = set(value.split())
            common = flags if common is None else common & flags
    return frozenset(common or ())


def gpu_driver_present() -> bool:
    """Whether an NVIDIA driver is installed and the GPUs are not hidden.

    Returns:
        True or False; cheap, imports nothing
    """
    if settings.gpus_hidden():
        return False
    return any(os.path.exists(p) for p in NVIDIA_DRIVER_FILES)


@functools.lru_cache(maxsize=1)
def detect_gpus() -> tuple[GpuInfo, ...]:
    """The GPUs TensorFlow sees, with their compute capability.

    Imports TensorFlow (once per process, cached) only when
    :func:`gpu_driver_present`; otherwise returns no GPU without importing it.

    Returns:
        a tuple of :class:`GpuInfo`
    """
    if not gpu_driver_present():
        return ()
    from xpatch_core._tfsetup import setup_tensorflow

    setup_tensorflow()
    import tensorflow as tf

    out = []
    for dev in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(dev)
        except Exception:  # noqa: BLE001 - a device without details is an unknown GPU
            details = {}
        cc = details.get("compute_capability")
        out.append(GpuInfo(str(details.get("device_name", dev.name)), tuple(cc) if cc else None))
    return tuple(out)


def auto_precision(
    *, cpuinfo: str | None = None, gpus: Sequence[GpuInfo] | None = None
) -> tuple[str, str]:
    """The precision ``"auto"`` resolves to on this machine, and why.

    With GPUs, bfloat16 when every visible GPU has it natively; without,
    bfloat16 when the CPU has one of :data:`BF16_CPU_FLAGS` and TensorFlow's
    oneDNN kernels are on; float32 otherwise.

    Args:
        cpuinfo: the text of ``/proc/cpuinfo`` to use instead of the real one
        gpus: the GPUs to assume instead of :func:`detect_gpus` (which may
            import TensorFlow, see the module's docstring)

    Returns:
        ``(precision, reason)``: ``"mixed_bfloat16"`` or ``"float32"``, and a
        sentence for people
    """
    gpus = detect_gpus() if gpus is None else tuple(gpus)
    if gpus:
        slow = [g for g in gpus if not g.native_bfloat16]
        if not slow:
            names = ", ".join(sorted({_gpu_label(g) for g in gpus}))
            return "mixed_bfloat16", f"GPU {names} computes bfloat16 natively"
        names = ", ".join(sorted({_gpu_label(g) for g in slow}))
        return "float32", f"GPU {names} has no native bfloat16 (needs compute capability 8.0 or more)"
    flags = cpu_flags(cpuinfo)
    native = [f for f in BF16_CPU_FLAGS if f in flags]
    if not native:
        return "float32", (f"the CPU has no native bfloat16 ({' or '.join(BF16_CPU_FLAGS)}); "
                           "bfloat16 would be emulated and slower")
    if settings.onednn_disabled():
        return "float32", "TF_ENABLE_ONEDNN_OPTS=0 turns off the oneDNN kernels that use the CPU's bfloat16"
    return "mixed_bfloat16", f"the CPU computes bfloat16 natively ({', '.join(native)})"


def _gpu_label(gpu: GpuInfo) -> str:
    cc = gpu.compute_capability
    return f"{gpu.name} (compute capability {cc[0]}.{cc[1]})" if cc else gpu.name


def resolve_precision(precision: str) -> tuple[str, str]:
    """Validates a precision and resolves ``"auto"``.

    Args:
        precision: one of :data:`PRECISIONS`

    Returns:
        ``(resolved, reason)``, where ``resolved`` is ``"float32"`` or
        ``"mixed_bfloat16"``

    Raises:
        ParameterError: for an unknown precision
    """
    if precision not in PRECISIONS:
        raise ParameterError(
            f"precision must be one of auto, float32, mixed_bfloat16, got {precision!r}"
        )
    if precision == "auto":
        return auto_precision()
    if precision == "float32":
        return "float32", "float32 was asked for"
    reason = f"{precision} was asked for (bfloat16 compute, float32 weights and head)"
    native, why = auto_precision()
    if native != "mixed_bfloat16":  # forced where 'auto' would not: say so, it is slower here
        warnings.warn(f"precision={precision!r} on this machine: {why}; precision='auto' picks float32",
                      stacklevel=3)
        reason += f", although {why}"
    return "mixed_bfloat16", reason


def openvino_available() -> bool:
    """Whether the ``openvino`` package is installed (without importing it).

    Returns:
        True or False
    """
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def resolve_engine(engine: str, precision: str, *, gpus: Sequence[GpuInfo] | None = None,
                   available: bool | None = None) -> tuple[str, str]:
    """Validates an engine and resolves ``"auto"``.

    Args:
        engine: one of :data:`ENGINES`
        precision: the resolved precision (``"float32"`` or
            ``"mixed_bfloat16"``)
        gpus: the GPUs to assume instead of :func:`detect_gpus`
        available: whether OpenVINO is installed, instead of
            :func:`openvino_available`

    Returns:
        ``(engine, reason)``: ``"tensorflow"`` or ``"openvino"``, and a
        sentence for people

    Raises:
        ParameterError: for an unknown engine, or ``"openvino"`` when it is
            not installed
    """
    if engine not in ENGINES:
        raise ParameterError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    asked = f"engine={engine!r}"
    if engine == "auto" and settings.engine_override():
        engine, asked = settings.engine_override(), f"XPATCH_ENGINE={settings.engine_override()}"
    available = openvino_available() if available is None else available
    if engine == "tensorflow":
        return "tensorflow", f"{asked} was asked for"
    if engine == "openvino":
        if not available:
            raise ParameterError(f"{asked} needs the openvino package (pip install openvino)")
        return "openvino", f"{asked} was asked for"  # the CPU; bfloat16 where OpenVINO finds it native
    gpus = detect_gpus() if gpus is None else tuple(gpus)
    if gpus:
        return "tensorflow", "TensorFlow runs the model on the GPU"
    if precision != "float32":
        return "tensorflow", "bfloat16 runs on TensorFlow's mixed_bfloat16 (the measured bfloat16 path)"
    if not available:
        return "tensorflow", "the openvino package is not installed"
    return "openvino", "OpenVINO's CPU runtime computes the float32 forward faster than TensorFlow"


__all__ = [
    "BF16_CPU_FLAGS",
    "BF16_MIN_COMPUTE_CAPABILITY",
    "CPUINFO_PATH",
    "ENGINES",
    "ENGINE_SOURCE_KEYS",
    "GpuInfo",
    "PRECISIONS",
    "auto_precision",
    "cpu_flags",
    "detect_gpus",
    "gpu_driver_present",
    "openvino_available",
    "resolve_engine",
    "resolve_precision",
]
