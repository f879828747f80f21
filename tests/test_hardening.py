"""Regression tests of the hardening issue (#6), runtime side: each names its item.

Each test failed (crashed, hung, or got a wrong result) on commit a545f50,
except where its docstring says what it guards instead.
"""

from __future__ import annotations

import collections
import gc
import hashlib
import pathlib
import subprocess
import sys
import textwrap
import threading
import weakref

import numpy as np
import pytest

from conftest import model_bytes, model_path
from load import Holding
from tflite_hotswap import (IncompatibleModelError, InferenceError, InputError, MisuseError, Normalize,
                            Runtime, RuntimeBusyError)
from tflite_hotswap._buffers import affine_into, gather_into
from tflite_hotswap.errors import ModelUnavailableError, UnsupportedModelError
from tflite_hotswap.serving import runtime as runtime_module

X16 = np.zeros((1, 16), np.float32)


# ------------------------------------------------ 2, 5: unservable tensors


@pytest.mark.parametrize("name, found", [("string_input", "got bytes"), ("rank17", "got rank 17")])
def test_unservable_tensor_is_refused_before_binding(name, found):
    with pytest.raises(UnsupportedModelError, match=found):
        Runtime(model_path(name))
    with Runtime(model_path("version_1")) as rt:
        with pytest.raises(UnsupportedModelError, match=found):
            rt.swap(model_path(name), allow_contract_change=True)
        assert rt.run(X16)["tag"][0, 0] == 1.0


# ------------------------------------------------ 3: one snapshot of the samples


class _Growing(collections.UserList):
    """A capture buffer another thread appends to: each len() sees one more sample."""

    def __len__(self) -> int:
        self.data.append(self.data[-1].copy())
        return len(self.data)


class _Shrinking(collections.UserList):
    def __len__(self) -> int:
        if len(self.data) > 1:
            self.data.pop()
        return len(self.data)


@pytest.mark.parametrize("kind", [_Growing, _Shrinking])
def test_run_batch_takes_one_snapshot(kind):
    samples = kind([np.full(8, i, np.float32) for i in range(4)])
    with Runtime(model_path("dynamic_batch")) as rt:
        for _ in range(20):
            out = rt.run_batch(samples)
            rows = next(iter(out.values())) if isinstance(out, dict) else out
            assert rows.shape[0] >= 1
    dst = np.empty((3, 8), np.float32)
    gather_into(_Shrinking([np.full(8, i, np.float32) for i in range(4)]), dst)


def test_growing_batch_never_writes_past_the_tensor():
    """Each second len() adds 20,000 samples: sized from one, written from the other (a545f50: SIGSEGV)."""
    child = _run_child("""
        import collections
        class Bursty(collections.UserList):
            calls = 0
            def __len__(self):
                Bursty.calls += 1
                if Bursty.calls % 2 == 0:
                    self.data.extend([self.data[0]] * 20000)
                return len(self.data)
        rt = Runtime(model_path("dynamic_batch"))
        for _ in range(3):
            samples = Bursty([np.ones(8, np.float32)] * 2)
            out = rt.run_batch(samples)
            rows = next(iter(out.values())) if isinstance(out, dict) else out
            print(rows.shape[0] in (2, 20002))
        rt.close()
    """)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.split() == ["True"] * 3


def test_shrinking_batch_rows_match_the_snapshot():
    rows = [np.full(8, i, np.float32) for i in range(5)]
    with Runtime(model_path("dynamic_batch")) as rt:
        reference = rt.run_batch(list(rows))
        samples = _Shrinking(list(rows))
        out = rt.run_batch(samples)
    ref = next(iter(reference.values())) if isinstance(reference, dict) else reference
    got = next(iter(out.values())) if isinstance(out, dict) else out
    n = got.shape[0]
    np.testing.assert_array_equal(got, ref[:n])  # the rows of the snapshot, none stale


def test_run_batch_with_a_list_growing_in_another_thread():
    samples = [np.ones(8, np.float32)]
    stop = threading.Event()

    def capture() -> None:
        while not stop.is_set():
            samples.append(np.ones(8, np.float32))
            if len(samples) > 64:
                del samples[1:]

    thread = threading.Thread(target=capture)
    thread.start()
    try:
        with Runtime(model_path("dynamic_batch")) as rt:
            for _ in range(300):
                rt.run_batch(samples)
    finally:
        stop.set()
        thread.join()


# ------------------------------------------------ 4, 9: dtypes the kernels do not know


