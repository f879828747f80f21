"""On-device training: Trainer, Checkpoints and the restore into every interpreter (backend under test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import model_bytes, model_path

from tflite_hotswap import InputError, InvalidModelError, MisuseError, Normalize, Runtime, RuntimeClosedError
from tflite_hotswap._slots import LatencyStats
from tflite_hotswap._train import TrainStep
from tflite_hotswap.errors import (
    CheckpointError,
    CheckpointMismatchError,
    FlexOpsRequiredError,
    NotTrainableError,
    ValidationFailedError,
)
from tflite_hotswap.training import Checkpoints, Trainer, _safetensors, batches, count_batches, one_hot
from tflite_hotswap.training.native_step import entry_points

MLP = model_path("trainable_mlp")


def blobs(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Three separable classes in 8 dimensions."""
    centres = np.random.default_rng(7).normal(0, 1.5, (3, 8)) + shift
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype(np.int32)
    return (centres[y] + rng.normal(0, 0.7, (n, 8))).astype(np.float32), y


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


@pytest.fixture
def data():
    return blobs(320, seed=1), blobs(200, seed=2)


# ---------------------------------------------------------------- Trainer


def test_loss_falls_on_a_fixed_seed(data):
    (x, y), (xv, yv) = data
    with Trainer(MLP) as tr:
        assert tr.form.kind == "weights" and tr.batch_size == 16
        before = tr.evaluate(xv, yv)
        history = tr.fit((x, y), epochs=4, validation=(xv, yv), seed=0)
        assert len(history.epochs) == 4
        assert history.loss[-1] < history.loss[0] * 0.5
        assert history.epochs[-1]["val_accuracy"] > max(before["accuracy"], 0.9)
        assert tr.step_count() == 4 * count_batches(320, 16)


def test_the_linear_head_fixture_trains_too(data):
    """tests/models/trainable_linear (8 -> 3, plain SGD: no optimizer state), the small benchmark model."""
    (x, y), (xv, yv) = data
    with Trainer(model_path("trainable_linear")) as tr:
        assert sorted(tr.variables) == ["b", "train_step", "w"]
        history = tr.fit((x, y), epochs=4, validation=(xv, yv))
        assert history.loss[-1] < history.loss[0] and history.epochs[-1]["val_accuracy"] > 0.9


def test_same_seed_same_weights(data):
    (x, y), _ = data
    results = []
    for _ in range(2):
        with Trainer(MLP) as tr:
            tr.fit((x, y), epochs=2, seed=5)
            results.append(tr.weights())
    assert same(results[0], results[1])


def test_step_inputs_by_position_name_or_mapping_and_int64_labels():
    x, y = blobs(16, seed=3)
    with Trainer(MLP) as tr:
        a = tr.step(x, y.astype(np.int64))
        b = tr.step(x=x, y=y)
        c = tr.step({"x": x, "y": y})
        assert all(np.isfinite([a, b, c]))
        assert tr.steps == 3 and tr.step_count() == 3
        with pytest.raises(InputError, match="training batch size"):
            tr.step(x[:5], y[:5])
        with pytest.raises(InputError, match="by position or by name"):
            tr.step(x)


def test_step_errors_are_typed_and_counted():
    x, y = blobs(16, seed=3)
    with Trainer(MLP) as tr:
        with pytest.raises(InputError, match=r"expected inputs \['x', 'y'\] by name, got \['x', 'z'\]"):
            tr.step(x=x, z=y)
        with pytest.raises(InputError, match="by position or by name, got 1 by position and"):
            tr.step(x, y=y)
        with pytest.raises(InputError, match="expected shapes"):
            tr.step(x, y[:8])
        with pytest.raises(InputError):
            tr.step(x.tolist(), "labels")  # a list is cast; a string is no int32 array
        assert np.isfinite(tr.step(x.tolist(), y.tolist()))  # lists are cast to the tensors' dtypes
        stats = tr.stats()
        assert (stats["calls"], stats["caller_errors"], stats["model_errors"]) == (5, 4, 0)
        assert tr.steps == 1
    with pytest.raises(RuntimeClosedError):
        tr.step(x, y)


