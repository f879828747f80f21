"""The demos run clean: the story (the README's main job) and the hot-swap stress loop."""

import subprocess
import sys


def test_demo_runs_clean(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tflite_hotswap.demo", "--seconds", "2.5", "--swap-every", "0.3"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "swap to corrupt refused (InvalidModelError" in out
    assert "refused" in out and "failed or mixed-version calls 0" in out and "OK, no failed call" in out
    for version in ("v1", "v2", "v3"):
        assert f"\n  {version} " in out  # each version served calls


def test_story_demo_tells_the_whole_story(tmp_path):
    """The main job (bash tools/demo.sh): adopt, refuse, roll back, crash-loop protection, rollout."""
    result = subprocess.run([sys.executable, "-m", "tflite_hotswap.demo.story"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "bad v3: golden output" in out
    assert "bad v4: failed probation" in out
    assert "bad v5: the process died during its probation 2 times" in out
    assert "failed calls 0" in out and "result: OK, no failed call" in out
    for event in ("Promoted            v2", "RolledBack          v4", "Promoted            v6"):
        assert event in out
