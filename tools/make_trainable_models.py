"""Build the trainable .tflite fixtures (tests) and the demo's bundled classifier.

Needs TensorFlow (``pip install tensorflow-cpu``) and the package importable
(its extensions built); the outputs are committed.  From the repository root::

    PYTHONPATH=. python tools/make_trainable_models.py [NAME ...]

(NAME: a file name without ``.tflite``, e.g. ``trainable_linear``, to rebuild
only that one: TensorFlow releases change the bytes, and a fixture's sha256 is
what checkpoints are bound to.)

Writes:

* ``tests/models/trainable_mlp.tflite`` -- 8 features, 16 hidden, 3 classes,
  Adam, training batch 16 (builtin form, from make_trainable);
* ``tests/models/trainable_mlp_b.tflite`` -- the same variables, other
  initial weights (a new base version whose variables match);
* ``tests/models/trainable_wide.tflite`` -- 32 hidden units (variables differ);
* ``tests/models/trainable_linear.tflite`` -- a linear classifier head, 8
  features, 3 classes, plain SGD, training batch 16: the small model of the
  training-step benchmark (personalising only the last layer over frozen
  features is a common on-device pattern);
* ``tests/models/trainable_flex.tflite`` -- TensorFlow's on-device training
  guide's form: train/infer/save/restore with Flex ops (tf.nn.relu,
  softmax_cross_entropy_with_logits, tf.raw_ops.Save/Restore);
* ``tflite_hotswap/models/trainable_classifier.tflite`` -- the demo's
  classifier: a Keras model pre-trained on the demo's base distribution,
  converted with make_trainable.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import tensorflow as tf

from tflite_hotswap.demo.training import CLASSES, FEATURES, synthetic
from tflite_hotswap.training import make_trainable

ROOT = pathlib.Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests" / "models"
DEMO = ROOT / "tflite_hotswap" / "models"


class MLP(tf.Module):
    """Two dense layers; ReLU as tf.maximum (its gradient is a builtin op)."""

    def __init__(self, n_in: int, hidden: int, n_out: int, seed: int) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.w1 = tf.Variable(rng.normal(0, 1 / np.sqrt(n_in), (n_in, hidden)).astype(np.float32), name="w1")
        self.b1 = tf.Variable(np.zeros(hidden, np.float32), name="b1")
        w2 = rng.normal(0, 1 / np.sqrt(hidden), (hidden, n_out)).astype(np.float32)
        self.w2 = tf.Variable(w2, name="w2")
        self.b2 = tf.Variable(np.zeros(n_out, np.float32), name="b2")

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        h = tf.maximum(tf.matmul(x, self.w1) + self.b1, 0.0)
        return tf.matmul(h, self.w2) + self.b2


class Linear(tf.Module):
    """One dense layer: a classifier head."""

    def __init__(self, n_in: int, n_out: int, seed: int) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.w = tf.Variable(rng.normal(0, 1 / np.sqrt(n_in), (n_in, n_out)).astype(np.float32), name="w")
        self.b = tf.Variable(np.zeros(n_out, np.float32), name="b")

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return tf.matmul(x, self.w) + self.b


class GuideModel(tf.Module):
    """The on-device training guide's model shape, in plain variables (Keras 3 breaks the original)."""

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(3)
        self.w1 = tf.Variable(rng.normal(0, 0.3, (8, 16)).astype(np.float32), name="w1")
        self.b1 = tf.Variable(np.zeros(16, np.float32), name="b1")
        self.w2 = tf.Variable(rng.normal(0, 0.3, (16, 3)).astype(np.float32), name="w2")
        self.b2 = tf.Variable(np.zeros(3, np.float32), name="b2")

    def logits(self, x: tf.Tensor) -> tf.Tensor:
        return tf.matmul(tf.nn.relu(tf.matmul(x, self.w1) + self.b1), self.w2) + self.b2

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32), tf.TensorSpec([None, 3], tf.float32)])
    def train(self, x: tf.Tensor, y: tf.Tensor) -> dict[str, tf.Tensor]:
        variables = [self.w1, self.b1, self.w2, self.b2]
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=self.logits(x)))
        for v, g in zip(variables, tape.gradient(loss, variables)):
            v.assign_sub(0.1 * g)
        return {"loss": loss}

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    def infer(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"outputs": tf.nn.softmax(self.logits(x))}

    @tf.function(input_signature=[tf.TensorSpec(shape=[], dtype=tf.string)])
    def save(self, checkpoint_path: tf.Tensor) -> dict[str, tf.Tensor]:
        names = [v.name for v in (self.w1, self.b1, self.w2, self.b2)]
        tf.raw_ops.Save(filename=checkpoint_path, tensor_names=names,
                        data=[self.w1, self.b1, self.w2, self.b2], name="save")
        return {"checkpoint_path": checkpoint_path}

    @tf.function(input_signature=[tf.TensorSpec(shape=[], dtype=tf.string)])
    def restore(self, checkpoint_path: tf.Tensor) -> dict[str, tf.Tensor]:
        restored = {}
        for v in (self.w1, self.b1, self.w2, self.b2):
            value = tf.raw_ops.Restore(file_pattern=checkpoint_path, tensor_name=v.name, dt=v.dtype,
                                       name="restore")
            v.assign(value)
            restored[v.name.split(":")[0]] = value
        return restored


