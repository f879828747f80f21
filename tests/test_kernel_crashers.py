"""Regressions: the exact inputs the fuzz harness found crashing or silently wrong.

Each runs in a forked child (a crash fails the test, not pytest).  The rule
they check is the fuzz property: a correct result or a typed error.  Issue 6
item numbers are given per test.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

import tflite_hotswap
from conftest import model_path
from forked import run_forked
from fuzzing import Guarded, ShiftyList, ShiftyUserList
from tflite_hotswap import InputError, MisuseError, Runtime
from tflite_hotswap._buffers import affine_into, gather_into

DEMO_V1 = str(pathlib.Path(tflite_hotswap.__file__).parent / "models" / "demo_v1.tflite")


def _refused_or(check, call):
    """Run call(); a MisuseError is fine, otherwise ``check(result)`` must hold."""
    try:
        result = call()
    except MisuseError:
        return
    check(result)


# ------------------------------------------------ item 4: zero-byte itemsize

@pytest.mark.parametrize("dtype", ["V0", []])
def test_zero_itemsize_src_and_dst_are_refused_not_sigfpe(dtype):
    """affine_into(np.zeros((), 'V0'), np.zeros((), 'V0')) divided by zero in is_contiguous."""
    def body():
        with pytest.raises(InputError):
            affine_into(np.zeros((), dtype), np.zeros((), dtype))
        with pytest.raises(InputError):
            affine_into(np.zeros(3, np.float32), np.zeros(3, dtype))
        with pytest.raises(InputError):
            gather_into([np.zeros((), dtype)], np.zeros(1, dtype))
    run_forked(body, describe=f"affine_into(np.zeros((), {dtype!r}), np.zeros((), {dtype!r}))")


@pytest.mark.parametrize("single", [True, False])
def test_zero_itemsize_out_is_refused_not_sigfpe(single):
    """rt.run(x, out={'y': np.zeros((), 'V0')}) on dynamic_batch: SIGFPE."""
    rt = Runtime(model_path("dynamic_batch"))

    def body():
        out = np.zeros((1, 4), "V0")
        with pytest.raises(InputError):
            rt.run(np.zeros((1, 8), np.float32), out=out if single else {"y": out})
    try:
        run_forked(body, describe="Runtime(dynamic_batch).run(np.zeros((1, 8), np.float32), "
                                  "out=np.zeros((1, 4), 'V0'))")
    finally:
        rt.close()


# ------------------------------------------- item 9: dtypes the kernels don't know

def test_unknown_dtype_with_mismatched_counts_is_refused():
    """affine_into(complex64 scalar, empty complex64): 1 element into 0, accepted silently."""
    def body():
        with pytest.raises(InputError):
            affine_into(np.array(1 + 2j, np.complex64), np.empty(0, np.complex64))
    run_forked(body, describe="affine_into(np.array(1+2j, np.complex64), np.empty(0, np.complex64))")


@pytest.mark.parametrize("dtype", ["c8", ">f4", "S3", "V3"])
def test_gather_of_an_unknown_dtype_copies_or_refuses(dtype):
    """gather_into([complex64 sample], complex64 dst) returned with dst never written."""
    def body():
        sample = np.frombuffer(bytes(range(1, 1 + 2 * np.dtype(dtype).itemsize)), dtype)
        dst = np.zeros((1, 2), dtype)
        _refused_or(lambda _: np.testing.assert_array_equal(dst[0], sample),
                    lambda: gather_into([sample], dst))
    run_forked(body, describe=f"gather_into([np.frombuffer(bytes(...), {dtype!r})], np.zeros((1, 2), {dtype!r}))")


def test_object_arrays_are_refused():
    """gather_into([object array], object dst) returned without copying (or refcounting)."""
    def body():
        with pytest.raises(InputError):
            gather_into([np.array([object(), object()])], np.empty((1, 2), object))
        with pytest.raises(InputError):
            affine_into(np.empty(0, object), np.empty(0, object))
    run_forked(body, describe="gather_into([np.array([object(), object()])], np.empty((1, 2), object))")


# ------------------------------- item 3: a sequence whose length changes mid-call

ROWS = [np.full(8, i + 1, np.float32) for i in range(6)]


@pytest.mark.parametrize("cls", [ShiftyList, ShiftyUserList])
def test_gather_into_growing_sequence_does_not_write_past_dst(cls):
    """len() says 1, then 6: gather_into wrote 6 rows into a 1-row dst (heap overflow)."""
    def body():
        guard = Guarded(np.dtype(np.float32), (1, 8), bytes(32))
        _refused_or(lambda _: np.testing.assert_array_equal(guard.array, ROWS[0][None]),
                    lambda: gather_into(cls(ROWS, [1, 6]), guard.array))
        assert guard.canaries_intact(), "gather_into wrote past the end of dst"
    run_forked(body, describe=f"gather_into({cls.__name__}(rows, lengths=[1, 6]), np.empty((1, 8), np.float32))")


@pytest.mark.parametrize("cls", [ShiftyList, ShiftyUserList])
def test_gather_into_shrinking_sequence_writes_every_row(cls):
    """len() says 3, then 1: rows 1 and 2 of dst were left as they were."""
    def body():
        dst = np.full((3, 8), -1.0, np.float32)
        _refused_or(lambda _: np.testing.assert_array_equal(dst, np.stack(ROWS[:3])),
                    lambda: gather_into(cls(ROWS, [3, 1]), dst))
    run_forked(body, describe=f"gather_into({cls.__name__}(rows, lengths=[3, 1]), np.empty((3, 8), np.float32))")


def _raw(path: str, x: np.ndarray) -> dict:
    interpreter = tflite_hotswap.load_backend().interpreter_class(model_path=path)
    interpreter.allocate_tensors()
    return interpreter.get_signature_runner()(x=x)


@pytest.mark.parametrize("cls", [ShiftyList, ShiftyUserList])
def test_run_batch_shrinking_sequence_returns_stale_rows(cls):
    """run_batch(ShiftyList(rows, lengths=[2, 1])) on dynamic_batch: row 1 came from an earlier call."""
    rt = Runtime(model_path("dynamic_batch"))

    def body():
        rt.run_batch([np.full(8, 50.0, np.float32)] * 2)  # leaves other values in the tensor

        def check(got):
            want = _raw(model_path("dynamic_batch"), np.stack(ROWS[:got.shape[0]]))["y"]
            assert got.tobytes() == want.tobytes(), "rows from an earlier call"
        _refused_or(check, lambda: rt.run_batch(cls(ROWS, [2, 1])))
    try:
        run_forked(body, describe=f"Runtime(dynamic_batch).run_batch({cls.__name__}(rows, lengths=[2, 1]))")
    finally:
        rt.close()


@pytest.mark.parametrize("cls", [ShiftyList, ShiftyUserList])
def test_run_batch_growing_sequence_does_not_overflow_the_tensor(cls):
    """run_batch(ShiftyList(rows, lengths=[1, 4096])) on demo_v1 (input (1, 64)): 4096 rows into 1."""
    rt = Runtime(DEMO_V1)
    rows = [np.full(64, i, np.float32) for i in range(4096)]

    def body():
        def check(got):
            assert np.array_equal(got["shifted"], rows[0][None] + 1) and got["tag"].item() == 1.0
        for _ in range(20):
            _refused_or(check, lambda: rt.run_batch(cls(rows, [1, 4096])))
    try:
        run_forked(body, describe=f"Runtime(demo_v1).run_batch({cls.__name__}(rows, lengths=[1, 4096]))")
    finally:
        rt.close()


# ---------------------------- item 7: unaligned 0-d source with coefficients

def test_unaligned_scalar_with_coefficients_is_loaded_safely():
    """A 0-d float32 at an odd address took the contiguous path: a typed, misaligned load.

    Silent on x86 in a normal build; UBSan (tools/sanitize.sh) reports the
    misaligned load, and armv7 raises SIGBUS.
    """
    def body():
        buf = bytearray(5)
        x = np.frombuffer(buf, np.float32, count=1, offset=1).reshape(())
        x[...] = 3.0
        assert not x.flags.aligned
        dst = np.empty((), np.float32)
        affine_into(x, dst, [2.0], [1.0])
        assert dst == 7.0
    run_forked(body, describe="affine_into(<0-d float32 at offset 1>, np.empty((), np.float32), [2.0], [1.0])")