def test_native_and_wrapper_step_paths_train_identically(backend_name, monkeypatch, data):
    (x, y), _ = data
    results = {}
    for native in ("1", "0"):
        monkeypatch.setenv("TFLITE_HOTSWAP_NATIVE", native)
        with Trainer(MLP) as tr:
            results[tr.path] = (tr.fit((x, y), epochs=2, seed=3).loss, tr.weights())
    # tflite-runtime exports SignatureRunner, LiteRT has it hidden: both run the step natively
    # (whatever TFLITE_HOTSWAP_NATIVE the suite runs with: the loop sets it).
    assert set(results) == ({"native", "python"} if backend_name in ("tflite-runtime", "litert") else {"python"})
    if len(results) == 2:
        (loss_a, weights_a), (loss_b, weights_b) = results.values()
        assert loss_a == loss_b and same(weights_a, weights_b)


def test_native_step_falls_back_to_the_wrapper_when_the_runner_is_missing():
    native = None
    with Trainer(MLP) as tr:
        native = entry_points(tr._interpreter)
        if native is None:
            pytest.skip("no native SignatureRunner here (TFLITE_HOTSWAP_NATIVE=0, or the TensorFlow backend)")
        subgraph = tr._interpreter._interpreter.GetSubgraphIndexFromSignature("train")
        inputs = [(t.name, t.index, None, np.dtype(t.dtype)) for t in tr.contract.inputs]
        loss = ("loss", next(t.index for t in tr.contract.outputs if t.name == "loss"))
        step = TrainStep(tr._interpreter, subgraph, inputs, loss, threading.RLock(), LatencyStats(), native,
                         "no_such_signature")
        assert step.path == "python (GetSignatureRunner('no_such_signature') returned no runner)"
        assert np.isfinite(step.step(blobs(16, seed=3), {})) and step.steps == 1


def test_preprocess_goes_through_the_fused_kernel():
    x, y = blobs(16, seed=3)
    raw = np.clip(x * 20 + 128, 0, 255).astype(np.uint8)
    norm = Normalize(scale=1.0, mean=128.0, std=20.0)
    with Trainer(MLP, preprocess=norm) as tr, Trainer(MLP) as ref:
        # The kernel computes in float32 exactly as the inference path does.
        assert tr.step(raw, y) == pytest.approx(ref.step((raw.astype(np.float32) - 128) / 20, y), rel=1e-5)
        assert tr.predict(raw[:3]).shape == (3, 3)


def test_fit_stops_on_event_and_calls_callbacks(data):
    (x, y), _ = data
    stop = threading.Event()
    seen = []

    class Recorder:
        def on_epoch_end(self, epoch, logs):
            seen.append(("object", epoch, logs["loss"]))

    def progress(epoch, done):
        if done == 3:
            stop.set()

    with Trainer(MLP) as tr:
        history = tr.fit((x, y), epochs=3, callbacks=[lambda e, logs: seen.append(("fn", e)), Recorder()],
                         stop=stop, progress=progress)
        assert history.stopped and tr.steps == 3
        assert [s[0] for s in seen] == ["fn", "object"] and history.epochs[0]["steps"] == 3


# ------------------------------------------------------------ Checkpoints


def test_save_restore_round_trip_is_exact(tmp_path, data):
    (x, y), _ = data
    ckpts = Checkpoints(tmp_path / "ckpt")
    with Trainer(MLP, checkpoints=ckpts) as tr:
        tr.fit((x, y), epochs=1)
        trained = tr.weights()
        ckpt_id = tr.save(metrics={"val_accuracy": 0.5})
    info = ckpts.latest()
    assert info.id == ckpt_id and info.step == 20 and info.metrics == {"val_accuracy": 0.5}
    assert same(ckpts.load(ckpt_id), trained)
    with Trainer(MLP, checkpoints=ckpts) as again:
        assert again.restored.id == ckpt_id
        assert same(again.weights(), trained)
        assert again.step_count() == 20


