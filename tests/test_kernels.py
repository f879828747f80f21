"""Property tests of the buffer kernels against a plain numpy reference."""

import platform

import numpy as np
from fuzzing import affine_reference
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tflite_hotswap import InputError
from tflite_hotswap._buffers import affine_into, gather_into, kernel_body

SRC_DTYPES = [np.uint8, np.int8, np.float32, np.float64]
DST_DTYPES = [np.float32, np.int8, np.uint8]
ALL_DTYPES = [np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64,
              np.int64, np.float16, np.float32, np.float64]


reference = affine_reference


def strided_views(dtype):
    """Arrays of dtype, possibly sliced, reversed or transposed (non-contiguous)."""
    # Floats: mostly in range, with NaN and infinities mixed in.
    elements = {np.float32: st.floats(-1e6, 1e6, width=32) | st.floats(width=32),
                np.float64: st.floats(-1e6, 1e6) | st.floats()}.get(dtype)
    base = hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=4, max_side=7),
                      elements=elements)

    @st.composite
    def view(draw):
        arr = draw(base)
        how = draw(st.sampled_from(["plain", "reverse", "step", "transpose"]))
        if how == "reverse":
            return arr[..., ::-1]
        if how == "step":
            return arr[..., ::2]
        if how == "transpose":
            return arr.T
        return arr
    return view()


@st.composite
def affine_case(draw):
    src_dtype = draw(st.sampled_from(SRC_DTYPES))
    dst_dtype = draw(st.sampled_from(DST_DTYPES))
    x = draw(strided_views(src_dtype))
    period = draw(st.integers(1, 50))
    coef = st.floats(-300, 300, width=32)
    a = np.array(draw(st.lists(coef, min_size=period, max_size=period)), np.float32)
    b = np.array(draw(st.lists(coef, min_size=period, max_size=period)), np.float32)
    zero_point = float(draw(st.integers(-128, 127) if dst_dtype == np.int8 else st.integers(0, 255)))
    return x, dst_dtype, a, b, zero_point


@settings(max_examples=400, deadline=None)
@given(affine_case())
def test_affine_matches_reference(case):
    x, dst_dtype, a, b, zero_point = case
    dst = np.empty(x.shape, dst_dtype)
    with np.errstate(all="ignore"):
        affine_into(x, dst, a, b, zero_point)
        want = reference(x, a, b, dst_dtype, zero_point)
    assert dst.reshape(-1).tobytes() == want.tobytes()


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(ALL_DTYPES).flatmap(strided_views))
def test_plain_copy_of_any_dtype_and_strides(x):
    dst = np.empty(x.shape, x.dtype)
    affine_into(x, dst)
    assert dst.tobytes() == np.ascontiguousarray(x).tobytes()


@settings(max_examples=200, deadline=None)
@given(affine_case(), st.integers(1, 5))
def test_gather_equals_stack_then_convert(case, n):
    x, dst_dtype, a, b, zero_point = case
    samples = [x] + [np.ascontiguousarray(x[::-1]) for _ in range(n - 1)]
    dst = np.empty((n,) + x.shape, dst_dtype)
    with np.errstate(all="ignore"):
        gather_into(samples, dst, a, b, zero_point)
        want = reference(np.stack(samples), a, b, dst_dtype, zero_point)
    assert dst.reshape(-1).tobytes() == want.tobytes()


@pytest.mark.parametrize("dst_dtype, values, expected", [
    (np.int8, [-0.5, 0.5, 1.5, 2.5, -1.5, -2.5, 0.49999997, -0.49999997],
     [-1, 1, 2, 3, -2, -3, 0, 0]),
    (np.int8, [127.49, 127.5, 1e9, -128.49, -128.5, -1e9, np.inf, -np.inf, np.nan],
     [127, 127, 127, -128, -128, -128, 127, -128, 7]),
    (np.uint8, [-0.49, -0.5, -1e9, 254.5, 255.49, 255.5, 1e9, np.nan], [0, 0, 0, 255, 255, 255, 255, 7]),
])
def test_rounding_half_away_from_zero_and_saturation(dst_dtype, values, expected):
    x = np.array(values, np.float32)
    dst = np.empty(x.shape, dst_dtype)
    affine_into(x, dst, [1.0], [0.0], zero_point=7)
    assert dst.tolist() == expected


