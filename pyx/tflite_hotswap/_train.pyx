# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The training step's hot path: one ``train`` call on one interpreter, for :class:`Trainer`.

A train signature is not the interpreter's primary subgraph, and its outputs
(the loss) are computed from variables read at invoke, so the backends give
them memory only then: the serving path's binding would re-read every tensor
address through the Python wrapper after each call.  ``TrainStep`` instead
asks the C++ ``SignatureRunner`` for each tensor's address and shape right
before using it (a map lookup, no Python), writes the inputs through the same
fused kernels as ``Runtime.run``, invokes with the GIL released and reads the
loss straight from the output tensor.  Where the backend does not export
those methods (LiteRT) or the binding's checks fail, the same steps go
through the wrapper.
"""

from cpython.buffer cimport PyBUF_RECORDS_RO, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from tflite_hotswap._buffers cimport (DT_BOOL, DT_C64, DT_C128, DT_F16, DT_F32, DT_F64, DT_I8, DT_I16,
                                      DT_I32, DT_I64, DT_U8, DT_U16, DT_U32, DT_U64, DT_UNKNOWN,
                                      MAX_DIMS, Kernel, describe_tensor, dtype_code, set_affine,
                                      write_input)
from tflite_hotswap._slots cimport (CALL_CALLER_ERROR, CALL_MODEL_ERROR, CALL_OK, LatencyStats)

from collections.abc import Mapping

from tflite_hotswap.errors import InferenceError, InputError, RuntimeClosedError, UnsupportedModelError

cdef extern from "_train_native.h":
    ctypedef struct hs_int_array:
        int size
        int* data
    ctypedef struct hs_tensor_head:
        int type
        void* data
        hs_int_array* dims
        size_t bytes
    void* hs_get_runner(void* method, void* interpreter, const char* key) nogil
    hs_tensor_head* hs_runner_tensor(void* method, void* runner, const char* name) nogil
    int hs_runner_invoke(void* method, void* runner) nogil


cdef struct TrainInput:
    Kernel kernel
    int ndim                      # the shape bound at construction (the wrapper path's check)
    Py_ssize_t shape[MAX_DIMS]


cdef inline uint64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000ULL + <uint64_t>ts.tv_nsec


cdef int tflite_dtype(int tflite_type) noexcept:
    """TfLiteType -> the kernels' DType (DT_UNKNOWN for strings, resources, int4)."""
    if tflite_type == 1: return DT_F32
    if tflite_type == 2: return DT_I32
    if tflite_type == 3: return DT_U8
    if tflite_type == 4: return DT_I64
    if tflite_type == 6: return DT_BOOL
    if tflite_type == 7: return DT_I16
    if tflite_type == 8: return DT_C64
    if tflite_type == 9: return DT_I8
    if tflite_type == 10: return DT_F16
    if tflite_type == 11: return DT_F64
    if tflite_type == 12: return DT_C128
    if tflite_type == 13: return DT_U64
    if tflite_type == 16: return DT_U32
    if tflite_type == 17: return DT_U16
    return DT_UNKNOWN