def test_checkpoint_files_are_standard_safetensors(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy",
                                            reason="the safetensors package is not installed")
    ckpts = Checkpoints(tmp_path)
    with Trainer(MLP, checkpoints=ckpts) as tr:
        tr.step(*blobs(16, seed=1))
        weights = tr.weights()
        info = ckpts.get(tr.save(metrics={"val_accuracy": 0.75}))
    theirs = safetensors_numpy.load_file(info.path)
    assert same(theirs, weights)
    from safetensors import safe_open
    with safe_open(info.path, "np") as f:
        meta = f.metadata()
    assert meta["base_sha256"] == info.base_sha256 and json.loads(meta["metrics"]) == {"val_accuracy": 0.75}
    # And the other way: a file written by the safetensors package reads back here.
    data = safetensors_numpy.save({"a": np.arange(6, dtype=np.int64).reshape(2, 3),
                                   "s": np.array(2.5, np.float32)},
                                  metadata={"k": "v"})
    tensors, metadata = _safetensors.loads(data)
    assert metadata == {"k": "v"} and tensors["a"].tolist() == [[0, 1, 2], [3, 4, 5]] and tensors["s"] == 2.5


def test_mismatched_checkpoint_is_refused_with_the_differences(tmp_path):
    ckpts = Checkpoints(tmp_path)
    with Trainer(MLP) as tr:
        weights = tr.weights()
    wide_sha = Trainer(model_path("trainable_wide")).sha256
    ckpts.save(weights, base_sha256=wide_sha, step=1)  # the narrow model's weights under the wide base
    with pytest.raises(CheckpointMismatchError) as e:
        Trainer(model_path("trainable_wide"), checkpoints=ckpts)
    assert "variable 'w1': expected shape (8, 32), the checkpoint has (8, 16)" in str(e.value)
    assert len(e.value.differences) >= 4
    with Trainer(MLP) as tr:
        bad = dict(weights, w1=weights["w1"].astype(np.float64))
        del bad["b1"]
        mismatch = r"'b1': the model has it.*'w1': expected dtype float32"
        with pytest.raises(CheckpointMismatchError, match=mismatch):
            tr.set_weights(bad)


def test_keep_newest_plus_best_rollback_and_reset(tmp_path):
    ckpts = Checkpoints(tmp_path, keep=2, best="val_accuracy")
    with Trainer(MLP, checkpoints=ckpts) as tr:
        ids = [tr.save(metrics={"val_accuracy": acc}) for acc in (0.5, 0.9, 0.6, 0.7, 0.65)]
        assert [i.id for i in ckpts.list()] == [ids[1], ids[3], ids[4]]  # best (0.9) + newest two
        assert ckpts.best().id == ids[1] and ckpts.latest().id == ids[4]
        assert ckpts.rollback().id == ids[3]
        assert ckpts.reset() == 2 and ckpts.latest() is None
        with pytest.raises(CheckpointError, match="found none"):
            ckpts.rollback()


