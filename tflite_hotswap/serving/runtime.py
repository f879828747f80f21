"""Runtime: the object an inference loop calls, and whose model can be swapped live."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import queue
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .. import _slots
from .._slots import Bound, LatencyStats, Slot, SlotTable, Worker
from ..errors import InputError, MisuseError, ModelUnavailableError, RuntimeBusyError, RuntimeClosedError
from .backend import load_backend
from .contract import Contract, TensorSpec, check_compatible
from .gil import short_turns
from .loader import LoadedModel, ModelSource, ShapeKey, check_shape_key, load_proven, make_bound, read_model
from .preprocess import Normalize, kernel_for

POLICIES = ("availability", "resource")

# Statistics are kept for this many versions (the serving one always); a
# device swapping through thousands of versions must not grow without bound.
STATS_KEPT = 32

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """The serving (or just swapped-in) model.

    Attributes:
        version: the version name given to ``swap`` (default: first 12 hex
            digits of the sha256).
        sha256: hex digest of the model bytes.
        size: model size in bytes.
        signature: the signature being run (None: the model has none).
        signatures: every signature of the model with its input/output names.
        inputs: the contract's inputs.
        outputs: the contract's outputs.
        backend: the backend that runs it.
        loaded_at: when it was published (UTC).
        probe_seconds: time spent proving it loadable in a child process
            (0.0 when cached or not needed).
        load_seconds: time spent loading, allocating and warming it up.
        path: ``"native"`` when calls and allocations go straight to the C++
            interpreter with the GIL released, ``"python"`` when through the
            backend's Python wrapper (see ``tflite_hotswap.serving.native``).
        checkpoint: with ``checkpoints=``, the id of the checkpoint restored
            into every interpreter of this version (None: its own weights).
    """

    version: str
    sha256: str
    size: int
    signature: str | None
    signatures: dict[str, dict[str, list[str]]]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    backend: str
    loaded_at: datetime
    probe_seconds: float = 0.0
    load_seconds: float = 0.0
    path: str = "python"
    checkpoint: str | None = None

    @property
    def contract(self) -> Contract:
        return Contract(self.inputs, self.outputs)


@dataclass(frozen=True)
class VersionStats:
    """Calls to one version since the runtime started (latency in microseconds).

    Failed calls are counted by cause: ``model_errors`` (the backend failed
    running the model -- what a rollback should look at), ``caller_errors``
    (bad input) and ``timeouts`` (no worker, or no model during a
    resource-policy swap, within ``wait_timeout``).  Latency percentiles are
    of the successful calls, read from a log-linear histogram (within ~3%);
    max is exact.
    """

    calls: int
    model_errors: int
    caller_errors: int
    timeouts: int
    p50_us: float
    p99_us: float
    p999_us: float
    max_us: float
    mean_us: float

    @property
    def errors(self) -> int:
        """Every failed call, whatever the cause."""
        return self.model_errors + self.caller_errors + self.timeouts


@dataclass
class _Serving:
    model: LoadedModel
    kernels: list[Any]
    info: ModelInfo


class Runtime(SlotTable):
    """Runs a TFLite model and replaces it while calls keep running.

    ``run``/``run_batch`` never take a lock and never see a half-swapped
    model: every call runs wholly on one version.  ``swap`` loads the new
    model beside the serving one, checks its I/O contract, warms it up and
    publishes it atomically; on any failure the serving model keeps serving.

    Args:
        model: path to a ``.tflite`` file, or its bytes.
        signature: signature to run; None picks the model's only signature
            (or the plain inputs/outputs of a model without signatures).
        backend: ``"auto"`` (tflite-runtime, then LiteRT, then
            tensorflow.lite; the ``TFLITE_HOTSWAP_BACKEND`` environment
            variable overrides), or a backend name.
        num_threads: threads per interpreter (None: the backend's default).
        workers: interpreters per model version; up to this many calls run
            at once (``invoke`` releases the GIL).  A caller beyond that waits
            for a free one, up to ``wait_timeout``.
        policy: ``"availability"`` (load the new model, then release the old:
            two models in memory for a moment) or ``"resource"`` (release the
            old first, for boards with little RAM; calls made in the gap wait
            up to ``wait_timeout`` and then run on the new model).
        preprocess: a :class:`Normalize` for a single-input model, or a
            mapping of input name to :class:`Normalize`, fused into the copy.
        wait_timeout: seconds a call may wait for a worker or a swap gap
            before raising :class:`RuntimeBusyError` (``float("inf")``: no
            limit; Ctrl+C still interrupts the wait).  Also bounds how long
            ``swap()`` and ``close()`` wait for calls still running on a
            retired version.
        isolate: prove each new model loadable in a child process (load,
            bind, one invoke, under memory and CPU limits) before loading it
            here.  None: yes for every backend -- none verifies a model's
            meaning, and LiteRT crashes on some models its verifier passes.
        version: version name of the initial model.
        checkpoints: a :class:`tflite_hotswap.training.Checkpoints`: every
            interpreter this runtime creates (start, each worker, each new
            input shape, each swap) gets the latest checkpoint for its model
            restored, the same one for every interpreter of a version.

    Raises:
        MisuseError: for invalid arguments.
        BackendNotFoundError: if the backend is not installed.
        InvalidModelError: if the model cannot be loaded and run.
    """

    def __init__(self, model: ModelSource, *, signature: str | None = None,
                 backend: str = "auto", num_threads: int | None = None, workers: int = 1,
                 policy: str = "availability",
                 preprocess: Normalize | Mapping[str, Normalize] | None = None,
                 wait_timeout: float = 10.0, isolate: bool | None = None,
                 version: str | None = None, checkpoints: Any = None) -> None:
        if not isinstance(workers, int) or not 1 <= workers <= 64:
            raise MisuseError(f"workers: expected an int from 1 to 64, got {workers!r}")
        if policy not in POLICIES:
            raise MisuseError(f"policy: expected one of {POLICIES}, got {policy!r}")
        if not isinstance(wait_timeout, (int, float)) or math.isnan(wait_timeout) or not wait_timeout > 0:
            raise MisuseError(f"wait_timeout: expected seconds > 0 (inf for no limit), got {wait_timeout!r}")
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise MisuseError(f"num_threads: expected None or an int >= 1, got {num_threads!r}")
        if preprocess is not None and not isinstance(preprocess, (Normalize, Mapping)):
            raise MisuseError(f"preprocess: expected a Normalize or a mapping of input name to "
                              f"Normalize, got {type(preprocess).__name__}")
        self.wait_timeout = float(wait_timeout)
        self._backend = load_backend(backend)
        self._isolate = (not self._backend.verifies_models) if isolate is None else bool(isolate)
        self._signature = signature
        self._num_threads = num_threads
        self._workers = workers
        self._policy = policy
        self._preprocess = preprocess
        self._checkpoints = checkpoints
        self._swap_lock = threading.Lock()
        self._writer_thread: int | None = None
        self._contract: Contract | None = None  # the last published one, even after a failure
        self._stats: dict[str, LatencyStats] = {}
        self._serving: _Serving | None = None
        self._closed = False
        self._free = _FreeSlots(self._capacity())
        self._reclaimer = _Reclaimer(self, self._free)
        # An unclosed runtime that is dropped hands its interpreters to the
        # reclaimer thread: destroying them takes milliseconds with the GIL
        # held, and must not happen on whichever thread dropped the last reference.
        self._finalizer = weakref.finalize(self, self._reclaimer.adopt, self._slot_list())
        _live.add(self)
        try:
            self.swap(model, version=version, allow_contract_change=True)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ public API

    @classmethod
    def from_store(cls, store: Any, *, model: str, default: ModelSource | None = None,
                   **kwargs: Any) -> Runtime:
        """A Runtime serving ``model`` from an on-device store, without any network.

        Serves the store's current version, or its last-known-good (after a
        process died during a probation: crash-loop protection), or
        ``default``, the model the device shipped with, for an empty store.
        See :func:`tflite_hotswap.updater.boot.open_from_store` for every argument.

        Raises:
            StorageError: if nothing usable is stored and no default is given.
            InvalidModelError: if the default model cannot be loaded either.
        """
        from ..updater.boot import open_from_store  # delivery sits above serving: imported on use
        return open_from_store(store, model=model, default=default, **kwargs)

    @property
    def info(self) -> ModelInfo:
        """The serving model's :class:`ModelInfo`.

        Raises:
            RuntimeClosedError: if the runtime is closed.
            ModelUnavailableError: if no model is serving (a resource-policy
                swap failed and the old model could not be reloaded).
        """
        serving = self._serving
        if self._closed:
            raise RuntimeClosedError("the runtime is closed; expected an open runtime")
        if serving is None:
            raise ModelUnavailableError("no model is serving; expected a successful swap() first")
        return serving.info

    @property
    def backend(self) -> str:
        """Name of the backend in use."""
        return self._backend.name

    @property
    def checkpoints(self) -> Any:
        """The :class:`~tflite_hotswap.training.Checkpoints` given as ``checkpoints=`` (or None)."""
        return self._checkpoints

    def stats(self) -> dict[str, VersionStats]:
        """Per version: calls by outcome and latency percentiles since the runtime started.

        Kept for the serving version and up to ``STATS_KEPT`` recent ones.
        """
        return {version: VersionStats(**s.snapshot()) for version, s in list(self._stats.items())}

    def swap(self, model: ModelSource, *, version: str | None = None,
             allow_contract_change: bool = False) -> ModelInfo:
        """Replace the serving model; calls keep running throughout.

        Loads ``model`` into a standby slot, checks its contract against the
        serving model, warms every interpreter up with one invoke, then
        publishes it atomically.  Calls already running finish on the old
        version, which is destroyed off the calling thread once they leave.
        Every input shape the serving version has seen is allocated in the new
        one before it is published, so no call pays for an allocation.

        Args:
            model: path or bytes of the new model (bytes are copied: the
                runtime keeps its own, in a mapping it frees off the GIL).
            version: its version name (default: sha256 prefix).
            allow_contract_change: accept a model whose inputs/outputs differ.

        Returns:
            The new model's :class:`ModelInfo`.

        Raises:
            InvalidModelError: if the model cannot be loaded or run; it never
                reaches this process's interpreter when a child process
                could not load it.  (:class:`UnsupportedModelError` for a tensor
                type or rank the binding cannot serve.)
            IncompatibleModelError: if its contract differs (and not allowed).
            MisuseError: if ``model`` is not a path or bytes, the preprocess
                settings do not fit it, or (resource policy) it is called from
                inside a call of this runtime.
            RuntimeBusyError: if retired versions still had calls running
                after ``wait_timeout`` (every slot in use).
            RuntimeClosedError: if the runtime is closed.
        """
        if self._policy == "resource" and self._inside_call():
            raise MisuseError("swap(): called from inside a run() of this runtime (a callback or "
                              "signal handler); the resource policy would wait for that very call")
        with self._writer("swap()"), short_turns():
            if self._closed:
                raise RuntimeClosedError("the runtime is closed; expected an open runtime")
            data = read_model(model)
            serving = self._serving
            if self._policy == "resource" and serving is not None:
                return self._swap_in_place(data, version, allow_contract_change, serving)
            info = self._load_and_publish(data, version, allow_contract_change, self._known_shapes())
            logger.info("swapped in %s (sha256 %s, %.1f ms load, %.1f ms probe)", info.version,
                        info.sha256[:12], info.load_seconds * 1e3, info.probe_seconds * 1e3)
            return info

    def close(self) -> None:
        """Stop serving and free every interpreter; later calls raise RuntimeClosedError.

        Waits up to ``wait_timeout`` for calls in flight to finish; the
        interpreters of calls still running after that are freed when they
        return.  Closing twice is harmless.

        Raises:
            MisuseError: if called from inside a call of this runtime (a
                callback or a signal handler): it would wait for itself.
        """
        if self._inside_call():
            raise MisuseError("close(): called from inside a run() of this runtime (a callback or "
                              "signal handler); expected it after the call returns")
        with self._writer("close()"):
            if self._closed:
                return
            self._closed = True
            old = self._unpublish(_slots.CLOSED)
            if old >= 0:
                self._reclaimer.retire(old)
            if not self._reclaimer.stop(self.wait_timeout):
                logger.warning("close(): calls still running after %g s; their interpreters are "
                               "freed when they return", self.wait_timeout)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        serving = self._serving
        state = ("closed" if self._closed else "failed (no model serving)" if serving is None
                 else f"version={serving.info.version!r}")
        return f"<Runtime {state} backend={self._backend.name!r} workers={self._workers}>"

    # -------------------------------------------------------------- helpers

    @contextlib.contextmanager
    def _writer(self, what: str) -> Iterator[None]:
        """Hold the swap lock; refuse (not deadlock) when this thread already holds it.

        A signal handler that calls close() or swap() while its thread is in
        the middle of a swap() would otherwise wait for itself forever.
        """
        if self._writer_thread == threading.get_ident():
            raise MisuseError(f"{what}: called while this thread is inside swap() or close() of the "
                              f"same runtime (a signal handler?); expected it after that returns")
        with self._swap_lock:
            self._writer_thread = threading.get_ident()
            try:
                yield
            finally:
                self._writer_thread = None

    def _after_fork_in_child(self) -> None:
        """The forked child has none of the parent's other threads: rebuild what they held.

        Locks may have been held by threads that do not exist here, calls in
        flight never finish here, and the reclaimer thread is gone.
        """
        self._swap_lock = threading.Lock()
        self._writer_thread = None
        self._reset_after_fork()
        current = self._current()
        slots = self._slot_list()
        self._free = _FreeSlots(self._capacity(), [i for i, slot in enumerate(slots) if slot is None])
        self._finalizer.detach()
        self._reclaimer = _Reclaimer(self, self._free)
        self._finalizer = weakref.finalize(self, self._reclaimer.adopt, slots)
        for index, slot in enumerate(slots):
            if slot is not None and index != current:
                self._reclaimer.retire(index)  # retiring in the parent: free it here too

    def _load_and_publish(self, data: bytes, version: str | None, allow_contract_change: bool,
                          keys: list[ShapeKey]) -> ModelInfo:
        """Prove, load, check, build and publish ``data``; the caller holds the swap lock."""
        started = time.perf_counter()
        interpreter, loaded, probe_seconds = load_proven(self._backend, data, self._num_threads,
                                                         self._signature, self._isolate)
        # Against the last published contract: callers still depend on it when
        # a failed resource-policy swap left no model serving.
        if self._contract is not None and not allow_contract_change:
            check_compatible(self._contract, loaded.contract)
        kernels = self._kernels(loaded.contract)
        version = version or loaded.sha256[:12]
        stats = self._stats.get(version) or LatencyStats()
        prepare = self._checkpoints.restorer(loaded) if self._checkpoints is not None else None
        slot = self._build_slot(loaded, kernels, stats, [k for k in keys if _fits(loaded, k)],
                                interpreter, prepare)
        info = ModelInfo(version, loaded.sha256, len(data), loaded.signature, loaded.signatures,
                         loaded.contract.inputs, loaded.contract.outputs, self._backend.name,
                         datetime.now(timezone.utc), probe_seconds,
                         time.perf_counter() - started - probe_seconds,
                         "native" if slot.native else "python", getattr(prepare, "checkpoint", None))
        slot.info = info
        self._keep_stats(version, stats)
        self._publish_slot(slot)
        self._serving = _Serving(loaded, kernels, info)
        self._contract = loaded.contract
        return info

    def _swap_in_place(self, data: bytes, version: str | None, allow_contract_change: bool,
                       serving: _Serving) -> ModelInfo:
        """Resource policy: free the old model before the new one is even probed.

        Calls made meanwhile wait (up to ``wait_timeout``).  If the new model
        fails, the old one is rebuilt and serves again; if that fails too, no
        model serves and calls raise ModelUnavailableError until a swap succeeds.
        """
        keys = self._known_shapes()
        self.gap_stats = self._stats[serving.info.version]  # gap timeouts count against it
        old = self._unpublish(_slots.GAP)
        if old >= 0 and not self._reclaimer.drain(old, self.wait_timeout):
            # Calls stuck in invoke: cancel them where the backend can, else keep serving.
            slot = self._slot_list()[old]
            if slot is None or not _cancel_stuck(self, old) or not self._reclaimer.drain(old, self.wait_timeout):
                if slot is not None:
                    slot.cancel(False)
                self._publish(old, self._take_slot(old))  # still in use: it keeps serving
                raise RuntimeBusyError(f"swap(): calls on the serving version were still running after "
                                       f"{self.wait_timeout:g} s and could not be cancelled; expected "
                                       f"them to finish")
        if old >= 0:
            # Freed here and now, before the new model is probed or loaded: the
            # point of this policy is never to hold both.  Callers are waiting
            # through the gap anyway; the swapping thread pays the destruction.
            self._take_slot(old).release_all()
            self._free.give(old)
        try:
            info = self._load_and_publish(data, version, allow_contract_change, keys)
        except BaseException as failure:
            logger.warning("resource-policy swap failed (%s); reloading %s", failure, serving.info.version)
            try:
                restore = self._checkpoints.restorer(serving.model) if self._checkpoints is not None else None
                slot = self._build_slot(serving.model, serving.kernels, self._stats[serving.info.version],
                                        [k for k in keys if _fits(serving.model, k)], None, restore)
                checkpoint = getattr(restore, "checkpoint", None)
                if checkpoint != serving.info.checkpoint:  # a save meanwhile: say what serves now
                    serving = _Serving(serving.model, serving.kernels,
                                       dataclasses.replace(serving.info, checkpoint=checkpoint))
                slot.info = serving.info
                self._publish_slot(slot)
                self._serving = serving
            except Exception as e:
                self._unpublish(_slots.FAILED)
                self._serving = None
                logger.error("resource-policy swap: the old model %s could not be reloaded either "
                             "(%s); no model is serving", serving.info.version, e)
            raise
        logger.info("swapped in %s in place (resource policy)", info.version)
        return info

    def _known_shapes(self) -> list[ShapeKey]:
        """Every input shape the serving version's workers have allocated so far."""
        current = self._serving_slot()
        keys: list[ShapeKey] = []
        for worker in current.workers_list() if current is not None else []:
            keys += [k for k in worker.shape_keys() if k not in keys]
        return keys

    def _take_slot(self, index: int) -> Slot:
        slot = self._take(index)
        if slot is None:
            raise RuntimeError(f"internal error: slot {index} holds no version")
        return slot

    def _serving_slot(self) -> Slot | None:
        serving = self._serving
        for slot in self._slot_list():
            if slot is not None and serving is not None and slot.info is serving.info:
                return slot
        return None

    def _keep_stats(self, version: str, stats: LatencyStats) -> None:
        self._stats.pop(version, None)
        self._stats[version] = stats  # most recent last
        while len(self._stats) > STATS_KEPT:
            del self._stats[next(iter(self._stats))]

    def _kernels(self, contract: Contract) -> list[Any]:
        pre = self._preprocess
        if pre is None:
            return [None] * len(contract.inputs)
        if isinstance(pre, Normalize):
            if len(contract.inputs) != 1:
                raise MisuseError(f"preprocess: a single Normalize needs a single-input model; expected "
                                  f"a mapping for inputs {[t.name for t in contract.inputs]}")
            pre = {contract.inputs[0].name: pre}
        for name in pre:
            contract.input(name)  # raises MisuseError for an unknown name
        return [kernel_for(pre[t.name], t) if t.name in pre else None for t in contract.inputs]

    def _build_slot(self, model: LoadedModel, kernels: list[Any], stats: LatencyStats, keys: list[ShapeKey],
                    interpreter: Any, prepare: Any = None) -> Slot:
        """Prepare a complete slot: every worker allocated for every known shape, warmed up.

        ``prepare``: the checkpoint restore hook, one per slot, so all its
        interpreters get the same checkpoint.
        """
        # The factory holds no reference to the runtime: an unclosed runtime
        # must be freed by reference counting, not wait for the cyclic GC.
        make = functools.partial(make_bound, self._backend, model, self._num_threads, kernels,
                                 prepare=prepare)
        workers = []
        for w in range(self._workers):
            first = make(None, interpreter if w == 0 else None)
            first.warm_up()
            worker = Worker(first, make, self._reclaimer.discard)
            for key in keys:
                if key != first.shape_key:
                    bound = make(key)
                    bound.warm_up()
                    worker.add(bound)
            workers.append(worker)
        return Slot(workers, stats, None)

    def _publish_slot(self, slot: Slot) -> None:
        index = self._free.take(self.wait_timeout)
        old = self._publish(index, slot)
        if old >= 0:
            self._reclaimer.retire(old)


