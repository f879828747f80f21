"""Downloads into the store: nginx on loopback, and a fault-injecting server."""

import os

import pytest

from delivery_helpers import FAST, blob, store_is_consistent, version_for
from servers import fault_server, nginx
from tflite_hotswap.errors import (DiskFullError, DownloadTimeoutError, HashMismatchError,
                                   HTTPStatusError, LockTimeoutError, SizeExceededError,
                                   TransportError)
from tflite_hotswap.delivery.sources import FetchConfig, open_source
from tflite_hotswap.delivery.store import Store

DATA = blob(300_000, seed=1)
VERSION = version_for(DATA)
URL = VERSION.url


@pytest.fixture
def served(tmp_path):
    with fault_server() as server:
        server.put(URL, DATA)
        yield server, Store(str(tmp_path / "store"), config=FAST), open_source(server.url)


def _fetch(store, source, version=VERSION):
    path = store.fetch(source, "m", version)
    with open(path, "rb") as f:
        assert f.read() == (DATA if version is VERSION else f.read())
    return path


# ------------------------------------------------------------------- nginx

@pytest.fixture
def repo_on_nginx(tmp_path):
    root = tmp_path / "repo"
    (root / "models" / "m").mkdir(parents=True)
    (root / URL).write_bytes(DATA)
    with nginx(str(root), tmp_path / "nginx") as server:
        yield root, server


def test_nginx_plain_download(repo_on_nginx, tmp_path):
    root, server = repo_on_nginx
    store = Store(str(tmp_path / "store"), config=FAST)
    path = store.fetch(open_source(server.url), "m", VERSION)
    assert open(path, "rb").read() == DATA
    assert server.transfers() == [("/" + URL, 200, len(DATA))]
    assert store.fetch(open_source(server.url), "m", VERSION) == path  # stored: no second download
    assert len(server.transfers()) == 1


def test_nginx_conditional_manifest_get(repo_on_nginx, tmp_path):
    from tflite_hotswap.delivery.repository import publish
    root, server = repo_on_nginx
    publish(str(root), os.path.join(os.path.dirname(__file__), "models", "version_1.tflite"),
            model="det", version="v1", channel="stable")
    store = Store(str(tmp_path / "store"), config=FAST)
    manifest, changed = store.refresh_manifest(open_source(server.url))
    assert changed and manifest.models["det"].channels == {"stable": "v1"}
    again, changed = store.refresh_manifest(open_source(server.url))
    assert not changed and again is manifest  # 304: the parsed manifest is reused as is
    assert [status for uri, status, _ in server.transfers() if uri == "/manifest.json"] == [200, 304]


def test_nginx_range_resume(repo_on_nginx, tmp_path):
    root, server = repo_on_nginx
    store = Store(str(tmp_path / "store"), config=FAST)

    class Interrupted(Exception):
        pass

    def cut_at_half(done, total):
        if done >= total // 2:
            raise Interrupted()

    with pytest.raises(Interrupted):
        store.fetch(open_source(server.url), "m", VERSION, progress=cut_at_half)
    store = Store(str(tmp_path / "store"), config=FAST)  # as after a restart
    path = store.fetch(open_source(server.url), "m", VERSION)
    assert open(path, "rb").read() == DATA
    (_, first, _), (_, second, resumed_bytes) = server.transfers()
    assert (first, second) == (200, 206)
    assert resumed_bytes < len(DATA) * 0.6


# --------------------------------------------------------- fault injection

@pytest.mark.parametrize("script", [
    ["cut", "ok"], ["stall", "ok"], ["500", "ok"], ["429", "ok"], ["cut", "500", "cut", "ok"],
])
def test_transient_faults_are_retried_and_resumed(served, script):
    server, store, source = served
    server.script(URL, script)
    _fetch(store, source)
    behaviours = [b for path, b, _ in server.requests if path == URL]
    assert behaviours == script
    ranges = [headers.get("Range") for path, _, headers in server.requests if path == URL]
    if script[0] in ("cut", "stall"):
        assert ranges[1] is not None and ranges[1].startswith("bytes=")  # resumed, not restarted
    assert server.body_bytes[URL] < len(DATA) * 1.6


def test_404_is_not_retried(served):
    server, store, source = served
    server.script(URL, ["404"])
    with pytest.raises(HTTPStatusError, match="expected 200/206, got 404") as caught:
        store.fetch(source, "m", VERSION)
    assert caught.value.status == 404 and len(server.requests) == 1
    store_is_consistent(store.root)


def test_server_without_range_support_restarts_cleanly(served):
    server, store, source = served
    server.script(URL, ["cut", "no-range"])
    _fetch(store, source)
    assert server.requests[1][2].get("Range")  # asked to resume, got the whole file


