"""Per-call cost on a tiny 4->4 model: Runtime.run beside the raw tflite idioms."""

import numpy as np
import pytest

from conftest import model_path, raw_interpreter
from tflite_hotswap import Runtime

X = np.arange(4, dtype=np.float32).reshape(1, 4)


@pytest.fixture(scope="module")
def raw():
    return raw_interpreter("tiny_f32")


@pytest.fixture(scope="module")
def rt():
    with Runtime(model_path("tiny_f32")) as runtime:
        yield runtime


@pytest.mark.benchmark(group="call")
def test_raw_bare_invoke(benchmark, raw):
    benchmark(raw.invoke)


@pytest.mark.benchmark(group="call")
def test_raw_set_invoke_get(benchmark, raw):
    i = raw.get_input_details()[0]["index"]
    o = raw.get_output_details()[0]["index"]

    def call():
        raw.set_tensor(i, X)
        raw.invoke()
        return raw.get_tensor(o)

    benchmark(call)


@pytest.mark.benchmark(group="call")
def test_raw_signature_runner(benchmark, raw):
    runner = raw.get_signature_runner()
    benchmark(runner, x=X)


@pytest.mark.benchmark(group="call")
def test_runtime_run(benchmark, rt):
    assert np.array_equal(rt.run(X), raw_interpreter("tiny_f32").get_signature_runner()(x=X)["y"])
    benchmark(rt.run, X)


@pytest.mark.benchmark(group="call")
def test_runtime_run_out(benchmark, rt):
    out = np.empty((1, 4), np.float32)
    benchmark(rt.run, X, out=out)
