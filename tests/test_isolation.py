"""The isolation probe: hostile models, bounded waits, cached verdicts, fork safety.

Every test runs on both backends (the suite runs once per backend).  Models that
crash a backend are swapped in child processes or through the probe, never
into this process unprotected.  Tests wait on process exits and events with
generous bounds; none asserts on elapsed time.
"""

from __future__ import annotations

import ast
import hashlib
import multiprocessing
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
from collections import OrderedDict

import numpy as np
import pytest
from conftest import model_bytes, model_path

import tflite_hotswap
from tflite_hotswap import InvalidModelError, MisuseError, Runtime
from tflite_hotswap.errors import BackendError, IsolationError
from tflite_hotswap.safety import isolation
from tflite_hotswap.safety.isolation import ProbeLimits, prove_loadable
from tflite_hotswap.safety.verify import verify_model
from tflite_hotswap.serving.loader import PROBE_CHECK

TESTS = pathlib.Path(__file__).parent
X16 = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)


def _answer(rt: Runtime) -> float:
    return float(rt.run(X16)["tag"][0, 0])


def _sha(data: bytes, salt: str = "") -> str:
    return hashlib.sha256(data + salt.encode()).hexdigest()


@pytest.fixture
def checks(tmp_path, monkeypatch):
    """The test checks of probe_checks.py, importable by the prober; returns a probe counter."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS),
                                                                   os.environ.get("PYTHONPATH")])))
    log = tmp_path / "probes.log"
    log.write_text("")
    monkeypatch.setenv("PROBE_CHECK_LOG", str(log))
    isolation._close_all()  # a prober keeps the environment it started with
    yield lambda: len(log.read_text().splitlines())
    isolation._close_all()


# ------------------------------------------------------------ hostile models

REFERENCES = {
    "hostile_op_output_minus1": "operator 0 outputs\\[0\\] is -1",
    "hostile_signature_missing_subgraph": "signature 0 subgraph index\\[0\\] is 5",
    "hostile_signature_missing_tensor": "signature 0 tensor index\\[1\\] is 999",
    "hostile_opcode_out_of_range": "operator 1 opcode index\\[0\\] is 99",
    "hostile_tensor_buffer_out_of_range": "tensor buffer\\[3\\] is 999",
    "hostile_subgraph_input_out_of_range": "subgraph 0 inputs\\[0\\] is 999",
    "hostile_operator_input_below_minus1": "operator 0 inputs\\[2\\] is -2",
    "hostile_while_missing_subgraph": "WhileOptions.BodySubgraphIndex\\[0\\] is 3",
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_index_that_names_nothing_is_refused_before_any_backend_reads_it(name):
    with Runtime(model_path("version_1")) as rt:
        with pytest.raises(InvalidModelError, match="refers to something it does not have: .*"
                                                    + REFERENCES[name]):
            rt.swap(model_path(name), allow_contract_change=True)
        assert _answer(rt) == 1.0


def test_operator_inputs_may_be_minus_one_where_tflite_allows_optional_inputs():
    # version_1's FULLY_CONNECTED has no bias: inputs [0, 3, -1].
    verify_model(model_bytes("version_1"))


def test_verifier_checks_each_table_once_however_many_references_point_at_it():
    """990,000 entries of Model.buffers point at one Buffer table (21 s before)."""
    data = model_bytes("hostile_many_references")
    assert len(data) > 3_900_000
    assert verify_model(data) < 100


_SWAP_IN_CHILD = textwrap.dedent("""
    import sys
    from tflite_hotswap import InvalidModelError, Runtime
    rt = Runtime(sys.argv[1])
    try:
        rt.swap(sys.argv[2], allow_contract_change=True)
        print("accepted")
    except InvalidModelError as e:
        print("refused:", e)
    rt.run({"x": __import__("numpy").ones((1, 16), "float32")})
    rt.close()
