"""Return a retired model's memory to the OS with the GIL released, not while holding it.

Destroying an interpreter frees its model bytes and XNNPACK's packed weights:
for a 20 MB model, two 20 MB blocks.  glibc's malloc gives such blocks back to
the OS inside ``free()``: ``munmap`` for a block above its mmap threshold,
trimming the heap (``brk``) when the freed top passes its trim threshold.  That
kernel work is proportional to the pages freed -- 2 ms per 20 MB block, 4-9 ms
per heap trim, measured with ``strace -T`` on the reclaimer thread -- and it
runs with the GIL held, since an interpreter is a Python object: every
``run()`` of the serving loop waited for it (a 2.5-4.6 ms stall in half the
swaps of ``benches/test_swap_under_load.py``).

So the first Runtime pins both thresholds at the ceiling that glibc's own
dynamic thresholds reach after the first large free (mmap: 4 MiB x
sizeof(long), 32 MiB on 64-bit; trim: twice that), and after releasing a
retired version the reclaimer calls ``malloc_trim(0)`` through ctypes, which
releases the GIL: the memory still goes back to the OS, milliseconds later,
on a thread nobody waits for.  Blocks above the mmap ceiling (a model over
32 MiB, 16 MiB on 32-bit ARM) are still unmapped inside ``free()``.  The
price, process-wide: blocks up to the ceiling come from the heap from the
start (glibc's dynamic threshold does that too, once such a block is freed),
so a ``realloc`` of one copies it where ``mremap`` would have moved it.

It is a process-wide setting, made once and only on glibc.  It is left alone
when ``TFLITE_HOTSWAP_HEAP_TUNING=0`` or when the environment already sets
either threshold (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or
their ``GLIBC_TUNABLES``): whoever set them decided.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import threading
from typing import Any

logger = logging.getLogger(__name__)

ENV_VAR = "TFLITE_HOTSWAP_HEAP_TUNING"
# mallopt() parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's DEFAULT_MMAP_THRESHOLD_MAX: the highest mmap threshold mallopt accepts.
MMAP_THRESHOLD = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # what glibc's dynamic trim threshold becomes with it
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_USER_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")

_lock = threading.Lock()
_libc: Any = None  # the C library, once tuned; None: glibc trims inside free() as it likes
_decided = False


def tune() -> bool:
    """Pin glibc's thresholds once per process (see the module); whether they are ours.

    Never raises: wherever the setting cannot be made, malloc keeps its own.
    """
    global _libc, _decided
    with _lock:
        if not _decided:
            _decided = True
            _libc = _pin_thresholds()
        return _libc is not None


def give_back() -> None:
    """Return freed heap memory to the OS (``malloc_trim(0)``, GIL released); a no-op unless tuned."""
    if _libc is not None:
        _libc.malloc_trim(0)


def _pin_thresholds() -> Any:
    if os.environ.get(ENV_VAR, "1") == "0":
        return None
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(os.environ.get(name) for name in _USER_SETTINGS) or any(t in tunables for t in _USER_TUNABLES):
        logger.info("glibc malloc thresholds set in the environment: left as they are")
        return None
    if platform.libc_ver()[0] != "glibc":
        return None  # musl and others: no mallopt, and their own trimming
    try:
        libc = ctypes.CDLL(None)  # the process's own C library
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        # Only a value above the ceiling is refused; both or neither hold.
        if not (libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)):
            logger.warning("mallopt refused the heap thresholds: freed models go back to the OS with the GIL held")
            return None
    except (OSError, AttributeError) as e:
        logger.warning("glibc's mallopt/malloc_trim unavailable (%s): freed models go back to the OS "
                       "with the GIL held", e)
        return None
    logger.info("glibc malloc: mmap threshold %d MiB, trim threshold %d MiB; freed models go back to the OS "
                "off the GIL", MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20)
    return libc
