"""Fuzz swap() for a bounded time: mutated real models must never kill or hang the server.

Runs tools/fuzz_swap.py (the serving process is its child; mutants are swapped
in one after another) for TFLITE_HOTSWAP_FUZZ_SECONDS (default 20) on the
backend under test.  Crashers it finds are kept under the test's tmp folder;
each one found becomes a fixture in tests/models with a test of its own.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

TOOL = pathlib.Path(__file__).resolve().parent.parent / "tools" / "fuzz_swap.py"


def test_mutated_models_never_kill_or_hang_the_serving_process(tmp_path):
    seconds = float(os.environ.get("TFLITE_HOTSWAP_FUZZ_SECONDS", "20"))
    done = subprocess.run([sys.executable, str(TOOL), "--seconds", str(seconds), "--seed", "6",
                           "--out", str(tmp_path / "crashers")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=seconds + 600, check=False)
    counts = json.loads(done.stdout)
    assert counts["mutants"] > 0
    assert counts["deaths"] == [], counts["deaths"]
    assert counts["hangs"] == [], counts["hangs"]
    assert counts["untyped"] == [], counts["untyped"]
    assert done.returncode == 0, done.stderr[-2000:]
