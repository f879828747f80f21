"""What proving a model in a child process adds to a swap, beside a swap without it.

Each round swaps in a model never seen before (one weight byte changed, so a
new sha256 and no cached verdict); the cached case re-swaps a known model.
"""

import itertools

import pytest

from conftest import model_path
from tflite_hotswap import Runtime

BASE = open(model_path("dense_512k"), "rb").read()
WEIGHT_AT = len(BASE) // 2  # inside the weight buffer: the model stays valid
_counter = itertools.count(1)


def _fresh_model() -> bytes:
    data = bytearray(BASE)
    data[WEIGHT_AT:WEIGHT_AT + 4] = next(_counter).to_bytes(4, "little")
    return bytes(data)


@pytest.mark.parametrize("isolate", [False, True], ids=["in-process-only", "child-process-probe"])
def test_swap_new_model(benchmark, isolate):
    benchmark.group = "swap-cost"
    with Runtime(BASE, isolate=isolate) as rt:
        benchmark.pedantic(lambda data: rt.swap(data), setup=lambda: ((_fresh_model(),), {}),
                           rounds=10, warmup_rounds=1)


def test_swap_known_model_cached_verdict(benchmark):
    benchmark.group = "swap-cost"
    a, b = _fresh_model(), _fresh_model()
    with Runtime(a, isolate=True) as rt:
        rt.swap(b)
        models = itertools.cycle([a, b])
        benchmark.pedantic(lambda: rt.swap(next(models)), rounds=10, warmup_rounds=1)
