"""A model's bytes in a mapping of their own, and a retired interpreter's delegate memory freed GIL-free.

Freeing a retired 20 MB version (its bytes, XNNPACK's packed weights) with the
GIL held stalled the serving loop 1.5-9 ms per swap.  The bytes now live in a
mapping unmapped with the GIL released (``_model_bytes.h``); the packed
weights are freed by ``Interpreter::RemoveAllDelegates``, GIL released, just
before the interpreter is destroyed.
"""

from __future__ import annotations

import copy
import ctypes
import os
import pickle
import sys
import threading
import weakref

import numpy as np
import pytest
from conftest import model_bytes, model_path
from gil_probe import another_thread_runs_during, read_zeros

from tflite_hotswap import InvalidModelError, MisuseError, Runtime, load_backend
from tflite_hotswap._buffers import MappedBytes, mapped_copy, read_mapped
from tflite_hotswap.serving import native
from tflite_hotswap.serving.loader import SHIPPED_MODEL, inspect_model, make_bound, read_model


def test_the_gil_probe_tells_both_apart():
    assert another_thread_runs_during(lambda: lambda: read_zeros(1 << 26))
    assert not another_thread_runs_during(lambda: lambda: sum(range(200_000)))


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_read_model_gives_mapped_bytes_from_every_source():
    raw = model_bytes("tiny_f32")
    for source in (model_path("tiny_f32"), raw, bytearray(raw), memoryview(raw)):
        data = read_model(source)
        assert type(data) is MappedBytes and data == raw and data is not raw
    mapped = read_model(raw)
    assert read_model(mapped) is mapped  # ours already: neither copied nor changed


def test_mapped_bytes_behave_as_bytes():
    raw = b"\x00model bytes\xff" * 1000
    data = mapped_copy(raw)
    assert isinstance(data, bytes) and data == raw and len(data) == len(raw)
    assert hash(data) == hash(raw) and {data: 1}[raw] == 1
    assert data[3:9] == raw[3:9] and type(data[3:9]) is bytes
    assert bytes(data) == raw and type(bytes(data)) is bytes
    assert mapped_copy(b"") == b"" and mapped_copy(memoryview(raw)[::3]) == raw[::3]  # non-contiguous
    assert mapped_copy(np.arange(10, dtype=np.uint8)[::2]) == bytes([0, 2, 4, 6, 8])
    assert ctypes.string_at(id(data) + bytes.__basicsize__ - 1 + len(raw), 1) == b"\0"  # NUL-terminated
    for clone in (pickle.loads(pickle.dumps(data)), copy.copy(data), copy.deepcopy(data)):
        assert clone == raw
    assert type(pickle.loads(pickle.dumps(data))) is bytes


def test_mapped_bytes_are_made_only_by_the_library():
    with pytest.raises(TypeError, match="cannot create"):
        MappedBytes(b"abc")
    with pytest.raises(TypeError):
        bytes.__new__(MappedBytes, b"abc")  # would allocate outside a mapping of its own
    with pytest.raises(TypeError):
        mapped_copy(12)


def test_freeing_mapped_bytes_gives_the_memory_back():
    size = 64 << 20
    source = np.ones(size, np.uint8)
    before = _resident_bytes()
    data = mapped_copy(source)
    assert _resident_bytes() - before > size // 2
    del data
    assert _resident_bytes() - before < size // 4


def test_freeing_mapped_bytes_releases_the_gil():
    source = np.ones(64 << 20, np.uint8)
    assert another_thread_runs_during(lambda: [mapped_copy(source)].clear)


def test_freed_from_another_thread_and_in_a_forked_child():
    data = read_model(model_path("tiny_f32"))
    pid = os.fork()
    if pid == 0:  # the child sees the parent's bytes and frees its own copy
        code = 0 if data == model_bytes("tiny_f32") else 1
        del data
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    box = [data]
    del data
    thread = threading.Thread(target=box.clear)
    thread.start()
    thread.join()
    assert box == []


def test_read_mapped_takes_a_file_that_changed_size(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(b"0123456789")
    with open(path, "rb") as f:
        short = read_mapped(f.fileno(), 100)  # shrank since its size was taken
    assert type(short) is MappedBytes and short == b"0123456789"
    assert ctypes.string_at(id(short) + bytes.__basicsize__ - 1 + len(short), 1) == b"\0"
    with open(path, "rb") as f:
        assert read_mapped(f.fileno(), 4) is None  # grew: the caller reads it otherwise
    with open(path, "wb") as f, pytest.raises(OSError):  # not open for reading: EBADF
        read_mapped(f.fileno(), 4)


def test_read_model_reads_a_file_whose_size_says_nothing():
    with pytest.raises(InvalidModelError, match="identifier"):  # read, all of it, then refused
        read_model("/proc/self/status")  # st_size 0


def test_read_model_from_a_pipe_and_a_missing_file(tmp_path):
    raw = model_bytes("tiny_f32")
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(raw,))
    writer.start()
    assert read_model(str(fifo)) == raw  # no size beforehand: read, then copied
    writer.join()
    with pytest.raises(MisuseError, match="readable"):
        read_model(str(tmp_path / "missing.tflite"))


def test_runtime_serves_and_swaps_mapped_bytes():
    raw = model_bytes("tiny_f32")
    with Runtime(raw) as rt:
        x = np.ones(rt.info.inputs[0].shape, np.float32)
        expected = rt.run(x)
        rt.swap(read_model(raw), version="mapped")
        np.testing.assert_array_equal(rt.run(x), expected)


