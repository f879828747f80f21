"""Checks for the isolation prober's own tests, run in its throwaway processes.

Each factory takes the backend name and returns ``check(data, signature,
num_threads)``.  Every call appends a line to the file named by
``PROBE_CHECK_LOG``, so a test can count how many probes really ran.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable, Optional

Check = Callable[[bytes, Optional[str], Optional[int]], None]


def _logged(action: Callable[[bytes], None]) -> Callable[[str], Check]:
    def factory(backend: str) -> Check:
        def check(data: bytes, signature: str | None, num_threads: int | None) -> None:
            with open(os.environ["PROBE_CHECK_LOG"], "a") as log:
                log.write(f"{os.getpid()}\n")
            action(data)
        return check
    return factory


def _kill(sig: int) -> Callable[[bytes], None]:
    return lambda data: os.kill(os.getpid(), sig)


def _sleep(data: bytes) -> None:
    time.sleep(3600)


def _spin(data: bytes) -> None:
    while True:
        pass


def _allocate(data: bytes) -> None:
    bytearray(512 * 2**20)  # 512 MiB


def _refuse(data: bytes) -> None:
    raise ValueError("refused on purpose")


def _misuse(data: bytes) -> None:
    from tflite_hotswap.errors import MisuseError
    raise MisuseError("signature: expected one of ['a'], got 'b'")


ok = _logged(lambda data: None)
sigkill = _logged(_kill(signal.SIGKILL))
sigsegv = _logged(_kill(signal.SIGSEGV))
sleep = _logged(_sleep)
spin = _logged(_spin)
allocate = _logged(_allocate)
refuse = _logged(_refuse)
misuse = _logged(_misuse)
