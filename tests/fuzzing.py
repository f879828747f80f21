"""Strategies, oracles and odd sequences shared by the kernel and runtime fuzz tests.

The oracle is the contract every entry point must keep, whatever it is given:
return a correct result (equal, byte for byte, to a plain numpy or raw-backend
reference) or raise a typed tflite_hotswap error -- never crash, never raise
another exception type, never return a wrong or partly written result.
"""

from __future__ import annotations

import collections
import itertools
import os
from typing import Any, Iterator, Optional, Sequence

import numpy as np
from hypothesis import HealthCheck, Phase, settings, strategies as st

#: Examples per fuzz test; CI sets a fixed, bounded number.
EXAMPLES = int(os.environ.get("TFLITE_HOTSWAP_FUZZ_EXAMPLES", "200"))

#: Deadline-free, a fixed number of examples, derandomized (the same inputs on
#: every run) unless TFLITE_HOTSWAP_FUZZ_RANDOM=1 asks for new ones.
#: TFLITE_HOTSWAP_FUZZ_SHRINK=0 reports a failing input unshrunk (each shrink
#: step forks a child: slow under the sanitizers).
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                phases=[p for p in Phase if p != Phase.shrink or os.environ.get("TFLITE_HOTSWAP_FUZZ_SHRINK") != "0"],
                derandomize=os.environ.get("TFLITE_HOTSWAP_FUZZ_RANDOM") != "1",
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

