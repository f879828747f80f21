"""Build the small .tflite fixtures used by the tests, benchmarks and demo.

Needs TensorFlow (``pip install tensorflow-cpu``); the library and its tests do
not.  Run from the repository root::

    python tools/make_models.py

The outputs are committed, so this only needs re-running when a fixture changes.
Weights are deterministic (and patterned where a model is big, so git
compresses it) to keep the files stable across runs.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import tensorflow as tf

ROOT = pathlib.Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests" / "models"
DEMO = ROOT / "tflite_hotswap" / "models"


def _convert(module: tf.Module, fn, quantize: str | None = None, rep=None) -> bytes:
    concrete = fn.get_concrete_function()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    if quantize:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = getattr(tf, quantize)
        conv.inference_output_type = getattr(tf, quantize)
    return conv.convert()


def _write(folder: pathlib.Path, name: str, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    print(f"{folder.relative_to(ROOT)}/{name}: {len(data)} bytes")


def _patterned(shape, seed: int) -> np.ndarray:
    """Deterministic weights; a short repeating pattern keeps big files compressible."""
    rng = np.random.default_rng(seed)
    pattern = rng.uniform(-0.1, 0.1, size=997).astype(np.float32)
    n = int(np.prod(shape))
    return np.resize(pattern, n).reshape(shape)


def tiny() -> bytes:
    """4 -> 4 dense layer: the per-call overhead benchmark model."""
    m = tf.Module()
    m.w = tf.constant(_patterned((4, 4), 1))
    m.b = tf.constant(_patterned((4,), 2))

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
    def serve(x):
        return {"y": tf.matmul(x, m.w) + m.b}

    return _convert(m, serve)


def versioned(version: int, width: int = 16) -> bytes:
    """Outputs encode the version: ``shifted = x + version`` and ``tag = version``.

    A call whose outputs came from two versions would show two different
    offsets, so the swap stress test can prove every result is whole.
    """
    m = tf.Module()
    m.w = tf.constant(_patterned((width, width), version))

    @tf.function(input_signature=[tf.TensorSpec([1, width], tf.float32, name="x")])
    def serve(x):
        # The matmul gives the model real work; multiplying by zero keeps the
        # output exact while the graph still depends on the weights.
        mixed = tf.matmul(x, m.w) * 0.0
        shifted = x + float(version) + mixed
        tag = tf.reduce_sum(mixed, axis=1, keepdims=True) + float(version)
        return {"shifted": shifted, "tag": tag}

    return _convert(m, serve)


def dense(n_in: int, n_out: int, seed: int) -> bytes:
    m = tf.Module()
    m.w = tf.constant(_patterned((n_in, n_out), seed))

    @tf.function(input_signature=[tf.TensorSpec([1, n_in], tf.float32, name="x")])
    def serve(x):
        return {"y": tf.matmul(x, m.w)}

    return _convert(m, serve)


def dynamic_batch() -> bytes:
    m = tf.Module()
    m.w = tf.constant(_patterned((8, 4), 3))

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
    def serve(x):
        return {"y": tf.matmul(x, m.w) + 1.0}

    return _convert(m, serve)


def multi_io() -> bytes:
    m = tf.Module()
    m.w = tf.constant(_patterned((8, 3), 4))

    @tf.function(
        input_signature=[
            tf.TensorSpec([1, 8], tf.float32, name="features"),
            tf.TensorSpec([1, 3], tf.int32, name="counts"),
        ]
    )
    def serve(features, counts):
        scores = tf.matmul(features, m.w)
        return {
            "scores": scores,
            "weighted": scores * tf.cast(counts, tf.float32),
            "total": tf.reduce_sum(counts, axis=1),
        }

    return _convert(m, serve)


def quantized(kind: str) -> bytes:
    """Full-integer dense model with ``kind`` (int8/uint8) input and output."""
    m = tf.Module()
    m.w = tf.constant(_patterned((16, 8), 5) * 10)

    @tf.function(input_signature=[tf.TensorSpec([1, 16], tf.float32, name="x")])
    def serve(x):
        return {"y": tf.matmul(x, m.w)}

    def rep():
        rng = np.random.default_rng(0)
        for _ in range(64):
            yield [rng.uniform(-2, 2, size=(1, 16)).astype(np.float32)]

    return _convert(m, serve, quantize=kind, rep=rep)


def image(batch: int, size: int, kind: str | None) -> bytes:
    """NHWC image model: per-channel means plus a 1x1 conv, float or quantized input."""
    m = tf.Module()
    m.k = tf.constant(_patterned((1, 1, 3, 4), 6))

    @tf.function(input_signature=[tf.TensorSpec([batch, size, size, 3], tf.float32, name="image")])
    def serve(image):
        conv = tf.nn.conv2d(image, m.k, strides=1, padding="VALID")
        return {"features": tf.reduce_mean(conv, axis=[1, 2])}

    def rep():
        rng = np.random.default_rng(0)
        for _ in range(4):
            yield [rng.uniform(-2.5, 2.5, size=(batch, size, size, 3)).astype(np.float32)]

    return _convert(m, serve, quantize=kind, rep=rep if kind else None)


def conv_heavy() -> bytes:
    """A compute-bound convolution stack (several ms per call) for worker scaling."""
    m = tf.Module()
    m.ks = [tf.constant(_patterned((3, 3, 32, 32), 10 + i)) for i in range(6)]
    m.k0 = tf.constant(_patterned((3, 3, 3, 32), 9))

    @tf.function(input_signature=[tf.TensorSpec([1, 96, 96, 3], tf.float32, name="image")])
    def serve(image):
        h = tf.nn.conv2d(image, m.k0, strides=1, padding="SAME")
        for k in m.ks:
            h = tf.maximum(tf.nn.conv2d(h, k, strides=1, padding="SAME"), 0.0)
        return {"features": tf.reduce_mean(h, axis=[1, 2])}

    return _convert(m, serve)


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _write(TESTS, "tiny_f32.tflite", tiny())
    for v in (1, 2, 3):
        _write(TESTS, f"version_{v}.tflite", versioned(v))
        _write(DEMO, f"demo_v{v}.tflite", versioned(v, width=64))
    _write(TESTS, "dynamic_batch.tflite", dynamic_batch())
    _write(TESTS, "multi_io.tflite", multi_io())
    _write(TESTS, "quant_int8.tflite", quantized("int8"))
    _write(TESTS, "quant_uint8.tflite", quantized("uint8"))
    _write(TESTS, "image_small_f32.tflite", image(2, 8, None))
    _write(TESTS, "image_small_int8.tflite", image(2, 8, "int8"))
    _write(TESTS, "image_small_uint8.tflite", image(2, 8, "uint8"))
    _write(TESTS, "image_f32.tflite", image(32, 224, None))
    _write(TESTS, "image_int8.tflite", image(32, 224, "int8"))
    _write(TESTS, "dense_512k.tflite", dense(256, 512, 7))
    _write(TESTS, "dense_20mb.tflite", dense(2048, 2560, 9))
    _write(TESTS, "dense_20mb_b.tflite", dense(2048, 2560, 11))
    _write(TESTS, "conv_heavy.tflite", conv_heavy())


if __name__ == "__main__":
    main()
