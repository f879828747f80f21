"""workers=N: concurrent callers each take an interpreter; the N+1th waits, bounded."""

import threading

import numpy as np
import pytest

from conftest import model_path
from load import run_callers
from tflite_hotswap import Runtime, RuntimeBusyError

IMAGE = np.random.default_rng(0).standard_normal((1, 96, 96, 3)).astype(np.float32)


def test_two_workers_serve_two_callers_without_waiting():
    with Runtime(model_path("conv_heavy"), workers=2, num_threads=1, wait_timeout=0.002) as rt:
        results, errors, _ = run_callers(rt, IMAGE, 1.0, catch=(RuntimeBusyError,))
    assert not errors and len(results) >= 4
    assert all(np.array_equal(r, results[0]) for r in results)


def test_caller_beyond_workers_gives_up_after_wait_timeout():
    with Runtime(model_path("conv_heavy"), workers=1, num_threads=1, wait_timeout=0.002) as rt:
        results, errors, _ = run_callers(rt, IMAGE, 1.0, catch=(RuntimeBusyError,))
    assert errors and results
    assert "all 1 worker(s) stayed busy for 0.002 s" in str(errors[0])


def test_caller_beyond_workers_waits_and_succeeds():
    with Runtime(model_path("conv_heavy"), workers=1, num_threads=1, wait_timeout=30) as rt:
        results, errors, _ = run_callers(rt, IMAGE, 1.0, catch=(RuntimeBusyError,))
        assert rt.stats()[rt.info.version].errors == 0
    assert not errors and len(results) >= 4


def test_workers_each_keep_their_own_batch_allocations():
    with Runtime(model_path("dynamic_batch"), workers=3) as rt:
        done = []

        def caller(n):
            for _ in range(50):
                assert rt.run(np.ones((n, 8), np.float32)).shape == (n, 4)
            done.append(n)

        threads = [threading.Thread(target=caller, args=(n,)) for n in (1, 2, 3, 4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(done) == [1, 2, 3, 4]


@pytest.mark.parametrize("workers", [0, 65, 1.5])
def test_workers_out_of_range(workers):
    with pytest.raises(ValueError, match="workers: expected an int from 1 to 64"):
        Runtime(model_path("tiny_f32"), workers=workers)
