# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Slot table: the hot path of :class:`tflite_hotswap.Runtime`.

A *slot* holds one model version: ``workers`` interpreters of it, each bound
once per allocation (tensor addresses read, output views made).  Calls
(readers) never take a lock: they load the current slot index, bump that
slot's reader count and check that the slot is still current; a worker inside
the slot is claimed with one compare-and-swap.  A swap (writer) prepares a free
slot completely, publishes it with one atomic exchange, and hands the old one
to a reclaimer that waits for its reader count to reach zero and then drops it
(destroying its interpreters off the caller's thread).
"""

from cpython.buffer cimport PyBUF_RECORDS_RO, PyBuffer_Release, PyObject_GetBuffer
from cpython.exc cimport PyErr_CheckSignals
from cpython.pythread cimport (NOWAIT_LOCK, WAIT_LOCK, PyThread_acquire_lock,
                               PyThread_allocate_lock, PyThread_free_lock, PyThread_release_lock,
                               PyThread_type_lock)
from libc.stdint cimport UINT64_MAX, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.unistd cimport usleep

from tflite_hotswap._buffers cimport (MAX_DIMS, copy_tensor, describe_tensor, dtype_code, gather_input,
                                      is_contiguous, itemsize_of, read_output, same_shape, set_affine,
                                      write_input)

import collections
import os
import threading

cdef extern from "_native.h":
    void* hs_resolve(const char* library, const char* symbol) nogil
    size_t hs_load_bias(const char* library) nogil
    const char* hs_owner(const void* address) nogil
    int hs_call_status(void* method, void* self) nogil
    void* hs_primary_subgraph(void* interpreter, size_t n_tensors) nogil
    void hs_install_cancellation(void* method, void* self, int* flag) nogil
    int hs_set_allocation(void* method, void* self, int tensor, void* data, size_t nbytes) nogil

from tflite_hotswap.errors import (InferenceError, InputError, InvalidModelError, MisuseError,
                                   ModelUnavailableError, RuntimeBusyError, RuntimeClosedError,
                                   UnsupportedModelError)

cdef extern from "_slots_support.h":
    void hs_enter_call(const void* table) nogil
    void hs_leave_call(const void* table) nogil
    bint hs_inside_call(const void* table) nogil
    long atomic_load "HS_LOAD"(long* p) nogil
    int atomic_load_int "HS_LOAD"(int* p) nogil
    uint64_t atomic_load_u64 "HS_LOAD"(uint64_t* p) nogil
    long atomic_exchange "HS_XCHG"(long* p, long v) nogil
    long atomic_add "HS_ADD"(long* p, long v) nogil
    uint64_t atomic_count "HS_COUNT"(uint64_t* p, uint64_t v) nogil
    void atomic_store_int "HS_STORE"(int* p, int v) nogil
    void atomic_store_long "HS_STORE"(long* p, long v) nogil
    int atomic_add_int "HS_ADD"(int* p, int v) nogil
    bint hs_claim(int* flag) nogil
    void hs_max(uint64_t* p, uint64_t v) nogil
    int hs_msb(uint64_t v) nogil

# A worker keeps one allocation per input shape it has seen, up to this many;
# past it the least recently created one is retired.
cdef int MAX_SHAPES = 8


cdef inline uint64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000ULL + <uint64_t>ts.tv_nsec


cdef uint64_t deadline_after(uint64_t start, double timeout) noexcept:
    """start + timeout seconds in ns; UINT64_MAX for timeouts beyond ~30 years (inf)."""
    if not timeout < 1e9:
        return UINT64_MAX
    return start + <uint64_t>(timeout * 1e9)


cdef int backoff(uint64_t deadline, unsigned int* delay_us) except -1:
    """Sleep a little (GIL released); return 1 once ``deadline`` has passed.

    Sleeps double from 20 us up to 200 us: a waiter notices a newly published
    slot quickly without burning a core.  Signal handlers run between sleeps,
    so Ctrl+C reaches a waiting caller.
    """
    if now_ns() >= deadline:
        return 1
    with nogil:
        usleep(delay_us[0])
    delay_us[0] = min(delay_us[0] * 2, 200)
    PyErr_CheckSignals()
    return 0


# ---------------------------------------------------------------- statistics

cdef inline int _bucket(uint64_t ns) noexcept nogil:
    if ns < 32:
        return <int>ns
    cdef int msb = hs_msb(ns)
    return (msb - 3) * 16 + <int>((ns >> (msb - 4)) & 15)


cdef inline double _bucket_mid(int b) noexcept:
    if b < 32:
        return b
    cdef int msb = b // 16 + 3
    cdef double width = <double>(1ULL << (msb - 4))
    return (16 + b % 16) * width + width / 2


cdef class LatencyStats:
    """Calls by outcome and a latency histogram of the successful ones, for one version.

    Failed calls are counted apart by cause -- the model (the backend failed),
    the caller (bad input) and timeouts -- so a caller's mistakes never look
    like a bad model.  Percentiles come from a log-linear histogram (16
    buckets per power of two), within about 3% of the exact value; the
    maximum is exact.
    """

    cdef void record(self, uint64_t ns, int outcome) noexcept nogil:
        atomic_count(&self.outcomes[outcome], 1)
        if outcome == CALL_OK:
            atomic_count(&self.total_ns, ns)
            atomic_count(&self.buckets[_bucket(ns)], 1)
            hs_max(&self.max_ns, ns)

    def record_outcome(self, int outcome) -> None:
        """Count one call that failed before reaching a version (e.g. a swap gap)."""
        self.record(0, outcome)

    def snapshot(self) -> dict:
        """Return call counts by outcome and p50/p99/p99.9/max/mean latency (us) of successes."""
        cdef uint64_t counts[N_BUCKETS]
        cdef uint64_t total = 0, seen
        cdef int b
        for b in range(N_BUCKETS):
            counts[b] = atomic_load_u64(&self.buckets[b])
            total += counts[b]
        max_ns = atomic_load_u64(&self.max_ns)
        model_errors = atomic_load_u64(&self.outcomes[CALL_MODEL_ERROR])
        caller_errors = atomic_load_u64(&self.outcomes[CALL_CALLER_ERROR])
        timeouts = atomic_load_u64(&self.outcomes[CALL_TIMEOUT])
        result = {"calls": total + model_errors + caller_errors + timeouts,
                  "model_errors": model_errors, "caller_errors": caller_errors,
                  "timeouts": timeouts, "max_us": max_ns / 1e3,
                  "mean_us": atomic_load_u64(&self.total_ns) / 1e3 / total if total else 0.0}
        for key, q in (("p50_us", 0.5), ("p99_us", 0.99), ("p999_us", 0.999)):
            seen = 0
            value = 0.0
            for b in range(N_BUCKETS):
                seen += counts[b]
                if total and seen >= q * total:
                    value = min(_bucket_mid(b), <double>max_ns) / 1e3
                    break
            result[key] = value
        return result


# ------------------------------------------------------------------- binding

cdef class Bound:
    """One interpreter, allocated for one set of input shapes, bound for raw access.

    Args:
        interpreter: a backend ``Interpreter`` with tensors allocated.
        subgraph: the subgraph (signature) to run.
        inputs: ``(name, tensor_index, kernel)`` per input; ``kernel`` is None
            for a plain copy or ``(a, b, lo, hi, nan_value)`` with ``a``/``b``
            ``array('f')`` coefficient cycles (see ``tflite_hotswap.preprocess``).
        outputs: ``(name, tensor_index)`` per output.
        dynamic: the model has tensors of unknown shape, so ``invoke`` may move
            tensor memory: addresses are re-read after every call.
        shape_key: the input shapes this allocation serves; empty to take
            them from the allocated tensors.
    """

    def __cinit__(self):
        self.inputs = NULL
        self.output_buffers = NULL
        self.n_output_buffers = 0
        self.native_self = NULL
        self.native_invoke = NULL

    def __init__(self, interpreter, int subgraph, list inputs, list outputs, bint dynamic,
                 tuple shape_key):
        cdef int i
        self.interpreter = interpreter
        self.wrapper = interpreter._interpreter
        self.invoke = self.wrapper.Invoke
        self.subgraph = subgraph
        self.dynamic = dynamic
        self.needs_bind = False
        self.shape_key = shape_key
        self.n_inputs = len(inputs)
        self.inputs = <InputBinding*>malloc(max(self.n_inputs, 1) * sizeof(InputBinding))
        if self.inputs == NULL:
            raise MemoryError()
        memset(self.inputs, 0, max(self.n_inputs, 1) * sizeof(InputBinding))
        self.input_names = tuple([spec[0] for spec in inputs])
        self.input_indices = tuple([spec[1] for spec in inputs])
        self.output_names = tuple([spec[0] for spec in outputs])
        self.output_indices = tuple([spec[1] for spec in outputs])
        self.keepalive = []
        for i in range(self.n_inputs):
            self._set_kernel(i, inputs[i][2])
        self.bind()
        if not shape_key:
            self.shape_key = self.input_shapes()

    cdef _set_kernel(self, int i, object spec):
        self.inputs[i].kernel.affine = False
        if spec is not None:
            a, b, lo, hi, nan_value = spec
            self.keepalive.extend([a, b])
            set_affine(&self.inputs[i].kernel, a, b, lo, hi, nan_value)

    def __dealloc__(self):
        cdef int i
        self._drop_output_views()
        if self.inputs != NULL and not self.poisoned:
            for i in range(self.n_inputs):
                if self.inputs[i].lent:
                    PyBuffer_Release(&self.inputs[i].lent_view)
        free(self.inputs)

    cdef void _drop_output_views(self) noexcept:
        """Release the held output buffers, then the views (before the interpreter goes)."""
        cdef int i
        for i in range(self.n_output_buffers):
            PyBuffer_Release(&self.output_buffers[i])
        free(self.output_buffers)
        self.output_buffers = NULL
        self.n_output_buffers = 0
        self.output_views = None
        self.output_dtypes = None
        self.spares = None

    cdef int bind(self) except -1:
        """Read each input tensor's address, dtype and shape; make output views."""
        cdef int i
        for i in range(self.n_inputs):
            tensor = self.wrapper.tensor(self.wrapper, self.input_indices[i], self.subgraph)
            describe_tensor(tensor, &self.inputs[i].kernel, &self.inputs[i].ndim, self.inputs[i].shape,
                            &self.inputs[i].address, "input", self.input_names[i])
            del tensor  # a live view would pin the interpreter's arena
        if not self.dynamic:
            # Outputs of static models stay put: one view each, and its buffer
            # held, for the whole life of this allocation.  Invoke goes through
            # the wrapper, which does not refuse to run while views exist.
            self._drop_output_views()
            self.output_views = [self.wrapper.tensor(self.wrapper, i, self.subgraph)
                                 for i in self.output_indices]
            self.output_dtypes = [view.dtype for view in self.output_views]
            self.spares = [None] * (2 * len(self.output_views))
            self.output_buffers = <Py_buffer*>malloc(max(len(self.output_views), 1) * sizeof(Py_buffer))
            if self.output_buffers == NULL:
                raise MemoryError()
            for output in self.output_views:
                PyObject_GetBuffer(output, &self.output_buffers[self.n_output_buffers], PyBUF_RECORDS_RO)
                self.n_output_buffers += 1
        self.needs_bind = False
        return 0

    def warm_up(self) -> None:
        """Zero the inputs, invoke once and read the outputs (first-call work happens here).

        Raises:
            InvalidModelError: if the backend fails to run the model or leaves
                an output unreadable: no call could succeed on it.
        """
        cdef int i
        for i in range(self.n_inputs):
            tensor = self.wrapper.tensor(self.wrapper, self.input_indices[i], self.subgraph)
            tensor.fill(0)
            del tensor
        before = self._addresses()
        try:
            self.run_invoke()
            self.read_outputs(None)
        except InferenceError as e:
            raise InvalidModelError(f"the model failed its warm-up call on zeros: {e}") from e
        if not self.dynamic:
            # The loader judged that nothing moves at invoke; check it once here,
            # where being wrong costs nothing.
            self.bind()
            if self._addresses() != before:
                self.dynamic = True
                self.native_set_allocation = NULL  # nothing is lent to memory that moves
                self._drop_output_views()
                self.bind()

    cdef list _addresses(self):
        """Where every bound input and (static) output tensor's memory is."""
        cdef int i
        return ([<size_t>self.inputs[i].address for i in range(self.n_inputs)]
                + [<size_t>self.output_buffers[i].buf for i in range(self.n_output_buffers)])

    def use_native(self, size_t interpreter, size_t invoke, size_t set_cancellation=0,
                   size_t set_allocation=0, Py_ssize_t lend_min_bytes=0) -> None:
        """Invoke through the C++ interpreter at ``interpreter`` with ``invoke`` (0: the wrapper).

        With ``set_cancellation`` (Interpreter::SetCancellationFunction), a call
        stuck in invoke can be ended by :meth:`cancel`.  With ``set_allocation``
        (Interpreter::SetCustomAllocationForTensor) and ``lend_min_bytes`` > 0,
        an input array of at least that many bytes, already in the tensor's
        dtype and shape, C-contiguous and 64-byte aligned, is lent to the
        interpreter for the call instead of copied (never for a model whose
        memory moves at invoke).
        """
        cdef int i, d
        self.native_self = <void*>interpreter
        self.native_invoke = <void*>invoke if interpreter and self.subgraph == 0 else NULL
        if interpreter and set_cancellation:
            hs_install_cancellation(<void*>set_cancellation, <void*>interpreter, &self.cancel_flag)
            self.cancellable = True
        self.native_set_allocation = NULL
        if self.native_invoke != NULL and set_allocation and lend_min_bytes > 0 and not self.dynamic:
            self.native_set_allocation = <void*>set_allocation
            self.lend_min_bytes = lend_min_bytes
            for i in range(self.n_inputs):
                self.inputs[i].tensor_index = self.input_indices[i]
                self.inputs[i].nbytes = itemsize_of(self.inputs[i].kernel.dst)
                for d in range(self.inputs[i].ndim):
                    self.inputs[i].nbytes *= self.inputs[i].shape[d]
                self.inputs[i].lendable = not self._shares_output_memory(i)

    def free_delegates_with(self, size_t remove_delegates, size_t release_arena=0,
                            bint on_primary_subgraph=False) -> None:
        """Have :meth:`release` free the delegates' memory first, with the GIL released.

        ``remove_delegates`` is Interpreter::RemoveAllDelegates and
        ``release_arena`` (or 0) Interpreter::ReleaseNonPersistentMemory; with
        ``on_primary_subgraph``, the Subgraph methods of those names, called
        on the primary subgraph.  Native path only.
        """
        self.native_remove_delegates = <void*>remove_delegates
        self.native_release_arena = <void*>release_arena
        self.remove_on_subgraph = on_primary_subgraph

    cdef bint _shares_output_memory(self, int i):
        """Whether input i is an output too, or overlaps one (an in-place op's planned memory).

        Such an output's held view is on the arena: with the input lent, invoke
        would never write there and the call would return stale data.
        """
        cdef InputBinding* b = &self.inputs[i]
        cdef size_t start = <size_t>b.address, end = start + <size_t>b.nbytes, o_start
        cdef int k
        if self.input_indices[i] in self.output_indices:
            return True
        for k in range(self.n_output_buffers):
            o_start = <size_t>self.output_buffers[k].buf
            if o_start < end and start < o_start + <size_t>self.output_buffers[k].len:
                return True
        return False

    cdef bint _lend(self, int i, object src) except -1:
        """Point input i's tensor at ``src``'s memory for this call, if it fits exactly; else False."""
        cdef InputBinding* b = &self.inputs[i]
        cdef Py_buffer* view = &b.lent_view
        if b.kernel.affine or not b.lendable or b.nbytes < self.lend_min_bytes:
            return False
        try:
            PyObject_GetBuffer(src, view, PyBUF_RECORDS_RO)
        except (TypeError, BufferError, ValueError):
            return False  # write_input raises the typed error
        if (view.len != b.nbytes or (<size_t>view.buf) % 64 or not is_contiguous(view)
                or dtype_code(view.format, view.itemsize) != b.kernel.dst
                or not same_shape(view, b.shape, b.ndim)
                or hs_set_allocation(self.native_set_allocation, self.native_self, b.tensor_index,
                                     view.buf, <size_t>view.len) != 0):
            PyBuffer_Release(view)
            return False
        b.lent = True
        self.n_lent += 1
        return True

    cdef int return_lent(self) except -1:
        """Point every lent tensor back at its own memory, then let go of the caller's arrays."""
        cdef int i
        cdef InputBinding* b
        for i in range(self.n_inputs):
            b = &self.inputs[i]
            if not b.lent:
                continue
            if hs_set_allocation(self.native_set_allocation, self.native_self, b.tensor_index,
                                 b.address, <size_t>b.nbytes) != 0:
                # Cannot happen (same memory it had); never leave the tensor on
                # an array the caller may free: keep holding it, retire this one.
                self.native_set_allocation = NULL
                self.poisoned = True
                raise InferenceError(f"input {self.input_names[i]!r}: the backend refused to take back "
                                     f"its own tensor memory after a zero-copy call")
            b.lent = False
            self.n_lent -= 1
            PyBuffer_Release(&b.lent_view)
        return 0

    def cancel(self, bint on=True) -> bool:
        """End a call stuck in this interpreter's invoke with an error (on=False: undo).

        Returns whether this interpreter can be cancelled at all.
        """
        atomic_store_int(&self.cancel_flag, 1 if on else 0)
        return self.cancellable

    @property
    def frees_delegates(self) -> bool:
        """Whether :meth:`release` frees the delegates' memory, GIL released, before the interpreter."""
        return self.native_remove_delegates != NULL

    @property
    def lends(self) -> bool:
        """Whether big enough, fitting input arrays are lent to the interpreter instead of copied."""
        return self.native_set_allocation != NULL

    @property
    def moves_at_invoke(self) -> bool:
        """Whether invoke may move tensor memory, so addresses are re-read after each call."""
        return self.dynamic

    @property
    def native(self) -> bool:
        """Whether calls go straight to the C++ interpreter."""
        return self.native_invoke != NULL

    def release(self) -> None:
        """Drop views first, then the interpreter (the wrapper must outlive its views).

        Call only once no call can reach this interpreter any more.
        """
        cdef void* interpreter = self.native_self
        cdef void* remove_delegates = self.native_remove_delegates
        cdef void* release_arena = self.native_release_arena
        cdef void* target = interpreter
        self.native_invoke = NULL
        self.native_self = NULL
        self.native_remove_delegates = NULL
        self.native_release_arena = NULL
        self._drop_output_views()
        if interpreter != NULL and remove_delegates != NULL and self.n_lent == 0:
            # XNNPACK's packed weights, as big as the model, would be freed by
            # the wrapper's destructor with the GIL held: the kernel's munmap of
            # 20 MB alone takes 1.5-2 ms, which every other thread would wait.
            # Freed here instead, the GIL released, and then the arena that
            # removing them planned.  (Nothing lent: that memory is a caller's,
            # taken back before the interpreter may be touched.)
            if self.remove_on_subgraph:
                target = hs_primary_subgraph(interpreter, self.wrapper.NumTensors(0))
            if target != NULL:
                with nogil:
                    if hs_call_status(remove_delegates, target) == 0 and release_arena != NULL:
                        hs_call_status(release_arena, target)
        self.invoke = None
        self.wrapper = None
        self.interpreter = None

    cdef object write_inputs(self, object inputs):
        """Write (or lend) the call's inputs; return None, or the inputs' shape key if it differs.

        Whatever was lent is taken back (:meth:`return_lent`) when this raises
        or returns a key; otherwise the caller takes it back after invoke.
        """
        cdef InputBinding* b
        cdef int i
        if self.poisoned:
            raise InferenceError("this interpreter could not take back its input memory after a "
                                 "zero-copy call; it serves no more calls")
        if self.n_lent:
            self.return_lent()  # lent by a call that never finished here (a thread lost to fork)
        if self.needs_bind:
            self.bind()
        if self.n_inputs == 1 and not isinstance(inputs, dict):
            b = &self.inputs[0]
            if self.native_set_allocation != NULL and self._lend(0, inputs):
                return None
            if write_input(&b.kernel, inputs, b.shape, b.ndim, b.address, self.input_names[0]):
                return shape_key_of([inputs], self.input_names)
            return None
        arrays = self._by_name(inputs)
        try:
            for i in range(self.n_inputs):
                b = &self.inputs[i]
                if self.native_set_allocation != NULL and self._lend(i, arrays[i]):
                    continue
                if write_input(&b.kernel, arrays[i], b.shape, b.ndim, b.address, self.input_names[i]):
                    self.return_lent()
                    return shape_key_of(arrays, self.input_names)
        except BaseException:
            self.return_lent()
            raise
        return None

    cdef list _by_name(self, object inputs):
        if not hasattr(inputs, "keys"):
            raise InputError(f"inputs: expected a mapping of {list(self.input_names)} to arrays, "
                             f"got {type(inputs).__name__}")
        try:
            if len(inputs) == self.n_inputs:
                return [inputs[name] for name in self.input_names]
        except (TypeError, KeyError, IndexError):
            pass
        missing = [n for n in self.input_names if n not in inputs]
        unknown = [n for n in inputs.keys() if n not in self.input_names]
        raise InputError(f"inputs: expected names {list(self.input_names)}, got {list(inputs.keys())}"
                         + (f" (missing {missing})" if missing else "")
                         + (f" (unknown {unknown})" if unknown else ""))

    cdef int write_batch(self, tuple samples) except -1:
        cdef InputBinding* b
        cdef int i
        if self.needs_bind:
            self.bind()
        rows = None if self.n_inputs == 1 and not isinstance(samples[0], dict) \
            else [self._by_name(s) for s in samples]
        for i in range(self.n_inputs):
            b = &self.inputs[i]
            column = samples if rows is None else tuple([row[i] for row in rows])
            gather_input(&b.kernel, column, b.shape + 1, b.ndim - 1, b.address, self.input_names[i])
        return 0

    cdef int run_invoke(self) except -1:
        cdef int status
        if self.native_invoke != NULL:
            with nogil:
                status = hs_call_status(self.native_invoke, self.native_self)
            if status != 0:
                self.needs_bind = self.dynamic
                raise InferenceError(f"the backend failed to run the model (TfLiteStatus {status}; "
                                     f"the backend's log names the operator)")
            if self.dynamic:
                self.needs_bind = True
                self.bind()
            return 0
        try:
            if self.subgraph == 0:
                self.invoke()
            else:
                self.invoke(self.subgraph)
        except Exception as e:
            # Even a failed invoke may have reallocated a dynamic model's tensors.
            self.needs_bind = self.dynamic
            raise InferenceError(f"the backend failed to run the model: {e}") from e
        if self.dynamic:
            self.needs_bind = True
            self.bind()
        return 0

    cdef object read_outputs(self, object out):
        cdef Py_buffer view
        cdef int i
        cdef int n = len(self.output_indices)
        if out is None:
            if not self.dynamic:
                if n == 1:
                    return copy_tensor(self.output_views[0], self.output_dtypes[0], &self.output_buffers[0],
                                       self.spares, 0)
                results = [copy_tensor(self.output_views[i], self.output_dtypes[i], &self.output_buffers[i],
                                       self.spares, 2 * i) for i in range(n)]
            else:
                results = [self._dynamic_output(i) for i in self.output_indices]
            return results[0] if n == 1 else dict(zip(self.output_names, results))
        targets = [out] if n == 1 and not isinstance(out, dict) else self._out_targets(out)
        for i in range(n):
            if not self.dynamic:
                read_output(&self.output_buffers[i], targets[i], self.output_names[i])
                continue
            tensor = self._dynamic_output(self.output_indices[i])
            PyObject_GetBuffer(tensor, &view, PyBUF_RECORDS_RO)
            try:
                read_output(&view, targets[i], self.output_names[i])
            finally:
                PyBuffer_Release(&view)
        return out

    def _dynamic_output(self, int index):
        """A copy of an output whose shape the last invoke decided (maybe empty)."""
        try:
            return self.wrapper.GetTensor(index, self.subgraph)
        except ValueError as e:
            # The backends refuse to read a tensor without data: an output with
            # a zero-sized dimension (WHERE matching nothing, FILL of size 0).
            shape = [int(d) for d in self.wrapper.TensorSize(index, self.subgraph)]
            if 0 not in shape or len(shape) > MAX_DIMS:
                raise InferenceError(f"the backend left output tensor {index} unreadable after "
                                     f"invoke ({e}); expected data of shape {shape}") from e
            import numpy
            return numpy.empty(shape, numpy.dtype(self.wrapper.TensorType(index, self.subgraph)))

    cdef list _out_targets(self, object out):
        if not isinstance(out, dict) or set(out) != set(self.output_names):
            raise InputError(f"out: expected a dict with exactly the outputs "
                             f"{list(self.output_names)}, got "
                             f"{list(out) if isinstance(out, dict) else type(out).__name__}")
        return [out[name] for name in self.output_names]

    def input_shapes(self) -> tuple:
        """The current input shapes, as bound."""
        return tuple(tuple(self.inputs[i].shape[d] for d in range(self.inputs[i].ndim))
                     for i in range(self.n_inputs))


cdef tuple shape_key_of(list arrays, tuple names):
    key = []
    for array, name in zip(arrays, names):
        try:
            key.append(tuple(memoryview(array).shape))
        except TypeError as e:
            raise InputError(f"input {name!r}: expected an array (any object with the buffer "
                             f"protocol), got {type(array).__name__}") from e
    return tuple(key)


# ------------------------------------------------------------------- workers

cdef class Worker:
    """One caller's share of a slot: an allocation per input shape seen.

    Args:
        first: the allocation for the model's default shapes.
        make: ``make(shape_key) -> Bound``; raises InputError for shapes the
            model cannot take.
        retire: ``retire(bound)``, to destroy an evicted allocation off this thread.
    """

    def __init__(self, Bound first, make, retire):
        self.last = first
        self.by_shape = {first.shape_key: first}
        self.factory = make
        self.retire = retire
        self.stale = False
        self.abandoned = []

    cdef int _rebuild(self) except -1:
        """In a forked child, before the first call: fresh interpreters for a worker forked mid-call.

        The parent's thread was inside one of this worker's interpreters; in the
        child that thread is gone but whatever it held is not (LiteRT's next
        invoke there hangs for good).  Those interpreters are set aside, neither
        called nor destroyed, and the current shapes get a new allocation.
        """
        key = self.last.shape_key
        self.abandoned.extend(self.by_shape.values())
        self.by_shape = {}
        self.stale = False
        self.bound_for(key)
        return 0

    def add(self, Bound bound) -> None:
        """Add a prepared allocation (used when a swap pre-builds known shapes)."""
        self.by_shape[bound.shape_key] = bound

    def shape_keys(self) -> list:
        return list(self.by_shape)

    def cancel(self, bint on=True) -> bool:
        """Cancel (or undo) invokes in every allocation; whether all can be cancelled."""
        return all([bound.cancel(on) for bound in list(self.by_shape.values())])

    def release(self) -> None:
        for bound in self.by_shape.values():
            bound.release()
        self.by_shape.clear()
        self.last = None

    cdef Bound bound_for(self, tuple key):
        cdef Bound bound = self.by_shape.get(key)
        if bound is None:
            bound = self.factory(key)
            if len(self.by_shape) >= MAX_SHAPES:
                oldest = next(iter(self.by_shape))
                self.retire(self.by_shape.pop(oldest))
            self.by_shape[key] = bound
        self.last = bound
        return bound

    cdef object call(self, object inputs, object out):
        if self.stale:
            self._rebuild()
        cdef Bound bound = self.last
        key = bound.write_inputs(inputs)
        if key is not None:
            bound = self.bound_for(key)
            if bound.write_inputs(inputs) is not None:
                raise InputError(f"inputs: shapes {key} could not be bound")
        try:
            bound.run_invoke()
        finally:
            if bound.n_lent:
                bound.return_lent()
        return bound.read_outputs(out)

    cdef object call_batch(self, object samples, object out):
        if self.stale:
            self._rebuild()
        cdef Bound bound = self.last
        cdef tuple snapshot
        # One snapshot: a sequence another thread grows or shrinks meanwhile
        # must not change the batch size between sizing the tensor and filling it.
        try:
            snapshot = samples if type(samples) is tuple else tuple(samples)
        except TypeError as e:
            raise InputError(f"samples: expected a sequence of per-sample inputs, "
                             f"got {type(samples).__name__}") from e
        n = len(snapshot)
        if n == 0:
            raise InputError("samples: expected at least one sample, got an empty sequence")
        first = snapshot[0]
        arrays = [first] if bound.n_inputs == 1 and not isinstance(first, dict) \
            else bound._by_name(first)
        key = tuple([(n,) + shape for shape in shape_key_of(arrays, bound.input_names)])
        if key != bound.shape_key:
            bound = self.bound_for(key)
        bound.write_batch(snapshot)
        bound.run_invoke()
        return bound.read_outputs(out)


# --------------------------------------------------------------------- slots

class _Waiter:
    """A caller queued for a worker: its lock is released when one is handed over."""

    __slots__ = ("lock", "worker")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.worker = -1


cdef class Slot:
    """One model version: its workers, their busy flags, its statistics.

    Args:
        workers: the Worker objects (1 to 64).
        stats: the version's LatencyStats (shared when a version comes back).
        info: the version's ModelInfo.
    """

    def __cinit__(self, *args, **kwargs):
        self.qlock = PyThread_allocate_lock()
        if self.qlock == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.qlock != NULL:
            PyThread_free_lock(self.qlock)

    def _reset_after_fork(self) -> None:
        """In a forked child: no other thread exists, so nothing is busy or waiting.

        A worker a call held at the fork is marked stale: its interpreters may
        be mid-invoke, and the child's first call on it rebuilds them.  Inputs
        lent by calls that had finished invoke are taken back here.
        """
        cdef int w
        cdef Bound bound
        for w in range(self.n_workers):
            if self.busy[w]:
                (<Worker>self.workers[w]).stale = True  # a call was running in it at the fork
                continue
            for bound in (<Worker>self.workers[w]).by_shape.values():
                if bound.n_lent:
                    bound.return_lent()
        for w in range(MAX_WORKERS):
            self.busy[w] = 0
        self.n_waiters = 0
        self.waiters.clear()
        PyThread_free_lock(self.qlock)  # possibly held by a thread that does not exist here
        self.qlock = PyThread_allocate_lock()

    def __init__(self, list workers, LatencyStats stats, info):
        if not 1 <= len(workers) <= MAX_WORKERS:
            raise ValueError(f"workers: expected 1 to {MAX_WORKERS}, got {len(workers)}")
        self.workers = workers
        self.n_workers = len(workers)
        self.waiters = collections.deque()
        self.stats = stats
        self.info = info

    cdef int try_claim(self) noexcept:
        cdef int w
        for w in range(self.n_workers):
            if hs_claim(&self.busy[w]):
                return w
        return -1

    cdef int claim(self, uint64_t deadline, double timeout) except -1:
        """Claim a free worker: one CAS when one is free and nobody is queued."""
        cdef int w
        if atomic_load_int(&self.n_waiters) == 0:
            w = self.try_claim()
            if w >= 0:
                return w
        return self.claim_queued(deadline, timeout)

    cdef int claim_queued(self, uint64_t deadline, double timeout) except -1:
        """Wait in line (FIFO) for a worker, which the releasing caller hands over.

        A hand-over, not a free-for-all: the thread that just released a worker
        (holding the GIL) cannot take it straight back ahead of older waiters.
        """
        cdef int w
        cdef uint64_t t
        waiter = _Waiter()
        self.lock_queue()
        try:
            atomic_add_int(&self.n_waiters, 1)
            w = self.try_claim()
            if w >= 0:
                atomic_add_int(&self.n_waiters, -1)
                return w
            self.waiters.append(waiter)
        finally:
            PyThread_release_lock(self.qlock)
        try:
            while True:
                t = now_ns()
                if deadline == UINT64_MAX:
                    waiter.lock.acquire()
                elif t < deadline:
                    waiter.lock.acquire(True, min((deadline - t) / 1e9, threading.TIMEOUT_MAX))
                if waiter.worker >= 0:
                    return waiter.worker
                if now_ns() >= deadline and self.leave_queue(waiter):
                    break
                if waiter.worker >= 0:  # handed over as time ran out
                    return waiter.worker
        except BaseException:
            # Interrupted (Ctrl+C): leave the line, or pass on a worker just handed over.
            if not self.leave_queue(waiter):
                self.release(waiter.worker)
            raise
        raise RuntimeBusyError(f"all {self.n_workers} worker(s) stayed busy for {timeout:g} s; "
                               f"expected one to free up (raise workers= or wait_timeout=)")

    cdef void lock_queue(self) noexcept:
        # Not interruptible (a signal must not leave a worker half handed
        # over), and waited for with the GIL released: the holder needs it.
        if not PyThread_acquire_lock(self.qlock, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self.qlock, WAIT_LOCK)

    cdef bint leave_queue(self, object waiter) noexcept:
        """Take ``waiter`` out of the line; False if a worker was handed to it first."""
        self.lock_queue()
        try:
            if waiter.worker >= 0:
                return False
            self.waiters.remove(waiter)
            atomic_add_int(&self.n_waiters, -1)
            return True
        finally:
            PyThread_release_lock(self.qlock)

    cdef int release(self, int w) except -1:
        if atomic_load_int(&self.n_waiters) == 0:
            atomic_store_int(&self.busy[w], 0)
            # A caller may have queued between the check and the store.
            if atomic_load_int(&self.n_waiters) == 0:
                return 0
            w = -1
        return self.hand_over(w)

    cdef int hand_over(self, int w) except -1:
        """Give worker w (or any free one, w < 0) to the first waiter, else free it."""
        self.lock_queue()
        try:
            if w < 0:
                w = self.try_claim()
                if w < 0:
                    return 0  # someone else took it
            if self.waiters:
                waiter = self.waiters.popleft()
                atomic_add_int(&self.n_waiters, -1)
                waiter.worker = w
                waiter.lock.release()
            else:
                atomic_store_int(&self.busy[w], 0)
        finally:
            PyThread_release_lock(self.qlock)
        return 0

    @property
    def native(self) -> bool:
        """Whether every worker calls the C++ interpreter directly."""
        return all([(<Worker>w).last.native for w in self.workers])

    def cancel(self, bint on=True) -> bool:
        """Cancel (or undo) the invokes of every worker; whether all can be cancelled."""
        return all([w.cancel(on) for w in self.workers])

    def workers_list(self) -> list:
        return list(self.workers)

    def release_all(self) -> None:
        """Destroy every interpreter of this slot (call only once no reader is left)."""
        for worker in self.workers:
            worker.release()
        self.workers = []
        self.n_workers = 0


cdef class SlotTable:
    """The slot table; :class:`tflite_hotswap.Runtime` subclasses it."""

    def __cinit__(self, *args, **kwargs):
        cdef int i
        self.current = SLOT_EMPTY
        for i in range(MAX_SLOTS):
            self.readers[i] = 0
        self.slots = [None] * MAX_SLOTS
        self.wait_timeout = 10.0
        self.gap_stats = LatencyStats()

    cdef int enter(self, uint64_t deadline) except -1:
        """Return the current slot's index with its reader count raised."""
        cdef long s
        cdef unsigned int delay = 20
        while True:
            s = atomic_load(&self.current)
            if s >= 0:
                atomic_add(&self.readers[s], 1)
                if atomic_load(&self.current) == s:
                    return <int>s
                atomic_add(&self.readers[s], -1)  # republished meanwhile: retry
            elif s == SLOT_CLOSED:
                raise RuntimeClosedError("the runtime is closed; expected an open runtime "
                                         "(create a new Runtime)")
            elif s == SLOT_FAILED:
                self.gap_stats.record(0, CALL_MODEL_ERROR)
                raise ModelUnavailableError(
                    "no model is serving: a resource-policy swap failed and the previous model "
                    "could not be reloaded; expected a successful swap() first")
            elif backoff(deadline, &delay):
                raise RuntimeBusyError(f"no model was published within {self.wait_timeout:g} s "
                                       f"(a resource-policy swap is still loading)")

    def run(self, inputs, *, out=None):
        """Run one inference on the serving model; lock-free, whole on one version.

        Args:
            inputs: an array for a single-input model, or a mapping of input
                name to array, each of the input's dtype and shape (with a
                Normalize preprocess: uint8, int8, float32 or float64).  A
                dimension the model leaves open (-1) may take any size.
            out: optional array (single output) or dict of arrays to fill;
                then nothing is allocated and ``out`` is returned.

        Returns:
            An array for a single-output model, else a dict by output name.

        Raises:
            InputError: wrong name, shape, dtype or type of an input or ``out``.
            InferenceError: the backend failed while running.
            RuntimeClosedError: the runtime is closed.
            RuntimeBusyError: no worker (or, during a resource-policy swap, no
                model) became available within ``wait_timeout``.
        """
        return self._call(inputs, out, False)

    def run_batch(self, samples, *, out=None):
        """Gather per-sample inputs straight into the batch tensor and run once.

        Args:
            samples: per-sample arrays (single-input model) or mappings, each
                without the batch dimension; a dynamic batch dimension is
                resized to ``len(samples)`` (one allocation kept per size).
            out: as for :meth:`run`.

        Returns:
            As for :meth:`run`, with the batch dimension first.

        Raises:
            InputError: empty or non-sequence ``samples``, a sample of the
                wrong shape or dtype, or a batch size the model cannot take.
            InferenceError, RuntimeClosedError, RuntimeBusyError: as for run.
        """
        return self._call(samples, out, True)

    cdef object _call(self, object arg, object out, bint batch):
        """One call: enter the current slot, claim a worker, run, count it.

        One deadline covers waiting for a model and for a worker.
        """
        cdef uint64_t t0 = now_ns()
        cdef uint64_t deadline = deadline_after(t0, self.wait_timeout)
        cdef Slot slot
        cdef Worker worker
        cdef int s, w
        cdef int outcome = CALL_TIMEOUT
        try:
            s = self.enter(deadline)
        except RuntimeBusyError:
            self.gap_stats.record(0, CALL_TIMEOUT)
            raise
        slot = <Slot>self.slots[s]
        hs_enter_call(<void*>self)
        try:
            w = slot.claim(deadline, self.wait_timeout)
            try:
                worker = <Worker>slot.workers[w]
                outcome = CALL_CALLER_ERROR
                result = worker.call_batch(arg, out) if batch else worker.call(arg, out)
                outcome = CALL_OK
                return result
            except BackendErrors:
                outcome = CALL_MODEL_ERROR
                raise
            finally:
                slot.release(w)
        finally:
            hs_leave_call(<void*>self)
            atomic_add(&self.readers[s], -1)
            slot.stats.record(now_ns() - t0, outcome)

    def _inside_call(self) -> bool:
        """Whether this thread is inside a run()/run_batch() of this table."""
        return hs_inside_call(<void*>self)

    # Writer side: called by Runtime with its swap lock held.

    def _publish(self, int index, Slot slot) -> int:
        """Install a prepared slot at a free index and make it current; return the old index."""
        self.slots[index] = slot
        return atomic_exchange(&self.current, index)

    def _unpublish(self, int state) -> int:
        """Make no slot current (SLOT_EMPTY: a gap; SLOT_CLOSED; SLOT_FAILED); return the old index."""
        return atomic_exchange(&self.current, state)

    def _slot_list(self) -> list:
        return self.slots

    def _current(self) -> int:
        """The published slot's index, or GAP / CLOSED / FAILED."""
        return atomic_load(&self.current)

    def _reset_after_fork(self) -> None:
        """In a forked child: the callers that held reader counts do not exist here."""
        cdef int i
        for i in range(MAX_SLOTS):
            atomic_store_long(&self.readers[i], 0)
        for slot in self.slots:
            if slot is not None:
                slot._reset_after_fork()

    def _readers(self, int index) -> int:
        return atomic_load(&self.readers[index])

    def _take(self, int index):
        """Remove and return the slot at index (its readers must have drained)."""
        slot = self.slots[index]
        self.slots[index] = None
        return slot

    @staticmethod
    def _capacity() -> int:
        return MAX_SLOTS


def resolve_symbol(str library, bytes symbol) -> int:
    """Address of ``symbol`` in the already-loaded shared object ``library`` (0 if absent)."""
    return <size_t>hs_resolve(os.fsencode(library), symbol)


def load_bias(str library) -> int:
    """Where the already-loaded ``library`` sits in memory (link_map.l_addr; 0 if not loaded)."""
    return hs_load_bias(os.fsencode(library))


def owner_of(size_t address):
    """The file of the loaded object containing ``address``, or None."""
    cdef const char* name = hs_owner(<void*>address)
    return None if name == NULL else os.fsdecode(<bytes>name)


def call_status_nogil(size_t method, size_t self_address, int repeat=1) -> int:
    """Call a no-argument status method on ``self_address`` with the GIL released.

    ``repeat`` calls it that many times in one release (the benchmarks' C-level
    invoke); the first non-zero status ends the loop and is returned.
    """
    cdef int status = 0, i
    with nogil:
        for i in range(repeat):
            status = hs_call_status(<void*>method, <void*>self_address)
            if status != 0:
                break
    return status


# What _call counts as the model's failure rather than the caller's.
BackendErrors = (InferenceError, UnsupportedModelError)
GAP, CLOSED, FAILED = SLOT_EMPTY, SLOT_CLOSED, SLOT_FAILED