""")


@pytest.mark.parametrize("name", ["hostile_string_input", "hostile_rank200"])
def test_model_that_crashes_the_binding_crashes_the_probe_not_the_server(name, tmp_path):
    """LiteRT's tensor() segfaults on these: the probe binds and runs exactly as the runtime does.

    Both are refused before anything binds them (a string tensor, rank 200:
    UnsupportedModelError); were that check to regress, the probe's binding
    would crash in the child.  The serving process is a child, so a regression
    kills it, not pytest.
    """
    done = subprocess.run([sys.executable, "-c", _SWAP_IN_CHILD, model_path("version_1"),
                           model_path(name)], capture_output=True, text=True, timeout=300, check=False,
                          cwd=tmp_path)  # not the repository root: the installed package
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("refused:"), done.stdout
    assert "expected a tensor" in done.stdout or "crashed (SIGSEGV)" in done.stdout, done.stdout


@pytest.mark.parametrize("name", ["crasher_litert_version_1_field_1724",
                                  "crasher_litert_quant_uint8_field_720"])
def test_fuzz_crashers_are_refused_and_the_server_lives(name, tmp_path):
    """Found by tools/fuzz_swap.py --no-isolate: each killed a LiteRT serving process with SIGSEGV.

    field_720 runs on tflite-runtime but leaves its output without memory: the
    warm-up reads the outputs, so it is refused there too (it was accepted, and
    every call then failed, once the -1 check that used to refuse it went).
    """
    done = subprocess.run([sys.executable, "-c", _SWAP_IN_CHILD, model_path("version_1"),
                           model_path(name)], capture_output=True, text=True, timeout=300,
                          check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("refused:"), done.stdout


def test_isolation_is_on_by_default_for_every_backend(backend_name, monkeypatch):
    monkeypatch.setattr(isolation._state, "cache", OrderedDict())  # nothing known yet
    with Runtime(model_path("version_1")) as rt:
        assert rt.backend == backend_name
        assert rt.info.probe_seconds > 0  # a new model went through the probe


def test_shape_bomb_is_refused_within_the_probe_memory_limit():
    """One shape entry: a [1, 16] input as [2**24, 16] wants GiBs; the probe's rlimit says no."""
    with Runtime(model_path("version_1")) as rt:
        with pytest.raises(InvalidModelError, match="isolated process"):
            rt.swap(model_path("hostile_shape_bomb"), allow_contract_change=True)
        assert _answer(rt) == 1.0


def test_probe_memory_limit_is_configurable(backend_name, checks):
    data = b"allocate 512 MiB"
    with pytest.raises(InvalidModelError, match="MemoryError"):
        prove_loadable("probe_checks:allocate", backend_name, data, _sha(data, "small"),
                       limits=ProbeLimits(memory=128 * 2**20))
    prove_loadable("probe_checks:allocate", backend_name, data, _sha(data, "big"),
                   limits=ProbeLimits(memory=2**30))
    assert checks() == 2


def test_probe_cpu_limit_refuses_and_is_not_cached(backend_name, checks):
    data = b"spin"
    for expected in (1, 2):
        with pytest.raises(InvalidModelError, match="SIGXCPU"):
            prove_loadable("probe_checks:spin", backend_name, data, _sha(data),
                           limits=ProbeLimits(timeout=600, cpu_seconds=1))
        assert checks() == expected


# ------------------------------------------------------------ verdict cache

@pytest.mark.parametrize("check, error, cached", [
    ("ok", None, True),
    ("refuse", "ValueError: refused on purpose", True),
    ("sigsegv", "crashed \\(SIGSEGV\\)", True),
    ("sigkill", "crashed \\(SIGKILL\\) \\(killed from outside", False),
    ("sleep", "did not load and run within 0.5 s", False),
])
def test_only_definite_verdicts_are_cached(backend_name, checks, check, error, cached):
    data = f"model for {check}".encode()
    for attempt in (1, 2):
        if error is None:
            prove_loadable(f"probe_checks:{check}", backend_name, data, _sha(data),
                           limits=ProbeLimits(timeout=0.5))
        else:
            with pytest.raises(InvalidModelError, match=error):
                prove_loadable(f"probe_checks:{check}", backend_name, data, _sha(data),
                               limits=ProbeLimits(timeout=0.5))
        assert checks() == (1 if cached else attempt)


def test_library_errors_raised_by_the_check_keep_their_type(backend_name, checks):
    data = b"misuse"
    with pytest.raises(MisuseError, match="signature: expected one of"):
        prove_loadable("probe_checks:misuse", backend_name, data, _sha(data))


def test_verdict_cache_is_bounded(backend_name, checks, monkeypatch):
    monkeypatch.setattr(isolation, "CACHE_SIZE", 3)
    for i in range(6):
        prove_loadable("probe_checks:ok", backend_name, b"m", _sha(b"m", f"bounded {i}"))
    assert len(isolation._state.cache) <= 3
    # The oldest went out first: asking again probes again; the newest is known.
    prove_loadable("probe_checks:ok", backend_name, b"m", _sha(b"m", "bounded 0"))
    prove_loadable("probe_checks:ok", backend_name, b"m", _sha(b"m", "bounded 5"))
    assert checks() == 7


# ------------------------------------------------------------ a wedged prober

def _prober_pid(check: str, backend_name: str) -> int:
    return isolation._state.probers[(check, backend_name)].pid


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_sigstopped_prober_is_killed_and_replaced(backend_name, checks):
    limits = ProbeLimits(timeout=1, grace=1)
    prove_loadable("probe_checks:ok", backend_name, b"a", _sha(b"a", "stop"), limits=limits)
    pid = _prober_pid("probe_checks:ok", backend_name)
    os.kill(pid, signal.SIGSTOP)
    with pytest.raises(IsolationError, match="did not answer within 2 s") as raised:
        prove_loadable("probe_checks:ok", backend_name, b"b", _sha(b"b", "stop"), limits=limits)
    assert isinstance(raised.value, BackendError)
    assert _gone(pid)  # killed and reaped, not left stopped
    # Not cached: the same model is judged by a new prober.
    prove_loadable("probe_checks:ok", backend_name, b"b", _sha(b"b", "stop"), limits=limits)
    assert _prober_pid("probe_checks:ok", backend_name) != pid