_live: weakref.WeakSet[Runtime] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for runtime in list(_live):
        runtime._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _fits(model: LoadedModel, key: ShapeKey) -> bool:
    try:
        check_shape_key(model, key)
        return True
    except InputError:
        return False


class _FreeSlots:
    """Indices of slots that hold nothing; a swap waits here (bounded) if all are retiring."""

    def __init__(self, capacity: int, free: list[int] | None = None) -> None:
        self._free = list(range(capacity)) if free is None else free
        self._cond = threading.Condition()

    def take(self, timeout: float) -> int:
        """Raises: RuntimeBusyError: if no slot frees up within ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._free, None if math.isinf(timeout) else timeout):
                raise RuntimeBusyError(
                    f"swap(): every slot holds a retired version with calls still running after "
                    f"{timeout:g} s (a call stuck in invoke?); expected one to free up")
            return self._free.pop()

    def give(self, index: int) -> None:
        with self._cond:
            self._free.append(index)
            self._cond.notify()


class _Reclaimer:
    """A thread that destroys retired slots once their last reader has left.

    Destroying an interpreter holds the GIL for milliseconds; doing it here
    keeps that off the swapping thread and out of ``run``.  It holds the
    runtime weakly, so an unclosed runtime can still be collected.  Retired
    slots are watched side by side, so one stuck call delays only its own.
    """

    def __init__(self, table: SlotTable, free: _FreeSlots) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._table = weakref.ref(table)
        self._thread = threading.Thread(target=_reclaim, args=(self._table, self._queue, free),
                                        name="tflite-hotswap-reclaimer", daemon=True)
        self._thread.start()

    def retire(self, index: int) -> None:
        self._queue.put(("slot", index))

    def discard(self, bound: Bound) -> None:
        self._queue.put(("bound", bound))

    def adopt(self, slots: list[Slot | None]) -> None:
        """The runtime is gone: release whatever it still held, then stop."""
        self._queue.put(("adopt", [s for s in slots if s is not None]))
        self._queue.put(None)

    def drain(self, index: int, timeout: float) -> bool:
        """Wait until the slot at ``index`` has no reader; False after ``timeout`` seconds."""
        table = self._table()
        deadline = time.monotonic() + timeout
        delay = 1e-5
        while table is not None and table._readers(index):
            if time.monotonic() > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 1e-3)
        return True

    def stop(self, timeout: float) -> bool:
        """Ask the thread to finish its work and stop; False if it is still busy after ``timeout``."""
        self._queue.put(None)
        if threading.current_thread() is self._thread:
            return True
        self._thread.join(None if math.isinf(timeout) else timeout)
        return not self._thread.is_alive()


def _reclaim(table_ref: weakref.ref[SlotTable], jobs: queue.SimpleQueue[Any], free: _FreeSlots) -> None:
    pending: dict[int, float] = {}  # retired slot index -> when it was retired
    cancelled: set[int] = set()
    stopping = False
    delay = 1e-5
    while not (stopping and not pending):
        try:
            job = jobs.get(timeout=delay if pending else None)
        except queue.Empty:
            job = ()
        if job is None:
            stopping = True
        elif job:
            kind, item = job
            try:
                if kind == "slot":
                    pending[item] = time.monotonic()
                elif kind == "bound":
                    item.release()
                else:  # "adopt": the slots of a runtime that was dropped unclosed
                    for slot in item:
                        slot.release_all()
            except Exception:
                logger.exception("reclaimer: releasing a %s failed", kind)
            del job, item
        # Poll quickly while calls are leaving; slowly once only stuck ones are left.
        stuck = any(i in cancelled for i in pending)
        delay = min(delay * 2, 0.1 if stuck else 1e-3) if pending else 1e-5
        table = table_ref()
        for index, retired_at in list(pending.items()):
            if table is not None and table._readers(index):
                if index not in cancelled and time.monotonic() - retired_at > table.wait_timeout:
                    _cancel_stuck(table, index)
                    cancelled.add(index)
                continue
            del pending[index]
            cancelled.discard(index)
            try:
                started = time.perf_counter()
                slot = table._take(index) if table is not None else None
                if slot is not None:
                    slot.release_all()
                del slot
                logger.debug("reclaimer: released slot %d in %.2f ms", index, (time.perf_counter() - started) * 1e3)
            except Exception:
                logger.exception("reclaimer: releasing slot %d failed", index)
            free.give(index)
            delay = 1e-5
        del table


def _cancel_stuck(table: SlotTable, index: int) -> bool:
    """Cancel the calls still running on a retired slot after ``wait_timeout``."""
    slot = table._slot_list()[index]
    if slot is None:
        return False
    if slot.cancel():
        logger.warning("calls on retired version %s still running after %g s: cancelled",
                       getattr(slot.info, "version", "?"), table.wait_timeout)
        return True
    logger.warning("calls on retired version %s still running after %g s; the backend cannot cancel "
                   "them, so that version's memory stays until they return",
                   getattr(slot.info, "version", "?"), table.wait_timeout)
    return False
