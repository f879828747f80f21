"""The publish and repo-show commands, and the repository they write."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import model_bytes, model_path
from tflite_hotswap.cli import main
from tflite_hotswap.errors import InvalidModelError, ManifestError, MisuseError
from tflite_hotswap.delivery.repository import load_manifest, publish


def test_publish_writes_model_manifest_and_bumps_serial(tmp_path, capsys):
    repo = str(tmp_path / "repo")
    assert main(["publish", repo, model_path("version_1"), "--model", "det", "--version", "v1",
                 "--channel", "stable"]) == 0
    assert main(["publish", repo, model_path("version_2"), "--model", "det", "--version", "v2",
                 "--channel", "beta", "--rollout", "10"]) == 0
    manifest = load_manifest(repo)
    assert manifest.serial == 2
    entry = manifest.models["det"]
    assert entry.channels == {"stable": "v1", "beta": "v2"}
    assert (entry.rollout.version, entry.rollout.percent) == ("v2", 10.0)
    v2 = entry.versions["v2"]
    data = model_bytes("version_2")
    assert (v2.sha256, v2.size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert open(os.path.join(repo, v2.url), "rb").read() == data
    assert [t.name for t in v2.contract.inputs] == ["x"] and v2.contract.inputs[0].shape == (1, 16)
    out = capsys.readouterr().out
    assert "serial 2" in out and "rollout 10%" in out


def test_same_version_with_other_content_is_refused(tmp_path, capsys):
    repo = str(tmp_path / "repo")
    publish(repo, model_path("version_1"), model="det", version="v1")
    with pytest.raises(MisuseError, match="exists with different content"):
        publish(repo, model_path("version_2"), model="det", version="v1")
    assert main(["publish", repo, model_path("version_2"), "--model", "det", "--version", "v1"]) == 2
    assert "exists with different content" in capsys.readouterr().err
    # The same content again is fine: it only moves the channel.
    assert publish(repo, model_path("version_1"), model="det", version="v1", channel="stable").serial == 2


def test_invalid_model_and_names_are_refused(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(model_bytes("version_1")[:1000])
    with pytest.raises(InvalidModelError):
        publish(str(tmp_path / "repo"), str(bad), model="det", version="v1")
    with pytest.raises(MisuseError, match="expected 1-64 of"):
        publish(str(tmp_path / "repo"), model_path("version_1"), model="../det", version="v1")
    assert not os.path.exists(tmp_path / "repo" / "manifest.json")


def test_golden_sample(tmp_path):
    golden = tmp_path / "golden.npz"
    x = np.zeros((1, 16), np.float32)
    np.savez(golden, **{"inputs/x": x, "outputs/shifted": x + 1, "outputs/tag": np.ones((1, 1), np.float32)})
    repo = str(tmp_path / "repo")
    manifest = publish(repo, model_path("version_1"), model="det", version="v1", golden=str(golden),
                       golden_tolerance=1e-3)
    g = manifest.models["det"].versions["v1"].golden
    assert g.tolerance == 1e-3 and g.sha256 == hashlib.sha256(golden.read_bytes()).hexdigest()
    np.savez(golden, **{"inputs/x": x})
    with pytest.raises(ManifestError, match="expected arrays"):
        publish(repo, model_path("version_1"), model="det", version="v2", golden=str(golden))


def test_repo_show_command(tmp_path):
    repo = str(tmp_path / "repo")
    publish(repo, model_path("version_1"), model="det", version="v1", channel="stable")
    # cwd away from the source tree: the installed package is the one under test.
    result = subprocess.run([sys.executable, "-m", "tflite_hotswap.cli", "repo", "show", repo],
                            capture_output=True, text=True, check=True, cwd=tmp_path)
    assert "model det" in result.stdout and "stable" in result.stdout
    doc = json.loads(open(os.path.join(repo, "manifest.json")).read())
    assert doc["schema_version"] == 1 and doc["serial"] == 1


def test_fetch_command_with_progress(tmp_path, capsys):
    repo = str(tmp_path / "repo")
    publish(repo, model_path("dense_20mb"), model="big", version="v1", channel="stable")
    assert main(["fetch", f"file://{repo}", str(tmp_path / "store"), "--model", "big"]) == 0
    captured = capsys.readouterr()
    assert "big v1:" in captured.out and "[###" in captured.err and "MB/s" in captured.err


def test_a_model_with_several_signatures_is_published_with_the_one_devices_run(tmp_path, capsys):
    repo = str(tmp_path / "repo")
    trainable = model_path("trainable_mlp")  # train, infer, get_weights, set_weights
    with pytest.raises(MisuseError, match="expected one of them"):
        publish(repo, trainable, model="clf", version="v1")
    assert main(["publish", repo, trainable, "--model", "clf", "--version", "v1", "--signature", "infer"]) == 0
    v1 = load_manifest(repo).models["clf"].versions["v1"]
    assert [t.name for t in v1.contract.inputs] == ["x"] and [t.name for t in v1.contract.outputs] == ["outputs"]
    assert main(["publish", repo, trainable, "--model", "clf", "--version", "v2", "--signature", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
