"""The updater with personalised weights: new base versions arrive while the device holds a checkpoint.

The policy (README, Training: "New base versions from the repository"): a new
version whose variables match the checkpoint's gets the personalised weights
carried over (``new_base="carry"``), one whose variables differ starts from its
own weights, ``new_base="refuse"`` fails the update (typed, retried, not marked
bad) while the old version keeps serving; checkpoints are kept per base model
and a restart restores the serving version's own.  Served over nginx on loopback.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import model_path
from delivery_helpers import FAST, store_is_consistent
from servers import nginx

from tflite_hotswap import Probation, Runtime, Updater
from tflite_hotswap.delivery.repository import publish
from tflite_hotswap.delivery.store import Store
from tflite_hotswap.errors import CheckpointMismatchError, MisuseError, ValidationError
from tflite_hotswap.training import Checkpoints, Trainer
from tflite_hotswap.updater import events as ev
from tflite_hotswap.updater.validation import GoldenSample, validate

MLP, MLP_B, WIDE = (model_path(n) for n in ("trainable_mlp", "trainable_mlp_b", "trainable_wide"))
PROBATION = Probation(calls=100, seconds=0.3, max_p99_ratio=15.0, min_baseline_calls=50, check_every=0.05)
TOL = {"rtol": 1e-5, "atol": 1e-6}


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three separable classes in 8 dimensions (as in test_training)."""
    centres = np.random.default_rng(7).normal(0, 1.5, (3, 8))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype(np.int32)
    return (centres[y] + rng.normal(0, 0.7, (n, 8))).astype(np.float32), y


X, Y = blobs(320, seed=1)
XV, YV = blobs(200, seed=2)
PROBE = XV[:4].copy()


def base_outputs(model: str) -> np.ndarray:
    with Trainer(model) as tr:
        return tr.predict(PROBE)


def publish_version(repo, tmp_path, model: str, version: str) -> None:
    """Publish with a golden sample of the model's own (base) weights, on the infer signature."""
    golden = tmp_path / f"{version}.golden.npz"
    np.savez(golden, **{"inputs/x": PROBE, "outputs/outputs": base_outputs(model)})
    publish(str(repo), model, model="clf", version=version, channel="stable", golden=str(golden),
            signature="infer")


class Serving:
    """Callers running ``rt.run(PROBE)`` throughout; every result must be one whole set of weights."""

    def __init__(self, rt: Runtime, threads: int = 2) -> None:
        self.rt = rt
        self.failed: list[str] = []
        self.seen: set[bytes] = set()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Serving:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.seen.add(np.asarray(self.rt.run(PROBE)).tobytes())
            except Exception as e:  # noqa: BLE001 -- every failed call is counted, whatever its type
                self.failed.append(f"{type(e).__name__}: {e}")
            self.stop.wait(0.0002)


def outputs_of(rt: Runtime) -> np.ndarray:
    return np.asarray(rt.run(PROBE))


def personalise(rt: Runtime, model: str, ckpts: Checkpoints, epochs: int = 3,
                min_delta: float = 0.0) -> tuple[str, np.ndarray]:
    """Train ``model`` on the device and publish into ``rt``; return (checkpoint id, its outputs)."""
    with Trainer(model, checkpoints=ckpts) as tr:
        tr.fit((X, Y), epochs=epochs)
        info = tr.publish(rt, validate=(XV, YV), min_delta=min_delta)
        return info.checkpoint.id, tr.predict(PROBE)


@pytest.fixture
def device(tmp_path):
    """A repository on nginx with v1 (trainable_mlp); a device serving it from its store."""
    repo = tmp_path / "repo"
    repo.mkdir()
    publish_version(repo, tmp_path, MLP, "v1")
    with nginx(str(repo), tmp_path / "nginx") as server:
        yield repo, server.url, str(tmp_path / "store"), str(tmp_path / "ckpt")


def updater(rt: Runtime, url: str, store: str, seen: list) -> Updater:
    return Updater(rt, url, Store(store, config=FAST), "clf", "dev-1", probation=PROBATION, on_event=seen.append)


