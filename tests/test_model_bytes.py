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
import threading

import numpy as np
import pytest
from conftest import model_bytes, model_path

from tflite_hotswap import MisuseError, Runtime, load_backend
from tflite_hotswap._buffers import MappedBytes, mapped_copy, read_mapped
from tflite_hotswap.serving import native
from tflite_hotswap.serving.loader import SHIPPED_MODEL, inspect_model, make_bound, read_model


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
    with open(path, "rb") as f, pytest.raises(OSError, match="grew"):
        read_mapped(f.fileno(), 4)
    with open(path, "wb") as f, pytest.raises(OSError):  # not open for reading: EBADF
        read_mapped(f.fileno(), 4)


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


def test_release_removes_delegates_first_with_the_interpreter_still_alive(native_path):
    """release() hands the interpreter to RemoveAllDelegates, once, before dropping it."""
    if not native_path:
        pytest.skip("the wrapper path makes no native calls")
    backend = load_backend()
    interpreter, model = inspect_model(backend, SHIPPED_MODEL.read_bytes(), "", None, None)
    bound = make_bound(backend, model, None, [None], interpreter=interpreter)
    address = native.address_of(interpreter)
    seen = []
    stand_in = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)(lambda self: seen.append(self) or 0)
    entry = native.entry_points(interpreter)
    assert entry is not None
    bound.use_native(address, entry.invoke, 0, 0, 0, ctypes.cast(stand_in, ctypes.c_void_p).value)
    del interpreter
    bound.release()
    bound.release()
    assert seen == [address]


def test_tflite_runtime_exports_remove_all_delegates(backend_name, native_path):
    if backend_name != "tflite-runtime" or not native_path:
        pytest.skip("needs tflite-runtime on the native path: LiteRT has no RemoveAllDelegates "
                    "symbol, and the wrapper path calls none")
    backend = load_backend()
    entry = native.entry_points(backend.interpreter(SHIPPED_MODEL.read_bytes()))
    assert entry is not None and entry.remove_delegates != 0
