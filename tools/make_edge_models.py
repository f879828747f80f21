"""Build the valid-but-unusual .tflite fixtures of the hardening tests.

Needs TensorFlow (``pip install tensorflow-cpu``); the library and its tests do
not.  Run from the repository root: ``python tools/make_edge_models.py``.  The
outputs are committed under tests/models/.

* ``string_input``   -- a string input (refused with a typed error, never bound)
* ``complex_io``     -- complex64 input and output (plain copies)
* ``rank17``         -- a 17-dimensional input (above the binding's 16)
* ``where_dynamic``  -- WHERE: the output's size depends on the input's values
* ``fill_dynamic``   -- FILL: the output's shape is the input's value (may be empty)
* ``while_positive`` -- WHILE(x > 0) x -= 0: runs forever for any positive input
"""

from __future__ import annotations

import pathlib

import tensorflow as tf

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "models"


def _save(name: str, fn: tf.types.experimental.PolymorphicFunction, module: tf.Module) -> None:
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], module)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    (OUT / f"{name}.tflite").write_bytes(conv.convert())
    print("wrote", name)


def main() -> None:
    m = tf.Module()

    m.f = tf.function(lambda s: {"s2": tf.reshape(s, [1, 1])},
                      input_signature=[tf.TensorSpec([1], tf.string, name="s")])
    _save("string_input", m.f, m)

    m.f = tf.function(lambda z: {"re": tf.math.real(z), "z2": z * z},
                      input_signature=[tf.TensorSpec([1, 4], tf.complex64, name="z")])
    _save("complex_io", m.f, m)

    m.f = tf.function(lambda x: {"y": tf.reshape(x, [-1]) + 1.0},
                      input_signature=[tf.TensorSpec([1] * 16 + [2], tf.float32, name="x")])
    _save("rank17", m.f, m)

    m.f = tf.function(lambda x: {"idx": tf.where(x > 0.0)},
                      input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
    _save("where_dynamic", m.f, m)

    m.f = tf.function(lambda n: {"y": tf.fill(n, 7.0)},
                      input_signature=[tf.TensorSpec([2], tf.int32, name="n")])
    _save("fill_dynamic", m.f, m)

    def spin(x: tf.Tensor) -> dict:
        y = tf.while_loop(lambda v: tf.reduce_sum(v) > 0.0, lambda v: [v * 1.0], [x])
        return {"y": y[0] if isinstance(y, (list, tuple)) else y}
    m.f = tf.function(spin, input_signature=[tf.TensorSpec([1], tf.float32, name="x")])
    _save("while_positive", m.f, m)


if __name__ == "__main__":
    main()
