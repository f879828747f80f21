"""Runtime: the object an inference loop calls, and whose model can be swapped live."""

from __future__ import annotations

import functools
import queue
import threading
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, Union

from .._slots import Bound, LatencyStats, Slot, SlotTable, Worker
from .backend import load_backend
from .contract import Contract, TensorSpec, check_compatible
from ..errors import InputError, MisuseError, RuntimeClosedError
from .loader import LoadedModel, ModelSource, ShapeKey, check_shape_key, load_proven, make_bound, \
    read_model
from .preprocess import Normalize, kernel_for

POLICIES = ("availability", "resource")


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
    """

    version: str
    sha256: str
    size: int
    signature: Optional[str]
    signatures: dict
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    backend: str
    loaded_at: datetime
    probe_seconds: float = 0.0
    load_seconds: float = 0.0

    @property
    def contract(self) -> Contract:
        return Contract(self.inputs, self.outputs)


@dataclass(frozen=True)
class VersionStats:
    """Calls to one version since the runtime started (latency in microseconds).

    Percentiles are read from a log-linear histogram (within ~3%); max is exact.
    """

    calls: int
    errors: int
    p50_us: float
    p99_us: float
    p999_us: float
    max_us: float
    mean_us: float


@dataclass
class _Serving:
    model: LoadedModel
    kernels: list
    info: ModelInfo
    shape_keys: list = field(default_factory=list)


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
            before raising :class:`RuntimeBusyError`.
        isolate: prove each new model loadable in a child process before
            loading it here.  None: only for backends that do not verify
            models (tflite-runtime, tensorflow).
        version: version name of the initial model.

    Raises:
        MisuseError: for invalid arguments.
        BackendNotFoundError: if the backend is not installed.
        InvalidModelError: if the model cannot be loaded and run.
    """

    def __init__(self, model: ModelSource, *, signature: Optional[str] = None,
                 backend: str = "auto", num_threads: Optional[int] = None, workers: int = 1,
                 policy: str = "availability",
                 preprocess: Union[Normalize, Mapping[str, Normalize], None] = None,
                 wait_timeout: float = 10.0, isolate: Optional[bool] = None,
                 version: Optional[str] = None) -> None:
        if not isinstance(workers, int) or not 1 <= workers <= 64:
            raise MisuseError(f"workers: expected an int from 1 to 64, got {workers!r}")
        if policy not in POLICIES:
            raise MisuseError(f"policy: expected one of {POLICIES}, got {policy!r}")
        if not wait_timeout > 0:
            raise MisuseError(f"wait_timeout: expected seconds > 0, got {wait_timeout!r}")
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
        self._swap_lock = threading.Lock()
        self._stats: dict[str, LatencyStats] = {}
        self._serving: Optional[_Serving] = None
        self._closed = False
        self._free = _FreeSlots(self._capacity())
        self._reclaimer = _Reclaimer(self, self._free)
        try:
            self.swap(model, version=version, allow_contract_change=True)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ public API

    @property
    def info(self) -> ModelInfo:
        """The serving model's :class:`ModelInfo`.

        Raises:
            RuntimeClosedError: if the runtime is closed.
        """
        serving = self._serving
        if serving is None or self._closed:
            raise RuntimeClosedError("the runtime is closed; expected an open runtime")
        return serving.info

    @property
    def backend(self) -> str:
        """Name of the backend in use."""
        return self._backend.name

    def stats(self) -> dict[str, VersionStats]:
        """Per version: calls, errors and latency percentiles since the runtime started."""
        return {version: VersionStats(**s.snapshot()) for version, s in list(self._stats.items())}

    def swap(self, model: ModelSource, *, version: Optional[str] = None,
             allow_contract_change: bool = False) -> ModelInfo:
        """Replace the serving model; calls keep running throughout.

        Loads ``model`` into a standby slot, checks its contract against the
        serving model, warms every interpreter up with one invoke, then
        publishes it atomically.  Calls already running finish on the old
        version, which is destroyed off the calling thread once they leave.

        Args:
            model: path or bytes of the new model.
            version: its version name (default: sha256 prefix).
            allow_contract_change: accept a model whose inputs/outputs differ.

        Returns:
            The new model's :class:`ModelInfo`.

        Raises:
            InvalidModelError: if the model cannot be loaded or run; it never
                reaches this process's interpreter when a child process
                could not load it.
            IncompatibleModelError: if its contract differs (and not allowed).
            MisuseError: if ``model`` is not a path or bytes, or the preprocess
                settings do not fit it.
            RuntimeClosedError: if the runtime is closed.
        """
        with self._swap_lock:
            if self._closed:
                raise RuntimeClosedError("the runtime is closed; expected an open runtime")
            data = read_model(model)
            started = time.perf_counter()
            interpreter, loaded, probe_seconds = load_proven(self._backend, data, self._num_threads,
                                                             self._signature, self._isolate)
            serving = self._serving
            if serving is not None and not allow_contract_change:
                check_compatible(serving.model.contract, loaded.contract)
            kernels = self._kernels(loaded.contract)
            version = version or loaded.sha256[:12]
            stats = self._stats.get(version) or LatencyStats()
            keys = [k for k in (serving.shape_keys if serving else []) if _fits(loaded, k)]
            if self._policy == "resource" and serving is not None:
                slot = self._replace_in_place(loaded, kernels, stats, keys, interpreter, serving)
            else:
                slot = self._build_slot(loaded, kernels, stats, keys, interpreter, None)
            info = ModelInfo(version, loaded.sha256, len(data), loaded.signature, loaded.signatures,
                             loaded.contract.inputs, loaded.contract.outputs, self._backend.name,
                             datetime.now(timezone.utc), probe_seconds,
                             time.perf_counter() - started - probe_seconds)
            slot.info = info
            self._stats[version] = stats
            self._publish_slot(slot)
            self._serving = _Serving(loaded, kernels, info, self._union_keys(slot))
            return info

    def close(self) -> None:
        """Stop serving and free every interpreter; later calls raise RuntimeClosedError.

        Waits for calls in flight to finish.  Closing twice is harmless.
        """
        with self._swap_lock:
            if self._closed:
                return
            self._closed = True
            old = self._unpublish(True)
            if old >= 0:
                self._reclaimer.retire(old)
            self._reclaimer.stop()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed or self._serving is None else f"version={self._serving.info.version!r}"
        return f"<Runtime {state} backend={self._backend.name!r} workers={self._workers}>"

    # -------------------------------------------------------------- helpers

    def _kernels(self, contract: Contract) -> list:
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

    def _make(self, model: LoadedModel, kernels: list, key: Optional[ShapeKey],
              interpreter: Any = None) -> Bound:
        return make_bound(self._backend, model, self._num_threads, kernels, key, interpreter)

    def _build_slot(self, model: LoadedModel, kernels: list, stats: LatencyStats, keys: list,
                    interpreter: Any, info: Optional[ModelInfo]) -> Slot:
        """Prepare a complete slot: every worker allocated for every known shape, warmed up."""
        workers = []
        for w in range(self._workers):
            first = self._make(model, kernels, None, interpreter if w == 0 else None)
            first.warm_up()
            worker = Worker(first, functools.partial(self._make, model, kernels),
                            self._reclaimer.discard)
            for key in keys:
                if key != first.shape_key:
                    bound = self._make(model, kernels, key)
                    bound.warm_up()
                    worker.add(bound)
            workers.append(worker)
        return Slot(workers, stats, info)

    def _replace_in_place(self, loaded: LoadedModel, kernels: list, stats: LatencyStats,
                          keys: list, interpreter: Any, serving: _Serving) -> Slot:
        """Resource policy: free the old model first; restore it if the new one fails."""
        old = self._unpublish(False)
        if old >= 0:
            self._reclaimer.retire(old, wait=True)
        try:
            return self._build_slot(loaded, kernels, stats, keys, interpreter, None)
        except BaseException:
            restored = self._build_slot(serving.model, serving.kernels, self._stats[serving.info.version],
                                        serving.shape_keys, None, serving.info)
            self._publish_slot(restored)
            raise

    def _publish_slot(self, slot: Slot) -> None:
        index = self._free.take()
        old = self._publish(index, slot)
        if old >= 0:
            self._reclaimer.retire(old)

    @staticmethod
    def _union_keys(slot: Slot) -> list:
        keys: list = []
        for worker in slot.workers_list():
            keys += [k for k in worker.shape_keys() if k not in keys]
        return keys


