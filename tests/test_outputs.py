"""Runtime outputs are bit-identical to the raw backend's for the same model and input."""

import numpy as np
import pytest

from conftest import model_path, raw_signature_run
from tflite_hotswap import Normalize, Runtime

RNG = np.random.default_rng(1234)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name, dtype, shape", [
    ("tiny_f32", np.float32, (1, 4)),
    ("quant_int8", np.int8, (1, 16)),
    ("quant_uint8", np.uint8, (1, 16)),
])
def test_single_io_matches_raw(name, dtype, shape):
    with Runtime(model_path(name)) as rt:
        for _ in range(20):
            if dtype == np.float32:
                x = RNG.standard_normal(shape).astype(dtype)
            else:
                info = np.iinfo(dtype)
                x = RNG.integers(info.min, info.max + 1, size=shape, dtype=dtype)
            _same(rt.run(x), raw_signature_run(name, {"x": x})["y"])


def test_out_argument_writes_in_place_and_matches():
    x = RNG.standard_normal((1, 4)).astype(np.float32)
    out = np.empty((1, 4), np.float32)
    with Runtime(model_path("tiny_f32")) as rt:
        assert rt.run(x, out=out) is out
        assert rt.run(x, out={"y": out}) == {"y": out}
    _same(out, raw_signature_run("tiny_f32", {"x": x})["y"])


def test_multiple_inputs_and_outputs_match_raw():
    with Runtime(model_path("multi_io")) as rt:
        assert [t.name for t in rt.info.inputs] == ["counts", "features"]
        for _ in range(10):
            inputs = {"features": RNG.standard_normal((1, 8)).astype(np.float32),
                      "counts": RNG.integers(-5, 5, size=(1, 3), dtype=np.int32)}
            got = rt.run(inputs)
            want = raw_signature_run("multi_io", inputs)
            assert sorted(got) == ["scores", "total", "weighted"]
            for key in want:
                _same(got[key], want[key])
            out = {k: np.empty_like(v) for k, v in want.items()}
            rt.run(inputs, out=out)
            for key in want:
                _same(out[key], want[key])


def test_dynamic_batch_run_and_run_batch_match_raw():
    with Runtime(model_path("dynamic_batch")) as rt:
        for batch in (1, 3, 7, 3, 1, 16):
            x = RNG.standard_normal((batch, 8)).astype(np.float32)
            want = raw_signature_run("dynamic_batch", {"x": x})["y"]
            _same(rt.run(x), want)
            _same(rt.run_batch(list(x)), want)
        out = np.empty((3, 4), np.float32)
        x = RNG.standard_normal((3, 8)).astype(np.float32)
        rt.run_batch([row for row in x], out=out)
        _same(out, raw_signature_run("dynamic_batch", {"x": x})["y"])


def test_run_batch_on_static_batch_model():
    samples = [RNG.standard_normal((8, 8, 3)).astype(np.float32) for _ in range(2)]
    with Runtime(model_path("image_small_f32")) as rt:
        _same(rt.run_batch(samples), raw_signature_run("image_small_f32", {"image": np.stack(samples)})["features"])


def test_run_batch_multi_input_takes_mappings():
    samples = [{"features": RNG.standard_normal(8).astype(np.float32),
                "counts": RNG.integers(0, 4, size=3, dtype=np.int32)}]
    with Runtime(model_path("multi_io")) as rt:
        got = rt.run_batch(samples)
    want = raw_signature_run("multi_io", {"features": samples[0]["features"][None],
                                          "counts": samples[0]["counts"][None]})
    for key in want:
        _same(got[key], want[key])


def _reference_preprocess(x, norm, tensor_dtype, qscale=1.0, zero_point=0):
    """The documented formula: coefficients folded in float64, applied in float32."""
    channels = x.shape[-1]
    mean = np.broadcast_to(np.asarray(norm.mean, np.float64), (channels,))
    std = np.broadcast_to(np.asarray(norm.std, np.float64), (channels,))
    a = (norm.scale / std / qscale).astype(np.float32)
    b = (-mean / std / qscale + zero_point).astype(np.float32)
    v = x.astype(np.float32) * a + b
    if tensor_dtype == np.float32:
        return v
    lo, hi = (-128, 127) if tensor_dtype == np.int8 else (0, 255)
    v = np.clip(v, lo, hi).astype(np.float64)
    return np.trunc(v + np.copysign(0.5, v)).astype(tensor_dtype)


@pytest.mark.parametrize("name, tensor_dtype", [
    ("image_small_f32", np.float32), ("image_small_int8", np.int8), ("image_small_uint8", np.uint8)])
@pytest.mark.parametrize("src_dtype", [np.uint8, np.float32])
def test_preprocess_matches_normalising_then_running_raw(name, tensor_dtype, src_dtype):
    norm = Normalize(scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    if src_dtype == np.uint8:
        x = RNG.integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    else:
        x = RNG.uniform(0, 255, size=(2, 8, 8, 3)).astype(np.float32)
    with Runtime(model_path(name), preprocess=norm) as rt:
        spec = rt.info.inputs[0]
        qscale = spec.scales[0] if spec.scales else 1.0
        zero_point = spec.zero_points[0] if spec.zero_points else 0
        prepared = _reference_preprocess(x, norm, tensor_dtype, qscale, zero_point)
        _same(rt.run(x), raw_signature_run(name, {"image": prepared})["features"])
        _same(rt.run_batch(list(x)), raw_signature_run(name, {"image": prepared})["features"])


def test_non_contiguous_input_is_copied_correctly():
    base = RNG.standard_normal((4, 8)).astype(np.float32)
    x = base[:1, ::2]  # shape (1, 4), every other element
    assert not x.flags.c_contiguous
    with Runtime(model_path("tiny_f32")) as rt:
        _same(rt.run(x), raw_signature_run("tiny_f32", {"x": np.ascontiguousarray(x)})["y"])
