"""Throughput of workers=2 beside workers=1, two caller threads, compute-heavy model."""

import threading
import time

import numpy as np
import pytest

from conftest import model_path
from tflite_hotswap import Runtime

IMAGE = np.random.default_rng(0).standard_normal((1, 96, 96, 3)).astype(np.float32)


def _throughput(workers: int, seconds: float = 4.0) -> float:
    with Runtime(model_path("conv_heavy"), workers=workers, num_threads=1, wait_timeout=60) as rt:
        counts = [0, 0]
        stop = threading.Event()

        def caller(k):
            while not stop.is_set():
                rt.run(IMAGE)
                counts[k] += 1

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(2)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        stop.wait(seconds)
        stop.set()
        for t in threads:
            t.join()
        return sum(counts) / (time.perf_counter() - start)


@pytest.mark.parametrize("workers", [1, 2])
def test_two_callers(benchmark, workers):
    benchmark.group = "scaling"
    calls_per_second = benchmark.pedantic(_throughput, args=(workers,), rounds=1, iterations=1)
    benchmark.extra_info["calls_per_second"] = round(calls_per_second, 1)
