"""How long freeing a retired 20 MB version keeps other threads from the GIL.

A thread spins on ``time.sleep(0)`` (each turn lets go of the GIL and takes it
back) and records its longest turn while the main thread frees one allocated,
warmed-up interpreter of the 20 MB model and its model bytes: 16 times,
alternating between two versions so the heap sees what a swapping process
sees.  Two ways, in the same run:

- ``library``: as the runtime frees it (delegates removed with the GIL released
  on the native path, the bytes in a mapping unmapped with the GIL released);
- ``plain``: the model in ordinary ``bytes`` and no removal, as before.

extra_info: the median and longest of the per-release longest turns (ms).
"""

import threading
import time

import numpy as np
import pytest
from conftest import model_path

from tflite_hotswap import load_backend
from tflite_hotswap._buffers import mapped_copy
from tflite_hotswap.serving.loader import inspect_model, make_bound, read_model

RELEASES = 16


def _longest_turns(plain: bool) -> list[float]:
    backend = load_backend()
    versions = [read_model(model_path(name)) for name in ("dense_20mb", "dense_20mb_b")]
    stop, longest = threading.Event(), [0.0]

    def spin():
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0)
            now = time.perf_counter()
            longest[0] = max(longest[0], now - last)
            last = now

    spinner = threading.Thread(target=spin)
    spinner.start()
    turns = []
    try:
        for i in range(RELEASES + 1):
            data = versions[i % 2]
            interpreter, model = inspect_model(backend, bytes(data) if plain else mapped_copy(data), "", None, None)
            bound = make_bound(backend, model, None, [None], interpreter=interpreter)
            bound.warm_up()
            if plain:
                bound.free_delegates_with(0)
            del interpreter, model
            if i == 0:  # the first sets the heap up; it is not counted
                bound.release()
                continue
            time.sleep(0.01)
            longest[0] = 0.0
            bound.release()
            del bound  # the last reference to the interpreter's own copy of the bytes
            time.sleep(0.005)
            turns.append(longest[0] * 1e3)
    finally:
        stop.set()
        spinner.join()
    return turns


@pytest.mark.parametrize("way", ["library", "plain"])
def test_gil_held_freeing_a_retired_version(benchmark, way):
    benchmark.group = "retire-gil"
    turns = benchmark.pedantic(_longest_turns, args=(way == "plain",), rounds=1, iterations=1)
    benchmark.extra_info.update(median_ms=round(float(np.median(turns)), 2),
                                max_ms=round(float(np.max(turns)), 2), releases=len(turns))
