"""SIGKILL during Checkpoints.save: latest() is always a complete checkpoint (real processes)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np

from tflite_hotswap.training import Checkpoints

TRIALS = 60
BASE = "ab" * 32

# Saves numbers argv[2]+1 .. argv[4], then waits to be killed; every tensor of save
# number N is filled with N, and so is its step.
CHILD = r"""
import sys
import numpy as np
from tflite_hotswap.training import Checkpoints
ckpts = Checkpoints(sys.argv[1], keep=3)
for n in range(int(sys.argv[2]) + 1, int(sys.argv[4]) + 1):
    weights = {"w": np.full((256, 1024), n, np.float32), "b": np.full(64, n, np.int32)}
    print("saving", n, flush=True)
    ckpts.save(weights, base_sha256=sys.argv[3], step=n, metrics={"val_accuracy": n / 1e6})
    print("saved", n, flush=True)
sys.stdin.read()
"""


def test_sigkill_during_save_leaves_latest_complete(tmp_path):
    rng = random.Random(1234)
    folder = str(tmp_path / "ckpt")
    last_saved = 0
    outcomes = {"during": 0, "between": 0}
    for trial in range(TRIALS):
        target = last_saved + rng.randint(1, 3)
        child = subprocess.Popen([sys.executable, "-c", CHILD, folder, str(last_saved), BASE, str(target)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 cwd=tmp_path)  # not the source tree
        assert child.stdout is not None and child.stdin is not None
        state = ""
        for line in child.stdout:  # wait on the child's own report, not on time
            state, number = line.split()
            if state == "saving" and int(number) == target:
                break
        # Somewhere in the write, the fsync, the rename or the pruning.
        time.sleep(rng.random() * 0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        child.stdin.close()
        ckpts = Checkpoints(folder, keep=3)
        latest = ckpts.latest(BASE)
        assert latest is not None, f"trial {trial}: no checkpoint after the first save"
        tensors = ckpts.load(latest)
        n = latest.step
        assert n in (target, target - 1), \
            f"trial {trial}: latest is step {n}, expected {target - 1} or {target}"
        assert np.all(tensors["w"] == n) and np.all(tensors["b"] == n) and tensors["w"].shape == (256, 1024)
        assert latest.metrics == {"val_accuracy": n / 1e6}
        outcomes["during" if n == target - 1 else "between"] += 1
        last_saved = max(i.step for i in ckpts.list(BASE))
        # No partial file is ever listed, and temp files of the killed process are cleaned up.
        for info in ckpts.list(BASE):
            assert ckpts.load(info)["b"][0] == info.step
        assert not [f for f in os.listdir(folder) if f.startswith(".tmp-")]
    print("kills before the new checkpoint was in place, after:", outcomes)
    # The kills landed on both sides of the rename (else the test proves little).
    assert outcomes["during"] > 0 and outcomes["between"] > 0, outcomes


SAVER = r"""
import sys
import numpy as np
from tflite_hotswap.training import Checkpoints
ckpts = Checkpoints(sys.argv[1], keep=1000)
sys.stdin.readline()  # start together
for i in range(25):
    ckpts.save({"w": np.full(1000, int(sys.argv[2]) * 100 + i, np.int32)}, base_sha256=sys.argv[3], step=i)
"""


def test_processes_saving_at_once_get_distinct_complete_checkpoints(tmp_path):
    folder = str(tmp_path / "ckpt")
    children = [subprocess.Popen([sys.executable, "-c", SAVER, folder, str(k), BASE], stdin=subprocess.PIPE,
                                 text=True, cwd=tmp_path) for k in range(3)]
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    for child in children:
        child.stdin.close()
        assert child.wait() == 0
    infos = Checkpoints(folder, keep=1000).list(BASE)
    assert len(infos) == 75 and len({i.id for i in infos}) == 75
    values = sorted(int(Checkpoints(folder).load(i)["w"][0]) for i in infos)
    assert values == sorted(k * 100 + i for k in range(3) for i in range(25))
