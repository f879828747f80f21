"""Build the updater demo's extra model: ``demo_v4_slow.tflite``.

Same I/O contract and outputs as the bundled ``demo_v<N>.tflite`` models
(``shifted = x + 4``, ``tag = 4``), so it passes a golden check, but each call
does a few hundred MFLOP of hidden work: it fails probation on the p99 latency
ratio.  Needs TensorFlow (``/work/.venv-tf/bin/python tools/make_updater_models.py``);
the output is committed, so the library and tests do not need TensorFlow.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEMO = ROOT / "tflite_hotswap" / "models"


def slow_versioned(version: int, width: int = 64, rows: int = 192, hidden: int = 512) -> bytes:
    m = tf.Module()
    pattern = np.random.default_rng(version).uniform(-0.1, 0.1, size=997).astype(np.float32)
    m.w1 = tf.constant(np.resize(pattern, width * hidden).reshape(width, hidden))
    m.w2 = tf.constant(np.resize(pattern[::-1], hidden * hidden).reshape(hidden, hidden))

    @tf.function(input_signature=[tf.TensorSpec([1, width], tf.float32, name="x")])
    def serve(x):
        h = tf.matmul(tf.tile(x, [rows, 1]), m.w1)
        h = tf.matmul(h, m.w2)
        h = tf.matmul(h, m.w2)
        # As in tools/make_models.py: multiplying by zero keeps the outputs
        # exact while the graph still depends on (and computes) the work.
        mixed = tf.reduce_mean(h, axis=0, keepdims=True)[:, :width] * 0.0
        shifted = x + float(version) + mixed
        tag = tf.reduce_sum(mixed, axis=1, keepdims=True) + float(version)
        return {"shifted": shifted, "tag": tag}

    concrete = serve.get_concrete_function()
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], m).convert()


def main() -> None:
    data = slow_versioned(4)
    (DEMO / "demo_v4_slow.tflite").write_bytes(data)
    print(f"tflite_hotswap/models/demo_v4_slow.tflite: {len(data)} bytes")


if __name__ == "__main__":
    main()