@pytest.mark.parametrize("dtype", [np.dtype("V0"), np.dtype([]), np.dtype(object)])
def test_zero_itemsize_and_object_arrays_are_refused(dtype):
    with Runtime(model_path("version_1")) as rt:
        with pytest.raises(InputError):
            rt.run(X16, out={"shifted": np.empty((1, 16), dtype), "tag": np.empty((1, 1), np.float32)})
        with pytest.raises(InputError):
            rt.run(np.empty((1, 16), dtype))
    with pytest.raises(InputError):
        affine_into(np.zeros(4, np.float32), np.empty(4, dtype))
    with pytest.raises(InputError):
        affine_into(np.empty(4, dtype), np.zeros(4, np.float32))
    with pytest.raises(InputError):
        gather_into([np.zeros(4, np.float32)], np.empty((1, 4), dtype))


def test_object_array_on_a_complex_model_is_refused():
    """An array the kernels do not know meets a tensor they did not know (a545f50: accepted, zeros)."""
    with Runtime(model_path("complex_io")) as rt:
        with pytest.raises(InputError, match="expected dtype complex64"):
            rt.run(np.empty((1, 4), object))


def test_complex_tensors_are_served_exactly():
    z = (np.arange(4, dtype=np.float32) + 1j * np.arange(4, 8, dtype=np.float32)).astype(np.complex64)[None]
    with Runtime(model_path("complex_io")) as rt:
        out = rt.run(z)
        np.testing.assert_array_equal(out["re"], z.real)
        np.testing.assert_allclose(out["z2"], z * z, rtol=1e-6)
        filled = {"re": np.empty((1, 4), np.float32), "z2": np.empty((1, 4), np.complex64)}
        rt.run(z, out=filled)
        np.testing.assert_array_equal(filled["re"], z.real)
        with pytest.raises(InputError, match="expected dtype complex64, got complex128"):
            rt.run(z.astype(np.complex128))


# ------------------------------------------------ 7: unaligned 0-d input with a Normalize


def test_unaligned_scalar_goes_through_the_affine_kernel():
    """Values are right on x86 either way: the UBSan run (tools/sanitize.sh) and ARM catch the load."""
    raw = np.zeros(9, np.uint8)
    src = np.frombuffer(raw.tobytes(), np.float32, count=1, offset=1).reshape(())
    src_value = np.float32(src)
    dst = np.empty((), np.float32)
    affine_into(src, dst, a=[2.0], b=[1.0])
    assert dst == src_value * 2 + 1
    buf = bytearray(9)
    buf[1:5] = np.float32(3.5).tobytes()
    unaligned = np.frombuffer(bytes(buf), np.float32, count=1, offset=1).reshape(())
    affine_into(unaligned, dst, a=[2.0], b=[1.0])
    assert dst == 8.0


# ------------------------------------------------ 8: failed invoke on a dynamic model


def test_failed_invoke_on_a_dynamic_model_rebinds():
    with Runtime(model_path("fill_dynamic")) as rt:
        assert rt.run(np.array([2, 3], np.int32)).shape == (2, 3)
        with pytest.raises(InferenceError):
            rt.run(np.array([-5, 3], np.int32))
        y = rt.run(np.array([40, 50], np.int32))
        assert y.shape == (40, 50) and (y == 7.0).all()


# ------------------------------------------------ 22: data-dependent outputs, odd inputs


def test_data_dependent_outputs_may_be_empty():
    with Runtime(model_path("where_dynamic")) as rt:
        np.testing.assert_array_equal(rt.run(np.array([[1, -1, 2, -3]], np.float32)), [[0, 0], [0, 2]])
        empty = rt.run(np.zeros((1, 4), np.float32))
        assert empty.shape == (0, 2) and empty.dtype == np.int64
    with Runtime(model_path("fill_dynamic")) as rt:
        assert rt.run(np.array([0, 3], np.int32)).shape == (0, 3)
        out = np.empty((0, 3), np.float32)
        assert rt.run(np.array([0, 3], np.int32), out=out) is out


def test_an_array_for_a_multi_input_model_is_an_input_error():
    with Runtime(model_path("multi_io")) as rt:
        with pytest.raises(InputError, match="expected a mapping"):
            rt.run(np.zeros(2))


def test_a_dimension_beyond_int32_is_an_input_error():
    with Runtime(model_path("dynamic_batch")) as rt:
        huge = np.broadcast_to(np.zeros(8, np.float32), (2**31, 8))
        with pytest.raises(InputError, match="expected shape"):
            rt.run(huge)


# ------------------------------------------------ 10: waiters served in order


def test_callers_beyond_workers_take_turns():
    """Per thread, never pooled: with one worker two callers share it (a545f50: 176 to 1)."""
    counts = [0, 0]
    stop = threading.Event()
    start = threading.Barrier(2)
    x = np.zeros((1, 16), np.float32)

    with Runtime(model_path("version_1"), workers=1, wait_timeout=float("inf")) as rt:
        def caller(i: int) -> None:
            start.wait()
            while not stop.is_set():
                rt.run(x)
                counts[i] += 1
                if counts[i] >= 20000:
                    stop.set()

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    # A FIFO hand-over alternates; the margin is for the OS descheduling a thread.
    assert min(counts) >= 0.25 * max(counts), counts


