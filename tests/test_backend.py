"""Backend selection: auto order, environment override, clear errors."""

import sys

import numpy as np
import pytest

from conftest import model_path, raw_signature_run
from tflite_hotswap import BackendNotFoundError, MisuseError, Runtime, load_backend


def test_env_var_overrides_auto(monkeypatch, backend_name):
    monkeypatch.setenv("TFLITE_HOTSWAP_BACKEND", backend_name)
    assert load_backend().name == backend_name
    assert load_backend("auto").name == backend_name


def test_aliases():
    assert load_backend("tflite_runtime").name == load_backend("tflite-runtime").name == "tflite-runtime" \
        if _importable("tflite_runtime") else True
    assert load_backend("ai-edge-litert").name == "litert" if _importable("ai_edge_litert") else True


def _importable(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def test_unknown_backend_name():
    with pytest.raises(MisuseError, match="backend: expected 'auto' or one of .* got 'onnx'"):
        load_backend("onnx")


MODULES = {"litert": "ai_edge_litert.interpreter", "tflite-runtime": "tflite_runtime.interpreter",
           "tensorflow": "tensorflow.lite.python.interpreter"}


def _hide(monkeypatch, name):
    """Make a backend unimportable (a None entry in sys.modules fails the import)."""
    monkeypatch.setitem(sys.modules, MODULES[name], None)
    monkeypatch.setitem(sys.modules, MODULES[name].split(".")[0], None)


@pytest.mark.parametrize("name, package", [
    ("litert", "pip install ai-edge-litert"),
    ("tflite-runtime", "pip install tflite-runtime"),
    ("tensorflow", "pip install tensorflow-cpu"),
])
def test_missing_backend_names_the_package(monkeypatch, name, package):
    _hide(monkeypatch, name)
    with pytest.raises(BackendNotFoundError, match=package):
        load_backend(name)


def test_auto_falls_back_in_order(monkeypatch):
    monkeypatch.delenv("TFLITE_HOTSWAP_BACKEND", raising=False)
    _hide(monkeypatch, "tflite-runtime")
    if _importable("ai_edge_litert"):
        assert load_backend().name == "litert"
    _hide(monkeypatch, "litert")
    _hide(monkeypatch, "tensorflow")
    with pytest.raises(BackendNotFoundError, match="no TFLite backend is installed"):
        load_backend()


def test_runtime_reports_its_backend(backend_name):
    with Runtime(model_path("tiny_f32")) as rt:
        assert rt.backend == backend_name


def test_tensorflow_backend_matches_raw():
    pytest.importorskip("tensorflow", reason="TensorFlow is not installed (optional backend)")
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    with Runtime(model_path("tiny_f32"), backend="tensorflow") as rt:
        assert rt.run(x).tobytes() == raw_signature_run("tiny_f32", {"x": x})["y"].tobytes()
