"""The native path: call the backend's C++ interpreter directly, with the GIL released.

tflite-runtime 2.14 (its last release: the ABI is frozen) exports
``tflite::impl::Interpreter::AllocateTensors()`` and ``Invoke()`` from its
extension module, and ``Interpreter._interpreter.interpreter()`` gives the C++
interpreter's address.  Allocating through it lets an inference loop keep
running while a swap packs a new model's weights (XNNPACK does that inside
``AllocateTensors``, tens of milliseconds for a 20 MB model, with the GIL held
on the Python path), and a call skips the wrapper's Python-level bookkeeping.

ai-edge-litert links the same interpreter into a library of its own with
hidden visibility: the methods are there, found through the library's symbol
table (:mod:`.symbols`), but nothing vouches for them except that table.  So
before a process calls a hidden function, the self-test
(``python -m tflite_hotswap._native_check``) runs every native call in a
throwaway process and compares it with the wrapper; a crash or a difference
there keeps this process on the wrapper.

The symbols are resolved at run time in the already-loaded module; where one
is missing or ``TFLITE_HOTSWAP_NATIVE=0`` is set, the wrapper's own methods
serve, and ``ModelInfo.path`` says which path serves.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any

from .. import _slots
from .symbols import Found, find_functions

logger = logging.getLogger(__name__)

ENV_VAR = "TFLITE_HOTSWAP_NATIVE"
# Set in the environment of a process a self-test starts: such a process never
# starts a self-test of its own (a frozen app or an embedding host runs its own
# main instead of the test, which would recurse) and so never trusts hidden
# functions; only the test's own code (trust_hidden_functions) does.
SELF_TEST_ENV = "_TFLITE_HOTSWAP_NATIVE_SELF_TEST"
# Seconds.  Below the isolation prober's 60 s start timeout, which covers the
# prober's own self-test: past it, the wrapper serves.
_SELF_TEST_TIMEOUT = 45.0

# Itanium-ABI names of the no-argument methods, returning TfLiteStatus.
_INVOKE = b"_ZN6tflite4impl11Interpreter6InvokeEv"
_ALLOCATE = b"_ZN6tflite4impl11Interpreter15AllocateTensorsEv"
_SET_CANCELLATION = b"_ZN6tflite4impl11Interpreter23SetCancellationFunctionEPvPFbS2_E"
# Freeing a retired interpreter, GIL released, just before its destruction:
# RemoveAllDelegates frees what the delegates hold (XNNPACK's packed weights,
# as big as the model) and leaves the interpreter invokable without them, which
# re-plans its tensor arena; ReleaseNonPersistentMemory then frees that arena.
# tflite-runtime exports the interpreter's own (every subgraph); LiteRT has only
# the subgraph's (hidden), called on the primary subgraph, reached through the
# interpreter's first member (hs_primary_subgraph in _native.h, checked).
_REMOVE_DELEGATES = b"_ZN6tflite4impl11Interpreter18RemoveAllDelegatesEv"
_RELEASE_ARENA = b"_ZN6tflite4impl11Interpreter26ReleaseNonPersistentMemoryEv"
_REMOVE_SUBGRAPH_DELEGATES = b"_ZN6tflite8Subgraph18RemoveAllDelegatesEv"
_RELEASE_SUBGRAPH_ARENA = b"_ZN6tflite8Subgraph26ReleaseNonPersistentMemoryEv"
# SetCustomAllocationForTensor(int, const TfLiteCustomAllocation&, int64_t): int64_t
# is `long` on 64-bit Linux ("l") and `long long` on 32-bit ARM ("x").
_SET_ALLOCATION = tuple(b"_ZN6tflite4impl11Interpreter28SetCustomAllocationForTensorEiRK22TfLiteCustomAllocation"
                        + suffix for suffix in (b"l", b"x"))
# What serving looks for, in this order: the first two are required.
SERVING_FUNCTIONS = (_INVOKE, _ALLOCATE, _SET_CANCELLATION, _REMOVE_DELEGATES, _RELEASE_ARENA,
                     _REMOVE_SUBGRAPH_DELEGATES, _RELEASE_SUBGRAPH_ARENA, *_SET_ALLOCATION)

LEND_ENV_VAR = "TFLITE_HOTSWAP_ZERO_COPY_MIN_BYTES"
# Inputs at least this big are lent to the interpreter instead of copied: below
# it a copy costs less than re-pointing the tensor (and XNNPACK re-reading it).
LEND_MIN_BYTES = 1 << 20
# Models at least this big have a retired interpreter's delegates removed
# before its destruction.  Below it the packed weights cost little to free with
# the GIL held (~0.1 ms per MB), and removing them is not free: the undelegated
# graph is prepared again (10-12 ms for a model with large activations).
REMOVE_DELEGATES_MIN_BYTES = 4 << 20


@dataclass(frozen=True)
class NativeEntryPoints:
    """Addresses of the C++ interpreter methods in the backend's extension module."""

    invoke: int
    allocate: int
    set_cancellation: int  # 0 where the backend lacks it: calls then cannot be cancelled
    set_allocation: int  # 0 where the backend lacks it: inputs are always copied
    remove_delegates: int  # 0 where the backend lacks it: destruction frees the delegates' memory
    release_arena: int  # ReleaseNonPersistentMemory of the same class, or 0
    on_primary_subgraph: bool  # both are Subgraph methods (LiteRT), called on the primary subgraph