def test_readers_keep_running_while_a_thread_swaps_continuously():
    """Per reader: progress during 200 back-to-back swaps (guards against starvation, not a rate)."""
    data = model_bytes("tiny_f32")
    with Runtime(data) as rt:
        x = np.zeros(rt.info.inputs[0].shape, np.float32)
        done = threading.Event()
        counts = [0, 0]

        def reader(i: int) -> None:
            while not done.is_set():
                rt.run(x)
                counts[i] += 1

        readers = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
        for t in readers:
            t.start()
        for _ in range(200):
            rt.swap(data)
        done.set()
        for t in readers:
            t.join()
    # Progress for every reader, not a rate: each invoke releases the GIL and a
    # swapping thread may keep it for a switch interval (the GIL convoy), so
    # calls per swap depend on the machine (here 3-17 per reader).
    assert min(counts) >= 200, counts


# ------------------------------------------------ 11: unbounded waits, Ctrl+C


def test_wait_timeout_inf_is_no_limit():
    with Runtime(model_path("version_1"), workers=1, wait_timeout=float("inf")) as rt:
        assert rt.run(X16)["tag"][0, 0] == 1.0
        holding = Holding(x=X16)
        holder = threading.Thread(target=rt.run, args=(holding,))
        holder.start()
        holding.held.wait()
        waited = []
        waiter = threading.Thread(target=lambda: waited.append(rt.run(X16)))
        waiter.start()            # a545f50: RuntimeBusyError at once ("busy for inf s")
        holding.release.set()
        holder.join()
        waiter.join()
        assert waited[0]["tag"][0, 0] == 1.0
    for bad in (float("nan"), 0, -1.0, "1"):
        with pytest.raises(MisuseError, match="wait_timeout"):
            Runtime(model_path("version_1"), wait_timeout=bad)


_CHILD_PRELUDE = """
import sys, threading, numpy as np
sys.path.insert(0, {tests!r})
from conftest import model_path
from tflite_hotswap import Runtime

def calling_in_a_loop(rt, x):
    # A thread calling rt.run(x) until the returned function stops and joins it.
    stop = threading.Event()
    def loop():
        while not stop.is_set():
            rt.run(x)
    thread = threading.Thread(target=loop)
    thread.start()
    return lambda: (stop.set(), thread.join())
"""


def _run_child(body: str, timeout: float = 120) -> subprocess.CompletedProcess:
    tests = pathlib.Path(__file__).parent
    code = _CHILD_PRELUDE.format(tests=str(tests)) + textwrap.dedent(body)
    # cwd: the tests folder, so the installed package is imported, not the source tree.
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=tests)


@pytest.mark.parametrize("wait_timeout", ["float('inf')", "60.0"])
def test_ctrl_c_reaches_a_caller_waiting_for_a_worker(wait_timeout):
    child = _run_child("""
        import os, signal
        # Python's own handler even where a shell without job control started
        # the suite in the background, which leaves SIGINT ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        held, release = threading.Event(), threading.Event()
        class Blocking(dict):
            def __getitem__(self, key):
                held.set(); release.wait(); return super().__getitem__(key)
        x = np.zeros((1, 16), np.float32)
        rt = Runtime(model_path("version_1"), workers=1, wait_timeout=WAIT_TIMEOUT)
        holder = threading.Thread(target=rt.run, args=(Blocking(x=x),)); holder.start()
        held.wait()
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            rt.run(x)
            print("not interrupted")
        except KeyboardInterrupt:
            print("interrupted")
        release.set(); holder.join()
        print("after", rt.run(x)["tag"][0, 0])   # the worker was not lost
        rt.close()
    """.replace("WAIT_TIMEOUT", wait_timeout))
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["interrupted", "after", "1.0"]


# ------------------------------------------------ 12: a call stuck in invoke


def test_a_call_stuck_in_invoke_never_blocks_swap_or_close():
    child = _run_child("""
        import os
        from tflite_hotswap import RuntimeBusyError
        rt = Runtime(model_path("while_positive"), workers=1, wait_timeout=0.5, isolate=False)
        stuck = threading.Thread(target=rt.run, args=(np.ones(1, np.float32),), daemon=True)
        stuck.start()
        try:
            rt.run(np.ones(1, np.float32) * 0)   # the only worker is stuck: a bounded wait
            print("ran")
        except RuntimeBusyError:
            print("busy")
        for i in range(10):                      # the stuck slot is never reused, the rest are
            rt.swap(model_path("while_positive"), version=f"v{i}")
        print("zero", rt.run(np.zeros(1, np.float32))[0])
        rt.close()                               # returns although a call is still running
        print("closed")
        os._exit(0)
    """)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["busy", "zero", "0.0", "closed"]