def test_damaged_and_temporary_files_are_never_latest(tmp_path):
    ckpts = Checkpoints(tmp_path)
    with Trainer(MLP, checkpoints=ckpts) as tr:
        good = tr.save()
        folder = os.path.dirname(ckpts.get(good).path)
        with open(os.path.join(folder, "99999999.safetensors"), "wb") as f:
            f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")  # truncated
        with open(os.path.join(tmp_path, ".tmp-999999999-00.safetensors"), "wb") as f:
            f.write(b"partial")
    assert ckpts.latest().id == good
    Checkpoints(tmp_path)  # cleans up temp files of dead processes
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_new_base_policies(tmp_path):
    b_path = model_path("trainable_mlp_b")
    with Trainer(MLP, checkpoints=Checkpoints(tmp_path)) as tr:
        tr.step(*blobs(16, seed=1))
        trained = tr.weights()
        tr.save()
    with Trainer(b_path, checkpoints=Checkpoints(tmp_path)) as carried:  # default: carry when variables match
        assert same(carried.weights(), trained)
    with Trainer(b_path, checkpoints=Checkpoints(tmp_path, new_base="reset")) as fresh:
        assert fresh.restored is None and not np.array_equal(fresh.weights()["w1"], trained["w1"])
    with pytest.raises(CheckpointMismatchError, match="new_base='refuse'"):
        Trainer(b_path, checkpoints=Checkpoints(tmp_path, new_base="refuse"))
    with Trainer(model_path("trainable_wide"), checkpoints=Checkpoints(tmp_path)) as other:
        assert other.restored is None  # variables differ: starts from its own weights


# ------------------------------------------------------------ model forms


def test_flex_model_gives_the_typed_error_without_flex(backend_name, tmp_path):
    if backend_name == "tensorflow":
        pytest.skip("the tensorflow backend has Flex ops")
    with pytest.raises(FlexOpsRequiredError) as e:
        Trainer(model_path("trainable_flex"))
    assert {"FlexSave", "FlexRestore"} <= set(e.value.ops)
    assert "make_trainable" in str(e.value) and backend_name in str(e.value)
    # A runtime asked to restore checkpoints into it: the same typed error, no crash.
    with pytest.raises(InvalidModelError) as e:
        Runtime(model_path("trainable_flex"), signature="infer", checkpoints=Checkpoints(tmp_path))
    assert "Flex" in str(e.value)


def test_flex_model_trains_on_the_tensorflow_backend():
    pytest.importorskip("tensorflow",
                        reason="TensorFlow is not installed: the Flex form needs backend='tensorflow'")
    x, y = blobs(64, seed=1)
    with Trainer(model_path("trainable_flex"), backend="tensorflow") as tr:
        assert tr.form.kind == "flex" and tr.batch_size is None
        labels = one_hot(y, 3)
        try:
            first = tr.step(x, labels)
        except FlexOpsRequiredError as e:
            # TensorFlow 2.21's tf.lite.Interpreter no longer links the Flex delegate:
            # the typed error, not a crash, is all this build allows.
            assert "no Flex delegate" in str(e)
            pytest.skip(f"this TensorFlow build's interpreter has no Flex delegate: {e}")
        for _ in range(30):
            last = tr.step(x, labels)
        assert last < first
        with pytest.raises(NotTrainableError, match="Flex form"):
            tr.weights()


def test_model_without_training_signatures_is_refused():
    with pytest.raises(NotTrainableError, match="expected signatures"):
        Trainer(model_path("tiny_f32"))


# ------------------------------------------------- every interpreter restores


@pytest.fixture
def trained_ckpts(tmp_path, data):
    (x, y), _ = data
    ckpts = Checkpoints(tmp_path / "ckpt")
    with Trainer(MLP, checkpoints=ckpts) as tr:
        tr.fit((x, y), epochs=2)
        tr.save()
        expected = tr.predict(x[:7])
        base = tr.predict(x[:7], weights=tr.base_weights)
    assert not np.allclose(expected, base)
    return ckpts, x[:7], expected


def test_restore_at_start_and_in_every_worker(trained_ckpts):
    ckpts, x, expected = trained_ckpts
    with Runtime(MLP, signature="infer", checkpoints=ckpts, workers=3) as rt:
        assert ckpts.served(rt.info.sha256) == ckpts.latest().id
        results = []
        barrier = threading.Barrier(3)

        def call():
            barrier.wait()
            for _ in range(50):
                results.append(rt.run(x))

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 150
        for r in results:
            np.testing.assert_allclose(r, expected, rtol=1e-5, atol=1e-6)


