"""Zero copy: run() on a 32x224x224x3 float32 batch (19 MB) lent to the interpreter vs copied in.

Two runtimes of the same model in one run: one with lending off
(TFLITE_HOTSWAP_ZERO_COPY_MIN_BYTES=0), one with the default 1 MiB threshold.
The input is 64-byte aligned, in the tensor's dtype and shape, so the second
lends it (tflite-runtime's native path; LiteRT always copies: both figures are
then the copy).
"""

import numpy as np
import pytest

from conftest import model_path
from tflite_hotswap import Runtime

SHAPE = (32, 224, 224, 3)


def _aligned_batch():
    n = int(np.prod(SHAPE)) * 4
    raw = np.empty(n + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    x = raw[start:start + n].view(np.float32).reshape(SHAPE)
    x[...] = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    return x


@pytest.mark.parametrize("threshold", ["0", "1048576"], ids=["copied", "lent"])
def test_run_big_input(benchmark, monkeypatch, threshold):
    benchmark.group = "zero-copy"
    monkeypatch.setenv("TFLITE_HOTSWAP_ZERO_COPY_MIN_BYTES", threshold)
    x = _aligned_batch()
    with Runtime(model_path("image_f32")) as rt:
        rt.run(x)
        benchmark.pedantic(rt.run, args=(x,), rounds=15, warmup_rounds=2)