# ------------------------------------------------ 13: re-entrant close / resource swap


def test_close_or_resource_swap_from_inside_a_call_is_refused():
    class Calls(dict):
        def __init__(self, action):
            super().__init__(x=X16)
            self.action = action

        def __getitem__(self, key):
            self.action()
            return super().__getitem__(key)

    with Runtime(model_path("version_1"), policy="resource") as rt:
        with pytest.raises(MisuseError, match="close\\(\\): called from inside"):
            rt.run(Calls(rt.close))
        with pytest.raises(MisuseError, match="swap\\(\\): called from inside"):
            rt.run(Calls(lambda: rt.swap(model_path("version_2"))))
        assert rt.run(X16)["tag"][0, 0] == 1.0
        with Runtime(model_path("version_2")) as other:   # another runtime may be closed
            rt.run(Calls(other.close))


# ------------------------------------------------ 14: resource policy


def test_resource_policy_double_failure_is_a_defined_state(monkeypatch):
    with Runtime(model_path("version_1"), policy="resource", wait_timeout=30) as rt:
        real = runtime_module.make_bound

        def broken(*args, **kwargs):
            raise InferenceError("injected: no interpreter can be built")

        monkeypatch.setattr(runtime_module, "make_bound", broken)
        with pytest.raises(InferenceError, match="injected"):
            rt.swap(model_path("version_2"))
        with pytest.raises(ModelUnavailableError):
            rt.run(X16)                                    # at once, not after wait_timeout
        with pytest.raises(ModelUnavailableError):
            rt.info
        monkeypatch.setattr(runtime_module, "make_bound", real)
        assert rt.swap(model_path("version_3")).version
        assert rt.run(X16)["tag"][0, 0] == 3.0


def test_resource_policy_frees_the_old_model_before_loading_the_new(monkeypatch):
    with Runtime(model_path("version_1"), policy="resource") as rt:
        held = []
        real = runtime_module.load_proven

        def spy(*args, **kwargs):
            held.append(sum(s is not None for s in rt._slot_list()))
            return real(*args, **kwargs)

        monkeypatch.setattr(runtime_module, "load_proven", spy)
        rt.swap(model_path("version_2"))
        assert held == [0]
        assert rt.run(X16)["tag"][0, 0] == 2.0


# ------------------------------------------------ 18: no allocation on the caller's thread


def test_shapes_seen_while_serving_survive_a_swap(monkeypatch):
    samples = [np.ones(8, np.float32)] * 3
    with Runtime(model_path("dynamic_batch")) as rt:
        rt.run_batch(samples)                    # a new shape, learned while serving
        rt.swap(model_bytes("dynamic_batch"), version="again")
        calls = []
        real = runtime_module.make_bound
        monkeypatch.setattr(runtime_module, "make_bound", lambda *a, **k: calls.append(a) or real(*a, **k))
        rt.run_batch(samples)
        assert calls == []


def test_a_wrong_shape_builds_no_interpreter(monkeypatch):
    with Runtime(model_path("version_1")) as rt:
        built = []
        backend = rt._backend
        real = backend.interpreter_class
        monkeypatch.setattr(type(backend), "interpreter",
                            lambda self, *a, **k: built.append(a) or real(model_content=a[0]))
        with pytest.raises(InputError):
            rt.run(np.zeros((2, 16), np.float32))
        assert built == []


# ------------------------------------------------ 19, 20: no cycle, bounded history


def test_an_unclosed_runtime_is_freed_without_the_cyclic_gc():
    gc.collect()
    gc.disable()
    try:
        rt = Runtime(model_path("version_1"))
        rt.run(X16)
        ref = weakref.ref(rt)
        reclaimers = [t for t in threading.enumerate() if t.name == "tflite-hotswap-reclaimer"]
        del rt
        assert ref() is None
    finally:
        gc.enable()
    for thread in reclaimers:
        thread.join(60)
        assert not thread.is_alive()


def test_statistics_history_is_bounded():
    with Runtime(model_path("version_1")) as rt:
        for i in range(runtime_module.STATS_KEPT + 8):
            rt.swap(model_bytes("version_1"), version=f"n{i}")
            rt.run(X16)
        stats = rt.stats()
        assert len(stats) == runtime_module.STATS_KEPT
        assert rt.info.version in stats and stats[rt.info.version].calls == 1