def _bound_with_stand_in(interpreter_address=None, on_primary_subgraph=False):
    """A bound shipped model whose RemoveAllDelegates is a ctypes callback.

    The callback records its argument and whether the interpreter was still
    alive when it ran; the test holds the interpreter only weakly.
    """
    backend = load_backend()
    interpreter, model = inspect_model(backend, SHIPPED_MODEL.read_bytes(), "", None, None)
    bound = make_bound(backend, model, None, [None], interpreter=interpreter)
    alive = weakref.ref(interpreter)
    seen = []
    stand_in = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)(
        lambda self: seen.append((self, alive() is not None)) or 0)
    address = native.address_of(interpreter) if interpreter_address is None else interpreter_address
    bound.use_native(address, 1)
    bound.free_delegates_with(ctypes.cast(stand_in, ctypes.c_void_p).value, 0, on_primary_subgraph)
    return bound, seen, stand_in, address


def test_release_removes_delegates_first_with_the_interpreter_still_alive():
    """release() hands the interpreter to RemoveAllDelegates, once, before dropping it."""
    bound, seen, _keep, address = _bound_with_stand_in()
    assert bound.frees_delegates
    bound.release()
    bound.release()
    assert seen == [(address, True)]


def _fake_interpreter(tensors_size: int, context_offset: int):
    """Memory laid out like an Interpreter whose context_ lies context_offset bytes into its subgraph."""
    subgraph = (ctypes.c_char * 512)()
    context = ctypes.addressof(subgraph) + context_offset
    ctypes.c_size_t.from_address(context).value = tensors_size
    ctypes.c_void_p.from_address(context + 3 * ctypes.sizeof(ctypes.c_void_p)).value = ctypes.addressof(subgraph)
    interpreter = ctypes.c_void_p(context)
    return interpreter, subgraph


@pytest.mark.parametrize("layout, offset", [("known", 40), ("other tensor count", 40),
                                            ("context outside the subgraph", 304), ("misaligned context", 44)])
def test_subgraph_removal_only_where_the_layout_is_the_known_one(layout, offset):
    """LiteRT's Subgraph::RemoveAllDelegates gets the primary subgraph, found through a checked layout."""
    n_tensors = load_backend().interpreter(SHIPPED_MODEL.read_bytes())._interpreter.NumTensors(0)
    interpreter, subgraph = _fake_interpreter(n_tensors + (layout == "other tensor count"), offset)
    bound, seen, _keep, _ = _bound_with_stand_in(ctypes.addressof(interpreter), on_primary_subgraph=True)
    bound.release()
    assert seen == ([(ctypes.addressof(subgraph), True)] if layout == "known" else [])


def test_the_real_primary_subgraph_is_found(backend_name, native_path):
    if not native_path:
        pytest.skip("the wrapper path makes no native calls")
    backend = load_backend()
    interpreter = backend.interpreter(SHIPPED_MODEL.read_bytes())
    interpreter.allocate_tensors()
    context = ctypes.c_void_p.from_address(native.address_of(interpreter)).value
    subgraph = ctypes.c_void_p.from_address(context + 3 * ctypes.sizeof(ctypes.c_void_p)).value
    bound, seen, _keep, _ = _bound_with_stand_in(native.address_of(interpreter), on_primary_subgraph=True)
    bound.release()
    assert seen == [(subgraph, True)] and 0 < context - subgraph <= 256


def test_each_native_backend_has_a_remove_all_delegates(backend_name, native_path):
    if not native_path:
        pytest.skip("the wrapper path makes no native calls")
    backend = load_backend()
    entry = native.entry_points(backend.interpreter(SHIPPED_MODEL.read_bytes()))
    assert entry is not None and entry.remove_delegates != 0
    # tflite-runtime exports the interpreter's own; LiteRT has only the subgraph's, hidden.
    assert entry.on_primary_subgraph == (backend_name == "litert")


def _warm_bound(name: str, keep: list | None = None):
    """An allocated, warmed-up bound of ``name``; its model bytes also go into ``keep``."""
    backend = load_backend()
    data = read_model(model_path(name))
    if keep is not None:
        keep.append(data)
    interpreter, loaded = inspect_model(backend, data, "", None, None)
    bound = make_bound(backend, loaded, None, [None], interpreter=interpreter)
    bound.warm_up()
    return bound


@pytest.mark.parametrize("model, frees", [("tiny_f32", False), ("dense_20mb", True)])
def test_models_of_4_mib_and_more_free_their_delegates_first(model, frees, native_path):
    if not native_path:
        pytest.skip("the wrapper path makes no native calls")
    bound = _warm_bound(model)
    assert bound.frees_delegates == frees  # REMOVE_DELEGATES_MIN_BYTES
    bound.release()


def test_delegates_are_freed_with_the_gil_released(native_path, monkeypatch):
    """release() removes the delegates off the GIL: on a model whose removal takes milliseconds
    (the undelegated graph is prepared again), so that the waiting thread surely gets in."""
    if not native_path:
        pytest.skip("the wrapper path makes no native calls")
    monkeypatch.setattr(native, "REMOVE_DELEGATES_MIN_BYTES", 0)
    kept = []  # the model bytes: freeing them (GIL released too) must not be what lets the thread in

    def a_release():
        bound = _warm_bound("image_f32", kept)
        assert bound.frees_delegates
        return bound.release

    assert another_thread_runs_during(a_release)