_resolved: dict[str, NativeEntryPoints | None] = {}
_verdicts: dict[str, set[str]] = {}  # library -> identities its self-test vouched for


def backend_library(interpreter: Any) -> str | None:
    """The file of the extension module behind ``interpreter``, where native calls are resolved.

    None when disabled by ``TFLITE_HOTSWAP_NATIVE=0``, or when the wrapper
    gives no interpreter address or its module no file.
    """
    if os.environ.get(ENV_VAR, "1") == "0":
        return None
    wrapper = interpreter._interpreter
    library = getattr(sys.modules.get(type(wrapper).__module__), "__file__", None)
    if library is None or not callable(getattr(wrapper, "interpreter", None)):
        return None
    return str(library)


def entry_points(interpreter: Any) -> NativeEntryPoints | None:
    """The native entry points for interpreters of ``interpreter``'s backend, or None.

    None when :func:`backend_library` is None, a symbol is missing, or hidden
    symbols failed the self-test.
    """
    library = backend_library(interpreter)
    if library is None:
        return None
    if library not in _resolved:
        _resolved[library] = _resolve(library, interpreter)
    return _resolved[library]


def _resolve(library: str, interpreter: Any) -> NativeEntryPoints | None:
    found = find_functions(library, SERVING_FUNCTIONS, required=2)
    if found is None or not trusted(found, interpreter):
        logger.info("native path unavailable for %s: Interpreter::Invoke/AllocateTensors %s", library,
                    "not found" if found is None else "failed the self-test")
        return None
    (invoke, allocate, set_cancellation, remove_delegates, release_arena, remove_subgraph_delegates,
     release_subgraph_arena, *set_allocation) = found.addresses
    # The subgraph's method is reached through a layout only a self-test vouches
    # for: never where the functions are exported and so not self-tested.
    on_primary_subgraph = not remove_delegates and bool(remove_subgraph_delegates) and found.hidden
    if on_primary_subgraph:
        remove_delegates, release_arena = remove_subgraph_delegates, release_subgraph_arena
    logger.info("native path: %s %s Interpreter::Invoke and AllocateTensors%s%s%s", found.library,
                "has (hidden, self-tested)" if found.hidden else "exports",
                " and SetCancellationFunction" if set_cancellation else "",
                " and SetCustomAllocationForTensor" if any(set_allocation) else "",
                "" if not remove_delegates else
                " and Subgraph::RemoveAllDelegates" if on_primary_subgraph else " and Interpreter::RemoveAllDelegates")
    return NativeEntryPoints(invoke, allocate, set_cancellation, next((a for a in set_allocation if a), 0),
                             remove_delegates, release_arena if remove_delegates else 0, on_primary_subgraph)