def test_signature_defs_are_read_once_per_load(monkeypatch):
    with Runtime(model_path("version_1"), isolate=False) as rt:
        cls = rt._backend.interpreter_class
        reads = []
        real = cls._get_full_signature_list
        monkeypatch.setattr(cls, "_get_full_signature_list", lambda self: reads.append(1) or real(self))
        rt.swap(model_path("version_2"))
        assert len(reads) == 1


# ------------------------------------------------ 21: outcomes counted apart


def test_caller_errors_and_model_errors_are_counted_apart():
    with Runtime(model_path("fill_dynamic"), version="f") as rt:
        rt.run(np.array([1, 1], np.int32))
        with pytest.raises(InputError):
            rt.run(np.zeros(3, np.int32))
        with pytest.raises(InferenceError):
            rt.run(np.array([-1, 2], np.int32))
        s = rt.stats()["f"]
    assert (s.calls, s.model_errors, s.caller_errors, s.timeouts) == (3, 1, 1, 0)
    assert s.errors == 2


def test_timeouts_are_counted_as_timeouts():
    with Runtime(model_path("version_1"), workers=1, wait_timeout=0.05, version="t") as rt:
        held, release = threading.Event(), threading.Event()

        class Blocking(dict):
            def __getitem__(self, key):
                held.set()
                release.wait()
                return super().__getitem__(key)

        holder = threading.Thread(target=rt.run, args=(Blocking(x=X16),))
        holder.start()
        held.wait()
        with pytest.raises(RuntimeBusyError):
            rt.run(X16)
        release.set()
        holder.join()
        s = rt.stats()["t"]
    assert (s.calls, s.timeouts, s.model_errors, s.caller_errors) == (2, 1, 0, 0)


def test_normalize_still_applies_after_the_rework():
    with Runtime(model_path("version_1"), preprocess=Normalize(scale=2.0)) as rt:
        assert rt.run(np.ones((1, 16), np.uint8))["shifted"][0, 0] == 3.0


# ------------------------------------------------ 13: signal handler during swap()


def test_close_from_a_signal_handler_during_swap_is_refused():
    """A handler calling close() while its thread is inside swap() (review: hung for good)."""
    child = _run_child("""
        import os, signal
        from tflite_hotswap import MisuseError
        from tflite_hotswap.serving import runtime as runtime_module
        rt = Runtime(model_path("version_1"))
        outcome = []
        def handler(signum, frame):
            try:
                rt.close()
                outcome.append("closed")
            except MisuseError as e:
                outcome.append("refused")
        signal.signal(signal.SIGUSR1, handler)
        real = runtime_module.read_model
        def read_and_signal(model):
            os.kill(os.getpid(), signal.SIGUSR1)   # delivered inside swap(), lock held
            return real(model)
        runtime_module.read_model = read_and_signal
        rt.swap(model_path("version_2"))
        runtime_module.read_model = real
        print(outcome[0], rt.run(np.zeros((1, 16), np.float32))["tag"][0, 0])
        rt.close()
    """)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.split() == ["refused", "2.0"]


# ------------------------------------------------ 6: fork (runtime side)


def test_a_forked_child_gets_a_working_runtime():
    """Forked while another thread held the only worker: the child calls, swaps, closes."""
    child = _run_child("""
        import os
        from load import Holding
        x = np.zeros((1, 16), np.float32)
        rt = Runtime(model_path("version_1"), workers=1, wait_timeout=5)
        holding = Holding(x=x)
        holder = threading.Thread(target=rt.run, args=(holding,)); holder.start()
        holding.held.wait()
        pid = os.fork()
        if pid == 0:
            try:
                tags = [rt.run(x)["tag"][0, 0]]                     # the worker is free here
                for i in range(12):                                  # more swaps than slots
                    rt.swap(model_path("version_2" if i % 2 else "version_3"), version=f"c{i}")
                tags.append(rt.run(x)["tag"][0, 0])
                rt.close()
                print("child", *tags, flush=True)
                os._exit(0)
            except BaseException as e:
                print("child failed", type(e).__name__, e, flush=True)
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        holding.release.set(); holder.join()
        print("parent", os.waitstatus_to_exitcode(status), rt.run(x)["tag"][0, 0])
        rt.close()
    """)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.split() == ["child", "1.0", "2.0", "parent", "0", "1.0"], child.stdout


# ------------------------------------------------ 14: contract after a failed resource swap


def test_contract_is_checked_after_a_failed_resource_swap(monkeypatch):
    with Runtime(model_path("version_1"), policy="resource", wait_timeout=30) as rt:
        real = runtime_module.make_bound

        def broken(*args, **kwargs):
            raise InferenceError("injected")

        monkeypatch.setattr(runtime_module, "make_bound", broken)
        with pytest.raises(InferenceError):
            rt.swap(model_path("version_2"))
        monkeypatch.setattr(runtime_module, "make_bound", real)
        assert "failed" in repr(rt)
        with pytest.raises(IncompatibleModelError):
            rt.swap(model_path("multi_io"))
        rt.swap(model_path("version_2"))
        assert rt.run(X16)["tag"][0, 0] == 2.0


