"""Swaps beside a loop that keeps every core busy, against the same CPU spent without the library.

Two threads call run() on ``conv_heavy`` (workers=2, one thread per
interpreter, ~10 ms calls with the GIL released) so that both cores of the
machine are busy.  Every 100 ms, once the previous step is done, the main
thread takes one step of:

- ``swaps``: a swap of a new version of the 20 MB model into another Runtime
  (read, verify, isolation probe, load, allocate, warm up, as an updater's
  swap does);
- ``same-cpu``: the CPU time a swap was measured to take on idle cores, spent
  as a swap spends it but with none of the library's code: a forked child at
  the probe's nice 10 spins for the probe's share, then this thread hashes
  (GIL released, as the load's native work) for the serving process's share;
- ``nothing``: an empty step.

A swap's CPU has to come from the callers' cores.  If the library stalled the
callers beyond that (the GIL, locks), ``swaps`` would stall them more than
``same-cpu``.  extra_info: per step, from its start to its end, the longest
call minus the median call (max, median, steps over 2 ms); for ``nothing``,
per 100 ms tick; the CPU per swap; the callers' calls per second.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import model_path, timed_calls, write_versions
from tflite_hotswap import Runtime

SECONDS, EVERY, CALIBRATION_SWAPS = 8.0, 0.1, 8
SWAPS = CALIBRATION_SWAPS + int(SECONDS / EVERY)
MAX_CALLS = int((SECONDS + 1) / 1e-3)  # per caller: room for 1 ms calls, 10 times shorter than these
# The control's probe: per line, a forked child at the probe's nice 10 spins
# for that many CPU seconds (as the probe's throwaway fork loads the model).
PROBE_ALIKE = """
import os, sys, time

def spin(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass

for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        os.nice(10)
        spin(float(line))
        os._exit(0)
    os.waitpid(pid, 0)
    print(flush=True)
"""


def _busy_ticks() -> int:
    """CPU ticks (all cores, all processes) spent busy since boot."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # less idle and iowait


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    directory = tmp_path_factory.mktemp("saturated")
    yield write_versions("dense_20mb", directory, SWAPS)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def swap_cpu(versions):
    """CPU seconds per swap on idle cores: (the probe's share, the serving process's share)."""
    swapped = Runtime(versions[0])
    time.sleep(0.2)
    busy, own = _busy_ticks(), _self_cpu()
    for path in versions[1:CALIBRATION_SWAPS + 1]:
        swapped.swap(path, allow_contract_change=True)
    time.sleep(0.1)  # the last retired version is freed
    total = (_busy_ticks() - busy) / os.sysconf("SC_CLK_TCK") / CALIBRATION_SWAPS
    own = (_self_cpu() - own) / CALIBRATION_SWAPS
    swapped.close()
    return max(total - own, 0.0), own


@pytest.mark.parametrize("background", ["nothing", "swaps", "same-cpu"])
def test_saturated_cores(benchmark, versions, swap_cpu, background):
    benchmark.group = "saturated-cores"
    result = benchmark.pedantic(_run, args=(versions[CALIBRATION_SWAPS:], swap_cpu, background),
                                rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert result["failed_calls"] == 0


def _run(versions: list[str], swap_cpu: tuple[float, float], background: str) -> dict:
    probe_cpu, own_cpu = swap_cpu
    rt = Runtime(model_path("conv_heavy"), workers=2, num_threads=1)
    x = np.ones(rt.info.inputs[0].shape, rt.info.inputs[0].dtype)
    swapped = Runtime(versions[0]) if background == "swaps" else None
    prober = subprocess.Popen([sys.executable, "-c", PROBE_ALIKE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, bufsize=1) if background == "same-cpu" else None
    stop, failed = threading.Event(), [0]
    timings = [(np.zeros(MAX_CALLS, np.int64), np.zeros(MAX_CALLS, np.int64), [0]) for _ in range(2)]

    def caller(ends: np.ndarray, took: np.ndarray, calls: list[int]) -> None:
        calls[0] = timed_calls(rt.run, x, stop, ends, took, failed)

    threads = [threading.Thread(target=caller, args=mine) for mine in timings]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # both callers running
    start, steps = time.perf_counter_ns(), []
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline and len(steps) + 1 < len(versions):
        time.sleep(EVERY)
        step_start = time.perf_counter_ns()
        if swapped is not None:
            swapped.swap(versions[len(steps) + 1], allow_contract_change=True)
        if prober is not None:
            prober.stdin.write(f"{probe_cpu}\n")
            prober.stdout.readline()
            _hash_for(own_cpu)
        steps.append((step_start, time.perf_counter_ns()))
    end = time.perf_counter_ns()
    stop.set()
    for thread in threads:
        thread.join()
    if prober is not None:
        prober.kill()
        prober.wait()
    rt.close()
    if swapped is not None:
        swapped.close()
    assert all(calls[0] < MAX_CALLS for _, _, calls in timings), f"a caller ran out of room ({MAX_CALLS} calls)"
    ends = np.concatenate([mine_ends[:calls[0]] for mine_ends, _, calls in timings])
    took = np.concatenate([mine_took[:calls[0]] for _, mine_took, calls in timings])
    starts, median = ends - took, np.median(took)
    if background == "nothing":
        steps = [(t, t + int(EVERY * 1e9)) for t in range(start, end, int(EVERY * 1e9))]
    stalls = np.array([max(took[(ends >= a) & (starts <= b)].max(initial=0) - median, 0)
                       for a, b in steps]) / 1e6
    return {"failed_calls": failed[0], "calls": len(took), "median_call_ms": round(median / 1e6, 2),
            "steps": len(steps) if background != "nothing" else 0,
            "calls_per_s": round(int((ends >= start).sum()) / ((end - start) / 1e9), 1),
            "probe_cpu_ms": round(probe_cpu * 1e3, 1), "own_cpu_ms": round(own_cpu * 1e3, 1),
            "windows": len(steps), "max_stall_ms": round(float(stalls.max()), 2),
            "median_stall_ms": round(float(np.median(stalls)), 2),
            "windows_over_2ms": int((stalls > 2).sum())}


def _hash_for(seconds: float) -> None:
    """Spend ``seconds`` of this thread's CPU in C with the GIL released (hashing a 1 MB block)."""
    block = bytes(1 << 20)
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        hashlib.sha256(block)
