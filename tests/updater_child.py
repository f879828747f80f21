"""A device process for the crash tests: serve from the store, loop, and run rounds until killed.

    python updater_child.py STORE SOURCE_URL

Prints ``serving <version>`` once the runtime is open, then one line per round
and ``probation <version>`` when a probation starts.
"""

import json
import sys
import threading

import numpy as np
from updater_helpers import demo_model

from tflite_hotswap import Probation, Runtime, Updater
from tflite_hotswap.updater.events import ProbationStarted
from tflite_hotswap.updater.state import UpdaterState

store, url = sys.argv[1:3]
rt = Runtime.from_store(store, model="demo", default=demo_model("v1"))
# What recovery left, read before any round can change it (a pass clears a version's deaths).
print("serving", rt.info.version, json.dumps(UpdaterState(store).model("demo")["deaths"]), flush=True)


def loop() -> None:
    x = np.zeros((1, 64), np.float32)
    while True:
        rt.run(x)
        threading.Event().wait(0.001)


threading.Thread(target=loop, daemon=True).start()


def on_event(event: object) -> None:
    if isinstance(event, ProbationStarted):  # the test's cue to kill during a probation
        print("probation", event.version, flush=True)


up = Updater(rt, url, store, "demo", "device-1", on_event=on_event,
             probation=Probation(calls=20, seconds=0.6, check_every=0.02, min_baseline_calls=10 ** 9))
while True:
    result = up.check_now()
    print("round", result.outcome, result.version, result.serving, flush=True)
