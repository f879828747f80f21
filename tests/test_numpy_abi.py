"""The per-call path's direct use of numpy's ABI (``_numpy_abi.h``) against the buffer protocol it replaces.

A small, exact ndarray's fields are read directly and outputs are made with
``PyArray_NewFromDescr``.  Every input here goes through ``run()`` twice: as
the array (the direct path where it applies) and wrapped in a ``memoryview``
(never an ndarray: always the buffer protocol).  Both must give the same
output, or the same error.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import model_path, raw_signature_run

from tflite_hotswap import InputError, Normalize, Runtime
from tflite_hotswap._buffers import numpy_abi_bound


class Sub(np.ndarray):
    """A subclass: not an exact ndarray, so it takes the buffer protocol."""


def test_the_direct_path_is_bound_with_the_installed_numpy():
    # numpy 1.26 with tflite-runtime, numpy 2 with LiteRT: both ABIs are known.
    assert numpy_abi_bound(), np.__version__


def _outcome(rt: Runtime, x: object) -> object:
    try:
        return rt.run(x)
    except InputError as e:
        return f"InputError: {e}"


def _same(a: object, b: object) -> None:
    if isinstance(a, str) or isinstance(b, str):
        assert a == b
    else:
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


base = np.arange(8, dtype=np.float32).reshape(2, 4) / 7
TINY_INPUTS = {
    "contiguous": base[:1].copy(),
    "strided": base.reshape(1, 8)[:, ::2],
    "fortran": np.asfortranarray(base[:1]),
    "row of a transposed array": base.T[:, :1].T,
    "broadcast (stride 0)": np.broadcast_to(np.float32(0.5), (1, 4)),
    "read-only": np.frombuffer(base[:1].tobytes(), np.float32).reshape(1, 4),
    "big-endian": base[:1].astype(">f4"),
    "float64": base[:1].astype(np.float64),
    "float16": base[:1].astype(np.float16),
    "int64": (base[:1] * 7).astype(np.int64),
    "bool": base[:1] > 0.3,
    "longdouble": base[:1].astype(np.longdouble),
    "complex64": base[:1].astype(np.complex64),
    "wrong shape": base,
    "wrong rank": base[0],
    "0-d": np.float32(1.0) * np.ones((), np.float32),
}


@pytest.mark.parametrize("kind", list(TINY_INPUTS))
def test_an_input_gives_what_the_buffer_protocol_gives(kind):
    x = TINY_INPUTS[kind]
    with Runtime(model_path("tiny_f32")) as rt:
        _same(_outcome(rt, x), _outcome(rt, memoryview(x)))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.float32, np.float64, np.int16, ">f4"])
def test_a_normalized_input_gives_what_the_buffer_protocol_gives(dtype):
    x = (np.arange(8 * 8 * 3) % 251).reshape(1, 8, 8, 3).astype(dtype)
    norm = Normalize(scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    with Runtime(model_path("image_small_int8"), preprocess=norm) as rt:
        _same(_outcome(rt, x), _outcome(rt, memoryview(x)))


def test_a_subclass_goes_through_the_buffer_protocol_with_the_same_result():
    x = TINY_INPUTS["contiguous"]
    with Runtime(model_path("tiny_f32")) as rt:
        _same(rt.run(x.view(Sub)), rt.run(x))


def test_outputs_are_fresh_owned_arrays_bit_identical_to_the_raw_interpreter():
    x = TINY_INPUTS["contiguous"]
    (expected,) = raw_signature_run("tiny_f32", {"x": x}).values()
    with Runtime(model_path("tiny_f32")) as rt:
        first, second = rt.run(x), rt.run(x)
    for y in (first, second):
        assert type(y) is np.ndarray and y.base is None and y.flags.owndata and y.flags.writeable
        assert y.flags.c_contiguous and y.dtype == expected.dtype and y.tobytes() == expected.tobytes()
    first[...] = -1  # each call's array is its own
    assert second.tobytes() == expected.tobytes()


def test_every_output_of_a_multi_output_model_is_a_fresh_array():
    with Runtime(model_path("multi_io")) as rt:
        inputs = {spec.name: np.ones(spec.shape, spec.dtype) for spec in rt.info.inputs}
        a, b = rt.run(inputs), rt.run(inputs)
    expected = raw_signature_run("multi_io", inputs)
    assert set(a) == set(expected)
    for name, value in expected.items():
        assert a[name].dtype == value.dtype and a[name].tobytes() == value.tobytes()
        assert a[name].flags.owndata and not np.shares_memory(a[name], b[name])


def test_complex_outputs_keep_their_dtype():
    with Runtime(model_path("complex_io")) as rt:
        inputs = {spec.name: np.full(spec.shape, 1 + 2j, spec.dtype) for spec in rt.info.inputs}
        out = rt.run(inputs)
    expected = raw_signature_run("complex_io", inputs)
    results = out if isinstance(out, dict) else {next(iter(expected)): out}
    for name, value in expected.items():
        assert results[name].dtype == value.dtype and results[name].tobytes() == value.tobytes()


OUTS = {
    "contiguous": lambda: np.zeros((1, 4), np.float32),
    "read-only": lambda: np.frombuffer(bytes(16), np.float32).reshape(1, 4),
    "strided": lambda: np.zeros((1, 8), np.float32)[:, ::2],
    "float64": lambda: np.zeros((1, 4), np.float64),
    "big-endian": lambda: np.zeros((1, 4), ">f4"),
    "wrong shape": lambda: np.zeros((2, 4), np.float32),
}


@pytest.mark.parametrize("kind", list(OUTS))
def test_an_out_array_is_filled_or_refused_as_through_the_buffer_protocol(kind):
    x = TINY_INPUTS["contiguous"]
    direct, through_buffer = OUTS[kind](), OUTS[kind]()
    with Runtime(model_path("tiny_f32")) as rt:
        a = _outcome_out(rt, x, direct)
        b = _outcome_out(rt, x, memoryview(through_buffer))
    assert a == b.replace("memoryview", "ndarray")
    assert direct.tobytes() == through_buffer.tobytes()
    if kind == "contiguous":
        assert a == "filled" and direct.tobytes() == rt_reference(x).tobytes()


def _outcome_out(rt: Runtime, x: np.ndarray, out: object) -> str:
    try:
        assert rt.run(x, out=out) is out
        return "filled"
    except InputError as e:
        return f"InputError: {e}"


def rt_reference(x: np.ndarray) -> np.ndarray:
    (expected,) = raw_signature_run("tiny_f32", {"x": x}).values()
    return expected


# Found by review: each of these took the direct path and behaved differently
# from the buffer protocol before dtypes were matched by identity.
UNION = np.dtype(("f4", [("r", "u1"), ("g", "u1"), ("b", "u1"), ("a", "u1")]))  # float32 with fields


@pytest.mark.parametrize("rows", [2, 2048])  # under and at the 64 KiB direct-path limit
def test_a_float32_with_fields_is_refused_at_every_size(rows):
    x = np.ones((rows, 8), UNION)
    with Runtime(model_path("dynamic_batch")) as rt:
        outcome = _outcome(rt, x)
        assert outcome == _outcome(rt, memoryview(x))
    assert outcome == "InputError: input 'x': expected dtype float32, got unsupported format 'T{B:r:B:g:B:b:B:a:}'"


def test_an_out_array_with_fields_is_refused():
    x = TINY_INPUTS["contiguous"]
    with Runtime(model_path("tiny_f32")) as rt:
        assert _outcome_out(rt, x, np.zeros((1, 4), UNION)).startswith("InputError: out['y']: expected")


def test_an_empty_out_array_with_odd_strides_is_filled_as_through_the_buffer_protocol():
    out = np.zeros((2, 6), np.float32)[:0, ::2]  # (0, 3), C-contiguous for numpy whatever its strides
    with Runtime(model_path("fill_dynamic")) as rt:
        assert _outcome_out(rt, np.array([0, 3], np.int32), out) == "filled"


def test_a_broadcast_out_array_still_gets_numpys_warning():
    x = TINY_INPUTS["contiguous"]
    out = np.broadcast_arrays(np.zeros(4, np.float32), np.zeros((1, 4)))[0]
    with Runtime(model_path("tiny_f32")) as rt, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rt.run(x, out=out)
    assert any(issubclass(w.category, DeprecationWarning) and "broadcast_arrays" in str(w.message) for w in seen)


def test_a_large_output_is_copied_whole():
    # 4096 rows of dynamic_batch: a 64 KiB static output, copied with the GIL released.
    x = np.linspace(-1, 1, 4096 * 8, dtype=np.float32).reshape(4096, 8)
    with Runtime(model_path("dynamic_batch")) as rt:
        got = rt.run(x)
        name = rt.info.inputs[0].name
    (expected,) = raw_signature_run("dynamic_batch", {name: x}).values()
    assert got.nbytes >= 64 * 1024 and got.flags.owndata
    assert got.shape == expected.shape and got.tobytes() == expected.tobytes()


# Recycling: a small result nothing refers to any more is filled again by a
# later call instead of allocating a new array.  Never one anything can still see.

def _two_inputs(rt: Runtime) -> tuple[np.ndarray, np.ndarray]:
    shape = rt.info.inputs[0].shape
    return np.full(shape, 1.0, np.float32), np.full(shape, -3.0, np.float32)


def _recycled(rt: Runtime, x: np.ndarray, previous_id: int) -> bool:
    # Arrays of the same size take whatever memory a freed result left, so a
    # new result cannot land on the old one's id by chance.
    blockers = [np.empty(rt.info.outputs[0].shape, np.float32) for _ in range(8)]
    recycled = id(rt.run(x)) == previous_id
    del blockers
    return recycled


def test_a_dropped_result_is_recycled_and_a_held_one_never_is():
    with Runtime(model_path("tiny_f32")) as rt:
        x1, x2 = _two_inputs(rt)
        y = rt.run(x1)
        dropped = id(y)
        del y
        assert _recycled(rt, x1, dropped)
        held = rt.run(x1)
        kept = held.copy()
        for x in (x2, x1, x2, x2):  # `y = rt.run(x)`: y holds the previous result during the call
            y = rt.run(x)
            assert y is not held
            assert y.tobytes() == rt_reference(x).tobytes()
        assert held.tobytes() == kept.tobytes()


@pytest.mark.parametrize("keep", ["view", "memoryview", "weakref", "item_view"])
def test_a_result_something_still_sees_is_never_refilled(keep):
    import weakref

    with Runtime(model_path("tiny_f32")) as rt:
        x1, x2 = _two_inputs(rt)
        y = rt.run(x1)
        expected = y.copy()
        seen = {"view": lambda a: a[:, 1:], "memoryview": memoryview, "weakref": weakref.ref,
                "item_view": lambda a: a[0]}[keep](y)
        del y
        for _ in range(4):
            rt.run(x2)
        alive = seen() if keep == "weakref" else seen
        if alive is not None:
            assert np.asarray(alive).tobytes() == np.asarray(expected if keep == "weakref" else
                                                             {"view": expected[:, 1:], "memoryview": expected,
                                                              "item_view": expected[0]}[keep]).tobytes()


@pytest.mark.parametrize("change", ["readonly", "shape", "transposed_shape", "dtype", "strides"])
def test_a_result_changed_in_place_is_not_recycled_as_it_is(change):
    with Runtime(model_path("tiny_f32")) as rt:
        x1, x2 = _two_inputs(rt)
        y = rt.run(x1)
        if change == "readonly":
            y.flags.writeable = False
        elif change == "shape":
            y.shape = (y.size,)
        elif change == "transposed_shape":
            y.shape = y.shape[::-1]  # as many dimensions, other sizes
        elif change == "dtype":
            y.dtype = np.int32
        else:
            with warnings.catch_warnings():  # deprecated in numpy 2.4, still possible
                warnings.simplefilter("ignore", DeprecationWarning)
                y.strides = (0, 0)
        changed = id(y)
        del y
        for x in (x2, x1, x2):
            z = rt.run(x)
            assert id(z) != changed
            assert z.flags.writeable and z.shape == rt.info.outputs[0].shape and z.dtype == np.float32
            assert z.tobytes() == rt_reference(x).tobytes()
            del z


def test_a_dropped_result_with_a_weak_reference_is_freed_by_later_calls():
    import weakref

    with Runtime(model_path("tiny_f32")) as rt:
        x1, _ = _two_inputs(rt)
        freed: list[int] = []
        y = rt.run(x1)
        weakref.finalize(y, freed.append, 1)
        del y
        for _ in range(3):
            rt.run(x1)
        assert freed == [1]


def test_multi_output_results_are_recycled_per_output_and_held_ones_kept():
    with Runtime(model_path("multi_io")) as rt:
        inputs = {spec.name: np.ones(spec.shape, spec.dtype) for spec in rt.info.inputs}
        other = {name: value * 2 for name, value in inputs.items()}
        held = rt.run(inputs)
        kept = {name: value.copy() for name, value in held.items()}
        for x in (other, inputs, other):
            result = rt.run(x)
            expected = raw_signature_run("multi_io", x)
            assert {name: a.tobytes() for name, a in result.items()} == \
                {name: a.tobytes() for name, a in expected.items()}
            assert all(result[name] is not held[name] for name in held)
            del result
        assert all(held[name].tobytes() == kept[name].tobytes() for name in held)
