"""Evaluate LiteRT's CompiledModel (Google's recommended API) against the Interpreter we serve through.

    TFLITE_HOTSWAP_BACKEND=litert .venv-litert/bin/python tools/eval_litert_compiled_model.py

Issue 9 asks whether a CompiledModel backend would be faster or GIL-free.
Measured here through ai-edge-litert's own Python binding of it
(``ai_edge_litert.compiled_model``), on the bundled models:

* per call on the tiny 4->4 model: ``run_by_index`` with ready tensor buffers,
  and write + run + read, beside the Interpreter wrapper's bare ``Invoke`` and
  set_tensor + invoke + get_tensor;
* loading the 20 MB dense model: how long ``CompiledModel.from_buffer`` takes and
  the longest stop of another Python thread meanwhile (equal to the load when
  the GIL is held throughout), beside Interpreter construction + allocate_tensors;
* whether the outputs are bit-identical to the Interpreter's.
"""

from __future__ import annotations

import pathlib
import threading
import time

import numpy as np
from ai_edge_litert.compiled_model import CompiledModel
from ai_edge_litert.interpreter import Interpreter

MODELS = pathlib.Path(__file__).resolve().parent.parent / "tests" / "models"


def per_call_us(fn, n: int = 100_000) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def longest_stop_ms(work) -> tuple[float, float]:
    """(ms the work took, longest gap in ms between ticks of another Python thread during it)."""
    ticks, stop = [], threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.0002)

    thread = threading.Thread(target=tick)
    thread.start()
    time.sleep(0.02)
    t0 = time.perf_counter()
    work()
    t1 = time.perf_counter()
    time.sleep(0.02)
    stop.set()
    thread.join()
    inside = [t for t in ticks if t0 - 0.005 <= t <= t1 + 0.005]
    return (t1 - t0) * 1e3, float(np.diff(inside).max()) * 1e3 if len(inside) > 1 else (t1 - t0) * 1e3


def main() -> None:
    tiny = (MODELS / "tiny_f32.tflite").read_bytes()
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    model = CompiledModel.from_buffer(tiny)
    inputs, outputs = model.create_input_buffers(0), model.create_output_buffers(0)
    inputs[0].write(x)
    model.run_by_index(0, inputs, outputs)
    interpreter = Interpreter(model_content=tiny)
    interpreter.allocate_tensors()
    i, o = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    interpreter.set_tensor(i, x)
    interpreter.invoke()
    same = np.array_equal(outputs[0].read(4, np.float32).reshape(1, 4), interpreter.get_tensor(o))

    def compiled_call():
        inputs[0].write(x)
        model.run_by_index(0, inputs, outputs)
        return outputs[0].read(4, np.float32)

    def interpreter_call():
        interpreter.set_tensor(i, x)
        interpreter.invoke()
        return interpreter.get_tensor(o)

    print(f"tiny_f32, outputs bit-identical to the Interpreter's: {same}")
    print(f"  CompiledModel.run_by_index {per_call_us(lambda: model.run_by_index(0, inputs, outputs)):.2f} us; "
          f"Interpreter wrapper Invoke {per_call_us(interpreter._interpreter.Invoke):.2f} us")
    print(f"  CompiledModel write+run+read {per_call_us(compiled_call):.2f} us; "
          f"Interpreter set_tensor+invoke+get_tensor {per_call_us(interpreter_call):.2f} us")
    big = (MODELS / "dense_20mb.tflite").read_bytes()
    took, stop = longest_stop_ms(lambda: CompiledModel.from_buffer(big))
    print(f"dense_20mb: CompiledModel.from_buffer {took:.1f} ms; another thread stopped up to {stop:.1f} ms")

    def construct_and_allocate():
        Interpreter(model_content=big).allocate_tensors()

    took, stop = longest_stop_ms(construct_and_allocate)
    print(f"dense_20mb: Interpreter + allocate_tensors {took:.1f} ms; another thread stopped up to {stop:.1f} ms")


if __name__ == "__main__":
    main()