def _fits(model: LoadedModel, key: ShapeKey) -> bool:
    try:
        check_shape_key(model, key)
        return True
    except InputError:
        return False


class _FreeSlots:
    """Indices of slots that hold nothing; a swap waits here if all are retiring."""

    def __init__(self, capacity: int) -> None:
        self._free = list(range(capacity))
        self._cond = threading.Condition()

    def take(self) -> int:
        with self._cond:
            while not self._free:
                self._cond.wait()
            return self._free.pop()

    def give(self, index: int) -> None:
        with self._cond:
            self._free.append(index)
            self._cond.notify()


class _Reclaimer:
    """A thread that destroys retired slots once their last reader has left.

    Destroying an interpreter holds the GIL for milliseconds; doing it here
    keeps that off the swapping thread and out of ``run``.  It holds the
    runtime weakly, so an unclosed runtime can still be collected.
    """

    def __init__(self, table: SlotTable, free: _FreeSlots) -> None:
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._thread = threading.Thread(target=_reclaim, args=(weakref.ref(table), self._queue, free),
                                        name="tflite-hotswap-reclaimer", daemon=True)
        self._thread.start()
        weakref.finalize(table, self._queue.put, None)

    def retire(self, index: int, wait: bool = False) -> None:
        done = threading.Event() if wait else None
        self._queue.put((index, done))
        if done is not None:
            done.wait()

    def discard(self, bound: Bound) -> None:
        self._queue.put((bound, None))

    def stop(self) -> None:
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()


def _reclaim(table_ref: "weakref.ref[SlotTable]", jobs: "queue.SimpleQueue[Any]", free: _FreeSlots) -> None:
    while True:
        job = jobs.get()
        if job is None:
            return
        item, done = job
        if isinstance(item, Bound):
            item.release()
        else:  # a slot index
            table = table_ref()
            if table is not None:
                delay = 1e-5
                while table._readers(item):
                    time.sleep(delay)
                    delay = min(delay * 2, 1e-3)
                slot = table._take(item)
                del table
                if slot is not None:
                    slot.release_all()
                del slot
            free.give(item)
        del item, job
        if done is not None:
            done.set()
