"""Zero copy: run() on a 32x224x224x3 float32 batch (19 MB) lent to the interpreter vs copied in.

Two runtimes of the same model: one with lending off
(TFLITE_HOTSWAP_ZERO_COPY_MIN_BYTES=0), one with the default 1 MiB threshold.
The input is 64-byte aligned, in the tensor's dtype and shape, so the second
lends it (the native path; the wrapper fallback always copies).  A call takes
~7 ms, of which the copy is a small part, and separate benchmarks drift by more
than that between runs on a shared machine: the two are timed in turns, call
by call, and extra_info holds both medians.
"""

import time

import numpy as np

from conftest import model_path
from tflite_hotswap import Runtime

SHAPE = (32, 224, 224, 3)
TURNS = 40


def _aligned_batch():
    n = int(np.prod(SHAPE)) * 4
    raw = np.empty(n + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    x = raw[start:start + n].view(np.float32).reshape(SHAPE)
    x[...] = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    return x


def test_big_input_lent_and_copied_in_turns(benchmark, monkeypatch):
    benchmark.group = "zero-copy"
    x = _aligned_batch()
    runtimes = {}
    for name, threshold in (("copied", "0"), ("lent", "1048576")):
        monkeypatch.setenv("TFLITE_HOTSWAP_ZERO_COPY_MIN_BYTES", threshold)
        runtimes[name] = Runtime(model_path("image_f32"))
    times = {name: [] for name in runtimes}

    def turns():
        for _ in range(TURNS):
            for name, rt in runtimes.items():
                t0 = time.perf_counter()
                rt.run(x)
                times[name].append(time.perf_counter() - t0)

    try:
        assert np.array_equal(runtimes["lent"].run(x), runtimes["copied"].run(x))
        benchmark.pedantic(turns, rounds=1, iterations=1)
    finally:
        for rt in runtimes.values():
            rt.close()
    copied, lent = (float(np.median(times[n])) * 1e6 for n in ("copied", "lent"))
    benchmark.extra_info.update(copied_us=round(copied), lent_us=round(lent), lent_over_copied=round(lent / copied, 3))
