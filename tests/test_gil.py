"""The switch interval is lowered while a swap loads, and put back exactly as it was."""

import sys
import threading

import pytest
from conftest import model_path

from tflite_hotswap import Runtime
from tflite_hotswap.serving import gil


@pytest.fixture(autouse=True)
def default_interval():
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield
    sys.setswitchinterval(before)


def test_lowered_inside_restored_after_even_nested():
    with gil.short_turns():
        assert sys.getswitchinterval() == pytest.approx(gil.SWITCH_INTERVAL)
        with gil.short_turns():
            assert sys.getswitchinterval() == pytest.approx(gil.SWITCH_INTERVAL)
        assert sys.getswitchinterval() == pytest.approx(gil.SWITCH_INTERVAL)  # the outer load still runs
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_restored_when_the_body_raises():
    with pytest.raises(KeyError), gil.short_turns():
        raise KeyError("x")
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_a_value_set_meanwhile_is_left_alone_and_a_lower_one_never_raised():
    with gil.short_turns():
        sys.setswitchinterval(0.02)
    assert sys.getswitchinterval() == pytest.approx(0.02)
    sys.setswitchinterval(1e-5)
    with gil.short_turns():
        assert sys.getswitchinterval() == pytest.approx(1e-5)
    assert sys.getswitchinterval() == pytest.approx(1e-5)


@pytest.mark.parametrize("value, expected", [("0", 0.005), ("0.0005", 0.0005), ("nonsense", gil.SWITCH_INTERVAL),
                                             ("0.0000015", 1e-6)])  # CPython keeps whole microseconds
def test_environment_variable(monkeypatch, value, expected):
    monkeypatch.setenv(gil.ENV_VAR, value)
    with gil.short_turns():
        assert sys.getswitchinterval() == pytest.approx(expected)
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_a_swap_runs_with_short_turns_and_restores_them(monkeypatch):
    from tflite_hotswap.serving import runtime as runtime_module
    seen = []
    real_read = runtime_module.read_model

    def spy_read(model):
        seen.append(sys.getswitchinterval())
        return real_read(model)

    with Runtime(model_path("version_1")) as rt:
        monkeypatch.setattr(runtime_module, "read_model", spy_read)
        rt.swap(model_path("version_2"))
    assert seen == [pytest.approx(gil.SWITCH_INTERVAL)]
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_concurrent_loads_share_one_lowering():
    inside, release = threading.Barrier(3), threading.Event()

    def load():
        with gil.short_turns():
            inside.wait()
            release.wait()

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait()
    assert sys.getswitchinterval() == pytest.approx(gil.SWITCH_INTERVAL)
    release.set()
    for t in threads:
        t.join()
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_a_fork_during_a_load_leaves_the_child_with_the_interval_as_it_was():
    import os
    with gil.short_turns():
        pid = os.fork()
        if pid == 0:
            ok = sys.getswitchinterval() == pytest.approx(0.005)
            with gil.short_turns():  # the lock and the count are the child's own
                ok = ok and sys.getswitchinterval() == pytest.approx(gil.SWITCH_INTERVAL)
            os._exit(0 if ok and sys.getswitchinterval() == pytest.approx(0.005) else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sys.getswitchinterval() == pytest.approx(0.005)
