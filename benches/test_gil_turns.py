"""What short GIL turns during a load buy: a run() loop beside bursts of pure-Python work.

A thread calls run() on the 0.5 MB model as fast as it can while the main
thread runs 10 bursts of 30 ms of Python code (what a swap's reading, verifying
and binding is), once as it is and once inside ``serving.gil.short_turns`` (what
``swap()`` does).  extra_info: the loop's p99 and longest call for each.
"""

import threading
import time

import numpy as np
import pytest

from conftest import model_path
from tflite_hotswap import Runtime
from tflite_hotswap.serving import gil

BURSTS, BURST_SECONDS = 10, 0.03


def _python_work(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(100))


@pytest.mark.parametrize("turns", ["default", "short"])
def test_loop_beside_python_bursts(benchmark, turns):
    benchmark.group = "gil-turns"
    took, stop = [], threading.Event()
    with Runtime(model_path("dense_512k")) as rt:
        x = np.ones((1, rt.info.inputs[0].shape[1]), np.float32)

        def loop():
            while not stop.is_set():
                t0 = time.perf_counter_ns()
                rt.run(x)
                took.append(time.perf_counter_ns() - t0)

        def bursts():
            for _ in range(BURSTS):
                if turns == "short":
                    with gil.short_turns():
                        _python_work(BURST_SECONDS)
                else:
                    _python_work(BURST_SECONDS)
                time.sleep(BURST_SECONDS)

        thread = threading.Thread(target=loop)
        thread.start()
        try:
            benchmark.pedantic(bursts, rounds=1, iterations=1)
        finally:
            stop.set()
            thread.join()
    t = np.array(took) / 1e3
    benchmark.extra_info.update(calls=len(t), p99_us=round(float(np.percentile(t, 99)), 1),
                                max_ms=round(float(t.max()) / 1e3, 2))
