"""Property tests of the buffer kernels against a plain numpy reference."""

import numpy as np
from fuzzing import affine_reference
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tflite_hotswap import InputError
from tflite_hotswap._buffers import affine_into, gather_into

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
