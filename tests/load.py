"""Several threads calling a runtime for a while: shared by tests and benchmarks."""

from __future__ import annotations

import threading
import time


def run_callers(rt, x, seconds: float, callers: int = 2, catch: tuple = ()) -> tuple[list, list, float]:
    """Call ``rt.run(x)`` from ``callers`` threads for ``seconds``.

    Returns (results, caught errors, elapsed seconds); errors of the types in
    ``catch`` are collected, any other error propagates from its thread's join.
    """
    results: list = []
    errors: list = []
    failures: list = []
    stop = threading.Event()

    def caller() -> None:
        try:
            while not stop.is_set():
                try:
                    results.append(rt.run(x))
                except catch as e:
                    errors.append(e)
        except BaseException as e:  # re-raised below, in the calling thread
            failures.append(e)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return results, errors, time.perf_counter() - started


class Holding(dict):
    """Inputs whose lookup blocks: the call holds its worker until ``release`` is set.

    Tests wait on these events, never on wall time (under ARM emulation one
    call can take seconds).
    """

    def __init__(self, **inputs):
        super().__init__(**inputs)
        self.held, self.release = threading.Event(), threading.Event()

    def __getitem__(self, key):
        self.held.set()
        self.release.wait()
        return super().__getitem__(key)
