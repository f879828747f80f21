"""Shared fixtures: the backend under test, model paths, a raw backend interpreter.

The whole suite runs once per backend: set TFLITE_HOTSWAP_BACKEND (the test
command does) to ``tflite-runtime`` or ``litert``.
"""

from __future__ import annotations

import os
import pathlib

import pytest

from tflite_hotswap import load_backend

MODELS = pathlib.Path(__file__).parent / "models"


def model_path(name: str) -> str:
    return str(MODELS / f"{name}.tflite")


def model_bytes(name: str) -> bytes:
    return (MODELS / f"{name}.tflite").read_bytes()


@pytest.fixture(scope="session")
def backend_name() -> str:
    return load_backend(os.environ.get("TFLITE_HOTSWAP_BACKEND", "auto")).name


@pytest.fixture(scope="session")
def native_path(backend_name: str) -> bool:
    """Whether calls go to the C++ interpreter: tflite-runtime and LiteRT, unless TFLITE_HOTSWAP_NATIVE=0."""
    return backend_name in ("tflite-runtime", "litert") and os.environ.get("TFLITE_HOTSWAP_NATIVE", "1") != "0"


def raw_signature_run(name: str, inputs: dict) -> dict:
    """Run a model the plain way (SignatureRunner of the same backend): the reference.

    ``allocate_tensors()`` first, as users do: that is what applies the
    backend's default delegate (XNNPACK), which changes the last bits.
    """
    interpreter = load_backend().interpreter_class(model_path=model_path(name))
    interpreter.allocate_tensors()
    runner = interpreter.get_signature_runner()
    return runner(**inputs)