# ------------------------------------------------ issue 9: the native path


def test_native_path_where_the_backend_exports_it(native_path):
    with Runtime(model_path("version_1")) as rt:
        expected = "native" if native_path else "python"
        assert rt.info.path == expected
        assert rt.run(X16)["tag"][0, 0] == 1.0


def test_native_path_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("TFLITE_HOTSWAP_NATIVE", "0")
    with Runtime(model_path("version_1")) as rt:
        assert rt.info.path == "python"
        assert rt.run(X16)["tag"][0, 0] == 1.0


@pytest.mark.parametrize("name", ["multi_io", "dynamic_batch", "quant_int8", "image_small_f32"])
def test_native_and_python_paths_give_identical_outputs(name, monkeypatch):
    rng = np.random.default_rng(7)
    with Runtime(model_path(name)) as native_rt:
        inputs = {t.name: (rng.standard_normal([d if d > 0 else 2 for d in t.shape]) * 3).astype(t.dtype)
                  for t in native_rt.info.inputs}
        arg = inputs if len(inputs) > 1 else next(iter(inputs.values()))
        a = native_rt.run(arg)
    monkeypatch.setenv("TFLITE_HOTSWAP_NATIVE", "0")
    with Runtime(model_path(name)) as python_rt:
        b = python_rt.run(arg)
    for key in (a if isinstance(a, dict) else {"": a}):
        np.testing.assert_array_equal(a[key] if key else a, b[key] if key else b)


@pytest.mark.parametrize("name, moves", [("dynamic_batch", False), ("tiny_f32", False),
                                         # several operators in one XNNPACK partition (review finding:
                                         # its inner tensors have no memory either, yet never move)
                                         ("version_1", False), ("conv_heavy", False),
                                         ("image_small_f32", False), ("image_small_uint8", False),
                                         ("where_dynamic", True), ("fill_dynamic", True),
                                         ("while_positive", True)])
def test_only_models_whose_memory_moves_are_re_read_after_invoke(name, moves):
    """A -1 batch alone moves nothing once allocated: the static fast path (was: re-read every call)."""
    from tflite_hotswap.serving.backend import load_backend
    from tflite_hotswap.serving.loader import inspect_model, make_bound
    backend = load_backend()
    interpreter, model = inspect_model(backend, model_bytes(name), "", None, None)
    shapes = [(3, 8)] if name == "dynamic_batch" else None
    bound = make_bound(backend, model, None, [None] * len(model.contract.inputs),
                       key=None if shapes is None else tuple(shapes), interpreter=interpreter)
    assert bound.moves_at_invoke is moves  # the loader's judgement
    bound.warm_up()
    assert bound.moves_at_invoke is moves  # and the warm-up's check of it


def test_a_batch_model_on_the_static_path_answers_every_batch_size_like_the_backend():
    from tflite_hotswap import load_backend
    rng = np.random.default_rng(3)
    raw = load_backend().interpreter_class(model_path=model_path("dynamic_batch"))
    index = raw.get_input_details()[0]["index"]
    with Runtime(model_path("dynamic_batch")) as rt:
        for n in (1, 5, 1, 2, 5, 64, 1):
            x = rng.standard_normal((n, 8)).astype(np.float32)
            raw.resize_tensor_input(index, [n, 8])
            raw.allocate_tensors()
            raw.set_tensor(index, x)
            raw.invoke()
            expected = raw.get_tensor(raw.get_output_details()[0]["index"])
            np.testing.assert_array_equal(rt.run(x), expected)
            out = np.empty_like(expected)
            rt.run(x, out=out)
            np.testing.assert_array_equal(out, expected)


def _aligned(shape, dtype, misalign=0):
    """A C-contiguous array at a 64-byte boundary (plus ``misalign`` bytes)."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(n + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + misalign
    return raw[start:start + n].view(dtype).reshape(shape)


def _runtimes(monkeypatch, name):
    """(a runtime lending every fitting input, one always copying) for ``name``."""
    monkeypatch.setenv("TFLITE_HOTSWAP_ZERO_COPY_MIN_BYTES", "0")
    copying = Runtime(model_path(name))
    monkeypatch.setenv("TFLITE_HOTSWAP_ZERO_COPY_MIN_BYTES", "1")
    return Runtime(model_path(name)), copying


def test_zero_copy_lends_where_the_backend_can(native_path, monkeypatch):
    from tflite_hotswap.serving.backend import load_backend
    from tflite_hotswap.serving.loader import inspect_model, make_bound
    monkeypatch.setenv("TFLITE_HOTSWAP_ZERO_COPY_MIN_BYTES", "1")
    backend = load_backend()
    for name, lends in (("tiny_f32", native_path), ("where_dynamic", False)):
        interpreter, model = inspect_model(backend, model_bytes(name), "", None, None)
        bound = make_bound(backend, model, None, [None], interpreter=interpreter)
        bound.warm_up()
        assert bound.lends is lends, name


def test_zero_copy_gives_the_copy_paths_outputs_and_takes_its_memory_back(monkeypatch):
    """Lent, copied, lent again: a tensor left on a lent array would answer for the wrong input."""
    rng = np.random.default_rng(11)
    lending, copying = _runtimes(monkeypatch, "tiny_f32")
    with lending, copying:
        for i in range(300):
            x = _aligned((1, 4), np.float32, misalign=4 * (i % 3 == 2))  # every third one cannot be lent
            x[...] = rng.standard_normal((1, 4))
            before = x.copy()
            np.testing.assert_array_equal(lending.run(x), copying.run(x))
            np.testing.assert_array_equal(x, before)  # the caller's array is only read
            del x  # freed right away: a tensor still pointing at it would read freed memory (ASan)


def test_zero_copy_takes_memory_back_when_a_later_input_is_refused(monkeypatch):
    lending, copying = _runtimes(monkeypatch, "multi_io")
    with lending, copying:
        specs = list(lending.info.inputs)
        first, second = (spec.name for spec in specs)
        for scale in (1.0, 2.0, 3.0):
            arrays = {spec.name: _aligned(spec.shape, spec.dtype) for spec in specs}
            for array in arrays.values():
                array[...] = scale
            with pytest.raises(InputError):  # the first input lent, then the second refused
                lending.run({first: arrays[first], second: np.zeros(specs[1].shape, np.float64)})
            arrays[first][...] = -99.0  # what a tensor left on the lent array would read
            copied = {spec.name: _aligned(spec.shape, spec.dtype, misalign=4) for spec in specs}  # copied in
            for array in copied.values():
                array[...] = scale
            got, expected = lending.run(copied), copying.run(copied)
            for key in expected:
                np.testing.assert_array_equal(got[key], expected[key])


def test_an_output_that_is_the_input_is_never_lent(monkeypatch):
    """Review finding: a lent input left the "echo" output's held view on the arena: stale zeros."""
    lending, copying = _runtimes(monkeypatch, "hostile_output_is_input")
    with lending, copying:
        assert {t.name for t in lending.info.outputs} == {"y", "echo"}
        for value in (1.0, 2.0, 3.0):
            x = _aligned((1, 4), np.float32)
            x[...] = value
            got, expected = lending.run(x), copying.run(x)
            np.testing.assert_array_equal(got["echo"], x)
            np.testing.assert_array_equal(got["y"], expected["y"])


def test_a_fork_while_an_input_is_lent_leaves_the_child_copying_correctly(native_path):
    """Review finding: the child kept the parent thread's lent tensor; its copied inputs were ignored."""
    if not native_path:
        pytest.skip("inputs are lent only on the native path (TFLITE_HOTSWAP_NATIVE=0 here)")
    child = _run_child("""
        import os
        os.environ["TFLITE_HOTSWAP_ZERO_COPY_MIN_BYTES"] = "1"
        rt = Runtime(model_path("dense_512k"), num_threads=1)
        shape = rt.info.inputs[0].shape
        def aligned(misalign):
            n = int(np.prod(shape)) * 4
            raw = np.empty(n + 128, np.uint8)
            start = (-raw.ctypes.data) % 64 + misalign
            return raw[start:start + n].view(np.float32).reshape(shape)
        lent, copied = aligned(0), aligned(4)
        lent[...] = 1.0
        copied[...] = np.linspace(-1, 1, lent.size).reshape(shape)
        expected = rt.run(np.array(copied))
        stop = calling_in_a_loop(rt, lent)
        wrong = 0
        for _ in range(20):
            threading.Event().wait(0.003)
            pid = os.fork()
            if pid == 0:
                os._exit(0 if np.array_equal(rt.run(copied), expected) else 3)
            _, status = os.waitpid(pid, 0)
            wrong += os.waitstatus_to_exitcode(status) != 0
        stop()
        print("wrong", wrong, rt.info.path)
        rt.close()
    """)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.split()[:2] == ["wrong", "0"], child.stdout