def test_new_bases_carry_or_reset_and_a_restart_restores_the_right_checkpoint(device, tmp_path):
    repo, url, store, ckdir = device
    ckpts = Checkpoints(ckdir)
    rt = Runtime.from_store(store, model="clf", default=MLP, default_version="v1", signature="infer",
                            checkpoints=ckpts, workers=2)
    seen: list[ev.Event] = []
    up = updater(rt, url, store, seen)
    with Serving(rt) as loop:
        assert up.check_now().outcome == "up_to_date"
        v1_ckpt, personal = personalise(rt, MLP, ckpts)
        assert not np.allclose(personal, base_outputs(MLP))
        assert rt.info.version == "v1" and rt.info.checkpoint == v1_ckpt
        np.testing.assert_allclose(outputs_of(rt), personal, **TOL)
        # Publishing trained weights keeps the version's name: the updater still sees v1 serving.
        swaps = sum(isinstance(e, ev.Swapped) for e in seen)
        assert up.check_now().outcome == "up_to_date"

        # (a) v2: another base with the same variables.  Its golden sample holds its own base
        # weights' outputs, checked on those; the weights that will serve (v1's checkpoint,
        # carried over) are run too and must give finite outputs.
        publish_version(repo, tmp_path, MLP_B, "v2")
        r = up.check_now()
        assert (r.outcome, r.serving) == ("promoted", "v2"), r
        validated = [e for e in seen if isinstance(e, ev.Validated)][-1]
        assert validated.golden and validated.checkpoint == v1_ckpt
        assert sum(isinstance(e, ev.Swapped) for e in seen) == swaps + 1
        v2_sha = rt.info.sha256
        assert rt.info.checkpoint == v1_ckpt and ckpts.served(v2_sha) == v1_ckpt
        np.testing.assert_allclose(outputs_of(rt), personal, **TOL)
        # Training goes on on v2 (a Trainer on the store's file): its checkpoints are v2's own.
        v2_ckpt, personal_v2 = personalise(rt, Store(store).path_of("clf", "v2"), ckpts, epochs=1,
                                          min_delta=0.05)
        assert ckpts.get(v2_ckpt).base_sha256 == v2_sha and ckpts.get(v1_ckpt).base_sha256 != v2_sha
        np.testing.assert_allclose(outputs_of(rt), personal_v2, **TOL)

        # (b) v3: other variables (32 hidden units): it starts from its own weights; the swap succeeds.
        publish_version(repo, tmp_path, WIDE, "v3")
        r = up.check_now()
        assert (r.outcome, r.serving) == ("promoted", "v3"), r
        assert [e for e in seen if isinstance(e, ev.Validated)][-1].checkpoint is None
        assert rt.info.checkpoint is None and ckpts.served(rt.info.sha256) is None
        np.testing.assert_allclose(outputs_of(rt), base_outputs(WIDE), **TOL)
    assert loop.failed == []
    assert sum(s.errors for s in rt.stats().values()) == 0
    # No call mixed two sets of weights: each result is one of the four that served.
    served = [base_outputs(MLP), personal, personal_v2, base_outputs(WIDE)]
    results = [np.frombuffer(b, np.float32).reshape(PROBE.shape[0], 3) for b in loop.seen]
    assert all(any(np.allclose(r, s, **TOL) for s in served) for r in results)
    assert all(any(np.allclose(r, s, **TOL) for r in results) for s in served[1:])  # each served some calls
    store_is_consistent(store)
    rt.close()
    # Checkpoints stayed apart per base model, nothing was deleted.
    assert {i.id for i in ckpts.list()} == {v1_ckpt, v2_ckpt}

    # (d) restarts: each version gets its own newest checkpoint (or, without one, the policy's).
    with Runtime.from_store(store, model="clf", signature="infer", checkpoints=Checkpoints(ckdir)) as again:
        assert again.info.version == "v3" and again.info.checkpoint is None
        np.testing.assert_allclose(outputs_of(again), base_outputs(WIDE), **TOL)
        again.swap(Store(store).path_of("clf", "v2"), version="v2")
        assert again.info.checkpoint == v2_ckpt  # v2's own, not v1's newer-numbered carry source
        np.testing.assert_allclose(outputs_of(again), personal_v2, **TOL)
        again.swap(MLP, version="v1")  # (the store pruned v1's file: the same bytes)
        assert again.info.checkpoint == v1_ckpt
        np.testing.assert_allclose(outputs_of(again), personal, **TOL)