def test_kernel_rejects_bad_buffers():
    dst = np.empty(4, np.float32)
    with pytest.raises(InputError, match="expected dtype float32, got float64"):
        affine_into(np.zeros(4), dst)
    with pytest.raises(InputError, match="expected an array"):
        affine_into("not an array", dst)
    with pytest.raises(InputError, match="expected 3 elements, got 4"):
        affine_into(np.zeros(3, np.float32), dst)
    with pytest.raises(InputError, match="writable"):
        ro = np.zeros(4, np.float32)
        ro.flags.writeable = False
        affine_into(np.zeros(4, np.float32), ro)
    with pytest.raises(InputError, match="sample 1: expected shape \\(2,\\), got \\(3,\\)"):
        gather_into([np.zeros(2, np.float32), np.zeros(3, np.float32)], np.empty((2, 2), np.float32))


# ------------------------------------------------------------- byte tables
#
# uint8/int8 into int8/uint8 goes through a table of the scalar kernel's
# outputs, or a SIMD body verified against it, once the data is at least
# TABLE_ROUNDS * 256 * period elements (period: the shortest coefficient
# cycle, at most 64).  Every test below checks every (byte, coefficient) pair.

TABLE_ROUNDS = 8
BYTE_DTYPES = [np.uint8, np.int8]
# The SIMD body: SSE2 is the x86-64 baseline, NEON is always on aarch64.
SIMD = platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64")
# A pair the SIMD rounding gets wrong (0.49999997 + 0.5 rounds up to 1 in
# float32): any kernel holding it falls back to the table.
NOT_SIMD = (np.float32(0.0), np.nextafter(np.float32(0.5), np.float32(0.0)))


def every_pair(dtype, period, rounds, rng, extra=0):
    """Whole cycles where coefficient column j holds every byte value ``rounds`` times, shuffled; then extra."""
    values = np.arange(256, dtype=np.uint8).view(dtype)
    cols = [rng.permutation(np.tile(values, rounds)) for _ in range(period)]
    tail = rng.integers(0, 256, extra, dtype=np.uint8).view(dtype)
    return np.concatenate([np.stack(cols, axis=1).reshape(-1), tail])


def byte_coefficients(rng, period, dst_dtype):
    """Coefficients spreading bytes over the whole destination range and past it, with exact ties."""
    a = rng.uniform(-2.5, 2.5, period).astype(np.float32)
    b = rng.uniform(-150, 150, period).astype(np.float32) + (0 if dst_dtype == np.int8 else 128)
    a[::2] = np.float32(25 / 28)  # x * 25/28 + b lands on k + 0.5 for some bytes (ImageNet's G channel)
    b[::2] = np.float32(-104.82142639160156) + (0 if dst_dtype == np.int8 else 128)
    zero_point = float(rng.integers(-128, 128) if dst_dtype == np.int8 else rng.integers(0, 256))
    return a, b, zero_point


def expected_body(period, simd_ok=True):
    if period > 64:
        return "scalar"
    return "simd" if SIMD and simd_ok else "table"


