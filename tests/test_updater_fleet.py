"""A simulated fleet of 10,000 device ids through rollout changes, channel moves and experiments."""

from __future__ import annotations

import pytest

from tflite_hotswap.delivery.manifest import Arm, Experiment, ModelEntry, Rollout, Version, choose_version
from tflite_hotswap.delivery.rollouts import fleet_assignment, fleet_ids, fleet_shares, fleet_table
from tflite_hotswap.serving.contract import Contract

DEVICES = fleet_ids(10_000)
TOLERANCE = 0.015


def _versions(*ids):
    return {v: Version(v, f"models/m/{v}.tflite", "0" * 64, 1, Contract((), ()), f"2026-01-0{i + 1}T00:00:00")
            for i, v in enumerate(ids)}


VERSIONS = _versions("v1", "v2", "v3", "v4")


def _entry(channel="v1", rollout=None, experiments=()):
    return ModelEntry(VERSIONS, {"stable": channel}, rollout, tuple(experiments))


def _on(entry, version):
    return {d for d, v in fleet_assignment(entry, "stable", DEVICES).items() if v == version}


def test_rollout_percentages_shares_sticky_and_monotonic():
    previous: set[str] = set()
    for percent in (1, 10, 25, 50, 75, 100):
        entry = _entry(rollout=Rollout("v2", percent, "m:v2"))
        on = _on(entry, "v2")
        assert abs(len(on) / len(DEVICES) - percent / 100) <= TOLERANCE
        assert previous <= on  # raising only adds devices
        assert on == _on(entry, "v2")  # sticky
        previous = on
    high = _on(_entry(rollout=Rollout("v2", 50, "m:v2")), "v2")
    low = _on(_entry(rollout=Rollout("v2", 20, "m:v2")), "v2")
    assert low <= high  # lowering removes the last added first


def test_rollout_ends_when_the_channel_moves_on():
    entry = _entry(channel="v1", rollout=Rollout("v2", 10, "m:v2"))
    assert abs(fleet_shares(entry, "stable")["v2"] - 0.10) <= TOLERANCE
    moved = _entry(channel="v3", rollout=Rollout("v2", 10, "m:v2"))  # v3 is newer than v2
    assert fleet_shares(moved, "stable") == {"v3": 1.0}
    done = _entry(channel="v2", rollout=Rollout("v2", 10, "m:v2"))
    assert fleet_shares(done, "stable") == {"v2": 1.0}


def test_experiment_added_and_removed():
    base = _entry(channel="v2", rollout=Rollout("v3", 20, "m:v3"))
    exp = Experiment("quant", "q1", (Arm("v4", 1), Arm("v2", 3)))
    with_exp = _entry(channel="v2", rollout=Rollout("v3", 20, "m:v3"), experiments=[exp])
    shares = fleet_shares(with_exp, "stable")
    assert abs(shares["v4"] - 0.25) <= TOLERANCE and abs(shares["v2"] - 0.75) <= TOLERANCE
    assert fleet_assignment(with_exp, "stable", DEVICES) == fleet_assignment(with_exp, "stable", DEVICES)
    after = fleet_shares(base, "stable")
    assert abs(after["v3"] - 0.20) <= TOLERANCE
    assert fleet_assignment(base, "stable", DEVICES) == fleet_assignment(
        _entry(channel="v2", rollout=Rollout("v3", 20, "m:v3")), "stable", DEVICES)


def test_bad_versions_are_skipped():
    entry = _entry(channel="v1", rollout=Rollout("v2", 100, "m:v2"))
    assert choose_version(entry, "d", exclude={"v2"}) == "v1"
    with pytest.raises(Exception, match="marked bad"):
        choose_version(entry, "d", exclude={"v1", "v2"})


def test_fleet_table_text():
    from tflite_hotswap.delivery.manifest import Manifest
    text = fleet_table(Manifest(1, {"m": _entry(rollout=Rollout("v2", 10, "m:v2"))}))
    assert "m [stable]:" in text and "v2 10." in text or "v2 9." in text


def test_cli_rollout_and_experiment(tmp_path, capsys):
    from updater_helpers import demo_model

    from tflite_hotswap.cli import main
    repo = str(tmp_path / "repo")
    assert main(["publish", repo, demo_model("v1"), "--model", "m", "--version", "v1", "--channel", "stable"]) == 0
    assert main(["publish", repo, demo_model("v2"), "--model", "m", "--version", "v2"]) == 0
    assert main(["rollout", repo, "m", "--version", "v2", "--percent", "10"]) == 0
    out = capsys.readouterr().out
    assert "rollout 10%" in out and "m [stable]:" in out
    assert main(["experiment", repo, "m", "ab", "--arm", "v1:1", "--arm", "v2:1"]) == 0
    assert "ab:1" in capsys.readouterr().out
    assert main(["experiment", repo, "m", "ab", "--remove"]) == 0
    assert main(["rollout", repo, "m", "--end"]) == 0
    assert main(["rollout", repo, "m", "--version", "nope", "--percent", "5"]) == 2
    # Moving the channel ends a rollout of another version.
    assert main(["rollout", repo, "m", "--version", "v2", "--percent", "10"]) == 0
    assert main(["publish", repo, demo_model("v3"), "--model", "m", "--version", "v3", "--channel", "stable"]) == 0
    assert "rollout" not in capsys.readouterr().out.split("model m")[-1].split("simulated")[0].replace(
        "rollout 10%", "")
