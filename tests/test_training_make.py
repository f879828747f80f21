"""make_trainable and the training CLI.

The make_trainable tests need TensorFlow and skip without it (the suite's
backend environments have none); run them with TensorFlow installed, e.g.
``pytest tests/test_training_make.py`` in an environment with tensorflow-cpu.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conftest import model_path

from tflite_hotswap.cli import main
from tflite_hotswap.errors import BackendNotFoundError, UnsupportedModelError
from tflite_hotswap.training import Checkpoints, Trainer, make_trainable

HAS_TF = importlib.util.find_spec("tensorflow") is not None
needs_tf = pytest.mark.skipif(not HAS_TF, reason="TensorFlow is not installed (make_trainable needs it)")


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    centres = np.random.default_rng(7).normal(0, 1.5, (3, 4))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype(np.int32)
    return (centres[y] + rng.normal(0, 0.7, (n, 4))).astype(np.float32), y


@pytest.mark.skipif(HAS_TF, reason="TensorFlow is installed")
def test_without_tensorflow_a_clear_error():
    with pytest.raises(BackendNotFoundError, match=r"needs TensorFlow.*tflite_hotswap\[convert\]"):
        make_trainable(object(), input_shape=(4,))


def _module(tf, relu):
    class Net(tf.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(0)
            self.w1 = tf.Variable(rng.normal(0, 0.5, (4, 8)).astype(np.float32))
            self.b1 = tf.Variable(np.zeros(8, np.float32))
            self.w2 = tf.Variable(rng.normal(0, 0.5, (8, 3)).astype(np.float32))

        def __call__(self, x):
            return tf.matmul(relu(tf.matmul(x, self.w1) + self.b1), self.w2)
    return Net()


@needs_tf
@pytest.mark.parametrize("optimizer,momentum", [("sgd", 0.0), ("sgd", 0.9), ("adam", 0.0)])
def test_module_becomes_a_builtin_trainable_model(tmp_path, optimizer, momentum):
    import tensorflow as tf
    data = make_trainable(_module(tf, lambda v: tf.maximum(v, 0.0)), optimizer=optimizer, momentum=momentum,
                          input_shape=(4,), batch_size=8, learning_rate=0.05)
    x, y = blobs(160, seed=1)
    with Trainer(data, checkpoints=Checkpoints(tmp_path), backend="tensorflow") as tr:
        assert tr.form.kind == "weights" and tr.form.flex_ops == () and tr.batch_size == 8
        history = tr.fit((x, y), epochs=3)
        assert history.loss[-1] < history.loss[0]
        assert tr.step_count() == 60
        slots = [n for n in tr.variables if n.startswith("opt_")]
        assert len(slots) == {"sgd": 3 if momentum else 0, "adam": 6}[optimizer]
        assert tr.predict(x[:5]).shape == (5, 3)  # infer takes any batch


@needs_tf
def test_keras_model_is_rebuilt_with_its_weights():
    import tensorflow as tf
    keras_model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(8, activation="relu"),
                                       tf.keras.layers.Dropout(0.1),
                                       tf.keras.layers.Dense(3, activation="softmax")])
    data = make_trainable(keras_model, input_shape=(4,), batch_size=8)
    x, _ = blobs(10, seed=2)
    with Trainer(data, backend="tensorflow") as tr:
        np.testing.assert_allclose(tr.predict(x), keras_model(x).numpy(), rtol=1e-4, atol=1e-5)


@needs_tf
def test_flex_gradients_and_unknown_layers_are_refused():
    import tensorflow as tf
    with pytest.raises(UnsupportedModelError, match="ReluGrad"):
        make_trainable(_module(tf, tf.nn.relu), input_shape=(4,), batch_size=8)
    conv = tf.keras.Sequential([tf.keras.Input((4, 4, 1)), tf.keras.layers.Conv2D(2, 3)])
    with pytest.raises(UnsupportedModelError, match="got Conv2D"):
        make_trainable(conv, input_shape=(4, 4, 1))


def test_train_command(tmp_path, capsys):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1.5, (3, 8))
    y = rng.integers(0, 3, 200).astype(np.int32)
    x = (centres[y] + rng.normal(0, 0.7, (200, 8))).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x[:150], y=y[:150], x_val=x[150:], y_val=y[150:])
    args = ["train", model_path("trainable_mlp"), str(tmp_path / "data.npz"), "--epochs", "2",
            "--checkpoints", str(tmp_path / "ck")]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "epoch 2:" in out.out and "saved checkpoint 00000001" in out.out and "steps" in out.err
    assert main(args) == 0
    assert "resuming from checkpoint 00000001" in capsys.readouterr().out
    assert Checkpoints(tmp_path / "ck").latest().step == 36


def test_make_trainable_command_without_tensorflow(tmp_path, capsys):
    if HAS_TF:
        pytest.skip("TensorFlow is installed")
    assert main(["make-trainable", str(tmp_path), str(tmp_path / "out.tflite"), "--input-shape", "4"]) == 2
    assert "BackendNotFoundError" in capsys.readouterr().err
