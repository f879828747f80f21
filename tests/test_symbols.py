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


def test_the_symbol_table_agrees_with_dlsym_where_both_exist(backend_name, interpreter, native_path):
    """tflite-runtime's module has both: the .symtab reading (load bias + value) must give dlsym's addresses."""
    if backend_name != "tflite-runtime" or not native_path:
        pytest.skip("only tflite-runtime exports its functions as well")
    module = native.backend_library(interpreter)
    from_table = symbols._hidden_functions(module, NAMES)
    if from_table is None:
        pytest.skip("this tflite-runtime build has no .symtab")
    assert from_table == tuple(native._slots.resolve_symbol(module, name) for name in NAMES)


def test_a_table_that_does_not_describe_the_loaded_code_gives_nothing(interpreter, tmp_path, native_path):
    """A backend upgraded on disk under a running process must not lend the new file's addresses."""
    if not native_path:
        pytest.skip("TFLITE_HOTSWAP_NATIVE=0: the lookup is not asked")
    found = symbols.find_functions(native.backend_library(interpreter), NAMES, required=2)
    if symbols._hidden_functions(found.library, NAMES) is None:
        pytest.skip("this library has no .symtab")
    copy = tmp_path / os.path.basename(found.library)
    shutil.copy(found.library, copy)
    assert symbols._hidden_functions(found.library, NAMES, file=str(copy)) == \
        symbols._hidden_functions(found.library, NAMES)  # an identical file: the same answer
    # Change Invoke's first bytes in the copy, as a new release would.
    bias = native._slots.load_bias(found.library)
    with open(copy, "r+b") as f:
        elf = symbols._Elf(f)
        section = next(s for s in elf.sections(1) if s.addr <= found.addresses[0] - bias < s.addr + s.size)
        f.seek(section.offset + found.addresses[0] - bias - section.addr)
        f.write(b"\xcc" * 8)
    invoke, allocate = symbols._hidden_functions(found.library, NAMES, file=str(copy))
    assert invoke == 0 and allocate == found.addresses[1]


@pytest.mark.parametrize("damage", ["empty", "not-elf", "truncated-header", "sections-past-end"])
def test_a_damaged_library_file_raises_value_error_not_a_crash(interpreter, damage, tmp_path):
    path = sys.modules[type(interpreter._interpreter).__module__].__file__
    data = open(path, "rb").read()
    with open(path, "rb") as f:
        assert symbols._Elf(f).sections(symbols._SHT_DYNAMIC)  # the undamaged file parses
    damaged = tmp_path / "damaged.so"
    damaged.write_bytes({"empty": b"", "not-elf": b"MZ" + data[2:], "truncated-header": data[:40],
                         "sections-past-end": data[:len(data) // 2]}[damage])
    with open(damaged, "rb") as f, pytest.raises((ValueError, symbols.struct.error)):
        symbols._Elf(f)
    with pytest.raises(symbols._READ_ERRORS):
        symbols._hidden_functions(path, NAMES, file=str(damaged))


CRASHING_BACKEND = """
import os, signal
class Interpreter:
    def __init__(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGSEGV)
"""


def test_a_self_test_that_crashes_keeps_the_process_on_the_wrapper(tmp_path, monkeypatch):
    (tmp_path / "crashing_backend.py").write_text(CRASHING_BACKEND)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    assert native._self_test("crashing_backend", "lib-under-test") == set()
    assert native._self_test("no_such_backend_module", "lib-under-test") == set()


def test_a_self_test_that_exits_0_without_testing_vouches_for_nothing(monkeypatch):
    monkeypatch.setattr(sys, "executable", shutil.which("true"))
    assert native._self_test("any.module", "lib-under-test") == set()


def test_a_process_started_by_a_self_test_trusts_no_hidden_function(monkeypatch, interpreter):
    """A frozen app re-runs its own main as the 'test': it must not start another, nor trust anything."""
    monkeypatch.setenv(native.SELF_TEST_ENV, "token")
    monkeypatch.setattr(native, "_verdicts", {})
    monkeypatch.setattr(native, "_self_test", lambda *a: pytest.fail("a self-test started a self-test"))
    hidden = symbols.Found((1, 2), "/no/such/library.so", hidden=True)
    assert native.trusted(hidden, interpreter) is False
    assert native.trusted(symbols.Found((1, 2), "/lib.so", hidden=False), interpreter) is True


def test_hidden_functions_that_fail_the_self_test_are_not_used(backend_name, monkeypatch, native_path):
    if backend_name != "litert" or not native_path:
        pytest.skip("only LiteRT's functions are hidden (and TFLITE_HOTSWAP_NATIVE=0 asks for none)")
    monkeypatch.setattr(native, "_resolved", {})
    monkeypatch.setattr(native, "_verdicts", {})
    monkeypatch.setattr(native, "_self_test", lambda module, library: set())
    with Runtime(model_path("version_1"), isolate=False) as rt:
        assert rt.info.path == "python"


def test_the_self_test_passes_for_this_backend(backend_name, interpreter, native_path):
    """Run for real in a child process: every native call gives the wrapper's results."""
    if not native_path:
        pytest.skip("TFLITE_HOTSWAP_NATIVE=0")
    found = symbols.find_functions(native.backend_library(interpreter), native.SERVING_FUNCTIONS, required=2)
    vouched = native._self_test(type(interpreter).__module__, "lib-under-test")
    if found.hidden:
        assert native.identity(found) in vouched  # these very functions, at these offsets
    else:
        assert vouched == set()  # exported functions are not the test's business: it lists none


def test_the_self_test_runs_once_per_library_per_process(backend_name, monkeypatch, native_path):
    if backend_name != "litert" or not native_path:
        pytest.skip("only LiteRT's functions are hidden (and TFLITE_HOTSWAP_NATIVE=0 asks for none)")
    ran = []
    monkeypatch.setattr(native, "_resolved", {})
    monkeypatch.setattr(native, "_verdicts", {})
    real = native._self_test
    monkeypatch.setattr(native, "_self_test", lambda module, library: ran.append(library) or real(module, library))
    for _ in range(3):
        with Runtime(model_path("version_1"), isolate=False) as rt:
            assert rt.info.path == "native"
    assert len(ran) == 1 and ran[0].endswith("libpywrap_litert_common.so")

