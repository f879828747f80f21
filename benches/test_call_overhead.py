"""Per-call cost: Runtime.run beside the raw tflite idioms, on a static and a -1-batch model.

* ``tiny_f32``: a 4->4 model with a static (1, 4) input.
* ``dynamic_batch``: an 8->4 model whose input is (-1, 8), as every Keras export;
  the raw idioms resize it to (1, 8) and allocate once, run() learns the shape
  from the first call.

``test_c_level_invoke`` is the floor: ``Interpreter::Invoke`` called from C in a
loop of 1000 with the GIL released (the native path only; the
report divides by 1000).
"""

import numpy as np
import pytest

from conftest import model_path, raw_interpreter
from tflite_hotswap import Runtime
from tflite_hotswap._slots import call_status_nogil
from tflite_hotswap.serving import native

MODELS = ["tiny_f32", "dynamic_batch"]
INPUTS = {"tiny_f32": np.arange(4, dtype=np.float32).reshape(1, 4),
          "dynamic_batch": np.arange(8, dtype=np.float32).reshape(1, 8)}
C_LOOP = 1000


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    return request.param


@pytest.fixture(scope="module")
def raw(model):
    interpreter = raw_interpreter(model)
    detail = interpreter.get_input_details()[0]
    if list(detail["shape"]) != list(INPUTS[model].shape):
        interpreter.resize_tensor_input(detail["index"], INPUTS[model].shape)
        interpreter.allocate_tensors()
    return interpreter


@pytest.fixture(scope="module")
def rt(model):
    with Runtime(model_path(model)) as runtime:
        runtime.run(INPUTS[model])  # learns (and allocates for) the call's shape
        yield runtime


def _group(benchmark, model):
    benchmark.group = f"call-{model}"


def test_raw_bare_invoke(benchmark, raw, model):
    _group(benchmark, model)
    benchmark(raw.invoke)


def test_c_level_invoke(benchmark, raw, model):
    _group(benchmark, model)
    entry = native.entry_points(raw)
    if entry is None:
        pytest.skip("no native Interpreter::Invoke here (TFLITE_HOTSWAP_NATIVE=0, or the TensorFlow backend): "
                    "no C-level floor to measure")
    address = native.address_of(raw)
    benchmark.extra_info["calls_per_round"] = C_LOOP
    benchmark(call_status_nogil, entry.invoke, address, C_LOOP)


def test_raw_set_invoke_get(benchmark, raw, model):
    _group(benchmark, model)
    i = raw.get_input_details()[0]["index"]
    o = raw.get_output_details()[0]["index"]
    x = INPUTS[model]

    def call():
        raw.set_tensor(i, x)
        raw.invoke()
        return raw.get_tensor(o)

    benchmark(call)


def test_raw_signature_runner(benchmark, raw, model):
    _group(benchmark, model)
    runner = raw.get_signature_runner()
    (name,) = runner.get_input_details()
    x = INPUTS[model]
    benchmark(runner, **{name: x})


def test_runtime_run(benchmark, rt, raw, model):
    _group(benchmark, model)
    x = INPUTS[model]
    runner = raw.get_signature_runner()
    (name,) = runner.get_input_details()
    assert np.array_equal(rt.run(x), next(iter(runner(**{name: x}).values())))
    benchmark(rt.run, x)


def test_runtime_run_out(benchmark, rt, model):
    _group(benchmark, model)
    x = INPUTS[model]
    out = np.empty_like(rt.run(x))
    benchmark(rt.run, x, out=out)
