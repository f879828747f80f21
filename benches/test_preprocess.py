"""Preprocessing a 32x224x224x3 uint8 batch into the input tensor, beside the numpy idiom.

Three ways to fill the same tensor: the numpy idiom plus set_tensor, the
runtime's fused kernel writing straight into tensor memory, and a plain copy of
already-converted bytes (the floor: memory bandwidth).
"""

import numpy as np
import pytest

from conftest import raw_interpreter
from tflite_hotswap import Normalize
from tflite_hotswap._buffers import affine_into
from tflite_hotswap.serving.contract import contract_of
from tflite_hotswap.serving.preprocess import kernel_for

NORM = Normalize(scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
BATCH = np.random.default_rng(0).integers(0, 256, size=(32, 224, 224, 3), dtype=np.uint8)
MEAN = np.array(NORM.mean, np.float32)
STD = np.array(NORM.std, np.float32)


def _setup(model):
    interpreter = raw_interpreter(model)
    spec = contract_of(interpreter, {}, None, 0).inputs[0]
    return interpreter, spec


def _numpy_idiom(interpreter, spec):
    x = (BATCH.astype(np.float32) * np.float32(NORM.scale) - MEAN) / STD
    if spec.dtype == "int8":
        x = np.clip(np.round(x / spec.scales[0] + spec.zero_points[0]), -128, 127).astype(np.int8)
    interpreter.set_tensor(spec.index, x)


def _fused(interpreter, spec):
    a, b, _, _, zero_point = kernel_for(NORM, spec)
    tensor = interpreter.tensor(spec.index)

    def run():
        affine_into(BATCH, tensor(), a, b, zero_point)
    return run


@pytest.mark.parametrize("model", ["image_f32", "image_int8"])
def test_numpy_idiom_then_set_tensor(benchmark, model):
    interpreter, spec = _setup(model)
    benchmark.group = f"preprocess-{model}"
    benchmark.pedantic(_numpy_idiom, args=(interpreter, spec), rounds=15, warmup_rounds=2)


@pytest.mark.parametrize("model", ["image_f32", "image_int8"])
def test_fused_kernel_into_tensor(benchmark, model):
    interpreter, spec = _setup(model)
    benchmark.group = f"preprocess-{model}"
    run = _fused(interpreter, spec)
    run()
    # Same tensor contents as the idiom (to the rounding documented in preprocess).
    fused = interpreter.get_tensor(spec.index).astype(np.float32)
    _numpy_idiom(interpreter, spec)
    assert np.max(np.abs(fused - interpreter.get_tensor(spec.index))) <= (1 if spec.dtype == "int8" else 1e-5)
    benchmark.pedantic(run, rounds=15, warmup_rounds=2)


@pytest.mark.parametrize("model", ["image_f32", "image_int8"])
def test_plain_copy_of_output_bytes(benchmark, model):
    interpreter, spec = _setup(model)
    benchmark.group = f"preprocess-{model}"
    converted = np.zeros(interpreter.get_tensor(spec.index).shape, np.dtype(spec.dtype))
    tensor = interpreter.tensor(spec.index)
    benchmark.pedantic(lambda: np.copyto(tensor(), converted), rounds=15, warmup_rounds=2)
