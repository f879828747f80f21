"""The updater: the story on nginx and on the fault-injecting server, scheduling, conditions."""

from __future__ import annotations

import json
import os
import pathlib
import random
import time

import pytest
from delivery_helpers import FAST, store_is_consistent
from servers import fault_server, nginx
from updater_helpers import Loop, demo_model, golden

from tflite_hotswap import Probation, Runtime, Updater
from tflite_hotswap.delivery.repository import publish
from tflite_hotswap.delivery.sources import open_source
from tflite_hotswap.delivery.store import Store
from tflite_hotswap.errors import MisuseError
from tflite_hotswap.updater import events as ev
from tflite_hotswap.updater.clock import ManualClock
from tflite_hotswap.updater.conditions import FreeDisk, MaintenanceWindow, OnPower

# Demo-sized probation: enough calls to judge the p99 ratio, short in time.  The ratio is
# generous: on a busy shared machine equal models differ by 4x at p99; v4_slow is ~100x slower.
PROBATION = Probation(calls=150, seconds=0.5, max_p99_ratio=15.0, min_baseline_calls=50, check_every=0.05)


def _story(repo, url, tmp_path):
    """v1 served; v2 adopted; v3 refused (golden); v4 rolled back (p99); zero failed calls throughout."""
    publish(str(repo), demo_model("v1"), model="demo", version="v1", channel="stable",
            golden=golden(tmp_path / "g1.npz", 1))
    store = str(tmp_path / "store")
    rt = Runtime.from_store(store, model="demo", default=demo_model("v1"), workers=2)
    seen: list[ev.Event] = []
    up = Updater(rt, url, Store(store, config=FAST), "demo", "cam-0042", probation=PROBATION, on_event=seen.append)
    with Loop(rt):
        r = up.check_now()
        assert r.outcome == "switched" and rt.info.version == "v1"  # same bytes as the shipped model
        publish(str(repo), demo_model("v2"), model="demo", version="v2", channel="stable",
                golden=golden(tmp_path / "g2.npz", 2))
        r = up.check_now()
        assert (r.outcome, r.serving) == ("promoted", "v2"), r
        assert set(r.timings) >= {"poll", "download", "validation", "swap", "probation"}
        publish(str(repo), demo_model("v3"), model="demo", version="v3", channel="stable",
                golden=golden(tmp_path / "g3.npz", 3, wrong_by=0.5))
        swaps = sum(isinstance(e, ev.Swapped) for e in seen)
        r = up.check_now()
        assert (r.outcome, r.serving) == ("refused", "v2") and "golden output" in (r.reason or "")
        assert sum(isinstance(e, ev.Swapped) for e in seen) == swaps  # refused before any swap
        publish(str(repo), demo_model("v4_slow"), model="demo", version="v4", channel="stable",
                golden=golden(tmp_path / "g4.npz", 4))
        r = up.check_now()
        assert (r.outcome, r.serving) == ("rolled_back", "v2") and "p99" in (r.reason or ""), r
        assert rt.info.version == "v2"
        r = up.check_now()  # v4 is bad here now: nothing to do
        assert r.outcome == "up_to_date" and rt.info.version == "v2"
    stats = rt.stats()
    assert sum(s.errors for s in stats.values()) == 0
    status = up.status()
    assert (status.current, status.last_known_good) == ("v2", "v2")
    assert set(status.bad) == {"v3", "v4"} and "failed probation" in status.bad["v4"]
    assert status.rounds["promoted"] == 1 and status.rounds["rolled_back"] == 1
    kinds = [type(e).__name__ for e in seen]
    for name in ("Validated", "Refused", "Swapped", "ProbationStarted", "Promoted", "RolledBack", "MarkedBad"):
        assert name in kinds
    store_is_consistent(store)
    rt.close()
    # A restart serves v2 without any network.
    with Runtime.from_store(store, model="demo") as again:
        assert again.info.version == "v2"


