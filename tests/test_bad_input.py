"""Bad input gets a clear, typed exception; nothing a caller passes crashes the process."""

import random
import struct

import numpy as np
import pytest

from conftest import model_bytes, model_path
from tflite_hotswap.safety import isolation
from tflite_hotswap.serving.loader import PROBE_CHECK
from tflite_hotswap import (HotswapError, InputError, InvalidModelError, MisuseError, Normalize,
                            Runtime, RuntimeClosedError)

X16 = np.zeros((1, 16), np.float32)


@pytest.fixture
def rt():
    with Runtime(model_path("version_1")) as runtime:
        yield runtime


def test_wrong_shape(rt):
    with pytest.raises(InputError, match=r"input 'x': expected shape \(1, 16\), got \(2, 16\)"):
        rt.run(np.zeros((2, 16), np.float32))
    with pytest.raises(InputError, match=r"expected shape \(1, 16\), got \(16,\)"):
        rt.run(np.zeros(16, np.float32))


def test_wrong_dtype(rt):
    with pytest.raises(InputError, match="input 'x': expected dtype float32, got float64"):
        rt.run(np.zeros((1, 16)))
    with pytest.raises(InputError, match="got int32"):
        rt.run(np.zeros((1, 16), np.int32))


def test_not_an_array(rt):
    with pytest.raises(InputError, match="expected an array .* got str"):
        rt.run("hello")
    with pytest.raises(InputError, match="got NoneType"):
        rt.run(None)


def test_wrong_and_missing_names():
    with Runtime(model_path("multi_io")) as rt:
        with pytest.raises(InputError, match=r"missing \['counts'\]"):
            rt.run({"features": np.zeros((1, 8), np.float32)})
        with pytest.raises(InputError, match=r"unknown \['extra'\]"):
            rt.run({"features": np.zeros((1, 8), np.float32), "counts": np.zeros((1, 3), np.int32),
                    "extra": 1})
        with pytest.raises(InputError, match="expected a mapping"):
            rt.run(np.zeros((1, 8), np.float32))


def test_single_input_by_name(rt):
    assert rt.run({"x": X16})["tag"][0, 0] == 1.0
    with pytest.raises(InputError, match=r"expected names \['x'\], got \['y'\]"):
        rt.run({"y": X16})


def test_bad_out_arrays(rt):
    with pytest.raises(InputError, match="out: expected a dict with exactly the outputs"):
        rt.run(X16, out=np.empty((1, 16), np.float32))
    with pytest.raises(InputError, match=r"out\['tag'\]: expected a writable C-contiguous float32 "
                                         r"array of shape \(1, 1\), got float64"):
        rt.run(X16, out={"shifted": np.empty((1, 16), np.float32), "tag": np.empty((1, 1))})
    with pytest.raises(InputError, match="not contiguous"):
        rt.run(X16, out={"shifted": np.empty((1, 32), np.float32)[:, ::2],
                         "tag": np.empty((1, 1), np.float32)})


def test_run_batch_errors():
    with Runtime(model_path("dynamic_batch")) as rt:
        with pytest.raises(InputError, match="at least one sample"):
            rt.run_batch([])
        with pytest.raises(InputError, match="expected a sequence"):
            rt.run_batch(5)
        with pytest.raises(InputError, match=r"sample 1: expected shape \(8,\), got \(7,\)"):
            rt.run_batch([np.zeros(8, np.float32), np.zeros(7, np.float32)])
        with pytest.raises(InputError, match=r"expected shape \(any, 8\), got \(2, 9\)"):
            rt.run_batch([np.zeros(9, np.float32)] * 2)
        assert rt.run_batch([np.zeros(8, np.float32)] * 2).shape == (2, 4)
    with Runtime(model_path("image_small_f32")) as rt:
        with pytest.raises(InputError, match=r"expected shape \(2, 8, 8, 3\), got \(3, 8, 8, 3\)"):
            rt.run_batch([np.zeros((8, 8, 3), np.float32)] * 3)


def test_closed_runtime():
    rt = Runtime(model_path("version_1"))
    rt.close()
    rt.close()
    for call in (lambda: rt.run(X16), lambda: rt.run_batch([X16[0]]), lambda: rt.swap(model_path("version_2")),
                 lambda: rt.info):
        with pytest.raises(RuntimeClosedError, match="closed"):
            call()