# The dtypes the kernels know, in native byte order.
NATIVE = [np.dtype(t) for t in ("?", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8")]
# Everything else a buffer can carry: complex, objects, zero-size items, raw
# bytes, strings, structured records, the other byte order.
ODD = [np.dtype("c8"), np.dtype("c16"), np.dtype(object), np.dtype("V0"), np.dtype([]),
       np.dtype("V3"), np.dtype("S3"), np.dtype("U2"), np.dtype(">f4"), np.dtype(">i2"),
       np.dtype(">u8"), np.dtype(">f8"), np.dtype([("a", "<f4"), ("b", "u1")])]
AFFINE_SRC = [np.dtype(t) for t in ("u1", "i1", "f4", "f8")]
AFFINE_DST = [np.dtype(t) for t in ("f4", "i1", "u1")]
LAYOUTS = ("contiguous", "reversed", "stepped", "transposed", "fortran", "zero_stride",
           "unaligned", "readonly")

any_dtype = st.sampled_from(NATIVE + ODD)


@st.composite
def shapes(draw: Any, max_rank: int = 32, max_size: int = 48) -> tuple:
    """Ranks 0 to 32; sides mostly 1 to 3, sometimes 0 (empty arrays), small in total."""
    rank = draw(st.integers(0, max_rank))
    dims = draw(st.lists(st.sampled_from([1, 2, 3, 1, 0, 5]), min_size=rank, max_size=rank))
    size = 1
    for i, d in enumerate(dims):
        if size * d > max_size:
            dims[i] = 1
        size *= dims[i]
    return tuple(dims)


def _filled(dtype: np.dtype, shape: tuple, seed: int) -> np.ndarray:
    """A C-contiguous array of dtype and shape with arbitrary (seeded) contents."""
    count = int(np.prod(shape, dtype=np.int64))
    if dtype.hasobject:
        flat = np.empty(count, dtype)
        flat[:] = list(range(count)) if dtype == np.dtype(object) else flat[:]
        return flat.reshape(shape)
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, count * dtype.itemsize, dtype=np.uint8)
    if dtype.kind == "f" and seed % 3 == 0:  # readable values too, not only NaN soup
        return rng.integers(-300, 300, count).astype(dtype).reshape(shape)
    return np.frombuffer(raw.tobytes(), dtype, count=count).reshape(shape).copy() if dtype.itemsize \
        else np.zeros(shape, dtype)


def make_array(dtype: np.dtype, shape: tuple, layout: str, seed: int) -> np.ndarray:
    """An array of exactly ``shape`` and ``dtype``, laid out as ``layout`` says (when it can be)."""
    base = _filled(dtype, shape, seed)
    rank = len(shape)
    if layout == "reversed" and rank:
        axis = seed % rank
        index = tuple(slice(None, None, -1) if d == axis else slice(None) for d in range(rank))
        return _filled(dtype, shape, seed)[index]
    if layout == "stepped" and rank:
        wide = _filled(dtype, shape[:-1] + (shape[-1] * 2,), seed)
        return wide[..., ::2]
    if layout == "transposed" and rank >= 2:
        return _filled(dtype, shape[::-1], seed).T
    if layout == "fortran":
        return np.asfortranarray(base)
    if layout == "zero_stride" and rank:
        one = _filled(dtype, (1,) * rank, seed)
        return np.lib.stride_tricks.as_strided(one, shape, (0,) * rank, writeable=True)
    if layout == "unaligned" and dtype.itemsize and not dtype.hasobject:
        buf = bytearray(base.nbytes + 1)
        view = np.frombuffer(buf, dtype, count=base.size, offset=1).reshape(shape)
        view[...] = base
        return view
    if layout == "readonly":
        base.flags.writeable = False
    return base


@st.composite
def arrays(draw: Any, dtype: Any = None, shape: Any = None, layouts: Sequence[str] = LAYOUTS,
           max_rank: int = 32) -> np.ndarray:
    """Arrays of any (or the given) dtype, shape and memory layout."""
    dtype = np.dtype(draw(any_dtype) if dtype is None else dtype)
    shape = draw(shapes(max_rank)) if shape is None else tuple(shape)
    return make_array(dtype, shape, draw(st.sampled_from(layouts)), draw(st.integers(0, 2**16)))


def contiguous_ok(a: np.ndarray) -> bool:
    """What a destination must be: writable, aligned, C-contiguous."""
    return bool(a.flags.writeable and a.flags.aligned and a.flags.c_contiguous)


def same_type(src: np.dtype, dst: np.dtype) -> bool:
    """Equal dtypes up to byte order (a plain copy may byte-swap)."""
    return src.newbyteorder("=") == dst.newbyteorder("=") if src.names is None and src.kind != "V" \
        else src == dst


def affine_reference(x: np.ndarray, a: np.ndarray, b: np.ndarray, dst_dtype: np.dtype,
                     zero_point: float, start: int = 0) -> np.ndarray:
    """``float32(x) * a[j] + b[j]``, j = (start + flat index) % len(a), stored as dst_dtype.

    The plain-numpy reference of every kernel test (test_kernels, the fuzzers).
    """
    flat = np.ascontiguousarray(x).reshape(-1).astype(np.float32)
    j = (start + np.arange(flat.size)) % len(a)
    with np.errstate(all="ignore"):
        v = flat * a.astype(np.float32)[j] + b.astype(np.float32)[j]
        if dst_dtype == np.float32:
            return v
        lo, hi = (-128, 127) if dst_dtype == np.int8 else (0, 255)
        nan = np.isnan(v)
        v = np.clip(np.where(nan, 0, v), lo, hi).astype(np.float64)
        q = np.trunc(v + np.copysign(0.5, v))
        return np.where(nan, zero_point, q).astype(dst_dtype)


def expected_into(src: np.ndarray, dst_dtype: np.dtype, coefficients: Optional[tuple]) -> Optional[bytes]:
    """The bytes a correct kernel writes for ``src``, or None if it must refuse it.

    Plain copies need the same element type (a byte-swapping copy is correct
    too); objects are never copied (a tensor cannot hold references).  Affine
    writes need a uint8/int8/float32/float64 source (either byte order) and a
    native float32/int8/uint8 destination.
    """
    if src.dtype.hasobject or dst_dtype.hasobject:
        return None
    if coefficients is None:
        if not same_type(src.dtype, dst_dtype):
            return None
        return np.ascontiguousarray(src).astype(dst_dtype).tobytes()
    a, b, zero_point = coefficients
    if src.dtype.newbyteorder("=") not in AFFINE_SRC or dst_dtype not in AFFINE_DST \
            or not dst_dtype.isnative:
        return None
    return affine_reference(src.astype(src.dtype.newbyteorder("=")), a, b, dst_dtype, zero_point).tobytes()


def inverted(data: bytes) -> bytes:
    """Every bit flipped: a fill that differs from ``data`` in every byte."""
    return bytes(255 - c for c in data)


class Guarded:
    """A destination array with canary bytes on both sides, to catch writes past its ends.

    A sanitizer sees a write past the end of a heap block; this sees one past
    an array inside a block, in any build.
    """

    PAD = 256

    def __init__(self, dtype: np.dtype, shape: tuple, fill: bytes) -> None:
        count = int(np.prod(shape, dtype=np.int64))
        self.nbytes = count * dtype.itemsize
        align = max(dtype.alignment, 1)
        self.buffer = bytearray(self.PAD * 2 + self.nbytes + align)
        self.buffer[:] = b"\xa5" * len(self.buffer)
        self.offset = self.PAD
        self.array = np.frombuffer(self.buffer, dtype, count=count, offset=self.offset).reshape(shape) \
            if dtype.itemsize else np.zeros(shape, dtype)
        self.buffer[self.offset:self.offset + self.nbytes] = fill

    def canaries_intact(self) -> bool:
        end = self.offset + self.nbytes
        return set(self.buffer[:self.offset]) <= {0xA5} and set(self.buffer[end:]) <= {0xA5}


class ShiftyList(list):
    """A list whose ``len()`` and indexing disagree from one call to the next.

    ``lengths`` cycles over successive ``len()`` calls; ``items[i]`` is served for
    any index below ``len(items)`` however long the list claims to be.  The
    list's own storage (what iteration and ``list(...)``/``tuple(...)`` see)
    holds ``items[:lengths[0]]``.  Any consistent snapshot is a prefix of
    ``items``.
    """

    def __init__(self, items: Sequence[Any], lengths: Sequence[int]) -> None:
        super().__init__(items[:lengths[0]])
        self.items = list(items)
        self.lengths_given = list(lengths)
        self.lengths = itertools.cycle(lengths)
        self.reported: set[int] = set()

    def __len__(self) -> int:
        n = next(self.lengths)
        self.reported.add(n)
        return n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self.items[i]
        if i < 0:
            i += len(self.items)
        return self.items[i]


class ShiftyUserList(collections.UserList):
    """The UserList flavour of :class:`ShiftyList` (a MutableSequence, not a list)."""

    def __init__(self, items: Sequence[Any], lengths: Sequence[int]) -> None:
        super().__init__(items[:lengths[0]])
        self.items = list(items)
        self.lengths_given = list(lengths)
        self.lengths = itertools.cycle(lengths)
        self.reported: set[int] = set()

    def __len__(self) -> int:
        n = next(self.lengths)
        self.reported.add(n)
        return n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self.items[i]
        return self.items[i]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.data)
