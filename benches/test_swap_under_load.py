"""Latency of a run() loop while the model is swapped under it, beside the same loop without swaps.

A thread calls run() as fast as it can and times every call; the main thread
swaps in a new version every 100 ms for 8 s, as an updater does: each
version's bytes differ from every other's (one weight changed), so nothing a
load caches per model spares a swap its work; every swap reads the file,
verifies it, proves it loadable in a child process (the default isolation),
loads, allocates and warms up.  Reported in extra_info: failed
calls (must be 0), p50/p99/p99.9/max call latency, and per swap the longest
call from the swap's start to the next swap's start -- so the retired
version's destruction on the reclaimer thread counts too.  The stall is that
longest call minus the loop's median call (the invoke itself is not a stall).
Without swaps the same is measured per 100 ms tick: the stalls this machine
inflicts on the loop by itself, the floor of the figures with swaps.

On the 20 MB model every call reads 20 MB of weights, so its calls also slow
down when the cache or the memory bus is busy: the first call on a version the
cache has not seen, calls beside the load's weight packing.  The "beside" test
runs the loop on a tiny model in a runtime of its own while the 20 MB one
swaps: that loop waits only for what the swaps make the process wait for (the
GIL above all).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import model_path, timed_calls, write_versions
from tflite_hotswap import Runtime

SECONDS = 8.0  # a swap of the 20 MB model takes 0.1-0.2 s (probe included): 30+ swaps
EVERY = 0.1
SWAPS = int(SECONDS / EVERY) + 1  # at most one per tick
# The control for the loop on the 20 MB model: per line (a path), another
# process loads that model twice with the backend's own Interpreter, as a
# swap loads a new version twice (the isolation probe, then the runtime).
RAW_LOADS = """
import sys
from tflite_hotswap import load_backend
interpreter_class = load_backend().interpreter_class
for line in sys.stdin:
    for _ in range(2):
        interpreter = interpreter_class(model_path=line.strip())
        interpreter.allocate_tensors()
        interpreter.invoke()
        del interpreter
    print(flush=True)
"""
MAX_CALLS = int(SECONDS / 1e-7)  # room for 0.1 us calls; zeroed lazily, touched as far as the loop gets


def _loop(versions: list[str], swap: bool, loop_on: str | None = None, raw_loads: bool = False):
    # Swapped by path, as the updater does from its store: every swap reads the
    # file, and every retired version's bytes are freed.
    swapped = Runtime(versions[0])
    loader = subprocess.Popen([sys.executable, "-c", RAW_LOADS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, bufsize=1) if raw_loads else None
    rt = Runtime(model_path(loop_on)) if loop_on else swapped
    n_in = rt.info.inputs[0].shape[1]
    x = np.ones((1, n_in), np.float32)
    ends, took = np.zeros(MAX_CALLS, np.int64), np.zeros(MAX_CALLS, np.int64)
    calls, failed = [0], [0]
    stop = threading.Event()

    def caller():
        calls[0] = timed_calls(rt.run, x, stop, ends, took, failed)

    thread = threading.Thread(target=caller)
    thread.start()
    windows = []
    deadline = time.monotonic() + SECONDS
    i = 0
    while time.monotonic() < deadline:
        time.sleep(EVERY)
        t0 = time.perf_counter_ns()
        if swap or loader is not None:
            i += 1
        if swap:
            swapped.swap(versions[i], allow_contract_change=True)
        if loader is not None:
            loader.stdin.write(versions[i] + "\n")
            loader.stdout.readline()
        windows.append((t0, time.perf_counter_ns()))
    time.sleep(0.05)  # let the last retired slot be reclaimed while timed
    stop.set()
    thread.join()
    rt.close()
    swapped.close()
    if loader is not None:
        loader.kill()
        loader.wait()
    assert 0 < calls[0] < MAX_CALLS, f"the loop made {calls[0]} calls; room for {MAX_CALLS}"
    ends, took = ends[:calls[0]], took[:calls[0]]
    starts = ends - took
    # Each swap's window runs to the next swap's start: it covers the load,
    # the publish and the retired version's destruction.
    periods = [(s, nxt) for (s, _), (nxt, _) in zip(windows, windows[1:] + [(int(ends[-1]), 0)])]
    longest = [took[(ends >= s) & (starts <= e)].max(initial=0) for s, e in periods]
    q = np.percentile(took, [50, 99, 99.9]) / 1e3
    stalls = [max(t - np.median(took), 0) for t in longest]
    return {"calls": int(len(took)), "failed_calls": failed[0], "swaps": i, "windows": len(windows),
            "p50_us": round(q[0], 1), "p99_us": round(q[1], 1), "p999_us": round(q[2], 1),
            "max_us": round(took.max() / 1e3, 1),
            "max_stall_per_window_ms": round(max(stalls, default=0) / 1e6, 2),
            "median_stall_per_window_ms": round(float(np.median(stalls)) / 1e6 if stalls else 0, 2),
            "windows_over_2ms": int(sum(stall > 2e6 for stall in stalls))}


@pytest.fixture
def versions_dir(tmp_path):
    """Where the versions go, removed afterwards: 52 of the 20 MB model are 1 GB."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.parametrize("size", ["512k", "20mb"])
@pytest.mark.parametrize("swap", [False, True], ids=["no-swaps", "swap-every-100ms"])
def test_run_loop_latency(benchmark, versions_dir, size, swap):
    benchmark.group = f"swap-under-load-{size}"
    versions = write_versions(f"dense_{size}", versions_dir, SWAPS) if swap else [model_path(f"dense_{size}")]
    result = benchmark.pedantic(_loop, args=(versions, swap), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert result["failed_calls"] == 0


@pytest.mark.parametrize("swap", [False, True], ids=["no-swaps", "swap-every-100ms"])
def test_tiny_loop_beside_20mb_swaps(benchmark, versions_dir, swap):
    benchmark.group = "swap-under-load-beside"
    versions = write_versions("dense_20mb", versions_dir, SWAPS) if swap else [model_path("dense_20mb")]
    result = benchmark.pedantic(_loop, args=(versions, swap, "tiny_f32"), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert result["failed_calls"] == 0


def test_loop_beside_raw_loads(benchmark, versions_dir):
    """The loop on the 20 MB model, no swaps; instead, every 100 ms another process loads a new version twice.

    No library code loads anything: what such loads alone do to the loop's
    calls (cache, memory bus, CPU), the floor under the swaps' figures above.
    """
    benchmark.group = "swap-under-load-20mb"
    versions = write_versions("dense_20mb", versions_dir, SWAPS)
    result = benchmark.pedantic(_loop, args=(versions, False), kwargs={"raw_loads": True}, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert result["failed_calls"] == 0
