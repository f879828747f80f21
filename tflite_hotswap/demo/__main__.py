"""Demo: an inference loop that keeps running while the model is hot-swapped under it.

Run ``python -m tflite_hotswap.demo`` (no network needed).  A thread calls
``Runtime.run`` in a tight loop on a bundled model whose outputs encode its
version; the main thread swaps between three bundled versions and tries a
corrupt one, printing a live status line and a summary at the end.  It exits
non-zero if any call failed or returned a mixed-version result.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from importlib import resources

import numpy as np

from .. import HotswapError, Runtime


def _bundled(version: int) -> bytes:
    return resources.files("tflite_hotswap").joinpath(f"models/demo_v{version}.tflite").read_bytes()


def _corrupt(data: bytes, seed: int = 7) -> bytes:
    """A partial download: truncated, with a few bytes flipped."""
    rng = random.Random(seed)
    damaged = bytearray(data[: len(data) * 2 // 3])
    for _ in range(8):
        damaged[rng.randrange(len(damaged))] ^= 0xFF
    return bytes(damaged)


class _Loop(threading.Thread):
    """The caller's inference loop: checks every result is wholly one version."""

    def __init__(self, rt: Runtime) -> None:
        super().__init__(name="inference-loop", daemon=True)
        self.rt = rt
        self.calls = 0
        self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
        out = {"shifted": np.empty((1, 64), np.float32), "tag": np.empty((1, 1), np.float32)}
        while not self.stop.is_set():
            try:
                self.rt.run(x, out=out)
                if not np.array_equal(out["shifted"], x + out["tag"][0, 0]):
                    self.failed += 1
            except HotswapError:
                self.failed += 1
            self.calls += 1


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the process exit status (0: no failed call)."""
    parser = argparse.ArgumentParser(prog="python -m tflite_hotswap.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="how long to run (default 8)")
    parser.add_argument("--swap-every", type=float, default=0.5, help="seconds between swaps (default 0.5)")
    args = parser.parse_args(argv)

    models = {f"v{v}": _bundled(v) for v in (1, 2, 3)}
    rt = Runtime(models["v1"], version="v1")
    print(f"tflite_hotswap demo: backend {rt.backend}, model {rt.info.version} "
          f"({rt.info.size} bytes, inputs {[t.name for t in rt.info.inputs]}), "
          f"swapping every {args.swap_every:g} s for {args.seconds:g} s")
    loop = _Loop(rt)
    loop.start()
    started = time.monotonic()
    next_swap = started + args.swap_every
    next_status = started + 0.5
    order = ["v2", "v3", "corrupt", "v1"]
    swaps = refused = 0
    last_calls, last_t = 0, started
    interactive = sys.stdout.isatty()
    while (now := time.monotonic()) - started < args.seconds:
        if now >= next_swap:
            target = order[swaps % len(order)]
            swaps += 1
            try:
                if target == "corrupt":
                    rt.swap(_corrupt(models["v2"]), version="v2-corrupt")
                else:
                    rt.swap(models[target], version=target)
            except HotswapError as e:
                refused += 1
                print(f"\n  swap to {target} refused ({type(e).__name__}: {str(e)[:90]}...); "
                      f"{rt.info.version} keeps serving")
            next_swap += args.swap_every
        if now >= next_status:
            rate = (loop.calls - last_calls) / (now - last_t)
            last_calls, last_t = loop.calls, now
            s = rt.stats()[rt.info.version]
            line = (f"[{now - started:5.1f}s] serving {rt.info.version:<3} | {rate:>10,.0f} calls/s | "
                    f"p50 {s.p50_us:6.1f} us  p99 {s.p99_us:6.1f} us  max {s.max_us:8.1f} us | "
                    f"failed calls {loop.failed}")
            print(("\r" + line) if interactive else line, end="" if interactive else "\n", flush=True)
            next_status += 0.5
        time.sleep(0.01)
    loop.stop.set()
    loop.join()
    stats = rt.stats()
    rt.close()
    print("\n\nsummary")
    print(f"  calls {loop.calls:,}, failed or mixed-version calls {loop.failed}, "
          f"swaps {swaps} ({refused} refused)")
    print(f"  {'version':<8}{'calls':>12}{'errors':>8}{'p50 us':>10}{'p99 us':>10}{'max us':>11}")
    for version, s in sorted(stats.items()):
        print(f"  {version:<8}{s.calls:>12,}{s.errors:>8}{s.p50_us:>10.1f}{s.p99_us:>10.1f}{s.max_us:>11.1f}")
    print("  result: " + ("OK, no failed call" if loop.failed == 0 else "FAILED CALLS"))
    return 0 if loop.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