def test_restore_in_each_new_batch_size(trained_ckpts):
    ckpts, x, expected = trained_ckpts
    with Runtime(MLP, signature="infer", checkpoints=ckpts) as rt:
        for n in (1, 7, 3, 7):
            np.testing.assert_allclose(rt.run(x[:n]), expected[:n], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rt.run_batch(list(x[:5])), expected[:5], rtol=1e-5, atol=1e-6)


def test_restore_on_swap(trained_ckpts):
    ckpts, x, expected = trained_ckpts
    with Runtime(MLP, signature="infer", checkpoints=ckpts) as rt:
        rt.run(x[:2])  # a second shape, pre-built again at the swap
        rt.swap(model_bytes("trainable_mlp"), version="again")
        np.testing.assert_allclose(rt.run(x), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rt.run(x[:2]), expected[:2], rtol=1e-5, atol=1e-6)
        # Another base whose variables match: the checkpoint is carried over (new_base="carry").
        rt.swap(model_bytes("trainable_mlp_b"), version="b")
        np.testing.assert_allclose(rt.run(x), expected, rtol=1e-5, atol=1e-6)
        # Another base whose variables differ: it starts from its own weights.
        rt.swap(model_bytes("trainable_wide"), version="wide")
        with Trainer(model_path("trainable_wide")) as wide:
            np.testing.assert_allclose(rt.run(x), wide.predict(x), rtol=1e-5, atol=1e-6)
    refusing = Checkpoints(ckpts.directory, new_base="refuse")
    with Runtime(MLP, signature="infer", checkpoints=refusing) as rt:
        with pytest.raises(CheckpointMismatchError, match="new_base='refuse'"):
            rt.swap(model_bytes("trainable_mlp_b"), version="b")
        assert rt.info.sha256 == Trainer(MLP).sha256  # the old version keeps serving
        np.testing.assert_allclose(rt.run(x), expected, rtol=1e-5, atol=1e-6)