def test_a_child_forked_while_a_call_runs_gets_answers_not_a_hang():
    """Found this session: LiteRT's invoke in the child of a fork taken mid-call hung for good (8 of 10).

    The worker the call held is rebuilt in the child; SIGALRM ends a hung child.
    """
    child = _run_child("""
        import os, signal
        rt = Runtime(model_path("dense_512k"), num_threads=1)
        x = np.ones((1, rt.info.inputs[0].shape[1]), np.float32)
        expected = rt.run(x)
        stop = calling_in_a_loop(rt, x)
        outcomes = []
        for _ in range(10):
            threading.Event().wait(0.003)
            pid = os.fork()
            if pid == 0:
                signal.alarm(20)
                os._exit(0 if np.array_equal(rt.run(x), expected) else 3)
            _, status = os.waitpid(pid, 0)
            outcomes.append(os.waitstatus_to_exitcode(status))
        stop()
        print(*outcomes)
        rt.close()
    """, timeout=400)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.split() == ["0"] * 10, child.stdout  # -14: a child hung until SIGALRM


def test_an_unreadable_dynamic_output_is_an_inference_error():
    """Found by tools/fuzz_swap.py: two int32 fields of dynamic_batch zeroed; run() raised ValueError."""
    data = bytearray(model_bytes("dynamic_batch"))
    for offset in (772, 840):
        data[offset:offset + 4] = bytes(4)
    from tflite_hotswap import HotswapError
    try:
        rt = Runtime(bytes(data))
    except HotswapError:
        return  # refused at load: typed, fine
    with rt:
        try:
            rt.run(np.ones((2, 8), np.float32))
        except HotswapError:
            pass


def test_a_call_stuck_in_invoke_is_cancelled_once_its_version_is_retired(native_path):
    """Native path: Interpreter::SetCancellationFunction ends it; the wrapper has none (bounded waits only)."""
    child = _run_child("""
        from tflite_hotswap import InferenceError
        rt = Runtime(model_path("while_positive"), workers=1, wait_timeout=0.5, isolate=False)
        outcome = []
        def stuck():
            try:
                rt.run(np.ones(1, np.float32))
                outcome.append("returned")
            except InferenceError as e:
                outcome.append("cancelled")
        thread = threading.Thread(target=stuck, daemon=True)
        thread.start()
        rt.swap(model_path("while_positive"), version="next")   # retires the stuck version
        thread.join(30 if rt.info.path == "native" else 2)      # cancelled after wait_timeout
        print(outcome[0] if outcome else "still-stuck", rt.info.path)
        rt.close()
        print("closed")
        import os; os._exit(0)
    """)
    assert child.returncode == 0, child.stderr[-2000:]
    expected = ["cancelled", "native", "closed"] if native_path \
        else ["still-stuck", "python", "closed"]
    assert child.stdout.split() == expected, child.stdout + child.stderr[-2000:]


def test_resource_swap_cancels_a_stuck_call_where_the_backend_can(native_path):
    """Review finding: with policy="resource" one stuck call made every later swap fail."""
    child = _run_child("""
        from tflite_hotswap import RuntimeBusyError
        rt = Runtime(model_path("while_positive"), workers=2, wait_timeout=0.5, isolate=False,
                     policy="resource")
        threading.Thread(target=rt.run, args=(np.ones(1, np.float32),), daemon=True).start()
        import time; time.sleep(0.2)   # let the call get stuck (not a timing assertion)
        try:
            rt.swap(model_path("while_positive"), version="next")
            print("swapped", rt.info.version)
        except RuntimeBusyError:
            print("busy", rt.info.version)
        print("zero", rt.run(np.zeros(1, np.float32))[0])
        import os; os._exit(0)
    """)
    assert child.returncode == 0, child.stderr[-2000:]
    initial = hashlib.sha256(model_bytes("while_positive")).hexdigest()[:12]
    expected = ["swapped", "next"] if native_path else ["busy", initial]
    assert child.stdout.split()[:2] == expected and child.stdout.split()[2:] == ["zero", "0.0"], child.stdout


def test_an_empty_dynamic_output_of_absurd_rank_is_an_inference_error():
    """Found by tools/fuzz_swap.py on LiteRT: fill_dynamic with a field at byte 892 set to 65536."""
    from tflite_hotswap import HotswapError
    data = bytearray(model_bytes("fill_dynamic"))
    data[892:896] = (65536).to_bytes(4, "little")
    try:
        rt = Runtime(bytes(data))
    except HotswapError:
        return  # refused at load: typed, fine
    with rt:
        n = rt.info.inputs[0].shape[0]          # 65536 dimensions for FILL's output, all 0
        # (All 1 instead segfaults tflite-runtime inside its own invoke: an
        # input-dependent backend crash that no probe can foresee.)
        try:
            rt.run(np.zeros(n, np.int32))
        except HotswapError:
            pass
