"""Benchmark helpers: models from tests/models and the plain backend interpreter."""

from __future__ import annotations

import pathlib

from tflite_hotswap import load_backend

MODELS = pathlib.Path(__file__).resolve().parent.parent / "tests" / "models"


def model_path(name: str) -> str:
    return str(MODELS / f"{name}.tflite")


def raw_interpreter(name: str, num_threads: int | None = None):
    """The backend's own Interpreter, tensors allocated: the idiom being compared against."""
    interpreter = load_backend().interpreter_class(model_path=model_path(name), num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter
