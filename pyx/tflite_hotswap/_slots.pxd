# Slot table: wait-free readers, lock-free publish, exact reclamation.
from cpython.buffer cimport Py_buffer
from cpython.pythread cimport PyThread_type_lock
from libc.stdint cimport uint64_t

from tflite_hotswap._buffers cimport Kernel, MAX_DIMS

cdef enum:
    MAX_SLOTS = 8         # serving + preparing + retiring ones (a stuck call pins one)
    MAX_WORKERS = 64
    N_BUCKETS = 1024      # latency histogram: 16 sub-buckets per power of two
    SLOT_EMPTY = -1       # resource-policy gap: callers wait for the next publish
    SLOT_CLOSED = -2
    SLOT_FAILED = -3      # resource policy: neither the new nor the old model loaded
    # What a call's outcome was, for the statistics.
    CALL_OK = 0
    CALL_MODEL_ERROR = 1  # the backend failed running the model
    CALL_CALLER_ERROR = 2 # bad input from the caller
    CALL_TIMEOUT = 3      # waited past wait_timeout

cdef struct InputBinding:
    char* address         # the tensor's memory; valid until the interpreter is re-allocated
    int ndim
    Py_ssize_t shape[MAX_DIMS]
    Kernel kernel
    int tensor_index      # zero copy (native path): the tensor a caller's array is lent to
    Py_ssize_t nbytes
    bint lent             # lent_view is held and the tensor points into it until return_lent
    bint lendable         # not an output, and overlapping none (else a lent call returns stale data)
    Py_buffer lent_view

cdef class LatencyStats:
    cdef uint64_t buckets[N_BUCKETS]   # successful calls only
    cdef uint64_t outcomes[4]          # by CALL_* kind
    cdef uint64_t max_ns
    cdef uint64_t total_ns
    cdef void record(self, uint64_t ns, int outcome) noexcept nogil

cdef class Bound:
    cdef object interpreter
    cdef object wrapper
    cdef object invoke
    cdef int subgraph
    cdef int n_inputs
    cdef InputBinding* inputs
    cdef tuple input_names
    cdef tuple input_indices
    cdef list keepalive
    cdef tuple output_names
    cdef tuple output_indices
    cdef list output_views
    cdef Py_buffer* output_buffers  # one held buffer per static output view (run(out=) reads these)
    cdef int n_output_buffers
    cdef list output_dtypes      # output_views' dtypes, for copy_tensor
    cdef list spares             # two recycled result arrays per static output (copy_tensor)
    cdef bint dynamic
    cdef bint needs_bind         # a failed invoke may have moved tensor memory
    cdef void* native_self       # the C++ interpreter, for the native invoke
    cdef void* native_invoke     # tflite::impl::Interpreter::Invoke, or NULL (Python path)
    cdef void* native_set_allocation  # Interpreter::SetCustomAllocationForTensor: zero copy, or NULL
    cdef void* native_remove_delegates  # RemoveAllDelegates, called by release(), or NULL
    cdef void* native_release_arena   # ReleaseNonPersistentMemory, called after it, or NULL
    cdef bint remove_on_subgraph      # both are Subgraph methods: called on the primary subgraph
    cdef Py_ssize_t lend_min_bytes
    cdef int n_lent              # inputs lent to the interpreter for the call in progress
    cdef bint poisoned           # a lent tensor could not be taken back: serves no more calls
    cdef int cancel_flag         # read by the interpreter between operators when cancellable
    cdef bint cancellable
    cdef readonly tuple shape_key
    cdef _set_kernel(self, int i, object spec)
    cdef list _by_name(self, object inputs)
    cdef list _out_targets(self, object out)
    cdef int bind(self) except -1
    cdef bint _lend(self, int i, object src) except -1
    cdef int return_lent(self) except -1
    cdef bint _shares_output_memory(self, int i)
    cdef void _drop_output_views(self) noexcept
    cdef list _addresses(self)
    cdef object write_inputs(self, object inputs)
    cdef int write_batch(self, tuple samples) except -1
    cdef int run_invoke(self) except -1
    cdef object read_outputs(self, object out)

cdef class Worker:
    cdef Bound last
    cdef dict by_shape
    cdef object factory
    cdef object retire
    cdef bint stale              # forked mid-call: its interpreters may hold a lost thread's locks
    cdef list abandoned          # what a stale worker held: never called, never destroyed
    cdef int _rebuild(self) except -1
    cdef Bound bound_for(self, tuple key)
    cdef object call(self, object inputs, object out)
    cdef object call_batch(self, object samples, object out)

cdef class Slot:
    cdef list workers
    cdef int n_workers
    cdef int busy[MAX_WORKERS]
    cdef int n_waiters           # callers queued for a worker (FIFO hand-over)
    cdef object waiters          # deque of _Waiter, guarded by qlock
    cdef PyThread_type_lock qlock
    cdef LatencyStats stats
    cdef public object info
    cdef int try_claim(self) noexcept
    cdef int claim(self, uint64_t deadline, double timeout) except -1
    cdef int claim_queued(self, uint64_t deadline, double timeout) except -1
    cdef void lock_queue(self) noexcept
    cdef bint leave_queue(self, object waiter) noexcept
    cdef int release(self, int w) except -1
    cdef int hand_over(self, int w) except -1

cdef class SlotTable:
    cdef long current
    cdef long readers[MAX_SLOTS]
    cdef list slots
    cdef public double wait_timeout
    cdef public LatencyStats gap_stats   # where calls that find no model are counted
    cdef int enter(self, uint64_t deadline) except -1
    cdef object _call(self, object arg, object out, bint batch)