def test_story_on_nginx(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    with nginx(str(repo), tmp_path / "nginx") as server:
        _story(repo, server.url, tmp_path)


def test_story_on_file_repository(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _story(repo, f"file://{repo}", tmp_path)


def _fault_repo(tmp_path):
    """A repository folder whose files the fault server serves (copied in after each publish)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    return repo


def _serve_all(server, repo):
    for root, _, names in os.walk(repo):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), repo)
            if not name.startswith("."):
                server.put(rel, pathlib.Path(root, name).read_bytes())


@pytest.mark.parametrize("fault", ["cut", "stall", "wrong", "manifest-rollback"])
def test_faults_mid_round(tmp_path, fault):
    repo = _fault_repo(tmp_path)
    publish(str(repo), demo_model("v1"), model="demo", version="v1", channel="stable")
    store = str(tmp_path / "store")
    with fault_server() as server, Runtime.from_store(store, model="demo", default=demo_model("v1")) as rt:
        _serve_all(server, repo)
        up = Updater(rt, server.url, Store(store, config=FAST), "demo", "d", probation=PROBATION)
        assert up.check_now().serving == "v1"
        old_manifest = server.files["manifest.json"]
        publish(str(repo), demo_model("v2"), model="demo", version="v2", channel="stable")
        _serve_all(server, repo)
        with Loop(rt) as loop:
            if fault == "manifest-rollback":
                up.check_now()  # accepts serial 2 (v2)
                server.put("manifest.json", old_manifest)
                r = up.check_now()
                assert r.outcome == "failed" and "SerialRollbackError" in (r.reason or "")
                assert rt.info.version == "v2"
            elif fault == "wrong":
                server.script("models/demo/v2.tflite", ["wrong"])
                r = up.check_now()
                assert r.outcome == "failed" and "HashMismatchError" in (r.reason or "")
                assert rt.info.version == "v1" and "v2" not in up.status().bad  # retried later, not bad
                server.script("models/demo/v2.tflite", ["ok"])
                assert up.check_now().outcome == "promoted"
            else:
                server.script("models/demo/v2.tflite", [fault, "ok"])  # interrupted, then resumed
                r = up.check_now()
                assert (r.outcome, r.serving) == ("promoted", "v2"), r
                ranges = [h.get("Range") for p, _, h in server.requests if p == "models/demo/v2.tflite"]
                assert ranges[-1] is not None  # the second request resumed
        assert not loop.failed
        store_is_consistent(store)


def test_updater_needs_a_way_back(tmp_path):
    with Runtime(demo_model("v1")) as rt, pytest.raises(MisuseError, match="last-known-good"):
        Updater(rt, f"file://{tmp_path}", str(tmp_path / "store"), "demo", "d")


def test_no_traffic_stays_on_probation_and_stop_swaps_back(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    publish(str(repo), demo_model("v1"), model="demo", version="v1", channel="stable")
    store = str(tmp_path / "store")
    rt = Runtime.from_store(store, model="demo", default=demo_model("v1"), default_version="v1")
    publish(str(repo), demo_model("v2"), model="demo", version="v2", channel="stable")
    seen: list[ev.Event] = []
    up = Updater(rt, f"file://{repo}", store, "demo", "d", interval=3600, jitter=0,
                 probation=Probation(calls=10, seconds=0.0, check_every=0.01), on_event=seen.append)
    up.start()
    deadline = time.monotonic() + 60
    while up.status().probation is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    status = up.status()
    assert status.state == "probation" and "no traffic" in status.probation.waiting_for
    assert up.stop(timeout=30)
    assert rt.info.version == "v1" and isinstance(seen[-1], ev.RolledBack)
    assert up.status().last_result.outcome == "interrupted" and "v2" not in up.status().bad
    assert json.loads(pathlib.Path(store, "updater.json").read_text())["models"]["demo"]["probation"] is None
    rt.close()


# ------------------------------------------------------------ scheduling


def _scheduled(tmp_path, **kw):
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    publish(str(repo), demo_model("v1"), model="demo", version="v1", channel="stable")
    store = str(tmp_path / "store")
    rt = Runtime.from_store(store, model="demo", default=demo_model("v1"), default_version="v1")
    clock = ManualClock()
    up = Updater(rt, f"file://{repo}", Store(store, config=FAST), "demo", "d", clock=clock,
                 rng=random.Random(1), **kw)
    return repo, rt, clock, up


def test_interval_jitter_and_backoff(tmp_path):
    repo, rt, clock, up = _scheduled(tmp_path, interval=100.0, jitter=0.2, backoff=(10.0, 40.0))
    with rt, up:
        first = clock.next_wait()
        assert 0 <= first <= 20  # a random share of jitter * interval: no lockstep at boot
        clock.advance(first)
        after = clock.next_wait()
        assert up.status().last_result.outcome == "up_to_date" and 80 <= after <= 120
        os.rename(repo / "manifest.json", repo / "gone.json")
        clock.advance(after)
        waits = []
        for _ in range(4):
            waits.append(clock.next_wait())
            assert up.status().last_result.outcome == "failed"
            clock.advance(waits[-1])
        # 10, 20, 40, 40 seconds (times a jitter factor in [0.8, 1])
        for wait, base in zip(waits, (10, 20, 40, 40)):
            assert 0.8 * base <= wait <= base
        assert up.status().failures >= 4 and "manifest" in up.status().last_error
        os.rename(repo / "gone.json", repo / "manifest.json")
        clock.advance(clock.next_wait())
        wait = clock.next_wait()
        assert up.status().last_result.outcome == "up_to_date" and up.status().failures == 0
        assert 80 <= wait <= 120


def test_false_condition_delays_the_round(tmp_path):
    allowed = [False]

    def on_wifi() -> bool:
        return allowed[0]

    _repo, rt, clock, up = _scheduled(tmp_path, interval=600.0, jitter=0.0, condition_retry=60.0,
                                     conditions=[on_wifi])
    with rt, up:
        clock.advance(clock.next_wait())
        wait = clock.next_wait()
        status = up.status()
        assert status.last_result.outcome == "deferred" and wait == 60.0
        assert status.conditions == (("on_wifi", False),)
        allowed[0] = True
        clock.advance(wait)
        assert clock.next_wait() == 600.0 and up.status().last_result.outcome == "up_to_date"


def test_builtin_conditions(tmp_path):
    root = tmp_path / "power"
    assert OnPower(root=str(root))()  # no power-supply class at all: mains
    (root / "BAT0").mkdir(parents=True)
    (root / "BAT0" / "type").write_text("Battery\n")
    (root / "BAT0" / "capacity").write_text("30\n")
    (root / "AC").mkdir()
    (root / "AC" / "type").write_text("Mains\n")
    (root / "AC" / "online").write_text("0\n")
    assert not OnPower(50, root=str(root))()
    assert OnPower(25, root=str(root))()
    (root / "AC" / "online").write_text("1\n")
    assert OnPower(50, root=str(root))()
    assert FreeDisk(str(tmp_path), 0)() and not FreeDisk(str(tmp_path), 1 << 62)()
    clock = ManualClock(time.mktime((2026, 3, 1, 3, 30, 0, 0, 0, -1)))  # 03:30 local
    assert MaintenanceWindow("02:00", "05:00", clock)()
    assert not MaintenanceWindow("05:00", "06:00", clock)()
    assert MaintenanceWindow("23:00", "04:00", clock)()  # wraps midnight
    with pytest.raises(MisuseError, match="HH:MM"):
        MaintenanceWindow("25:00", "01:00")


def test_one_round_per_store_across_processes(tmp_path):
    """A round holding the store's round lock makes another process's background round 'busy'."""
    _repo, rt, clock, up = _scheduled(tmp_path, interval=100.0, jitter=0.0)
    with rt, up.state.round_lock(None):
        up.start()
        clock.advance(clock.next_wait())
        clock.next_wait()
        assert up.status().last_result.outcome == "busy"
        with pytest.raises(Exception, match="round"):
            up.check_now(timeout=0.05)
    up.stop()


def test_source_url_for_store_status_cli(tmp_path, capsys):
    from tflite_hotswap.cli import main
    repo = tmp_path / "repo"
    repo.mkdir()
    publish(str(repo), demo_model("v1"), model="demo", version="v1", channel="stable")
    store = str(tmp_path / "store")
    assert main(["follow", f"file://{repo}", store, "--model", "demo", "--device-id", "d", "--once",
                 "--default", demo_model("v1"), "--probation-calls", "0", "--probation-seconds", "0"]) == 0
    assert main(["status", store]) == 0
    out = capsys.readouterr().out
    assert "current          v1" in out and "last-known-good  v1" in out
    assert open_source(f"file://{repo}") is not None


def test_metrics(tmp_path):
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from tflite_hotswap.metrics import register
    _repo, rt, _clock, up = _scheduled(tmp_path)
    with rt:
        up.check_now()
        rt.run(__import__("numpy").zeros((1, 64), "float32"))
        registry = CollectorRegistry()
        register(rt, up, registry=registry)
        text = generate_latest(registry).decode()
        assert 'tflite_hotswap_calls_total{model="demo",version="v1"}' in text
        assert 'tflite_hotswap_updater_rounds_total{model="demo",outcome="up_to_date"} 1.0' in text
        assert "tflite_hotswap_latency_quantile_microseconds" in text
