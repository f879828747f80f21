"""Demo: personalise a served classifier on the device while its inference loop keeps running.

Run ``python -m tflite_hotswap.demo.training`` (no network, no TensorFlow).
A bundled trainable classifier (``models/trainable_classifier.tflite``, made by
``tools/make_trainable_models.py`` with ``make_trainable``) serves a tight
inference loop.  The device's data has drifted from what the model was
trained on (a synthetic shift of each class toward the next one), so its
held-out accuracy is poor.  A background thread trains it on the device's
data; ``publish`` validates the trained weights and hot-swaps them in; the
loop never fails a call and never sees a mix of old and new weights.  Then a
fresh process ("the restart") serves the same model with the same
checkpoint folder and shows the personalised weights restored.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from importlib import resources
from typing import Any

import numpy as np

from .. import HotswapError, Runtime
from ..training import Checkpoints, Trainer

FEATURES = 16
CLASSES = 4
MODEL = "trainable_classifier.tflite"


def synthetic(n: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` labelled samples of the demo's distribution.

    Four Gaussian classes in 16 dimensions; ``shift`` moves each class's
    centre that fraction of the way toward the next class's centre (0: the
    distribution the bundled model was trained on; the device sees 0.85).

    Returns:
        (float32 features of shape (n, 16), int32 labels of shape (n,)).
    """
    centres = np.random.default_rng(42).normal(0.0, 1.0, (CLASSES, FEATURES))
    moved = centres + shift * (np.roll(centres, -1, axis=0) - centres)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n).astype(np.int32)
    features = moved[labels] + rng.normal(0.0, 0.55, (n, FEATURES))
    return features.astype(np.float32), labels


def bundled_model() -> bytes:
    """The bundled trainable classifier's bytes."""
    return resources.files("tflite_hotswap").joinpath(f"models/{MODEL}").read_bytes()


def served_accuracy(rt: Runtime, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of what the runtime serves, on held-out data (one batched call)."""
    outputs = rt.run(x)
    return float(np.mean(np.asarray(outputs).argmax(axis=-1) == y))


class _Loop(threading.Thread):
    """The caller's inference loop: counts calls, failures, and the distinct results it saw."""

    def __init__(self, rt: Runtime, probe: np.ndarray) -> None:
        super().__init__(name="inference-loop", daemon=True)
        self.rt = rt
        self.probe = probe
        self.calls = 0
        self.failed = 0
        self.seen: set[bytes] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        out = np.empty((1, CLASSES), np.float32)
        while not self.stop.is_set():
            try:
                self.rt.run(self.probe, out=out)
                self.seen.add(out.tobytes())
            except HotswapError:
                self.failed += 1
            self.calls += 1


def check_restart(state: str) -> int:
    """The restart: a new process serves the model with the same checkpoint folder."""
    ckpts = Checkpoints(state)
    x_val, y_val = synthetic(1000, shift=0.85, seed=2)
    with Runtime(bundled_model(), signature="infer", checkpoints=ckpts) as rt:
        restored = ckpts.served(rt.info.sha256)
        print(f"  restart: a new process restored checkpoint {restored}; held-out accuracy "
              f"{served_accuracy(rt, x_val, y_val):.3f}")
    return 0 if restored is not None else 1


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the process exit status (0: all checks passed)."""
    parser = argparse.ArgumentParser(prog="python -m tflite_hotswap.demo.training",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    parser.add_argument("--state", help="checkpoint folder (default: a temporary one)")
    parser.add_argument("--check-restart", metavar="STATE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check_restart:
        return check_restart(args.check_restart)
    with tempfile.TemporaryDirectory() as temp:
        return _run(args.state or temp, args.epochs)


def _run(state: str, epochs: int) -> int:
    ckpts = Checkpoints(state, keep=3)
    ckpts.reset()
    model = bundled_model()
    x_train, y_train = synthetic(1280, shift=0.85, seed=1)
    x_val, y_val = synthetic(1000, shift=0.85, seed=2)
    x_base, y_base = synthetic(1000, shift=0.0, seed=3)
    rt = Runtime(model, signature="infer", checkpoints=ckpts)
    trainer = Trainer(model, checkpoints=ckpts, backend=rt.backend)
    print(f"tflite_hotswap training demo: backend {rt.backend}, model {MODEL} ({len(model)} bytes, "
          f"training batch {trainer.batch_size}), checkpoints in {state}")
    before = served_accuracy(rt, x_val, y_val)
    print(f"  held-out accuracy before: {before:.3f} on the device's data "
          f"({served_accuracy(rt, x_base, y_base):.3f} on the data the model was trained on)")
    loop = _Loop(rt, x_val[:1].copy())
    loop.start()

    done = threading.Event()
    failure: list[BaseException] = []

    def report(epoch: int, logs: dict[str, float]) -> None:
        print(f"  epoch {epoch + 1}/{epochs}: loss {logs['loss']:.3f}, val_accuracy "
              f"{logs['val_accuracy']:.3f} | loop: {loop.calls:,} calls, {loop.failed} failed")

    def train() -> None:
        try:
            trainer.fit((x_train, y_train), epochs=epochs, validation=(x_val, y_val), callbacks=[report])
        except BaseException as e:  # noqa: BLE001 -- re-raised by the main thread
            failure.append(e)
        finally:
            done.set()

    started = time.monotonic()
    threading.Thread(target=train, name="trainer", daemon=True).start()
    done.wait()
    if failure:
        raise failure[0]
    info = trainer.publish(rt, validate=(x_val, y_val))
    print(f"  published checkpoint {info.checkpoint.id} as version {info.model.version}: held-out accuracy "
          f"{info.serving_metrics['accuracy']:.3f} -> {info.metrics['accuracy']:.3f} "
          f"({time.monotonic() - started:.1f} s of training while serving)")
    time.sleep(0.2)  # the loop runs on the new weights for a while
    loop.stop.set()
    loop.join()
    after = served_accuracy(rt, x_val, y_val)
    expected = {_probe_output(trainer, loop.probe, w) for w in (trainer.base_weights, trainer.weights())}
    mixed = len(loop.seen - expected)
    rt.close()
    trainer.close()
    print(f"  held-out accuracy after: {after:.3f}")
    print(f"  loop: {loop.calls:,} calls, failed {loop.failed}, mixed or unknown results {mixed}")
    restart = subprocess.run([sys.executable, "-m", "tflite_hotswap.demo.training", "--check-restart", state],
                             capture_output=True, text=True, check=False, cwd=state)
    print(restart.stdout.rstrip() or restart.stderr.rstrip())
    ok = loop.failed == 0 and mixed == 0 and after > before and restart.returncode == 0
    print("  result: " + ("OK, personalised with no failed call" if ok else "FAILED"))
    return 0 if ok else 1


def _probe_output(trainer: Trainer, probe: np.ndarray, weights: Any) -> bytes:
    return bytes(trainer.predict(probe, weights=weights).astype(np.float32).tobytes())


if __name__ == "__main__":
    sys.exit(main())
