"""Throughput of workers=2 beside workers=1, two caller threads, compute-heavy model."""

import pathlib
import sys

import numpy as np
import pytest

from conftest import model_path

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from load import run_callers  # noqa: E402
from tflite_hotswap import Runtime

IMAGE = np.random.default_rng(0).standard_normal((1, 96, 96, 3)).astype(np.float32)


def _throughput(workers: int, seconds: float = 4.0) -> float:
    with Runtime(model_path("conv_heavy"), workers=workers, num_threads=1, wait_timeout=60) as rt:
        results, _, elapsed = run_callers(rt, IMAGE, seconds)
    return len(results) / elapsed


@pytest.mark.parametrize("workers", [1, 2])
def test_two_callers(benchmark, workers):
    benchmark.group = "scaling"
    calls_per_second = benchmark.pedantic(_throughput, args=(workers,), rounds=1, iterations=1)
    benchmark.extra_info["calls_per_second"] = round(calls_per_second, 1)
