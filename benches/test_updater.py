"""The updater's cost to an inference loop, and publish-to-serving time on loopback.

1. A thread calls run() in a loop for 8 s and times every call, with no
   updater, then with an updater polling a file:// repository every second
   (not modified each time): p99 / p99.9 / max call latency in extra_info.
2. Publish-to-serving: a version published while an updater polls every
   second; the time from publish to the swap, split into poll wait (publish to
   the round that sees it), download, validation and swap (probation excluded).

Run: ``.venv-tflite/bin/pytest benches/test_updater.py --benchmark-disable -s``.
"""

from __future__ import annotations

import pathlib
import tempfile
import threading
import time
from importlib.resources import files

import numpy as np
import pytest
from conftest import model_path

from tflite_hotswap import Probation, Runtime, Updater
from tflite_hotswap.delivery.repository import publish
from tflite_hotswap.updater import events as ev

SECONDS = 8.0
MODELS = files("tflite_hotswap") / "models"


def _repo() -> tuple[pathlib.Path, pathlib.Path]:
    work = pathlib.Path(tempfile.mkdtemp())
    publish(str(work / "repo"), str(MODELS / "demo_v1.tflite"), model="demo", version="v1", channel="stable")
    return work / "repo", work / "store"


def _loop(rt: Runtime, seconds: float) -> list[float]:
    x = np.zeros((1, 64), np.float32)
    took = []
    end = time.perf_counter() + seconds
    while (t := time.perf_counter()) < end:
        rt.run(x)
        took.append(time.perf_counter() - t)
    return took


@pytest.mark.parametrize("polling", [False, True, "20mb"], ids=["no-updater", "updater-1s-polls",
                                                               "updater-downloading-validating-20mb"])
def test_loop_latency_with_updater(benchmark, polling):
    repo, store = _repo()
    rt = Runtime.from_store(str(store), model="demo", default=str(MODELS / "demo_v1.tflite"), default_version="v1")
    up = Updater(rt, f"file://{repo}", str(store), "demo", "bench", interval=1.0, jitter=0.0)
    if polling == "20mb":
        # A 20 MB version: downloaded, then validated in a child process (and
        # refused there: its I/O contract differs from the serving model's).
        publish(str(repo), model_path("dense_20mb"), model="demo", version="big", channel="stable",
                allow_contract_change=True)
    if polling:
        up.start()
    took = np.array(benchmark.pedantic(_loop, args=(rt, SECONDS), rounds=1, iterations=1)) * 1e6
    up.stop()
    rt.close()
    benchmark.extra_info.update(calls=len(took), p99_us=float(np.percentile(took, 99)),
                                p999_us=float(np.percentile(took, 99.9)), max_us=float(took.max()),
                                rounds=sum(up.status().rounds.values()))
    print(f"\n{polling or 'no updater'}: {len(took)} calls, p99 {np.percentile(took, 99):.1f} us, "
          f"p99.9 {np.percentile(took, 99.9):.1f} us, max {took.max():.0f} us, rounds {up.status().rounds}")


def test_publish_to_serving(benchmark):
    repo, store = _repo()
    rt = Runtime.from_store(str(store), model="demo", default=str(MODELS / "demo_v1.tflite"), default_version="v1")
    swapped = threading.Event()
    seen: list[tuple[float, ev.Event]] = []

    def on_event(e: ev.Event) -> None:
        seen.append((time.perf_counter(), e))
        if isinstance(e, ev.Swapped):
            swapped.set()

    up = Updater(rt, f"file://{repo}", str(store), "demo", "bench", interval=1.0, jitter=0.0,
                 probation=Probation(calls=0, seconds=0.0), on_event=on_event)

    def run() -> dict[str, float]:
        with up:
            time.sleep(0.3)
            published = time.perf_counter()
            publish(str(repo), str(MODELS / "demo_v2.tflite"), model="demo", version="v2", channel="stable")
            assert swapped.wait(60)
        start = next(t for t, e in seen if isinstance(e, ev.CheckStarted) and t > published)
        result = up.status().last_result
        assert result is not None and result.outcome == "promoted"
        return {"total": next(t for t, e in seen if isinstance(e, ev.Swapped)) - published,
                "poll_wait": start - published, **result.timings}

    split = benchmark.pedantic(run, rounds=1, iterations=1)
    rt.close()
    benchmark.extra_info.update({k: round(v, 4) for k, v in split.items()})
    print("\npublish-to-serving: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in split.items()))