_trust_hidden = False  # only in the self-test's own process
_trusted_here: set[str] = set()  # what that process trusted: identity() of each Found
_verdict_lock = threading.Lock()


def trust_hidden_functions() -> set[str]:
    """In the self-test's own process: trust hidden functions, and return the set that records them."""
    global _trust_hidden
    _trust_hidden = True
    return _trusted_here


def identity(found: Found) -> str:
    """The library's real path and each function's offset in it: what a self-test must have tested."""
    bias = _slots.load_bias(found.library)
    offsets = ",".join(f"{address - bias:x}" if address else "0" for address in found.addresses)
    return f"{os.path.realpath(found.library)}:{offsets}"


def trusted(found: Found, interpreter: Any) -> bool:
    """Whether ``found``'s functions may be called in this process.

    Exported functions are the backend's public ABI.  Hidden ones only once a
    self-test in a throwaway process has run these very functions (same file,
    same offsets) and compared them with the wrapper: once per library per
    process.
    """
    if not found.hidden:
        return True
    key = identity(found)
    if _trust_hidden:
        _trusted_here.add(key)
        return True
    if os.environ.get(SELF_TEST_ENV) or getattr(sys, "frozen", False) or not sys.executable:
        return False  # started by a self-test, or no Python to run one with: the wrapper serves
    with _verdict_lock:
        if found.library not in _verdicts:
            _verdicts[found.library] = _self_test(type(interpreter).__module__, found.library)
        return key in _verdicts[found.library]


def _self_test(interpreter_module: str, library: str) -> set[str]:
    """Run the self-test in a new process; return the identities it vouches for (empty: none)."""
    token = secrets.token_hex(16)
    command = [sys.executable, "-m", "tflite_hotswap._native_check", interpreter_module, token]
    # From the directory holding this very tflite_hotswap, and with this
    # process's import path, so the test imports the same package and backend.
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, **{SELF_TEST_ENV: token,
                              "PYTHONPATH": os.pathsep.join([package_root, *filter(None, sys.path)])})
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False,
                              timeout=_SELF_TEST_TIMEOUT, stdin=subprocess.DEVNULL, cwd=package_root, env=env)
    except Exception as e:  # noqa: BLE001 -- whatever stops the test, the wrapper serves
        logger.warning("native self-test for %s could not run (%s): serving through the wrapper", library, e)
        return set()
    lines = done.stdout.strip().splitlines()
    try:
        words = json.loads(lines[-1]) if lines else []
    except ValueError:
        words = []
    # Exit status 0 alone proves nothing (a process that never ran the test, or
    # SIGCHLD ignored, gives it too): the test's last line starts with the token.
    if done.returncode != 0 or not isinstance(words, list) or not words or words[0] != token:
        logger.warning("native self-test for %s failed (exit status %d): serving through the wrapper. %s",
                       library, done.returncode, done.stderr.strip()[-2000:])
        return set()
    logger.info("native self-test for %s passed", library)
    return {str(word) for word in words[1:]}


def address_of(interpreter: Any) -> int:
    """The C++ interpreter's address."""
    return int(interpreter._interpreter.interpreter())


def allocate(native: NativeEntryPoints, interpreter: Any) -> int:
    """``Interpreter::AllocateTensors()`` with the GIL released; returns the TfLiteStatus."""
    return int(_slots.call_status_nogil(native.allocate, address_of(interpreter)))


def lend_min_bytes() -> int:
    """Inputs of at least this many bytes are lent, not copied (0: never); see LEND_MIN_BYTES."""
    value = os.environ.get(LEND_ENV_VAR)
    try:
        return LEND_MIN_BYTES if value is None else max(int(value), 0)
    except ValueError:
        logger.warning("%s=%r is not a number of bytes; using %d", LEND_ENV_VAR, value, LEND_MIN_BYTES)
        return LEND_MIN_BYTES

