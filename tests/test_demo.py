"""The demo (the README's main job) runs, swaps, refuses the corrupt model, and fails no call."""

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
