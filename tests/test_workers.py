"""workers=N: concurrent callers each take an interpreter; the N+1th waits, bounded."""

import threading

import numpy as np
import pytest

from conftest import model_path
from load import Holding
from tflite_hotswap import Runtime, RuntimeBusyError

IMAGE = np.random.default_rng(0).standard_normal((1, 96, 96, 3)).astype(np.float32)


def test_two_workers_serve_two_callers_without_waiting():
    with Runtime(model_path("conv_heavy"), workers=2, num_threads=1, wait_timeout=0.002) as rt:
        holding = Holding(**{rt.info.inputs[0].name: IMAGE})
        held_result = []
        thread = threading.Thread(target=lambda: held_result.append(rt.run(holding)))
        thread.start()
        holding.held.wait()
        free = rt.run(IMAGE)   # the second worker is free: no wait, no RuntimeBusyError
        holding.release.set()
        thread.join()
    np.testing.assert_array_equal(held_result[0], free)


def test_caller_beyond_workers_gives_up_after_wait_timeout():
    with Runtime(model_path("conv_heavy"), workers=1, num_threads=1, wait_timeout=0.002) as rt:
        holding = Holding(**{rt.info.inputs[0].name: IMAGE})
        thread = threading.Thread(target=rt.run, args=(holding,))
        thread.start()
        holding.held.wait()
        with pytest.raises(RuntimeBusyError, match=r"all 1 worker\(s\) stayed busy for 0.002 s"):
            rt.run(IMAGE)
        holding.release.set()
        thread.join()
        rt.run(IMAGE)   # the worker came back


def test_caller_beyond_workers_waits_and_succeeds():
    with Runtime(model_path("conv_heavy"), workers=1, num_threads=1, wait_timeout=30) as rt:
        holding = Holding(**{rt.info.inputs[0].name: IMAGE})
        holder = threading.Thread(target=rt.run, args=(holding,))
        holder.start()
        holding.held.wait()
        waited = []
        waiter = threading.Thread(target=lambda: waited.append(rt.run(IMAGE)))
        waiter.start()
        holding.release.set()
        holder.join()
        waiter.join()
        assert rt.stats()[rt.info.version].errors == 0
    assert len(waited) == 1


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
