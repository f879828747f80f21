"""Downloads over loopback from nginx: the store beside curl, and bytes moved by a resume."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from delivery_helpers import blob, version_for  # noqa: E402
from servers import fault_server, nginx  # noqa: E402

from tflite_hotswap.delivery.sources import FetchConfig, open_source  # noqa: E402
from tflite_hotswap.delivery.store import Store  # noqa: E402

SIZE = 50 * 1024 * 1024
CONFIG = FetchConfig(disk_margin_bytes=0)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("download")
    data = blob(SIZE, seed=3)
    version = version_for(data, "models/big/v1.bin")
    (tmp / "repo" / "models" / "big").mkdir(parents=True)
    (tmp / "repo" / version.url).write_bytes(data)
    with nginx(str(tmp / "repo"), tmp / "nginx") as server:
        yield server, version, tmp


def test_curl_to_file(benchmark, served):
    server, version, tmp = served
    benchmark.group = "download-50MB"
    out = tmp / "curl.out"
    benchmark.pedantic(subprocess.run, args=(["curl", "-sf", "-o", str(out), server.url + version.url],),
                       kwargs={"check": True}, rounds=11, warmup_rounds=1)
    assert out.stat().st_size == SIZE


def test_store_fetch(benchmark, served):
    server, version, tmp = served
    benchmark.group = "download-50MB"
    root = tmp / "store"

    def fresh_store():
        shutil.rmtree(root, ignore_errors=True)
        return (Store(str(root), config=CONFIG), open_source(server.url)), {}

    def fetch(store, source):
        path = store.fetch(source, "big", version)
        assert os.path.getsize(path) == SIZE

    benchmark.pedantic(fetch, setup=fresh_store, rounds=11, warmup_rounds=1)


def test_resume_after_server_cut_at_half(benchmark, served):
    """The server drops the connection after half the file; the store resumes by itself."""
    _, version, tmp = served
    benchmark.group = "download-resume"
    data = (tmp / "repo" / version.url).read_bytes()

    def cut_then_resume():
        root = tmp / "resume-store"
        shutil.rmtree(root, ignore_errors=True)
        with fault_server() as server:
            server.put(version.url, data)
            server.script(version.url, ["cut", "ok"])
            Store(str(root), config=CONFIG).fetch(open_source(server.url), "big", version)
            assert [b for _, b, _ in server.requests] == ["cut", "ok"]
            return server.body_bytes[version.url]

    moved = benchmark.pedantic(cut_then_resume, rounds=1, iterations=1)
    benchmark.extra_info.update({"bytes_transferred": moved, "file_size": SIZE,
                                 "ratio": round(moved / SIZE, 4)})
    assert moved <= 1.05 * SIZE


def test_resume_after_client_interruption(benchmark, served):
    """The client stops at half (nginx); bytes already in socket buffers are lost, then resumed."""
    server, version, tmp = served
    benchmark.group = "download-resume"

    class Cut(Exception):
        pass

    def cut(done, total):
        if done >= total // 2:
            raise Cut()

    def cut_then_resume():
        root = tmp / "resume-store-2"
        shutil.rmtree(root, ignore_errors=True)
        before = len(server.transfers())
        with pytest.raises(Cut):
            Store(str(root), config=CONFIG).fetch(open_source(server.url), "big", version, progress=cut)
        Store(str(root), config=CONFIG).fetch(open_source(server.url), "big", version)
        return sum(sent for _, _, sent in server.transfers()[before:])

    moved = benchmark.pedantic(cut_then_resume, rounds=1, iterations=1)
    benchmark.extra_info.update({"bytes_transferred": moved, "file_size": SIZE,
                                 "ratio": round(moved / SIZE, 4)})
