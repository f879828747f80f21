"""The training demo personalises the bundled classifier while serving, fails no call, restores on restart."""

import re
import subprocess
import sys


def test_training_demo_runs_clean(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tflite_hotswap.demo.training", "--epochs", "4"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    before = float(re.search(r"held-out accuracy before: ([0-9.]+)", out).group(1))
    after = float(re.search(r"held-out accuracy after: ([0-9.]+)", out).group(1))
    assert after > before + 0.5
    assert "failed 0, mixed or unknown results 0" in out
    restored = r"restart: a new process restored checkpoint \d+; held-out accuracy "
    assert re.search(restored + f"{after:.3f}", out)
    assert "result: OK" in out
