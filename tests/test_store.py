"""The on-device store: crash safety under SIGKILL, processes sharing it, retention, state."""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import model_bytes, model_path
from delivery_helpers import FAST, blob, blob_repo, store_is_consistent, version_for
from servers import fault_server
from tflite_hotswap import Runtime
from tflite_hotswap.errors import HotswapError, ManifestError, SerialRollbackError, StorageError
from tflite_hotswap.delivery.sources import open_source
from tflite_hotswap.delivery.repository import load_manifest, publish
from tflite_hotswap.delivery.store import Store

CHILD = os.path.join(os.path.dirname(__file__), "store_child.py")
V1 = version_for(model_bytes("version_1"), "models/m/v1.tflite", "v1")
V2 = version_for(model_bytes("dense_512k"), "models/m/v2.tflite", "v2")


def _child(*args):
    return subprocess.Popen([sys.executable, CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _version_json(v):
    return json.dumps({"id": v.id, "url": v.url, "sha256": v.sha256, "size": v.size})


@pytest.fixture(scope="module")
def server():
    with fault_server() as s:
        s.put(V1.url, model_bytes("version_1"))
        s.put(V2.url, model_bytes("dense_512k"))
        s.script(V2.url, ["slow"])
        yield s


def _seeded_store(root, server):
    store = Store(root, config=FAST)
    store.fetch(open_source(server.url), "m", V1)
    store.mark_current("m", "v1")
    return store


def test_download_killed_at_random_moments(tmp_path, server):
    """40 fetch processes SIGKILLed at random: the store always opens consistent and LKG loads."""
    template = str(tmp_path / "template")
    _seeded_store(template, server)
    rng = random.Random(5)
    outcomes = {"finished": 0, "killed": 0}
    for trial in range(40):
        root = str(tmp_path / f"trial{trial}")
        shutil.copytree(template, root)
        proc = _child("fetch", root, server.url, "m", _version_json(V2))
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        outcomes["finished" if proc.returncode == 0 else "killed"] += 1
        store = Store(root, config=FAST)  # recovery runs here
        store_is_consistent(root)
        partial = os.listdir(os.path.join(root, "partial"))
        assert all(p.endswith((".part", ".json")) for p in partial)
        state = store.state("m")
        assert state.last_known_good in ("v1", "v2")
        with Runtime(store.path_of("m", state.last_known_good)) as rt:
            assert rt.info.sha256 == (V1 if state.last_known_good == "v1" else V2).sha256
        # Whatever the crash left, finishing the download gives the right bytes.
        path = store.fetch(open_source(server.url), "m", V2)
        assert hashlib.sha256(open(path, "rb").read()).hexdigest() == V2.sha256
        shutil.rmtree(root)
    assert outcomes["killed"] >= 10, outcomes


def test_publish_killed_at_random_moments(tmp_path):
    """20 publish processes SIGKILLed at random: the manifest is old or new, never broken."""
    template = str(tmp_path / "template")
    publish(template, model_path("version_1"), model="m", version="v1", channel="stable")
    rng = random.Random(6)
    for trial in range(20):
        repo = str(tmp_path / f"repo{trial}")
        shutil.copytree(template, repo)
        proc = _child("publish", repo, model_path("dense_20mb"), "m", "v2")
        time.sleep(rng.uniform(0.1, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        manifest = load_manifest(repo)
        assert manifest.serial in (1, 2)
        for version in manifest.models["m"].versions.values():
            with open(os.path.join(repo, version.url), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == version.sha256
        shutil.rmtree(repo)


def test_four_processes_download_once(tmp_path, server):
    root = str(tmp_path / "shared")
    Store(root, config=FAST)
    before = sum(1 for p, _, _ in server.requests if p == V2.url)
    procs = [_child("fetch", root, server.url, "m", _version_json(V2)) for _ in range(4)]
    paths = set()
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
        paths.add(out.decode().strip())
    assert len(paths) == 1
    assert hashlib.sha256(open(paths.pop(), "rb").read()).hexdigest() == V2.sha256
    assert sum(1 for p, _, _ in server.requests if p == V2.url) - before == 1
    store_is_consistent(root)


def test_corrupt_object_is_deleted_on_open(tmp_path, server):
    root = str(tmp_path / "s")
    store = _seeded_store(root, server)
    path = store.path_of("m", "v1")
    with open(path, "r+b") as f:
        f.write(b"XXXX")
    Store(root, config=FAST)
    assert not os.path.exists(path)
    with pytest.raises(StorageError, match="expected a stored file"):
        Store(root, config=FAST).path_of("m", "v1")


def test_retention_keeps_current_lkg_and_newest(tmp_path):
    root = str(tmp_path / "s")
    store = Store(root, keep=1, config=FAST)
    blobs = {f"v{i}": blob(1000 + i, seed=i) for i in range(5)}
    with fault_server() as s:
        for vid, data in blobs.items():
            s.put(f"m/{vid}", data)
            store.fetch(open_source(s.url), "m", version_for(data, f"m/{vid}", vid))
            time.sleep(0.01)
    store.mark_current("m", "v1")          # last-known-good v1
    store.mark_current("m", "v2", good=False)  # current v2 (not yet proven)
    removed = store.prune()
    kept = {v for v in blobs if os.path.exists(store.object_path(hashlib.sha256(blobs[v]).hexdigest()))}
    assert kept == {"v1", "v2", "v4"} and len(removed) == 2
    assert set(store.state("m").versions) == {"v1", "v2", "v4"}


def test_bad_versions_and_state_record(tmp_path, server):
    store = _seeded_store(str(tmp_path / "s"), server)
    store.fetch(open_source(server.url), "m", V2)
    store.mark_current("m", "v2", good=False)
    store.mark_bad("m", "v2", "p99 latency 3x baseline")
    state = store.state("m")
    assert (state.current, state.last_known_good, state.bad) == ("v1", "v1", {"v2": "p99 latency 3x baseline"})
    with pytest.raises(StorageError, match="expected a stored version"):
        store.mark_current("m", "v9")


def test_manifest_serial_going_backwards_is_refused(tmp_path):
    repo = str(tmp_path / "repo")
    publish(repo, model_path("version_1"), model="m", version="v1", channel="stable")
    publish(repo, model_path("version_2"), model="m", version="v2")
    store = Store(str(tmp_path / "s"), config=FAST)
    manifest, _ = store.refresh_manifest(open_source(repo))
    assert manifest.serial == 2
    old = json.loads(open(os.path.join(repo, "manifest.json")).read())
    old["serial"] = 1
    with open(os.path.join(repo, "manifest.json"), "w") as f:
        json.dump(old, f)
    with pytest.raises(SerialRollbackError, match="expected >= 2"):
        store.refresh_manifest(open_source(repo))
    assert json.loads(open(os.path.join(store.root, "state.json")).read())["max_serial"] == 2


# ------------------------------------------------- hardening (issue 6: 22, 23, 24)

def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


DAMAGE = {
    "state lock is a folder": lambda root, sha: os.mkdir(os.path.join(root, ".lock")),
    "state is a list": lambda root, sha: _write(os.path.join(root, "state.json"), "[]"),
    "models is a list": lambda root, sha: _write(os.path.join(root, "state.json"), '{"format": 1, "models": []}'),
    "model record lacks fields": lambda root, sha: _write(
        os.path.join(root, "state.json"),
        '{"format": 1, "max_serial": null, "manifest_etag": null, "models": {"m": {}}}'),
    "recorded sha256 escapes": lambda root, sha: _write(
        os.path.join(root, "state.json"),
        '{"format": 1, "max_serial": null, "manifest_etag": null, "models": {"m": {"current": "v0", '
        '"last_known_good": "v0", "bad": {}, "versions": {"v0": {"sha256": "../../x", "stored_at": 1}}}}}'),
    "serial beyond 63 bits": lambda root, sha: _write(
        os.path.join(root, "state.json"),
        '{"format": 1, "max_serial": %d, "manifest_etag": null, "models": {}}' % 10**30),
    "state nested too deep": lambda root, sha: _write(os.path.join(root, "state.json"), "[" * 100_000),
    "object is a folder": lambda root, sha: os.makedirs(os.path.join(root, "objects", sha)),
    "partial file is a folder": lambda root, sha: (os.makedirs(os.path.join(root, "partial", sha + ".part")),
                                                   _write(os.path.join(root, "partial", sha + ".json"), "[]")),
    "download lock is a folder": lambda root, sha: os.makedirs(os.path.join(root, "locks", sha + ".lock")),
    "stored manifest is a folder": lambda root, sha: os.makedirs(os.path.join(root, "manifest.json")),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_store_gives_typed_errors_only(tmp_path, damage):
    """Whatever is damaged, every operation either works or raises a HotswapError (StorageError)."""
    repo = str(tmp_path / "repo")
    version = blob_repo(repo, 1, 1000).version("m", "v0")
    root = str(tmp_path / "store")
    for sub in ("objects", "partial", "locks"):
        os.makedirs(os.path.join(root, sub))
    DAMAGE[damage](root, version.sha256)
    source = open_source(repo)
    outcomes = {}
    operations = {
        "open": lambda: Store(root, config=FAST),
        "manifest": lambda: Store(root, config=FAST).refresh_manifest(source),
        "fetch": lambda: Store(root, config=FAST).fetch(source, "m", version),
        "state": lambda: Store(root, config=FAST).state("m"),
        "path_of": lambda: Store(root, config=FAST).path_of("m", "v0"),
        "prune": lambda: Store(root, config=FAST).prune(),
    }
    for name, operation in operations.items():
        try:
            operation()
            outcomes[name] = "ok"
        except HotswapError as e:
            outcomes[name] = type(e).__name__
            assert isinstance(e, StorageError) or name == "path_of", (name, e)
    if damage in ("object is a folder", "partial file is a folder", "download lock is a folder"):
        assert outcomes["fetch"] == "ok", outcomes  # recovery removed what did not belong
        store_is_consistent(root)
    if damage == "recorded sha256 escapes":
        assert outcomes["path_of"] == "StorageError" and not os.path.exists(tmp_path / "x")


def test_serial_beyond_63_bits_does_not_lock_out_later_manifests(tmp_path):
    repo = str(tmp_path / "repo")
    blob_repo(repo, 1, 100, serial=10**4000)
    store = Store(str(tmp_path / "s"), config=FAST)
    with pytest.raises(ManifestError, match="serial: expected an integer from"):
        store.refresh_manifest(open_source(repo))
    blob_repo(repo, 1, 100, serial=5)
    assert store.refresh_manifest(open_source(repo))[0].serial == 5


def test_prune_in_another_process_never_deletes_what_fetch_returns(tmp_path):
    """A fetch loop (keep=1: every fetch downloads again) against a prune loop in another process."""
    repo = str(tmp_path / "repo")
    blob_repo(repo, 4, 64 * 1024)
    root = str(tmp_path / "store")
    Store(root, keep=1, config=FAST)
    pruner = _child("prune-loop", root)
    try:
        fetcher = _child("fetch-loop", root, repo, "200")
        out, err = fetcher.communicate(timeout=300)
        assert fetcher.returncode == 0, err.decode()
    finally:
        pruner.kill()
        pruner.wait()
    assert int(out) == 0, f"fetch returned a missing or wrong file {int(out)} times in 200"
    store_is_consistent(root)


def _wait_gone(pid, bound=30.0):
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} still exists {bound} s after SIGKILL")


def test_fetch_and_prune_killed_at_random_moments(tmp_path):
    """60 trials: a fetch loop and a prune loop in two processes on one store, both SIGKILLed at a
    random moment; the store must open consistent every time."""
    repo = str(tmp_path / "repo")
    blob_repo(repo, 4, 64 * 1024)
    template = str(tmp_path / "template")
    Store(template, keep=1, config=FAST)
    zygote = subprocess.Popen([sys.executable, CHILD, "zygote"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    rng = random.Random(23)
    try:
        for trial in range(60):
            root = str(tmp_path / f"trial{trial}")
            shutil.copytree(template, root)
            zygote.stdin.write(f"{root} {repo}\n")
            zygote.stdin.flush()
            pids = [int(p) for p in zygote.stdout.readline().split()]
            assert len(pids) == 2, "the zygote died"
            time.sleep(rng.uniform(0.01, 0.3))
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            for pid in pids:
                _wait_gone(pid)
            Store(root, keep=1, config=FAST)  # recovery
            try:
                store_is_consistent(root)
            except AssertionError as e:
                raise AssertionError(f"trial {trial}: {e}") from None
            shutil.rmtree(root)
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=30)


def test_recovery_and_prune_deletions_are_logged(tmp_path, caplog, server):
    import logging
    root = str(tmp_path / "s")
    store = _seeded_store(root, server)
    path = store.path_of("m", "v1")
    with open(path, "r+b") as f:
        f.write(b"XXXX")
    stray = hashlib.sha256(b"stray").hexdigest()
    with caplog.at_level(logging.INFO, logger="tflite_hotswap"):
        store = Store(root, config=FAST)
        store.fetch(open_source(server.url), "m", V1)
        with open(os.path.join(root, "objects", stray), "wb") as f:
            f.write(b"stray")  # a valid file nothing records
        assert store.prune() == [stray]
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("WARNING", f"store recovery: deleting {path} (content does not match the name)") in messages
    assert ("INFO", f"pruned {stray}") in messages


def test_record_refuses_a_version_whose_file_is_not_stored(tmp_path):
    store = Store(str(tmp_path / "s"), config=FAST)
    with pytest.raises(StorageError, match="expected its file .* in the store, found none"):
        store.record("m", V2)
    store_is_consistent(store.root)