def test_416_restarts_from_zero(served):
    server, store, source = served
    part = os.path.join(store.root, "partial", VERSION.sha256 + ".part")
    server.script(URL, ["cut", "416", "ok"])
    _fetch(store, source)
    assert not os.path.exists(part)


def test_changed_file_between_attempts_restarts(served):
    server, store, source = served
    old = blob(300_000, seed=99)
    server.files[URL] = old  # the first attempt gets an older file, cut half way...
    server.script(URL, ["cut", "ok"])
    original = server.next_behaviour

    def next_behaviour(path):
        behaviour = original(path)
        if behaviour == "ok":  # ...then the file is replaced (so its ETag changes)
            server.files[URL] = DATA
        return behaviour

    server.next_behaviour = next_behaviour
    _fetch(store, source)
    assert [b for _, b, _ in server.requests] == ["cut", "ok"]
    assert server.requests[1][2].get("If-Range")  # the resume was guarded by the old ETag...
    assert server.body_bytes[URL] == len(old) // 2 + len(DATA)  # ...so the whole new file came


def test_wrong_bytes_fail_hash_check_without_retry(served):
    server, store, source = served
    server.script(URL, ["wrong"])
    with pytest.raises(HashMismatchError, match=f"expected sha256 {VERSION.sha256}"):
        store.fetch(source, "m", VERSION)
    assert len(server.requests) == 1
    assert os.listdir(os.path.join(store.root, "partial")) == []
    store_is_consistent(store.root)


@pytest.mark.parametrize("behaviour", ["larger", "larger-unannounced"])
def test_body_larger_than_announced_stops_at_first_byte_over(served, behaviour):
    server, store, source = served
    server.script(URL, [behaviour])
    with pytest.raises(SizeExceededError, match=f"expected {len(DATA)} bytes"):
        store.fetch(source, "m", VERSION)
    assert os.listdir(os.path.join(store.root, "partial")) == []


def test_slow_trickle_hits_the_deadline(tmp_path):
    data = blob(2000)
    version = version_for(data)
    config = FetchConfig(**{**FAST.__dict__, "deadline": 1.0})
    with fault_server() as server:
        server.put(version.url, data)
        server.script(version.url, ["trickle"])
        store = Store(str(tmp_path / "store"), config=config)
        with pytest.raises(DownloadTimeoutError, match="deadline"):
            store.fetch(open_source(server.url), "m", version)
        assert len(server.requests) == 1


def test_connection_refused_is_a_transport_error(tmp_path):
    from servers import free_port
    store = Store(str(tmp_path / "store"), config=FAST)
    with pytest.raises(TransportError, match="ConnectionRefusedError"):
        store.fetch(open_source(f"http://127.0.0.1:{free_port()}/"), "m", VERSION)


def test_disk_space_is_checked_before_downloading(served):
    server, store, source = served
    store.config = FetchConfig(**{**FAST.__dict__, "disk_margin_bytes": 1 << 60})
    with pytest.raises(DiskFullError, match="bytes free"):
        store.fetch(source, "m", VERSION)
    assert server.requests == []