def guide_flex_model() -> bytes:
    import tempfile
    module = GuideModel()
    with tempfile.TemporaryDirectory() as folder:
        tf.saved_model.save(module, folder, signatures={"train": module.train.get_concrete_function(),
                                                        "infer": module.infer.get_concrete_function(),
                                                        "save": module.save.get_concrete_function(),
                                                        "restore": module.restore.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
        converter.experimental_enable_resource_variables = True
        return bytes(converter.convert())


def demo_classifier() -> bytes:
    """A Keras classifier pre-trained on the demo's base distribution (shift 0)."""
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.Input((FEATURES,)), tf.keras.layers.Dense(32, activation="relu"),
                                 tf.keras.layers.Dense(CLASSES)])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    x, y = synthetic(4000, shift=0.0, seed=100)
    model.fit(x, y, epochs=10, batch_size=64, verbose=0)
    return make_trainable(model, "sparse_categorical_crossentropy", "adam", input_shape=(FEATURES,),
                          batch_size=32, learning_rate=0.005)


def main(names: list[str]) -> None:
    TESTS.mkdir(parents=True, exist_ok=True)
    def mlp(hidden: int, seed: int) -> bytes:
        return make_trainable(MLP(8, hidden, 3, seed=seed), "sparse_categorical_crossentropy", "adam",
                              input_shape=(8,), batch_size=16, learning_rate=0.01)

    def linear() -> bytes:
        return make_trainable(Linear(8, 3, seed=0), "sparse_categorical_crossentropy", "sgd",
                              input_shape=(8,), batch_size=16, learning_rate=0.05)

    builders = {
        TESTS / "trainable_mlp.tflite": lambda: mlp(16, seed=0),
        TESTS / "trainable_mlp_b.tflite": lambda: mlp(16, seed=1),
        TESTS / "trainable_wide.tflite": lambda: mlp(32, seed=0),
        TESTS / "trainable_linear.tflite": linear,
        TESTS / "trainable_flex.tflite": guide_flex_model,
        DEMO / "trainable_classifier.tflite": demo_classifier,
    }
    unknown = set(names) - {p.stem for p in builders}
    if unknown:
        raise SystemExit(f"unknown model(s) {sorted(unknown)}; expected some of {sorted(p.stem for p in builders)}")
    for path, build in builders.items():
        if names and path.stem not in names:
            continue
        data = build()
        path.write_bytes(data)
        print(f"{path.relative_to(ROOT)}: {len(data)} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
