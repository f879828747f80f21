"""Fuzz the kernels' Python entry points and the Runtime's call paths with hypothesis.

Every call runs in a forked child (``forked.run_forked``): a crash fails the
test with the reproducing input instead of killing pytest, and hypothesis
shrinks it like any failure.  The property, for any input: a correct result
(byte for byte against a plain reference) or a typed tflite_hotswap error;
never a crash, another exception type, a wrong or partly written result, or a
write outside the destination.  The number of examples is fixed
(TFLITE_HOTSWAP_FUZZ_EXAMPLES, default 200) and the run is derandomized.
"""

from __future__ import annotations

import collections
import pathlib
import threading
from typing import Any, Optional

import numpy as np
import pytest
from hypothesis import given, strategies as st

import tflite_hotswap
from conftest import MODELS
from forked import run_forked
from fuzzing import (AFFINE_DST, AFFINE_SRC, FUZZ, NATIVE, Guarded, ShiftyList, ShiftyUserList, arrays,
                     contiguous_ok, expected_into, inverted, make_array)
from tflite_hotswap import HotswapError, InferenceError, MisuseError, Runtime, load_backend
from tflite_hotswap._buffers import affine_into, gather_into

BUNDLED = pathlib.Path(tflite_hotswap.__file__).parent / "models"