def test_restore_after_a_restart(trained_ckpts):
    ckpts, x, expected = trained_ckpts
    code = ("import sys, numpy as np\n"
            "from tflite_hotswap import Runtime\n"
            "from tflite_hotswap.training import Checkpoints\n"
            "x = np.load(sys.argv[3])\n"
            "with Runtime(sys.argv[1], signature='infer', checkpoints=Checkpoints(sys.argv[2])) as rt:\n"
            "    np.save(sys.argv[3], rt.run(x))\n")
    path = os.path.join(ckpts.directory, "..", "x.npy")
    np.save(path, x)
    # From another folder: "-c" puts the current one first on sys.path (the source tree).
    subprocess.run([sys.executable, "-c", code, MLP, ckpts.directory, path], check=True, timeout=120,
                   cwd=os.path.dirname(path))
    np.testing.assert_allclose(np.load(path), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- publish


def test_publish_while_serving_no_failed_no_mixed_calls(tmp_path, data):
    (x, y), (xv, yv) = data
    ckpts = Checkpoints(tmp_path)
    probe = xv[:1].copy()
    rt = Runtime(MLP, signature="infer", checkpoints=ckpts, workers=2, version="before")
    assert rt.info.checkpoint is None
    tr = Trainer(MLP, checkpoints=ckpts)
    before = tr.predict(probe).tobytes()
    seen: dict[bytes, int] = {}
    failures: list[BaseException] = []
    stop = threading.Event()
    published = threading.Event()
    calls_after = [0]
    count_lock = threading.Lock()

    def loop():
        while not stop.is_set():
            try:
                out = rt.run(probe).tobytes()
            except Exception as e:  # noqa: BLE001 -- every failed call is counted, whatever its type
                failures.append(e)
                continue
            seen[out] = seen.get(out, 0) + 1
            if published.is_set():
                with count_lock:
                    calls_after[0] += 1
                    if calls_after[0] >= 200:
                        stop.set()

    callers = [threading.Thread(target=loop) for _ in range(2)]
    for t in callers:
        t.start()
    try:
        history = tr.fit((x, y), epochs=3, validation=(xv, yv))
        info = tr.publish(rt, validate=(xv, yv))
        published.set()
        assert stop.wait(60)
    finally:
        stop.set()
        for t in callers:
            t.join()
    after = tr.predict(probe).tobytes()
    assert failures == []
    assert set(seen) <= {before, after}, "a call returned neither the old nor the new weights' output"
    assert seen.get(after, 0) >= 100
    assert info.metrics["accuracy"] >= info.serving_metrics["accuracy"]
    assert info.checkpoint.id == ckpts.latest().id == info.model.checkpoint == rt.info.checkpoint
    assert info.model.version == rt.info.version == "before"  # the version keeps its name
    assert info.metrics["accuracy"] == pytest.approx(history.epochs[-1]["val_accuracy"])
    assert rt.stats()[info.model.version].errors == 0
    rt.close()
    tr.close()


def test_a_bad_run_never_reaches_service(tmp_path, data):
    (x, y), (xv, yv) = data
    ckpts = Checkpoints(tmp_path)
    with Runtime(MLP, signature="infer", checkpoints=ckpts) as rt, Trainer(MLP, checkpoints=ckpts) as tr:
        tr.fit((x, y), epochs=2)
        good = tr.publish(rt, validate=(xv, yv))
        serving = rt.run(xv[:3])
        # A run on wrong labels: worse than what serves.
        tr.fit((x, (y + 1) % 3), epochs=3)
        with pytest.raises(ValidationFailedError, match="at least as good") as e:
            tr.publish(rt, validate=(xv, yv))
        assert e.value.candidate < e.value.serving
        # Non-finite weights: refused too.
        tr.set_weights({k: (np.full_like(v, np.nan) if v.dtype == np.float32 else v)
                        for k, v in tr.weights().items()})
        with pytest.raises(ValidationFailedError, match="non-finite"):
            tr.publish(rt, validate=(xv, yv))
        assert rt.info.version == good.model.version and ckpts.latest().id == good.checkpoint.id
        np.testing.assert_array_equal(rt.run(xv[:3]), serving)


def test_publish_needs_a_runtime_with_the_same_checkpoints(tmp_path, data):
    _, (xv, yv) = data
    with Runtime(MLP, signature="infer") as rt, Trainer(MLP, checkpoints=Checkpoints(tmp_path)) as tr, \
            pytest.raises(MisuseError, match="checkpoints="):
        tr.publish(rt, validate=(xv, yv))


# ----------------------------------------------------------------- pipeline


def test_one_hot():
    assert one_hot([2, 0], 3).tolist() == [[0, 0, 1], [1, 0, 0]]
    with pytest.raises(InputError, match=r"expected values in \[0, 3\)"):
        one_hot([3], 3)


@pytest.mark.parametrize("n,last,expected", [(10, "drop", 2), (10, "pad", 3), (8, "drop", 2), (3, "drop", 1)])
def test_batches_have_the_fixed_size(n, last, expected):
    x = np.arange(n, dtype=np.float32)[:, None]
    y = np.arange(n, dtype=np.int32)
    got = [(bx.copy(), by.copy()) for bx, by in batches((x, y), 4, seed=1, last=last)]
    assert len(got) == expected == count_batches(n, 4, last)
    for bx, by in got:
        assert bx.shape == (4, 1) and by.shape == (4,) and np.array_equal(bx[:, 0], by)
    seen = np.concatenate([by for _, by in got])
    if last == "pad" or n < 4:
        assert set(seen) == set(range(n))
    assert [b[1].tolist() for b in batches((x, y), 4, seed=1, last=last)] == [b[1].tolist() for b in got]
