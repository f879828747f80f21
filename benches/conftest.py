"""Benchmark helpers: models from tests/models and the plain backend interpreter."""

from __future__ import annotations

import os
import pathlib
import threading
import time

import numpy as np

from tflite_hotswap import load_backend

MODELS = pathlib.Path(__file__).resolve().parent.parent / "tests" / "models"


def model_path(name: str) -> str:
    return str(MODELS / f"{name}.tflite")


def raw_interpreter(name: str, num_threads: int | None = None):
    """The backend's own Interpreter, tensors allocated: the idiom being compared against."""
    interpreter = load_backend().interpreter_class(model_path=model_path(name), num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


def write_versions(name: str, directory: pathlib.Path, swaps: int) -> list[str]:
    """``swaps + 1`` files, each a valid version of model ``name`` with distinct bytes (one weight changed).

    The weight is a float32 of the model's largest buffer, near the file's
    middle (that buffer is nearly the whole file): its lowest mantissa byte is
    changed, so every version differs from every other, as an updater's do,
    and nothing a load caches per model spares a swap its work.
    """
    data = pathlib.Path(model_path(name)).read_bytes()
    middle = len(data) // 2 & ~3  # buffers are 16-byte aligned: float32s sit at multiples of 4
    paths = []
    for i in range(swaps + 1):
        version = bytearray(data)
        version[middle + 4 * (i // 255)] ^= i % 255 + 1
        path = directory / f"{name}_{i}.tflite"
        path.write_bytes(version)
        paths.append(str(path))
    os.sync()  # written back now, not while measured
    return paths


def timed_calls(run, x, stop: threading.Event, ends: np.ndarray, took: np.ndarray, failed: list[int]) -> int:
    """``run(x)`` until ``stop`` is set or the arrays are full; returns how many calls were made.

    Each call's end and duration (perf_counter ns) go into ``ends`` and
    ``took``, allocated up front, so the loop allocates nothing of its own:
    growing lists of millions of entries reallocates blocks of tens of MB
    between calls, GIL held, and a swapping thread waits on it.  A call that
    raises counts in ``failed[0]``.
    """
    n = 0
    while not stop.is_set() and n < len(took):
        t0 = time.perf_counter_ns()
        try:
            run(x)
        except Exception:
            failed[0] += 1
        t1 = time.perf_counter_ns()
        ends[n] = t1
        took[n] = t1 - t0
        n += 1
    return n
