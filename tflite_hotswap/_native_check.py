"""The native path's self-test, run in a throwaway process before hidden symbols are trusted.

``python -m tflite_hotswap._native_check <interpreter module>`` serves a shipped
model and trains a shipped trainable model through every native entry point
found (allocate, invoke, cancellation, a lent input, removing the delegates
of an interpreter the runtime frees; the train signature's runner where the
backend has one) and compares each result with the backend's
own wrapper.  Only when all agree does it print, as its last line, the token it
was given and what it tested; anything else (a crash included) keeps the
calling process on the wrapper.  See :mod:`tflite_hotswap.serving.native`.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from importlib import resources

import numpy as np

from .serving import native


def main(interpreter_module: str, token: str) -> int:
    """Returns 0 when the native path gives the wrapper's results, 1 otherwise.

    On success the last line printed is a JSON list: ``token``, then what was
    tested (:func:`~tflite_hotswap.serving.native.identity` of each set of functions).
    """
    os.nice(10)  # a helper: the serving process comes first
    tested = native.trust_hidden_functions()  # this process is the test
    os.environ[native.LEND_ENV_VAR] = "1"  # lend every input that can be lent
    native.REMOVE_DELEGATES_MIN_BYTES = 0  # remove the delegates of every interpreter freed
    os.environ[native.ENV_VAR] = "1"
    from . import Runtime  # after the environment is set
    from .serving.backend import Backend
    from .serving.loader import SHIPPED_MODEL
    from .training import Trainer

    interpreter_class = importlib.import_module(interpreter_module).Interpreter
    backend = Backend("self-test", interpreter_class, False)
    served = SHIPPED_MODEL.read_bytes()
    memory = np.zeros(64 + 16, dtype=np.float32)  # 64-byte aligned, so the input is lent
    x = memory[(-memory.ctypes.data % 64) // 4:][:64].reshape(1, 64)
    x[:] = np.arange(64, dtype=np.float32).reshape(1, 64) / 7

    raw = backend.interpreter(served)
    raw.allocate_tensors()
    runner = raw.get_signature_runner()
    expected = runner(x=x)

    rt = Runtime(served, backend=_backend_name(interpreter_module), isolate=False)
    try:
        got = rt.run({"x": x})
        if rt.info.path != "native" or any(not np.array_equal(got[k], expected[k]) for k in expected):
            print(f"serving: path {rt.info.path}, outputs {got} against {expected}", file=sys.stderr)
            return 1
    finally:
        rt.close()

    trainable = resources.files("tflite_hotswap").joinpath("models/trainable_classifier.tflite").read_bytes()
    features = np.linspace(-1, 1, 32 * 16, dtype=np.float32).reshape(32, 16)
    labels = (np.arange(32) % 4).astype(np.int32)
    losses: dict[str, list[float]] = {}
    for path in ("native", "python"):
        os.environ[native.ENV_VAR] = "1" if path == "native" else "0"
        with Trainer(trainable, backend=_backend_name(interpreter_module)) as tr:
            if path == "native" and tr.path != "native":
                break  # no train-step functions found: nothing of them will be called
            losses[path] = [tr.step(features, labels) for _ in range(3)]
    if "python" in losses and losses["native"] != losses["python"]:
        print(f"training: native losses {losses['native']} against {losses['python']}", file=sys.stderr)
        return 1
    print(json.dumps([token, *sorted(tested)]))
    return 0


def _backend_name(interpreter_module: str) -> str:
    return interpreter_module.split(".")[0]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
