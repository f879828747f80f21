"""Input normalisation fused into the copy into tensor memory.

``Normalize(scale, mean, std)`` turns a raw input ``x`` (uint8, int8, float32
or float64) into ``(x * scale - mean) / std``, per channel (the last axis),
and stores that in the input tensor: as float32, or for an int8/uint8 tensor
quantized with the tensor's own scale and zero point (rounded half away from
zero, saturated).  The runtime does this in the same pass that copies the
input, without temporaries.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MisuseError
from .contract import TensorSpec

# Coefficients are repeated to a cycle of at least this many elements so the
# kernel's inner loop is long enough to vectorise.
_MIN_PERIOD = 48

_QUANT_RANGE = {"int8": (-128.0, 127.0), "uint8": (0.0, 255.0)}


@dataclass(frozen=True)
class Normalize:
    """``(x * scale - mean) / std`` per channel, fused into the input copy.

    Attributes:
        scale: multiplies the raw input first (e.g. ``1/255`` for pixels).
        mean: one value, or one per channel (the input's last axis).
        std: one value, or one per channel.
    """

    scale: float = 1.0
    mean: float | Sequence[float] = 0.0
    std: float | Sequence[float] = 1.0


KernelSpec = tuple[Any, Any, float, float, float]  # (a: array('f'), b: array('f'), lo, hi, nan_value)


def kernel_for(norm: Normalize, tensor: TensorSpec) -> KernelSpec:
    """Fold ``norm`` and ``tensor``'s quantization into the kernel's coefficients.

    Element ``x`` of channel ``c`` is stored as ``float32(x) * a[c] + b[c]``,
    computed in float32 (no fused multiply-add), where (in float64, then
    rounded to float32) ``a = scale / std / qscale`` and
    ``b = -mean / std / qscale + zero_point``; ``qscale = 1, zero_point = 0``
    for a float32 tensor.

    Raises:
        MisuseError: if the tensor's dtype cannot be preprocessed into, a
            quantized tensor has no scale, the number of channels does not
            match, or a std is zero.
    """
    channels = tensor.shape[-1] if tensor.shape else 1
    mean = np.atleast_1d(np.asarray(norm.mean, dtype=np.float64))
    std = np.atleast_1d(np.asarray(norm.std, dtype=np.float64))
    for label, values in (("mean", mean), ("std", std)):
        if values.ndim != 1 or values.size not in (1, channels):
            raise MisuseError(f"preprocess for {tensor.name!r}: expected {label} of 1 or {channels} "
                              f"values (the input's last axis), got {values.size}")
    if np.any(std == 0) or not np.all(np.isfinite(std)) or not np.all(np.isfinite(mean)) \
            or not np.isfinite(norm.scale):
        raise MisuseError(f"preprocess for {tensor.name!r}: expected finite values and std != 0, "
                          f"got scale={norm.scale}, mean={mean.tolist()}, std={std.tolist()}")
    if tensor.dtype == "float32":
        qscale, zero_point, lo, hi = 1.0, 0.0, 0.0, 0.0
    elif tensor.dtype in _QUANT_RANGE:
        if not tensor.scales or tensor.scales[0] == 0:
            raise MisuseError(f"preprocess for {tensor.name!r}: the {tensor.dtype} input has no "
                              f"quantization scale; expected a quantized input")
        if len(tensor.scales) != 1:
            raise MisuseError(f"preprocess for {tensor.name!r}: expected per-tensor quantization, "
                              f"got {len(tensor.scales)} scales")
        qscale, zero_point = tensor.scales[0], float(tensor.zero_points[0])
        lo, hi = _QUANT_RANGE[tensor.dtype]
    else:
        raise MisuseError(f"preprocess for {tensor.name!r}: expected a float32, int8 or uint8 "
                          f"input, got {tensor.dtype}")
    n = max(mean.size, std.size)
    a = np.broadcast_to(norm.scale / std / qscale, (n,))
    b = np.broadcast_to(-mean / std / qscale + zero_point, (n,))
    period = n * max(1, -(-_MIN_PERIOD // n))
    return (array.array("f", np.resize(a, period).astype(np.float32).tobytes()),
            array.array("f", np.resize(b, period).astype(np.float32).tobytes()),
            lo, hi, zero_point)