def _call_typed(fn: Any, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
    """(True, result) or (False, the typed error); any other exception fails the check."""
    try:
        return True, fn(*args, **kwargs)
    except (MisuseError, InferenceError) as e:
        return False, e
    except HotswapError as e:
        raise AssertionError(f"raised {type(e).__name__} for a caller's input: {e}") from e
    except Exception as e:
        raise AssertionError(f"raised an untyped {type(e).__name__}: {e}") from e


def _describe(**parts: Any) -> str:
    def one(v: Any) -> str:
        if isinstance(v, np.ndarray):
            return (f"ndarray(dtype={v.dtype.str!r}, shape={v.shape}, strides={v.strides}, "
                    f"aligned={v.flags.aligned}, writeable={v.flags.writeable})")
        if isinstance(v, (list, tuple, collections.UserList)) and any(isinstance(x, np.ndarray) for x in v):
            return f"{type(v).__name__}[{', '.join(one(x) for x in list(v)[:4])}{', ...' if len(list(v)) > 4 else ''}]"
        return repr(v)
    return "; ".join(f"{k}={one(v)}" for k, v in parts.items())


# ----------------------------------------------------------------- kernels

coefficients = st.one_of(st.none(), st.integers(1, 7).flatmap(lambda n: st.tuples(
    st.lists(st.floats(-300, 300, width=32), min_size=n, max_size=n).map(lambda v: np.array(v, np.float32)),
    st.lists(st.floats(-300, 300, width=32), min_size=n, max_size=n).map(lambda v: np.array(v, np.float32)),
    st.integers(-128, 255).map(float))))


def _args(coef: Optional[tuple]) -> tuple:
    return () if coef is None else (coef[0], coef[1], coef[2])


def _check_affine(src: np.ndarray, dst_dtype: np.dtype, dst_shape: tuple, dst_layout: str,
                  guarded: bool, coef: Optional[tuple]) -> None:
    expected = expected_into(src, dst_dtype, coef) if src.size == int(np.prod(dst_shape)) else None
    fill = inverted(expected) if expected is not None else bytes(int(np.prod(dst_shape)) * dst_dtype.itemsize)
    guard = Guarded(dst_dtype, dst_shape, fill) if guarded and not dst_dtype.hasobject else None
    dst = guard.array if guard is not None else make_array(dst_dtype, dst_shape, dst_layout, 7)
    if guard is None and expected is not None and contiguous_ok(dst) and dst.nbytes:
        dst.reshape(-1).view(np.uint8)[:] = np.frombuffer(fill, np.uint8)
    must_work = (expected is not None and src.ndim <= 16 and contiguous_ok(dst)
                 and src.dtype.isnative and (src.dtype in NATIVE))
    ok, result = _call_typed(affine_into, src, dst, *_args(coef))
    if guard is not None:
        assert guard.canaries_intact(), "affine_into wrote outside dst"
    if not ok:
        assert not must_work, f"refused a valid call: {result}"
        return
    assert expected is not None, "accepted a call it must refuse (dtype, element count or dst layout)"
    assert contiguous_ok(dst), "accepted a dst that is not writable, aligned and C-contiguous"
    got = np.ascontiguousarray(dst).tobytes()
    assert got == expected, "wrong result"


@FUZZ
@given(src=arrays(), dst_dtype=st.sampled_from(NATIVE + [np.dtype(t) for t in ("c8", "O", "V0", ">f4")]),
       same_shape=st.booleans(), dst_shape=st.tuples(st.integers(0, 4)) | st.just(()),
       dst_layout=st.sampled_from(["contiguous", "contiguous", "unaligned", "readonly", "reversed"]),
       guarded=st.booleans(), coef=coefficients, match_dtype=st.booleans())
def test_fuzz_affine_into(src, dst_dtype, same_shape, dst_shape, dst_layout, guarded, coef, match_dtype):
    if match_dtype:
        dst_dtype = src.dtype if coef is None else AFFINE_DST[src.size % 3]
    if same_shape:
        dst_shape = src.shape
    run_forked(_check_affine, src, dst_dtype, dst_shape, dst_layout, guarded, coef,
               describe=_describe(src=src, dst_dtype=dst_dtype, dst_shape=dst_shape, dst_layout=dst_layout,
                                  coef=coef))


def _check_gather(samples: Any, items: list, dst_dtype: np.dtype, rows: int, guarded: bool,
                  coef: Optional[tuple]) -> None:
    row_shape = items[0].shape if items else ()
    dst_shape = (rows,) + row_shape
    valid = rows <= len(items) and all(x.shape == row_shape for x in items[:rows])
    parts = [expected_into(x, dst_dtype, coef) for x in items[:rows]] if valid else [None]
    expected: Optional[bytes] = None
    if valid and all(p is not None for p in parts):
        if coef is None:
            expected = b"".join(parts)  # type: ignore[arg-type]
        else:  # the coefficient cycle runs on across samples, as if stacked first
            # No rows: no sample's dtype matters, nothing is written.
            stacked = np.stack([np.ascontiguousarray(x) for x in items[:rows]]) if rows else \
                np.empty((0,) + row_shape, np.float32)
            expected = expected_into(stacked, dst_dtype, coef)
    count = int(np.prod(dst_shape))
    fill = inverted(expected) if expected is not None else bytes(count * dst_dtype.itemsize)
    guard = Guarded(dst_dtype, dst_shape, fill) if guarded and not dst_dtype.hasobject else None
    dst = guard.array if guard is not None else np.empty(dst_shape, dst_dtype)
    if guard is None and dst.nbytes and not dst_dtype.hasobject:
        dst.reshape(-1).view(np.uint8)[:] = np.frombuffer(fill, np.uint8)
    plain_list = type(samples) is list
    must_work = (plain_list and expected is not None and len(samples) == rows and dst_dtype in NATIVE
                 and all(x.ndim <= 15 and x.dtype in NATIVE for x in items[:rows]))
    ok, result = _call_typed(gather_into, samples, dst, *_args(coef))
    if guard is not None:
        assert guard.canaries_intact(), "gather_into wrote outside dst"
    if not ok:
        assert not must_work, f"refused a valid call: {result}"
        return
    assert expected is not None, "accepted a call it must refuse"
    assert np.ascontiguousarray(dst).tobytes() == expected, \
        "wrong result (rows not written, or written from the wrong samples)"


@st.composite
def gather_cases(draw: Any) -> tuple:
    coef = draw(coefficients)
    if coef is not None and draw(st.booleans()):
        dtype = draw(st.sampled_from(AFFINE_SRC))
        dst_dtype = draw(st.sampled_from(AFFINE_DST))
    else:
        dtype = draw(st.sampled_from(NATIVE + [np.dtype(t) for t in ("c8", "O", "V0", ">f4", "S3")]))
        dst_dtype = dtype if coef is None or draw(st.booleans()) else draw(st.sampled_from(AFFINE_DST))
    n = draw(st.integers(1, 6))
    row_shape = draw(st.lists(st.sampled_from([1, 2, 3, 0]), max_size=draw(st.integers(0, 20))).map(tuple))
    if int(np.prod(row_shape)) > 48:
        row_shape = (2, 3)
    items = [draw(arrays(dtype=dtype, shape=row_shape)) for _ in range(n)]
    kind = draw(st.sampled_from(["list", "tuple", "shifty", "shifty_userlist", "odd_sample"]))
    rows = draw(st.integers(0, n))
    if kind == "odd_sample" and items:
        items[draw(st.integers(0, n - 1))] = draw(arrays(max_rank=20))
        kind = "list"
    if kind.startswith("shifty"):
        lengths = draw(st.lists(st.integers(0, n), min_size=1, max_size=4))
        samples: Any = (ShiftyList if kind == "shifty" else ShiftyUserList)(items, [rows] + lengths)
    else:
        samples = list(items[:rows]) if kind == "list" else tuple(items[:rows])
    return samples, items, dst_dtype, rows, draw(st.booleans()), coef


@FUZZ
@given(gather_cases())
def test_fuzz_gather_into(case):
    samples, items, dst_dtype, rows, guarded, coef = case
    run_forked(_check_gather, samples, items, dst_dtype, rows, guarded, coef,
               describe=_describe(samples=samples, lengths=getattr(samples, "lengths", None),
                                  dst_dtype=dst_dtype, rows=rows, coef=coef))


def _gather_while_appending(kind: str, calls: int) -> None:
    """gather_into from a sequence a capture thread keeps appending to (bounded)."""
    pool = [np.full(64, i, np.float32) for i in range(4096)]
    samples: Any = collections.UserList(pool[:1]) if kind == "userlist" else pool[:1]
    stop = threading.Event()

    def capture() -> None:
        while not stop.is_set() and len(samples) < len(pool):
            samples.append(pool[len(samples)])
            if len(samples) % 64 == 0:
                del samples[1:]

    thread = threading.Thread(target=capture)
    thread.start()
    try:
        for _ in range(calls):
            rows = len(samples)
            guard = Guarded(np.dtype(np.float32), (rows, 64), bytes(rows * 256))
            guard.array[...] = -1.0
            ok, _ = _call_typed(gather_into, samples, guard.array)
            assert guard.canaries_intact(), f"gather_into wrote outside dst ({rows} rows)"
            if ok:
                assert (guard.array == np.arange(rows, dtype=np.float32)[:, None]).all(), \
                    "rows left unwritten or from the wrong samples"
    finally:
        stop.set()
        thread.join()


@pytest.mark.parametrize("kind", ["list", "userlist"])
def test_gather_into_while_another_thread_appends(kind):
    run_forked(_gather_while_appending, kind, 2000, describe=f"{kind} appended to by a thread")


# ----------------------------------------------------------------- runtime

# (model file, inputs as (name, dtype, shape with -1 open), outputs names)
RUNTIME_MODELS = {
    "tiny_f32": MODELS / "tiny_f32.tflite",
    "version_1": MODELS / "version_1.tflite",
    "dynamic_batch": MODELS / "dynamic_batch.tflite",
    "quant_int8": MODELS / "quant_int8.tflite",
    "multi_io": MODELS / "multi_io.tflite",
    "image_small_f32": MODELS / "image_small_f32.tflite",
    "demo_v1": BUNDLED / "demo_v1.tflite",
}


def raw_run(path: pathlib.Path, inputs: dict) -> dict:
    """The reference: the same backend's SignatureRunner on a fresh interpreter."""
    interpreter = load_backend().interpreter_class(model_path=str(path))
    interpreter.allocate_tensors()
    return interpreter.get_signature_runner()(**inputs)


@pytest.fixture(scope="module")
def runtimes():
    opened = {name: Runtime(str(path)) for name, path in RUNTIME_MODELS.items()}
    yield opened
    for rt in opened.values():
        rt.close()


def _fits(shape: tuple, spec_shape: tuple) -> bool:
    return len(shape) == len(spec_shape) and all(w in (-1, g) for w, g in zip(spec_shape, shape))


@st.composite
def input_array(draw: Any, spec: Any, batch: Optional[int] = None) -> np.ndarray:
    """Mostly right (dtype and shape, any layout), sometimes anything at all."""
    shape = tuple(batch if d == -1 and batch else (d if d != -1 else draw(st.integers(1, 4)))
                  for d in spec.shape)
    how = draw(st.sampled_from(["right", "right", "right", "dtype", "shape", "anything"]))
    if how == "right":
        return draw(arrays(dtype=spec.dtype, shape=shape))
    if how == "dtype":
        return draw(arrays(shape=shape))
    if how == "shape":
        return draw(arrays(dtype=spec.dtype))
    return draw(arrays())


def _expected_outputs(name: str, rt_info: Any, inputs: dict) -> Optional[dict]:
    """Raw outputs for valid inputs, None if the call must be refused."""
    for spec in rt_info.inputs:
        x = inputs.get(spec.name)
        if not isinstance(x, np.ndarray) or x.dtype != np.dtype(spec.dtype) or not _fits(x.shape, spec.shape):
            return None
    return raw_run(RUNTIME_MODELS[name], {k: np.ascontiguousarray(v) for k, v in inputs.items()})


def _check_outputs(got: Any, want: dict, out: Any, single: bool) -> None:
    if out is not None:
        assert got is out, "run(out=...) must return out"
    results = {next(iter(want)): got} if single and not isinstance(got, dict) else got
    assert sorted(results) == sorted(want)
    for key, value in want.items():
        assert results[key].dtype == value.dtype and results[key].shape == value.shape, key
        assert results[key].tobytes() == value.tobytes(), f"wrong output {key!r}"


def _make_out(draw: Any, outputs: dict, how: str) -> Any:
    """out= argument: None, right arrays, or arrays of any dtype/shape/layout."""
    def one(value: np.ndarray) -> np.ndarray:
        if how == "right":
            return np.full(value.shape, 0x5A, np.uint8).view(value.dtype) if value.dtype.itemsize == 1 \
                else np.empty_like(value)
        if how == "layout":
            return draw(arrays(dtype=value.dtype, shape=value.shape))
        return draw(arrays())
    outs = {k: one(v) for k, v in outputs.items()}
    return next(iter(outs.values())) if len(outs) == 1 and draw(st.booleans()) else outs


def _check_run(rt: Runtime, name: str, inputs: Any, as_dict: bool, out: Any, valid_out: bool) -> None:
    info = rt.info
    given = inputs if as_dict else {info.inputs[0].name: inputs}
    want = _expected_outputs(name, info, given)
    ok, got = _call_typed(rt.run, inputs, out=out)
    if not ok:
        assert want is None or not valid_out or not all(
            isinstance(x, np.ndarray) and x.ndim <= 16 for x in given.values()), f"refused a valid call: {got}"
        return
    assert want is not None, "accepted an input it must refuse (dtype or shape)"
    _check_outputs(got, want, out, len(info.outputs) == 1)


@st.composite
def run_cases(draw: Any) -> tuple:
    name = draw(st.sampled_from(sorted(RUNTIME_MODELS)))
    return name, draw(st.data())


@FUZZ
@given(run_cases())
def test_fuzz_runtime_run_and_out(runtimes, case):
    name, data = case
    rt = runtimes[name]
    info = rt.info
    batch = data.draw(st.integers(1, 4))
    arrays_by_name = {s.name: data.draw(input_array(s, batch)) for s in info.inputs}
    as_dict = len(info.inputs) > 1 or data.draw(st.booleans())
    inputs: Any = arrays_by_name if as_dict else next(iter(arrays_by_name.values()))
    how = data.draw(st.sampled_from(["none", "none", "right", "layout", "anything"]))
    want = _expected_outputs(name, info, arrays_by_name)
    out = None
    if how != "none":
        template = want if want is not None else {s.name: np.empty(
            tuple(batch if d == -1 else d for d in s.shape), s.dtype) for s in info.outputs}
        out = _make_out(data.draw, template, how)
    valid_out = how in ("none", "right")
    run_forked(_check_run, rt, name, inputs, as_dict, out, valid_out,
               describe=_describe(model=name, inputs=list(arrays_by_name.values()), out=out))


def _check_run_batch(rt: Runtime, name: str, samples: Any, items: list, rows: int) -> None:
    info = rt.info
    spec = info.inputs[0]
    ok, got = _call_typed(rt.run_batch, samples)
    valid_rows = spec.shape[0] in (-1, rows) and rows >= 1
    valid = valid_rows and all(isinstance(x, np.ndarray) and x.dtype == np.dtype(spec.dtype)
                               and _fits((1,) + x.shape, (1,) + tuple(spec.shape[1:])) for x in items[:rows])
    if not ok:
        assert not (valid and type(samples) is list and len(items) == rows), f"refused a valid call: {got}"
        return
    n = (got if len(info.outputs) == 1 else next(iter(got.values()))).shape[0]
    assert n == rows or (spec.shape[0] == -1 and n in getattr(samples, "reported", {rows})), n
    sample_ok = all(isinstance(x, np.ndarray) and x.dtype == np.dtype(spec.dtype) for x in items[:n])
    assert sample_ok, "accepted samples it must refuse"
    want = raw_run(RUNTIME_MODELS[name], {spec.name: np.stack([np.ascontiguousarray(x) for x in items[:n]])})
    _check_outputs(got, want, None, len(info.outputs) == 1)


@st.composite
def batch_cases(draw: Any) -> tuple:
    name = draw(st.sampled_from(["dynamic_batch", "tiny_f32", "image_small_f32", "demo_v1"]))
    return name, draw(st.data())


@FUZZ
@given(batch_cases())
def test_fuzz_runtime_run_batch(runtimes, case):
    name, data = case
    rt = runtimes[name]
    spec = rt.info.inputs[0]
    n = data.draw(st.integers(1, 6))
    row_spec = type("Spec", (), {"shape": tuple(spec.shape[1:]), "dtype": spec.dtype})()
    items = [data.draw(input_array(row_spec)) for _ in range(n)]
    if data.draw(st.booleans()):  # one row layout for all: the common case
        items = [make_array(np.dtype(spec.dtype), tuple(spec.shape[1:]), "contiguous", i) for i in range(n)]
    rows = data.draw(st.integers(1, n))
    kind = data.draw(st.sampled_from(["list", "shifty", "shifty_userlist"]))
    run_forked(_check_run_batch, rt, name, _sequence(kind, items, rows, data), items, rows,
               describe=_describe(model=name, samples=items[:rows]))


def _sequence(kind: str, items: list, rows: int, data: Any) -> Any:
    if kind == "list":
        return items[:rows]
    lengths = data.draw(st.lists(st.integers(1, len(items)), min_size=1, max_size=3))
    return (ShiftyList if kind == "shifty" else ShiftyUserList)(items, [rows] + lengths)


@FUZZ
@given(st.sampled_from(["dynamic_batch", "demo_v1", "image_small_f32"]), st.data())
def test_fuzz_runtime_run_batch_on_a_sequence_that_changes_length(runtimes, name, data):
    """len() differs between calls: one snapshot of the samples, or a typed error."""
    rt = runtimes[name]
    spec = rt.info.inputs[0]
    n = data.draw(st.integers(1, 6))
    items = [make_array(np.dtype(spec.dtype), tuple(spec.shape[1:]), "contiguous", i + 1) for i in range(n)]
    rows = data.draw(st.integers(1, n))
    kind = data.draw(st.sampled_from(["shifty", "shifty_userlist"]))
    samples = _sequence(kind, items, rows, data)
    run_forked(_check_run_batch, rt, name, samples, items, rows,
               describe=f"model={name}; {kind} of {n} samples of shape {tuple(spec.shape[1:])}, "
                        f"len() answering {rows} then cycling {samples.lengths_given}")


def _run_batch_while_appending(calls: int) -> None:
    """run_batch on a dynamic batch from a UserList a capture thread appends to."""
    rt = Runtime(str(RUNTIME_MODELS["dynamic_batch"]))
    pool = [np.full(8, i, np.float32) for i in range(4096)]
    samples = collections.UserList(pool[:1])
    stop = threading.Event()

    def capture() -> None:
        while not stop.is_set() and len(samples) < len(pool):
            samples.append(pool[len(samples)])
            if len(samples) % 512 == 0:
                del samples[1:]

    thread = threading.Thread(target=capture)
    thread.start()
    try:
        for _ in range(calls):
            ok, got = _call_typed(rt.run_batch, samples)
            if ok:
                want = raw_run(RUNTIME_MODELS["dynamic_batch"], {"x": np.stack(pool[:got.shape[0]])})["y"]
                assert got.tobytes() == want.tobytes(), f"wrong result for {got.shape[0]} rows"
    finally:
        stop.set()
        thread.join()
        rt.close()


def test_run_batch_while_another_thread_appends():
    run_forked(_run_batch_while_appending, 300, describe="UserList appended to by a capture thread")
