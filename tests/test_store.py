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
from delivery_helpers import FAST, blob, store_is_consistent, version_for
from servers import fault_server
from tflite_hotswap import Runtime
from tflite_hotswap.errors import SerialRollbackError, StorageError
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