@pytest.mark.parametrize("simd_ok", [True, False])
@pytest.mark.parametrize("period", [1, 2, 3, 4, 7, 64, 65])
@pytest.mark.parametrize("dst_dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("src_dtype", BYTE_DTYPES)
def test_byte_table_matches_reference(src_dtype, dst_dtype, period, simd_ok):
    rng = np.random.default_rng([period, simd_ok, np.dtype(src_dtype).num, np.dtype(dst_dtype).num])
    a, b, zero_point = byte_coefficients(rng, period, dst_dtype)
    if not simd_ok:
        a[-1], b[-1] = NOT_SIMD
    x = every_pair(src_dtype, period, TABLE_ROUNDS, rng, extra=37)  # odd: a SIMD tail and a part-cycle
    dst = np.empty(x.size, dst_dtype)
    assert kernel_body(x, dst, a, b, zero_point) == expected_body(period, simd_ok)
    assert kernel_body(x[:TABLE_ROUNDS * 256 * period - 1], dst, a, b, zero_point) == "scalar"
    affine_into(x, dst, a, b, zero_point)
    assert dst.tobytes() == affine_reference(x, a, b, dst_dtype, zero_point).tobytes()
    # Strided: the same table, row by row (rows of 3 and of 1 element).
    for view in (x[::-1], x.reshape(-1, 1)[::2], x[:x.size // 3 * 3].reshape(-1, 3)[:, ::-1]):
        dst = np.empty(view.shape, dst_dtype)
        affine_into(view, dst, a, b, zero_point)
        assert dst.tobytes() == affine_reference(view, a, b, dst_dtype, zero_point).tobytes()


@pytest.mark.parametrize("simd_ok", [True, False])
@pytest.mark.parametrize("period", [1, 3, 7, 64])
@pytest.mark.parametrize("sample_size", [1, 5, 255, 256 * 64 + 1])
def test_byte_table_in_gather_starts_each_sample_at_its_coefficient(period, sample_size, simd_ok):
    """Samples start mid-cycle (j0 = i * size % period): one table for the batch, any offset."""
    rng = np.random.default_rng([period, sample_size, simd_ok])
    a, b, zero_point = byte_coefficients(rng, period, np.int8)
    if not simd_ok:
        a[-1], b[-1] = NOT_SIMD
    rows = -(-TABLE_ROUNDS * 256 * period // sample_size) + 1
    flat = every_pair(np.uint8, period, TABLE_ROUNDS + 1, rng, extra=rows * sample_size)[:rows * sample_size]
    samples = list(flat.reshape(rows, sample_size))
    samples[-1] = np.repeat(samples[-1], 2)[::2]  # same values, strided
    dst = np.empty((rows, sample_size), np.int8)
    gather_into(samples, dst, a, b, zero_point)
    assert dst.tobytes() == affine_reference(np.stack(samples), a, b, np.int8, zero_point).tobytes()


def test_byte_table_uses_the_shortest_coefficient_cycle():
    """kernel_for repeats RGB's 3 coefficients to 48; the table needs 3 (and 8 * 256 * 3 elements)."""
    rng = np.random.default_rng(3)
    a, b, zero_point = byte_coefficients(rng, 3, np.int8)
    a48, b48 = np.tile(a, 16), np.tile(b, 16)
    x = every_pair(np.uint8, 3, TABLE_ROUNDS, rng)
    dst = np.empty(x.size, np.int8)
    assert kernel_body(x, dst, a48, b48, zero_point) == expected_body(3)
    affine_into(x, dst, a48, b48, zero_point)
    assert dst.tobytes() == affine_reference(x, a48, b48, np.int8, zero_point).tobytes()
    # One coefficient one ulp off in the last repetition: a true cycle of 48.
    b48[-1] = np.nextafter(b48[-1], np.float32(np.inf))
    assert kernel_body(x, dst, a48, b48, zero_point) == "scalar"  # 8 * 256 * 48 elements needed
    x = every_pair(np.uint8, 48, TABLE_ROUNDS, rng, extra=5)
    dst = np.empty(x.size, np.int8)
    assert kernel_body(x, dst, a48, b48, zero_point) == expected_body(48)
    affine_into(x, dst, a48, b48, zero_point)
    assert dst.tobytes() == affine_reference(x, a48, b48, np.int8, zero_point).tobytes()


# Coefficients of every kind: ordinary, exact halves (ties), then zero, huge,
# tiny (denormal products), infinite, NaN -- the SIMD body must agree with the
# table on all of them or not be used.
ordinary_coefficient = st.floats(-300, 300, width=32) | st.sampled_from([0.5, -0.5, 1.5, float(np.float32(25 / 28))])
odd_coefficient = st.sampled_from([0.0, -0.0, 1e30, -1e30, 1e-40, np.inf, -np.inf, np.nan, float(NOT_SIMD[1])])
coefficients = st.sampled_from([odd_coefficient | ordinary_coefficient, ordinary_coefficient])


@settings(max_examples=60, deadline=None)
@given(src_dtype=st.sampled_from(BYTE_DTYPES), dst_dtype=st.sampled_from([np.int8, np.uint8]),
       period=st.integers(1, 66), data=st.data(), seed=st.integers(0, 2**32 - 1),
       extra=st.integers(0, 130), samples=st.integers(1, 3))
def test_byte_table_any_coefficients(src_dtype, dst_dtype, period, data, seed, extra, samples):
    coefficient = data.draw(coefficients)
    a = np.array(data.draw(st.lists(coefficient, min_size=period, max_size=period)), np.float32)
    b = np.array(data.draw(st.lists(coefficient, min_size=period, max_size=period)), np.float32)
    zero_point = float(data.draw(st.integers(-128, 127) if dst_dtype == np.int8 else st.integers(0, 255)))
    rng = np.random.default_rng(seed)
    x = every_pair(src_dtype, period, TABLE_ROUNDS, rng, extra=extra)
    x = x[:x.size // samples * samples].reshape(samples, -1)
    dst = np.empty(x.shape, dst_dtype)
    with np.errstate(all="ignore"):
        want = affine_reference(x, a, b, dst_dtype, zero_point).tobytes()
    gather_into(list(x), dst, a, b, zero_point)
    assert dst.tobytes() == want
    dst = np.empty(x.shape, dst_dtype)
    affine_into(x, dst, a, b, zero_point)
    assert dst.tobytes() == want
