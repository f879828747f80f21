"""A hypothesis state machine of Runtime against a plain reference model.

The bundled demo models v1, v2, v3 take x (1, 64) float32 and answer
``shifted = x + version`` and ``tag = version``.  The machine runs, batches,
swaps, reads stats and closes, from the test thread and from several caller
threads at once while the test thread swaps.  The reference says, per call:

* the result is wholly one version: ``shifted == x + tag`` everywhere (float32);
* that version was the one serving when the call started, or one published
  while it ran;
* ``stats()`` counts, per version, exactly the calls that version answered,
  with no errors;
* every caller thread gets all of its calls through while its peers call
  too, none giving up with RuntimeBusyError (counted per thread, never pooled);
* after ``close()`` every call raises RuntimeClosedError.

No wall-clock assertion: threads are coordinated with events and barriers.
"""

from __future__ import annotations

import collections
import os
import pathlib
import threading

import numpy as np
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import tflite_hotswap
from tflite_hotswap import Runtime, RuntimeClosedError

MODELS = pathlib.Path(tflite_hotswap.__file__).parent / "models"
VERSIONS = {v: (MODELS / f"demo_v{v}.tflite").read_bytes() for v in (1, 2, 3)}
EXAMPLES = int(os.environ.get("TFLITE_HOTSWAP_STATEFUL_EXAMPLES", "12"))


def whole_version(result: dict, x: np.ndarray) -> int:
    """The single version a result came from; fails if it mixes versions."""
    tag = result["tag"]
    assert tag.shape == (x.shape[0], 1) and np.all(tag == tag.flat[0]), f"mixed tags {tag.ravel()}"
    version = float(tag.flat[0])
    assert version in (1.0, 2.0, 3.0), version
    assert np.array_equal(result["shifted"], x + np.float32(version)), \
        f"shifted is not x + {version} everywhere: the result mixes versions"
    return int(version)


class Reference:
    """What the runtime must have done: the publish order and calls per version."""

    def __init__(self, first: int) -> None:
        self.lock = threading.Lock()
        self.announced = [first]   # versions in the order swap() was called
        self.committed = 1         # how many of them swap() had published and returned
        self.calls: collections.Counter = collections.Counter()

    def window(self) -> int:
        with self.lock:
            return self.committed

    def allowed(self, start: int) -> list:
        """Serving when the call started (the last committed) or announced since."""
        with self.lock:
            return self.announced[start - 1:]

    def count(self, version: int) -> None:
        with self.lock:
            self.calls[version] += 1


class RuntimeMachine(RuleBasedStateMachine):
    rt: Runtime

    def __init__(self) -> None:
        super().__init__()
        self.ref = Reference(1)
        self.closed = False
        self.opened = False
        self.rng = np.random.default_rng(0)

    @initialize(workers=st.integers(1, 2))
    def open(self, workers: int) -> None:
        """Fewer workers than caller threads: callers contend and must be served in turn."""
        self.rt = Runtime(VERSIONS[1], version="1", workers=workers)
        self.opened = True

    # ---------------------------------------------------------- one call

    def _call(self, batch: bool, ref: Reference, rng: np.random.Generator) -> int:
        x = rng.standard_normal((1, 64)).astype(np.float32)
        start = ref.window()
        result = self.rt.run_batch([x[0]]) if batch else self.rt.run(x)
        version = whole_version(result, x)
        allowed = ref.allowed(start)
        assert version in allowed, f"version {version} served; expected one of {allowed}"
        ref.count(version)
        return version

    def _swap(self, version: int) -> None:
        with self.ref.lock:
            self.ref.announced.append(version)
        info = self.rt.swap(VERSIONS[version], version=str(version))
        assert info.version == str(version)
        with self.ref.lock:
            self.ref.committed = len(self.ref.announced)

    # ------------------------------------------------------------- rules

    @precondition(lambda self: not self.closed)
    @rule(batch=st.booleans())
    def call(self, batch: bool) -> None:
        assert self._call(batch, self.ref, self.rng) == self.ref.announced[-1]

    @precondition(lambda self: not self.closed)
    @rule(version=st.sampled_from([1, 2, 3]))
    def swap(self, version: int) -> None:
        self._swap(version)
        x = np.zeros((1, 64), np.float32)
        assert whole_version(self.rt.run(x), x) == version  # the new version serves at once
        self.ref.count(version)

    @precondition(lambda self: not self.closed)
    @rule(threads=st.integers(2, 4), calls=st.integers(5, 40), swaps=st.lists(
        st.sampled_from([1, 2, 3]), min_size=1, max_size=6), batch=st.booleans())
    def concurrent_calls_during_swaps(self, threads: int, calls: int, swaps: list, batch: bool) -> None:
        """Caller threads run while this thread swaps; each must progress, results whole."""
        started = threading.Barrier(threads + 1)
        done = [threading.Event() for _ in range(threads)]
        made = [0] * threads
        failures: list = []

        def caller(i: int) -> None:
            rng = np.random.default_rng(i)
            try:
                started.wait()
                for _ in range(calls):
                    self._call(batch, self.ref, rng)
                    made[i] += 1
            except BaseException as e:  # re-raised by the test thread
                failures.append(e)
            finally:
                done[i].set()

        workers = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
        for t in workers:
            t.start()
        started.wait()
        for version in swaps:
            self._swap(version)
            if all(d.is_set() for d in done):
                break
        for t in workers:
            t.join()
        # Per thread: every caller got all of its calls through, none timed
        # out (RuntimeBusyError) behind peers that kept re-claiming workers.
        assert not failures, f"calls made per thread {made} of {calls}: {failures[:3]}"
        assert made == [calls] * threads, made

    @precondition(lambda self: not self.closed)
    @rule()
    def check_stats(self) -> None:
        stats = self.rt.stats()
        with self.ref.lock:
            expected = {str(v): n for v, n in self.ref.calls.items()}
        got = {v: s.calls for v, s in stats.items() if s.calls}
        assert got == expected, (got, expected)
        assert all(s.errors == 0 for s in stats.values())

    @precondition(lambda self: not self.closed)
    @rule()
    def close(self) -> None:
        self.check_stats()
        self.rt.close()
        self.closed = True

    @precondition(lambda self: self.closed)
    @rule(what=st.sampled_from(["run", "run_batch", "swap", "info", "close"]))
    def after_close(self, what: str) -> None:
        x = np.zeros((1, 64), np.float32)
        if what == "close":
            self.rt.close()  # closing twice is harmless
            return
        calls = {"run": lambda: self.rt.run(x), "run_batch": lambda: self.rt.run_batch([x[0]]),
                 "swap": lambda: self.rt.swap(VERSIONS[2]), "info": lambda: self.rt.info}
        try:
            calls[what]()
        except RuntimeClosedError:
            return
        raise AssertionError(f"{what} after close() did not raise RuntimeClosedError")

    @invariant()
    def serving_version_is_the_last_swapped(self) -> None:
        if self.opened and not self.closed:
            assert self.rt.info.version == str(self.ref.announced[-1])

    def teardown(self) -> None:
        if self.opened:
            self.rt.close()


RuntimeMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=12, deadline=None, database=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
test_runtime_state_machine = RuntimeMachine.TestCase
