"""The command line's user errors: one line on stderr, no traceback, a meaningful exit status."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import model_path
from delivery_helpers import blob_repo
from servers import fault_server, nginx
from tflite_hotswap.cli import main
from tflite_hotswap.delivery.repository import load_manifest, publish
from tflite_hotswap.delivery.sources import FileSource, open_source
from tflite_hotswap.errors import IncompatibleModelError, MisuseError


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_ctrl_c_exits_130_with_one_line(tmp_path):
    with fault_server() as server:
        server.put("manifest.json", b" " * 10_000)
        server.script("manifest.json", ["trickle"])  # one byte every 50 ms: the command waits
        # Python's own SIGINT handler even where the suite was started in the
        # background by a shell without job control, which leaves SIGINT ignored.
        interruptible = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                         "runpy.run_module('tflite_hotswap.cli', run_name='__main__', alter_sys=True)")
        proc = subprocess.Popen([sys.executable, "-c", interruptible, "fetch", server.url,
                                 str(tmp_path / "store"), "--model", "m"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        deadline = time.monotonic() + 60
        while not server.requests and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert server.requests, "the command never asked for the manifest"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err)  # 128 + SIGINT, as shells report it
    assert err.strip().splitlines() == ["interrupted"], err


def test_repository_path_that_is_a_file(tmp_path, capsys):
    a_file = tmp_path / "repo.txt"
    a_file.write_text("not a repository")
    assert main(["repo", "show", str(a_file)]) == 2
    _one_line_error(capsys, "expected a folder, found a file")
    assert main(["publish", str(a_file), model_path("version_1"), "--model", "det", "--version", "v1"]) == 2
    _one_line_error(capsys, "expected a folder, found a file")
    assert main(["fetch", str(a_file), str(tmp_path / "store"), "--model", "det"]) == 2
    _one_line_error(capsys, "expected a folder, got a file")


def test_repo_show_of_a_missing_folder_is_an_error(tmp_path, capsys):
    assert main(["repo", "show", str(tmp_path / "nowhere")]) == 2
    _one_line_error(capsys, "expected a folder, found nothing")
    (tmp_path / "empty").mkdir()
    assert main(["repo", "show", str(tmp_path / "empty")]) == 2
    _one_line_error(capsys, "expected manifest.json")
    assert capsys.readouterr().out == ""


def test_file_url_must_be_absolute(tmp_path, capsys, monkeypatch):
    repo = tmp_path / "repo"
    blob_repo(str(repo), 1, 100)
    monkeypatch.chdir(tmp_path)
    assert main(["fetch", "file://repo", str(tmp_path / "store"), "--model", "m"]) == 2
    _one_line_error(capsys, "expected file:///absolute/path (three slashes)", "'file://repo'")
    with pytest.raises(MisuseError, match="three slashes"):
        open_source("file:repo")
    # The documented ways: three slashes (or localhost), or a plain path resolved against the cwd.
    for url in (f"file://{repo}", f"file://localhost{repo}", "repo", "./repo"):
        source = open_source(url)
        assert isinstance(source, FileSource) and source.root == str(repo), url
    assert main(["fetch", "repo", str(tmp_path / "store"), "--model", "m"]) == 0


def test_http_404_shows_status_and_reason_not_the_page(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with nginx(str(tmp_path / "empty"), tmp_path / "nginx") as server:
        assert main(["fetch", server.url, str(tmp_path / "store"), "--model", "m"]) == 2
    line = _one_line_error(capsys, "HTTPStatusError", "got 404 Not Found")
    assert "<" not in line and "html" not in line.lower(), line


def test_publish_refuses_a_contract_change_unless_allowed(tmp_path, capsys):
    repo = str(tmp_path / "repo")
    publish(repo, model_path("version_1"), model="det", version="v1", channel="stable")
    publish(repo, model_path("version_2"), model="det", version="v2", channel="beta")  # same contract: fine
    with pytest.raises(IncompatibleModelError, match="expected the I/O contract of the versions on its channels") \
            as caught:
        publish(repo, model_path("dense_512k"), model="det", version="v3")
    assert any(d.startswith("stable (v1): input 'x': expected shape (1, 16), got (1, 256)")
               for d in caught.value.differences), caught.value.differences
    assert main(["publish", repo, model_path("dense_512k"), "--model", "det", "--version", "v3"]) == 2
    _one_line_error(capsys, "IncompatibleModelError", "--allow-contract-change")
    assert sorted(load_manifest(repo).models["det"].versions) == ["v1", "v2"]
    assert not os.path.exists(os.path.join(repo, "models", "det", "v3.tflite"))
    assert main(["publish", repo, model_path("dense_512k"), "--model", "det", "--version", "v3",
                 "--channel", "stable", "--allow-contract-change"]) == 0
    assert load_manifest(repo).models["det"].channels == {"stable": "v3", "beta": "v2"}