def test_swap_fails_with_a_typed_error_when_the_prober_is_stopped(monkeypatch):
    monkeypatch.setenv(isolation.ENV_TIMEOUT, "1")
    with Runtime(model_path("version_1")) as rt:
        pid = _prober_pid(PROBE_CHECK, rt.backend)
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(IsolationError):
            rt.swap(model_path("version_2"))
        assert _gone(pid)
        assert _answer(rt) == 1.0
        rt.swap(model_path("version_2"))  # a new prober
        assert _answer(rt) == 2.0


def test_dead_prober_is_restarted(backend_name, checks):
    prove_loadable("probe_checks:ok", backend_name, b"a", _sha(b"a", "dead"))
    pid = _prober_pid("probe_checks:ok", backend_name)
    os.kill(pid, signal.SIGKILL)
    prove_loadable("probe_checks:ok", backend_name, b"b", _sha(b"b", "dead"))
    assert _prober_pid("probe_checks:ok", backend_name) != pid


# ------------------------------------------------------------ fork

def _worker(name: str, start, results) -> None:
    start.wait(60)
    data = model_bytes(name)
    try:
        prove_loadable(PROBE_CHECK, tflite_hotswap.load_backend().name, data, _sha(data))
        results.put((name, "ok"))
    except InvalidModelError as e:
        results.put((name, f"refused: {e}"))


def test_workers_forked_after_the_prober_started_each_get_their_own_verdict():
    """Workers share nothing of the parent's prober: no interleaved answers, no hang, no death."""
    backend = tflite_hotswap.load_backend().name
    warm = model_bytes("version_3")
    prove_loadable(PROBE_CHECK, backend, warm, _sha(warm))  # the parent's prober is running
    parent_prober = _prober_pid(PROBE_CHECK, backend)
    names = ["version_1", "version_2", "hostile_string_input", "multi_io", "tiny_f32",
             "hostile_rank200"]
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(name, start, results)) for name in names]
    for w in workers:
        w.start()
    start.set()
    verdicts = sorted(results.get(timeout=300) for _ in workers)
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    for name, verdict in verdicts:
        if name.startswith("hostile"):  # crashes the binding, or refused before it
            assert "crashed (SIGSEGV)" in verdict or "expected a tensor" in verdict, (name, verdict)
        else:
            assert verdict == "ok", (name, verdict)
    # The parent's own prober still answers correctly.
    assert _prober_pid(PROBE_CHECK, backend) == parent_prober
    with pytest.raises(InvalidModelError, match="crashed|expected a tensor"):
        data = model_bytes("hostile_string_input")
        prove_loadable(PROBE_CHECK, backend, data, _sha(data, "parent"))


# ------------------------------------------------------------ process hygiene

def test_no_warnings_no_resource_warnings_at_exit(tmp_path):
    """PYTHONWARNINGS=error and -X dev: no runpy warning in the prober, nothing left open."""
    script = textwrap.dedent(f"""
        from tflite_hotswap import Runtime
        rt = Runtime({model_path("version_1")!r})
        rt.swap({model_path("version_2")!r})
        rt.close()
        print("done")
    """)
    env = dict(os.environ, PYTHONWARNINGS="error")
    done = subprocess.run([sys.executable, "-X", "dev", "-c", script], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "done"
    assert "Warning" not in done.stderr, done.stderr[-2000:]


def test_probe_verdicts_are_logged(backend_name, caplog):
    caplog.set_level("INFO", logger="tflite_hotswap.safety.isolation")
    good, bad = model_bytes("version_1"), model_bytes("hostile_string_input")
    prove_loadable(PROBE_CHECK, backend_name, good, _sha(good, "log"))
    with pytest.raises(InvalidModelError):
        prove_loadable(PROBE_CHECK, backend_name, bad, _sha(bad, "log"))
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    loaded = f"{_sha(good, 'log')[:12]}: {backend_name} loaded and ran the model in an isolated process"
    assert ("INFO", loaded) in [(lv, m.rsplit(" (", 1)[0]) for lv, m in records]
    assert any(lv == "WARNING" and m.startswith(f"{_sha(bad, 'log')[:12]}: refused: ")
               and ("SIGSEGV" in m or "expected a tensor" in m) for lv, m in records)


def test_safety_never_imports_serving():
    """safety/ is the lower layer: not even a lazy import inside a function."""
    folder = pathlib.Path(isolation.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = ("." * node.level) + (node.module or "")
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any("serving" in n for n in names), (path.name, names)