def test_refuse_policy_fails_the_update_typed_and_the_old_version_keeps_serving(device, tmp_path):
    repo, url, store, ckdir = device
    ckpts = Checkpoints(ckdir, new_base="refuse")
    rt = Runtime.from_store(store, model="clf", default=MLP, default_version="v1", signature="infer",
                            checkpoints=ckpts)
    seen: list[ev.Event] = []
    up = updater(rt, url, store, seen)
    with Serving(rt) as loop:
        v1_ckpt, personal = personalise(rt, MLP, ckpts)
        publish_version(repo, tmp_path, MLP_B, "v2")
        for _ in range(2):  # retried at the next round, refused the same way
            r = up.check_now()
            assert (r.outcome, r.serving) == ("failed", "v1"), r
            assert r.reason is not None and r.reason.startswith("CheckpointMismatchError")
            assert "new_base='refuse'" in r.reason
        assert not any(isinstance(e, (ev.Swapped, ev.Refused, ev.MarkedBad)) for e in seen)
        status = up.status()
        assert status.bad == {} and (status.current, status.last_known_good) == ("v1", "v1")
        assert status.last_error is not None and "CheckpointMismatchError" in status.last_error
        assert rt.info.version == "v1" and rt.info.checkpoint == v1_ckpt
        np.testing.assert_allclose(outputs_of(rt), personal, **TOL)
        # Resetting v1's checkpoints lifts the refusal: v2 then starts from its own weights.
        ckpts.reset()
        r = up.check_now()
        assert (r.outcome, r.serving) == ("promoted", "v2"), r
        assert rt.info.checkpoint is None
        np.testing.assert_allclose(outputs_of(rt), base_outputs(MLP_B), **TOL)
    assert loop.failed == []
    store_is_consistent(store)
    rt.close()


def test_a_carried_checkpoint_that_breaks_the_new_base_is_refused_before_any_swap(device, tmp_path):
    repo, url, store, ckdir = device
    ckpts = Checkpoints(ckdir)
    rt = Runtime.from_store(store, model="clf", default=MLP, default_version="v1", signature="infer",
                            checkpoints=ckpts)
    seen: list[ev.Event] = []
    up = updater(rt, url, store, seen)
    with Trainer(MLP, checkpoints=ckpts) as tr:  # a checkpoint of v1 whose weights are NaN
        nan = ckpts.save({k: np.full_like(v, np.nan) if v.dtype == np.float32 else v
                          for k, v in tr.weights().items()}, base_sha256=tr.sha256)
    publish_version(repo, tmp_path, MLP_B, "v2")
    with Serving(rt) as loop:
        r = up.check_now()
    assert (r.outcome, r.serving) == ("refused", "v1"), r
    assert f"checkpoint {nan.id}" in (r.reason or "") and "finite" in (r.reason or "")
    assert not any(isinstance(e, ev.Swapped) for e in seen)
    assert loop.failed == [] and rt.info.version == "v1"
    store_is_consistent(store)
    rt.close()


def test_validation_reports_which_weights_it_ran(tmp_path):
    """Direct: the golden sample is checked on the base weights, the serving weights for finiteness."""
    ckpts = Checkpoints(tmp_path / "ckpt")
    with Trainer(MLP, checkpoints=ckpts) as tr:
        tr.fit((X, Y), epochs=2)
        saved = tr.save()
    golden_path = tmp_path / "g.npz"
    np.savez(golden_path, **{"inputs/x": PROBE, "outputs/outputs": base_outputs(MLP_B)})
    golden = GoldenSample(golden_path.read_bytes(), 1e-5)
    with Runtime(MLP, signature="infer") as rt:
        backend = rt.backend
    report = validate(MLP_B, version="v2", backend=backend, golden=golden, signature="infer", checkpoints=ckpts)
    assert report.golden and report.checkpoint == saved
    plain = validate(MLP_B, version="v2", backend=backend, golden=golden, signature="infer")
    assert plain.checkpoint is None
    with pytest.raises(CheckpointMismatchError, match="new_base='refuse'"):
        validate(MLP_B, version="v2", backend=backend, signature="infer",
                 checkpoints=Checkpoints(ckpts.directory, new_base="refuse"))
    # A device that trains refuses a version it could not restore weights into.
    with pytest.raises(ValidationError, match="restoring this device's checkpoint: NotTrainableError"):
        validate(model_path("tiny_f32"), version="v9", backend=backend, checkpoints=ckpts)
    with pytest.raises(MisuseError, match="expected a Checkpoints"):
        validate(MLP_B, version="v2", backend=backend, signature="infer", checkpoints="nope")  # type: ignore[arg-type]
