"""The native path's symbol lookup and self-test (tflite_hotswap.serving.symbols, .native).

tflite-runtime exports its interpreter's methods; LiteRT has them hidden in
libpywrap_litert_common.so's symbol table, used only after a self-test in a
throwaway process passed.
"""

import io
import os
import shutil
import sys

import pytest

from conftest import model_path
from tflite_hotswap import Runtime, load_backend
from tflite_hotswap.serving import native, symbols

NAMES = (native._INVOKE, native._ALLOCATE)


@pytest.fixture
def interpreter():
    it = load_backend().interpreter(open(model_path("tiny_f32"), "rb").read())
    yield it
    del it


def test_the_backend_functions_are_found_where_the_backend_keeps_them(backend_name, interpreter, native_path):
    if not native_path:
        pytest.skip("TFLITE_HOTSWAP_NATIVE=0: the lookup is not asked")
    module = native.backend_library(interpreter)
    found = symbols.find_functions(module, NAMES, required=2)
    assert found is not None and all(found.addresses)
    if backend_name == "tflite-runtime":
        assert (found.hidden, found.library) == (False, module)  # exported from the module itself
    else:
        # Hidden, in the library the module needs from its own directory.
        assert found.hidden and os.path.basename(found.library) == "libpywrap_litert_common.so"
        assert os.path.dirname(found.library) == os.path.dirname(module)
    for address in found.addresses:
        assert os.path.realpath(native._slots.owner_of(address)) == os.path.realpath(found.library)


def test_a_copy_of_a_library_is_not_the_mapped_file(interpreter, tmp_path, native_path):
    """A library replaced on disk (an upgrade under a running process) must not lend its addresses."""
    if not native_path:
        pytest.skip("TFLITE_HOTSWAP_NATIVE=0: the lookup is not asked")
    module = native.backend_library(interpreter)
    found = symbols.find_functions(module, NAMES, required=2)
    copy = tmp_path / os.path.basename(found.library)
    shutil.copy(found.library, copy)
    assert not symbols._is_mapped_file(str(copy))
    assert symbols._hidden_functions(str(copy), NAMES) is None


@pytest.mark.parametrize("damage", ["empty", "not-elf", "truncated-header", "sections-past-end"])
def test_a_damaged_library_file_raises_value_error_not_a_crash(interpreter, damage):
    data = open(sys.modules[type(interpreter._interpreter).__module__].__file__, "rb").read()
    data = {"empty": b"", "not-elf": b"MZ" + data[2:], "truncated-header": data[:40],
            "sections-past-end": data[:4096] + b"\0" * 64}[damage]
    with pytest.raises((ValueError, symbols.struct.error)):
        elf = symbols._Elf(io.BytesIO(data))
        for section in elf.sections(symbols._SHT_SYMTAB) + elf.sections(symbols._SHT_DYNAMIC):
            elf.read(section)
        raise ValueError("no section to read")


CRASHING_BACKEND = """
import os, signal
class Interpreter:
    def __init__(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGSEGV)
"""


def test_a_self_test_that_crashes_keeps_the_process_on_the_wrapper(tmp_path, monkeypatch):
    (tmp_path / "crashing_backend.py").write_text(CRASHING_BACKEND)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    assert native._self_test("crashing_backend", "lib-under-test") is False
    assert native._self_test("no_such_backend_module", "lib-under-test") is False


def test_hidden_functions_that_fail_the_self_test_are_not_used(backend_name, monkeypatch, native_path):
    if backend_name != "litert" or not native_path:
        pytest.skip("only LiteRT's functions are hidden (and TFLITE_HOTSWAP_NATIVE=0 asks for none)")
    monkeypatch.setattr(native, "_resolved", {})
    monkeypatch.setattr(native, "_verdicts", {})
    monkeypatch.setattr(native, "_self_test", lambda module, library: False)
    with Runtime(model_path("version_1"), isolate=False) as rt:
        assert rt.info.path == "python"


def test_the_self_test_passes_for_this_backend(backend_name, interpreter, native_path):
    """Run for real in a child process: every native call gives the wrapper's results."""
    if not native_path:
        pytest.skip("TFLITE_HOTSWAP_NATIVE=0")
    assert native._self_test(type(interpreter).__module__, "lib-under-test") is True


def test_the_self_test_runs_once_per_library_per_process(backend_name, monkeypatch, native_path):
    if backend_name != "litert" or not native_path:
        pytest.skip("only LiteRT's functions are hidden (and TFLITE_HOTSWAP_NATIVE=0 asks for none)")
    ran = []
    monkeypatch.setattr(native, "_resolved", {})
    monkeypatch.setattr(native, "_verdicts", {})
    monkeypatch.setattr(native, "_self_test", lambda module, library: ran.append(library) or True)
    for _ in range(3):
        with Runtime(model_path("version_1"), isolate=False) as rt:
            assert rt.info.path == "native"
    assert len(ran) == 1 and ran[0].endswith("libpywrap_litert_common.so")

