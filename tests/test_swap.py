"""Hot swaps: contract checks, policies, statistics, and a 1,000-swap stress test."""

import threading
import time

import numpy as np
import pytest

from conftest import model_bytes, model_path
from tflite_hotswap import IncompatibleModelError, Runtime

VERSIONS = {v: model_bytes(f"version_{v}") for v in (1, 2, 3)}


def _check_whole(result, x):
    """Every element of the result must come from one version."""
    tag = float(result["tag"][0, 0])
    assert tag in (1.0, 2.0, 3.0), tag
    assert np.array_equal(result["shifted"], x + np.float32(tag)), (tag, result["shifted"] - x)
    return int(tag)


@pytest.mark.parametrize("workers, policy", [(1, "availability"), (2, "availability"), (2, "resource")])
def test_swap_stress_every_result_is_whole(workers, policy):
    swaps = 1000 if policy == "availability" else 300
    errors: list[BaseException] = []
    seen: set[int] = set()
    calls = [0]
    stop = threading.Event()
    rt = Runtime(VERSIONS[1], workers=workers, policy=policy, version="1", wait_timeout=30)

    def caller(seed):
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                x = rng.standard_normal((1, 16)).astype(np.float32)
                seen.add(_check_whole(rt.run(x), x))
                calls[0] += 1
        except BaseException as e:  # collected and re-raised by the test
            errors.append(e)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(swaps):
            v = 1 + (i + 1) % 3
            assert rt.swap(VERSIONS[v], version=str(v)).version == str(v)
            x = np.full((1, 16), i, np.float32)
            assert _check_whole(rt.run(x), x) == v  # the new version serves at once
            if policy == "resource":
                time.sleep(0.002)  # let callers waiting through the gap run
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert len(seen) >= 2 and calls[0] >= 50  # the callers ran across swaps
    stats = rt.stats()
    assert set(stats) == {"1", "2", "3"}
    assert sum(s.calls for s in stats.values()) == calls[0] + swaps
    assert all(s.errors == 0 for s in stats.values())
    rt.close()


def test_swap_publishes_new_version_and_reports_info():
    with Runtime(model_path("version_1"), version="v1") as rt:
        assert rt.info.version == "v1" and rt.info.size == len(VERSIONS[1])
        info = rt.swap(model_path("version_2"))
        assert info.version == info.sha256[:12] and rt.info is info
        assert info.signatures == {"serving_default": {"inputs": ["x"], "outputs": ["shifted", "tag"]}}
        assert rt.run(np.zeros((1, 16), np.float32))["tag"][0, 0] == 2.0
        assert info.load_seconds > 0 and info.loaded_at.tzinfo is not None


def test_incompatible_contract_is_refused_and_old_model_keeps_serving():
    x = np.zeros((1, 16), np.float32)
    with Runtime(model_path("version_1")) as rt:
        with pytest.raises(IncompatibleModelError) as caught:
            rt.swap(model_path("tiny_f32"))
        assert any("expected shape (1, 16), got (1, 4)" in d for d in caught.value.differences)
        assert any("output 'shifted': expected it" in d for d in caught.value.differences)
        assert rt.run(x)["tag"][0, 0] == 1.0
        rt.swap(model_path("tiny_f32"), allow_contract_change=True)
        assert rt.run(np.zeros((1, 4), np.float32)).shape == (1, 4)


def test_quantization_change_is_a_contract_change():
    with Runtime(model_path("quant_int8")) as rt:
        with pytest.raises(IncompatibleModelError, match="dtype int8, got uint8"):
            rt.swap(model_path("quant_uint8"))


def test_dynamic_model_keeps_seen_batch_sizes_across_swap():
    with Runtime(model_path("dynamic_batch")) as rt:
        for n in (2, 5):
            rt.run(np.ones((n, 8), np.float32))
        rt.swap(model_bytes("dynamic_batch") + b"", version="again")
        assert rt.run(np.ones((5, 8), np.float32)).shape == (5, 4)


def test_resource_policy_callers_wait_through_the_gap():
    """With policy=resource, calls made while the old model is released wait, then succeed."""
    results, errors = [], []
    rt = Runtime(VERSIONS[1], policy="resource", wait_timeout=30)
    stop = threading.Event()

    def caller():
        x = np.zeros((1, 16), np.float32)
        while not stop.is_set():
            try:
                results.append(_check_whole(rt.run(x), x))
            except BaseException as e:
                errors.append(e)

    t = threading.Thread(target=caller)
    t.start()
    for v in (2, 3, 1, 2):
        rt.swap(VERSIONS[v])
        time.sleep(0.01)
    stop.set()
    t.join()
    rt.close()
    assert not errors and {1, 2, 3} <= set(results)


def test_stats_count_calls_and_errors_per_version():
    with Runtime(VERSIONS[1], version="a") as rt:
        for _ in range(10):
            rt.run(np.zeros((1, 16), np.float32))
        with pytest.raises(Exception):
            rt.run(np.zeros((1, 3), np.float32))
        s = rt.stats()["a"]
        assert (s.calls, s.errors) == (11, 1)
        assert 0 < s.p50_us <= s.p99_us <= s.max_us


def test_version_that_comes_back_keeps_its_statistics():
    with Runtime(VERSIONS[1], version="a") as rt:
        rt.run(np.zeros((1, 16), np.float32))
        rt.swap(VERSIONS[2], version="b")
        rt.swap(VERSIONS[1], version="a")
        rt.run(np.zeros((1, 16), np.float32))
        assert rt.stats()["a"].calls == 2 and rt.stats()["b"].calls == 0
