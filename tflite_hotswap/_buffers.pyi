"""Typed stubs for the buffer kernels (pyx/tflite_hotswap/_buffers.pyx)."""

from collections.abc import Sequence

from ._typing import Buffer

def affine_into(src: Buffer, dst: Buffer, a: Sequence[float] | None = ...,
                b: Sequence[float] | None = ..., zero_point: float = ...) -> None:
    """Write src into dst through the fused kernel (plain copy without coefficients).

    Raises:
        InputError: if a buffer is missing, of the wrong dtype, not writable,
            not contiguous (dst), or the element counts differ.
    """
def gather_into(samples: Sequence[Buffer], dst: Buffer, a: Sequence[float] | None = ...,
                b: Sequence[float] | None = ..., zero_point: float = ...) -> None:
    """Write samples[i] into dst[i] through the fused kernel.

    Raises:
        InputError: if a sample does not fit dst[i] or the row count differs.
    """
def kernel_body(src: Buffer, dst: Buffer, a: Sequence[float], b: Sequence[float],
                zero_point: float = ...) -> str:
    """Which body affine_into(src, dst, a, b, zero_point) runs: "simd", "table" or "scalar" (for tests)."""
def numpy_abi_bound() -> bool: ...
class MappedBytes(bytes):
    """bytes in a memory mapping of their own (what mapped_copy and read_mapped return)."""

def mapped_copy(src: Buffer) -> MappedBytes:
    """A copy of ``src`` in a memory mapping of its own, unmapped with the GIL released when freed.

    Raises:
        TypeError: if ``src`` does not export a buffer.
        MemoryError: if the mapping cannot be made.
    """
def read_mapped(fd: int, size: int) -> MappedBytes | None:
    """Read the file ``fd`` (``size`` bytes by fstat) into bytes in a memory mapping of their own.

    None if the file turns out longer than ``size``.

    Raises:
        OSError: if reading fails.
        MemoryError: if the mapping cannot be made.
    """