def test_bad_arguments():
    with pytest.raises(MisuseError, match="workers: expected an int from 1 to 64, got 0"):
        Runtime(model_path("tiny_f32"), workers=0)
    with pytest.raises(MisuseError, match="policy"):
        Runtime(model_path("tiny_f32"), policy="fast")
    with pytest.raises(MisuseError, match="model: expected a path or bytes, got int"):
        Runtime(42)
    with pytest.raises(MisuseError, match="readable .tflite file"):
        Runtime("/nonexistent/model.tflite")
    with pytest.raises(MisuseError, match="signature: expected one of \\['serving_default'\\], got 'nope'"):
        Runtime(model_path("tiny_f32"), signature="nope")
    with pytest.raises(MisuseError, match="expected a float32, int8 or uint8 input, got int32"):
        Runtime(model_path("multi_io"), preprocess={"counts": Normalize()})
    with pytest.raises(MisuseError, match="expected mean of 1 or 4 values"):
        Runtime(model_path("tiny_f32"), preprocess=Normalize(mean=(1, 2)))
    with pytest.raises(MisuseError, match="input name"):
        Runtime(model_path("tiny_f32"), preprocess={"nope": Normalize()})


def _mutants(base: bytes, count: int, seed: int):
    rng = random.Random(seed)
    for _ in range(count):
        data = bytearray(base)
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        yield bytes(data)


def test_corrupt_models_are_refused_and_serving_continues(backend_name):
    """Garbage, truncations and 200 byte-mutated models: an exception each, never a crash."""
    base = model_bytes("version_1")
    big = model_bytes("dense_512k")
    bad = [b"", b"garbage" * 100, bytes(4) + b"TFL3" + bytes(100), big[:5000], big[:len(big) // 2],
           base[:len(base) - 1], base[:64]]
    bad += list(_mutants(base, 120, seed=1)) + list(_mutants(big, 80, seed=2))
    refused = accepted = 0
    with Runtime(base) as rt:
        for data in bad:
            try:
                rt.swap(data, allow_contract_change=True)
                accepted += 1  # a mutation that left a valid model: it must serve
                rt.swap(base, allow_contract_change=True)
            except HotswapError as e:
                assert isinstance(e, (InvalidModelError, MisuseError)) or "contract" in str(e), e
                refused += 1
            assert _answer(rt) == 1.0
    assert refused >= 100, (refused, accepted)


def _answer(rt):
    return float(rt.run(X16)["tag"][0, 0])


def test_truncated_model_is_refused_before_any_backend_reads_it():
    """What a partial download leaves: refused with a clear message, process alive."""
    big = model_bytes("dense_512k")
    with Runtime(model_path("version_1")) as rt:
        with pytest.raises(InvalidModelError, match="not a valid TFLite flatbuffer: Model.OperatorCodes "
                                                    "at byte 525140 .* outside the 5000-byte model"):
            rt.swap(big[:5000], allow_contract_change=True)
        assert _answer(rt) == 1.0


def test_isolated_probe_contains_a_backend_crash(backend_name, monkeypatch):
    """The probe's child process dies on what crashes the backend; this process lives on.

    The model's root offset points 1 GiB past its end (the verifier, which
    would refuse it, is bypassed): tflite-runtime reads there and segfaults;
    LiteRT refuses it with an exception.  Either way it is refused without
    being loaded here, and the verdict is cached.
    """
    far = bytearray(model_bytes("version_1"))
    far[0:4] = struct.pack("<I", 1 << 30)
    asked = []
    real_ask = isolation._ask
    monkeypatch.setattr(isolation, "_ask", lambda *a, **k: asked.append(a) or real_ask(*a, **k))
    expected = r"tflite-runtime crashed \(SIGSEGV\)" if backend_name == "tflite-runtime" \
        else r"litert could not load the model: .*not a valid Flatbuffer.*\(in an isolated process\)"
    for _ in range(2):  # the second answer comes from the sha256 cache
        with pytest.raises(InvalidModelError, match=expected):
            isolation.prove_loadable(PROBE_CHECK, backend_name, bytes(far), "far-offset-test", None)
    assert len(asked) == 1
