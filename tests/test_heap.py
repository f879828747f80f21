"""glibc heap tuning: a freed model stays in the heap until the reclaimer gives it back, GIL released."""

import json
import os
import platform
import subprocess
import sys
import textwrap
import threading

import pytest
from conftest import model_path

from tflite_hotswap import Runtime
from tflite_hotswap.serving import heap

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt and malloc_trim are glibc's")

# In a fresh process (the setting is process-wide and made once): free 20 MB
# of touched bytes, then give the heap back; print the resident set after each.
_CHILD = textwrap.dedent("""
    import json
    from tflite_hotswap.serving import heap

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    tuned = heap.tune()
    before = rss_mb()
    data = b"\\x01" * (20 << 20)
    loaded = rss_mb()
    del data
    freed = rss_mb()
    heap.give_back()
    print(json.dumps({"tuned": tuned, "before": before, "loaded": loaded, "freed": freed,
                      "given_back": rss_mb()}))
""")


def _child(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))
             and k != heap.ENV_VAR}
    # cwd away from the source tree, whose tflite_hotswap/ has no built extensions
    done = subprocess.run([sys.executable, "-c", _CHILD], env={**clean, **env}, capture_output=True,
                          text=True, check=True, timeout=120, cwd=os.path.dirname(sys.executable))
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc
def test_a_freed_model_stays_in_the_heap_until_given_back():
    r = _child()
    assert r["tuned"] is True
    assert r["loaded"] - r["before"] > 15  # the 20 MB were touched
    assert r["freed"] - r["before"] > 15, "free() returned the block to the OS: the thresholds did not hold"
    assert r["freed"] - r["given_back"] > 15, "malloc_trim did not return the freed block"


@glibc
def test_untuned_glibc_returns_the_block_inside_free():
    """The behaviour the tuning exists to move off the GIL (and what =0 keeps)."""
    r = _child(**{heap.ENV_VAR: "0"})
    assert r["tuned"] is False
    assert r["freed"] - r["before"] < 5


@glibc
@pytest.mark.parametrize("setting", [{"MALLOC_TRIM_THRESHOLD_": "1000000"},
                                     {"MALLOC_MMAP_THRESHOLD_": "1000000"},
                                     {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}])
def test_thresholds_set_in_the_environment_are_left_alone(setting):
    assert _child(**setting)["tuned"] is False


@glibc
def test_other_glibc_tunables_do_not_stop_the_tuning():
    assert _child(GLIBC_TUNABLES="glibc.malloc.arena_max=4")["tuned"] is True


@pytest.mark.parametrize("policy", ["availability", "resource"])
def test_the_retired_version_is_given_back_after_its_release(monkeypatch, policy):
    given_back = threading.Event()
    real = heap.give_back

    def spy() -> None:
        real()
        given_back.set()

    monkeypatch.setattr(heap, "give_back", spy)
    with Runtime(model_path("version_1"), policy=policy) as rt:
        given_back.clear()
        rt.swap(model_path("version_2"))
        assert given_back.wait(30)