def test_lock_held_elsewhere_times_out(served):
    import fcntl
    server, store, source = served
    store.config = FetchConfig(**{**FAST.__dict__, "lock_timeout": 0.2})
    with open(os.path.join(store.root, "locks", VERSION.sha256 + ".lock"), "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(LockTimeoutError, match="held the lock"):
            store.fetch(source, "m", VERSION)


def test_progress_callback_reports_bytes(served):
    server, store, source = served
    seen = []
    store.fetch(source, "m", VERSION, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (len(DATA), len(DATA)) and all(t == len(DATA) for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_file_source_download_and_manifest(tmp_path):
    root = tmp_path / "repo"
    (root / "models" / "m").mkdir(parents=True)
    (root / URL).write_bytes(DATA)
    store = Store(str(tmp_path / "store"), config=FAST)
    assert open(store.fetch(open_source(f"file://{root}"), "m", VERSION), "rb").read() == DATA


# ------------------------------------------------- hardening (issue 6: 17, 22, 24)

def _within(bound, action):
    """Run ``action`` in a thread; return what it raised (or returned) if it ends within ``bound`` s."""
    import threading
    outcome = []

    def run():
        try:
            outcome.append(action())
        except BaseException as e:  # noqa: BLE001 (handed to the test)
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(bound)
    assert outcome, f"still running after {bound} s"
    return outcome[0]


def _deadline_config(deadline=1.0):
    return FetchConfig(**{**FAST.__dict__, "deadline": deadline})


@pytest.mark.parametrize("what", ["manifest", "file"])
def test_headers_trickled_slowly_hit_the_deadline(tmp_path, what):
    """Each header byte arrives well within the read timeout; the deadline still ends the request."""
    config = _deadline_config()
    with fault_server() as server:
        server.put("manifest.json", b"{}")
        server.put(URL, DATA)
        server.script("manifest.json" if what == "manifest" else URL, ["slow-headers"])
        store = Store(str(tmp_path / "store"), config=config)
        source = open_source(server.url)
        action = (lambda: store.refresh_manifest(source)) if what == "manifest" else \
            (lambda: store.fetch(source, "m", VERSION))
        error = _within(10 * config.deadline + 10, action)
    assert isinstance(error, DownloadTimeoutError) and "deadline" in str(error), error


def test_manifest_body_trickled_slowly_hits_the_deadline(tmp_path):
    from delivery_helpers import blob_repo
    blob_repo(str(tmp_path / "repo"), 1, 100)
    config = _deadline_config()
    with fault_server() as server:
        server.put("manifest.json", (tmp_path / "repo" / "manifest.json").read_bytes())  # ~1 KB: 50 s
        server.script("manifest.json", ["trickle"])
        store = Store(str(tmp_path / "store"), config=config)
        error = _within(10 * config.deadline + 10, lambda: store.refresh_manifest(open_source(server.url)))
    assert isinstance(error, DownloadTimeoutError) and "deadline" in str(error), error


def test_206_from_another_offset_restarts_once_then_fails_typed(served):
    """A server that always answers another range: no recursion, a TransportError, few requests."""
    server, store, source = served
    server.script(URL, ["bad-range"])
    with pytest.raises(TransportError, match="expected the body from byte 0, got Content-Range 'bytes 1-"):
        store.fetch(source, "m", VERSION)
    assert len(server.requests) <= 2
    store_is_consistent(store.root)


def test_304_to_the_first_manifest_request_is_a_transport_error(served):
    server, store, source = served
    server.put("manifest.json", b"{}")
    server.script("manifest.json", ["304"])
    with pytest.raises(TransportError, match="'not modified' to a request that named no ETag"):
        store.refresh_manifest(source)
    assert "If-None-Match" not in server.requests[0][2]


def test_http_errors_name_status_and_reason_not_the_body(repo_on_nginx, tmp_path):
    root, server = repo_on_nginx  # nginx answers 404 with an HTML page
    store = Store(str(tmp_path / "store"), config=FAST)
    with pytest.raises(HTTPStatusError) as caught:
        store.refresh_manifest(open_source(server.url))
    message = str(caught.value)
    assert message.endswith("expected 200/206, got 404 Not Found") and "<" not in message, message


def test_downloads_retries_and_resumes_are_logged_and_nothing_printed(served, caplog, capsys):
    import logging
    server, store, source = served
    server.script(URL, ["cut", "ok"])
    with caplog.at_level(logging.INFO, logger="tflite_hotswap"):
        _fetch(store, source)
    messages = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert ("tflite_hotswap.delivery.store", "INFO", f"downloading {URL} ({len(DATA)} bytes)") in messages
    assert any(name == "tflite_hotswap.delivery.sources" and level == "WARNING" and "attempt 1 of 4 failed" in m
               and "retrying" in m for name, level, m in messages), messages
    assert ("tflite_hotswap.delivery.store", "INFO", f"downloaded {URL}: {len(DATA)} bytes, sha256 verified") \
        in messages
    assert capsys.readouterr() == ("", "")


def test_resumed_download_and_manifest_refresh_are_logged(tmp_path, caplog):
    import logging
    from delivery_helpers import blob_repo
    manifest = blob_repo(str(tmp_path / "repo"), 1, 300_000, serial=7)
    version = manifest.version("m", "v0")
    store = Store(str(tmp_path / "store"), config=FAST)
    source = open_source(str(tmp_path / "repo"))

    class Interrupted(Exception):
        pass

    def cut_at_half(done, total):
        if done >= total // 2:
            raise Interrupted()

    store.config = FetchConfig(**{**FAST.__dict__, "chunk_bytes": 4096})
    with pytest.raises(Interrupted):
        store.fetch(source, "m", version, progress=cut_at_half)
    with caplog.at_level(logging.INFO, logger="tflite_hotswap"):
        store.refresh_manifest(source)
        store.fetch(source, "m", version)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"resuming {version.url} at byte ") for m in messages), messages
    assert any(m.startswith("manifest serial 7 accepted") for m in messages), messages