cdef class TrainStep:
    """One interpreter's fixed-shape train signature, bound for :meth:`step`.

    Args:
        interpreter: a backend ``Interpreter`` whose train subgraph is allocated.
        subgraph: the train signature's subgraph index.
        inputs: ``(name, tensor_index, kernel, dtype)`` per input in the
            signature's order; ``kernel`` as for the serving binding (None: a
            plain copy), ``dtype`` the numpy dtype arrays are cast to when they
            differ (inputs without a kernel).
        loss: ``(name, tensor_index)`` of the output :meth:`step` returns.
        lock: held around each step (the trainer's lock: the interpreter is
            not safe to share).
        stats: where each step's latency and outcome are counted.
        native: ``(interpreter address, GetSignatureRunner, SignatureRunner::Invoke,
            input_tensor, output_tensor)`` addresses, or None for the wrapper path.
        signature: the signature's key (for GetSignatureRunner).

    Raises:
        UnsupportedModelError: for an input tensor the kernels cannot write.
        InputError: for a kernel on an input that is not float32/int8/uint8.
    """

    cdef object wrapper
    cdef object invoke
    cdef object get_tensor
    cdef object acquire
    cdef object release_lock
    cdef int subgraph
    cdef int n_inputs
    cdef TrainInput* inputs
    cdef tuple names
    cdef tuple names_c            # bytes, for the runner's lookups
    cdef tuple indices
    cdef tuple dtypes
    cdef tuple plain              # per input: cast to dtype when it differs (no kernel)
    cdef list keepalive
    cdef int loss_index
    cdef bytes loss_c
    cdef object loss_name
    cdef LatencyStats stats
    cdef void* runner
    cdef void* fn_invoke
    cdef void* fn_input
    cdef void* fn_output
    cdef readonly long steps
    cdef readonly str path
    cdef bint closed

    def __cinit__(self):
        self.inputs = NULL
        self.runner = NULL

    def __dealloc__(self):
        free(self.inputs)

    def __init__(self, interpreter, int subgraph, list inputs, tuple loss, lock, LatencyStats stats,
                 native=None, str signature="train"):
        cdef int i
        self.wrapper = interpreter._interpreter
        self.invoke = self.wrapper.Invoke
        self.get_tensor = self.wrapper.GetTensor
        self.acquire = lock.acquire
        self.release_lock = lock.release
        self.subgraph = subgraph
        self.stats = stats
        self.n_inputs = len(inputs)
        self.inputs = <TrainInput*>malloc(max(self.n_inputs, 1) * sizeof(TrainInput))
        if self.inputs == NULL:
            raise MemoryError()
        memset(self.inputs, 0, max(self.n_inputs, 1) * sizeof(TrainInput))
        self.names = tuple([spec[0] for spec in inputs])
        self.names_c = tuple([spec[0].encode() for spec in inputs])
        self.indices = tuple([int(spec[1]) for spec in inputs])
        self.dtypes = tuple([spec[3] for spec in inputs])
        self.plain = tuple([spec[2] is None for spec in inputs])
        self.keepalive = []
        self.loss_name, self.loss_index = loss[0], int(loss[1])
        self.loss_c = loss[0].encode()
        for i in range(self.n_inputs):
            spec = inputs[i][2]
            if spec is not None:
                a, b, lo, hi, nan_value = spec
                self.keepalive.extend([a, b])
                set_affine(&self.inputs[i].kernel, a, b, lo, hi, nan_value)
            self._bind_input(i)
        self.path = "python"
        if native is not None:
            reason = self._bind_native(native, signature)
            if reason is None:
                self.path = "native"
            else:
                self.path = "python (" + reason + ")"

    cdef int _bind_input(self, int i) except -1:
        """Read input i's dtype and shape through the wrapper."""
        cdef char* address
        tensor = self.wrapper.tensor(self.wrapper, self.indices[i], self.subgraph)
        describe_tensor(tensor, &self.inputs[i].kernel, &self.inputs[i].ndim, self.inputs[i].shape,
                        &address, "train input", self.names[i])
        return 0

    cdef object _bind_native(self, tuple native, str signature):
        """Get the SignatureRunner and check each input's TfLiteTensor against the wrapper's view.

        Returns None when the native path is ready, else why not.
        """
        cdef size_t interpreter, get_runner, invoke, input_tensor, output_tensor
        cdef hs_tensor_head* t
        cdef Py_buffer view
        cdef int i, d
        cdef bint same
        interpreter, get_runner, invoke, input_tensor, output_tensor = native
        key = signature.encode()
        cdef void* runner = hs_get_runner(<void*>get_runner, <void*>interpreter, key)
        if runner == NULL:
            return f"GetSignatureRunner({signature!r}) returned no runner"
        for i in range(self.n_inputs):
            t = hs_runner_tensor(<void*>input_tensor, runner, self.names_c[i])
            if t == NULL:
                return f"the runner has no input {self.names[i]!r}"
            tensor = self.wrapper.tensor(self.wrapper, self.indices[i], self.subgraph)
            PyObject_GetBuffer(tensor, &view, PyBUF_RECORDS_RO)
            try:
                same = (t.data == view.buf and <Py_ssize_t>t.bytes == view.len and t.dims != NULL
                        and t.dims.size == view.ndim
                        and tflite_dtype(t.type) == dtype_code(view.format, view.itemsize))
                if same:
                    for d in range(view.ndim):
                        same = same and t.dims.data[d] == view.shape[d]
            finally:
                PyBuffer_Release(&view)
            del tensor
            if not same:
                return f"input {self.names[i]!r}: the TfLiteTensor layout differs from the wrapper's view"
        self.runner = runner
        self.fn_invoke = <void*>invoke
        self.fn_input = <void*>input_tensor
        self.fn_output = <void*>output_tensor
        return None

    def release(self) -> None:
        """Forget the interpreter; later steps raise RuntimeClosedError."""
        self.closed = True
        self.runner = NULL
        self.invoke = None
        self.get_tensor = None
        self.wrapper = None

    def step(self, tuple args, dict kwargs) -> float:
        """One train call: inputs by position (``args``) or by name (``kwargs``, or one mapping).

        Returns:
            The loss as a float.

        Raises:
            InputError: wrong number, names, shapes or dtypes of inputs.
            InferenceError: if the backend fails.
            RuntimeClosedError: after :meth:`release`.
        """
        cdef uint64_t t0 = now_ns()
        cdef int outcome = CALL_CALLER_ERROR
        if self.closed:
            raise RuntimeClosedError("the trainer is closed; expected an open Trainer")
        try:
            arrays = self._arrange(args, kwargs)
            self.acquire()
            try:
                if self.closed:  # closed while this call waited for the lock
                    raise RuntimeClosedError("the trainer is closed; expected an open Trainer")
                self._write(arrays)
                outcome = CALL_MODEL_ERROR
                self._invoke()
                loss = self._loss()
                outcome = CALL_OK
                self.steps += 1
                return loss
            finally:
                self.release_lock()
        finally:
            self.stats.record(now_ns() - t0, outcome)

    cdef list _arrange(self, tuple args, dict kwargs):
        """The inputs in signature order, cast to the tensor dtype where they differ (no kernel)."""
        cdef int i, n = self.n_inputs
        cdef list arrays
        mapping = None
        if kwargs:
            if args:
                raise InputError(f"step: expected {n} inputs {list(self.names)} by position or by name, "
                                 f"got {len(args)} by position and {sorted(kwargs)}")
            mapping = kwargs
        elif len(args) == 1 and (n != 1 or isinstance(args[0], Mapping)):
            mapping = args[0]
            if not isinstance(mapping, Mapping):
                raise InputError(f"step: expected {n} inputs {list(self.names)} by position or by name, "
                                 f"got 1 by position")
        elif len(args) != n:
            raise InputError(f"step: expected {n} inputs {list(self.names)} by position or by name, "
                             f"got {len(args)} by position")
        if mapping is not None:
            if len(mapping) != n or any([name not in mapping for name in self.names]):
                raise InputError(f"step: expected inputs {list(self.names)} by name, got {sorted(mapping)}")
            arrays = [mapping[name] for name in self.names]
        else:
            arrays = list(args)
        for i in range(n):
            if self.plain[i]:
                value = arrays[i]
                dtype = self.dtypes[i]
                have = getattr(value, "dtype", None)
                if have is None or (have is not dtype and have != dtype):
                    import numpy
                    try:
                        arrays[i] = numpy.asarray(value, dtype=dtype)
                    except (TypeError, ValueError, OverflowError) as e:
                        raise InputError(f"input {self.names[i]!r}: expected an array of {dtype} (or one "
                                         f"that casts to it), got {type(value).__name__}: {e}") from None
        return arrays

    cdef int _write(self, list arrays) except -1:
        cdef hs_tensor_head* t
        cdef Py_buffer view
        cdef Py_ssize_t shape[MAX_DIMS]
        cdef int i, d, ndim
        cdef TrainInput* b
        for i in range(self.n_inputs):
            b = &self.inputs[i]
            if self.runner != NULL:
                # Where the tensor is now (a re-plan may move it), straight from the runner.
                t = hs_runner_tensor(self.fn_input, self.runner, <const char*>self.names_c[i])
                if t == NULL or t.data == NULL or t.dims == NULL or t.dims.size > MAX_DIMS:
                    raise InferenceError(f"train input {self.names[i]!r}: the interpreter has no memory "
                                         f"for it")
                ndim = t.dims.size
                for d in range(ndim):
                    shape[d] = t.dims.data[d]
                if write_input(&b.kernel, arrays[i], shape, ndim, <char*>t.data, self.names[i]):
                    self._wrong_shape(arrays)
            else:
                tensor = self.wrapper.tensor(self.wrapper, self.indices[i], self.subgraph)
                PyObject_GetBuffer(tensor, &view, PyBUF_RECORDS_RO)
                try:
                    if write_input(&b.kernel, arrays[i], view.shape, view.ndim, <char*>view.buf,
                                   self.names[i]):
                        self._wrong_shape(arrays)
                finally:
                    PyBuffer_Release(&view)
                del tensor  # a live view would pin the interpreter's arena
        return 0

    cdef int _wrong_shape(self, list arrays) except -1:
        want = tuple([tuple([self.inputs[i].shape[d] for d in range(self.inputs[i].ndim)])
                      for i in range(self.n_inputs)])
        got = []
        for a in arrays:
            try:
                got.append(tuple(memoryview(a).shape))
            except TypeError:
                got.append(type(a).__name__)
        raise InputError(f"train inputs {list(self.names)}: expected shapes {want} (the fixed training "
                         f"batch size), got {tuple(got)}; cut data with tflite_hotswap.training.batches")

    cdef int _invoke(self) except -1:
        cdef int status
        if self.runner != NULL:
            with nogil:
                status = hs_runner_invoke(self.fn_invoke, self.runner)
            if status != 0:
                raise InferenceError(f"train: the backend failed to run it (TfLiteStatus {status}; the "
                                     f"backend's log names the operator)")
            return 0
        try:
            self.invoke(self.subgraph)
        except Exception as e:
            raise InferenceError(f"train: the backend failed to run it: {e}") from e
        return 0

    cdef object _loss(self):
        """The loss output as a float: read in place when it is one float32/float64."""
        cdef hs_tensor_head* t
        if self.runner != NULL:
            t = hs_runner_tensor(self.fn_output, self.runner, <const char*>self.loss_c)
            if t != NULL and t.data != NULL:
                if t.type == 1 and t.bytes == 4:
                    return <double>(<float*>t.data)[0]
                if t.type == 11 and t.bytes == 8:
                    return (<double*>t.data)[0]
        try:
            value = self.get_tensor(self.loss_index, self.subgraph)
        except ValueError as e:
            raise InferenceError(f"train: the backend left the output {self.loss_name!r} unreadable "
                                 f"({e})") from e
        return float(value)
