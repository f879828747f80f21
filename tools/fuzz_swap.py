"""Fuzz swap(): mutated real models swapped into a Runtime in a serving child process.

The promise under test: no model kills or hangs the serving process.  The
parent makes mutants of the real models (tests/models, tflite_hotswap/models)
-- byte flips, truncations, and field-targeted edits of the indices and shape
entries the backends trust -- and feeds them, one at a time, to a child that
serves with a Runtime: ``swap()`` each, run it once if accepted, swap back.  A
child that dies (a signal) or does not answer within a bound is counted, its
mutant saved as a crasher, and a new child started.

    .venv-litert/bin/python tools/fuzz_swap.py --seconds 600 --out crashers/

Time: ``--seconds`` or TFLITE_HOTSWAP_FUZZ_SECONDS (default 20).  Prints a JSON
summary; exits 1 if the serving process died or hung.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = sorted([p for p in (ROOT / "tests" / "models").glob("*.tflite")
                if not p.name.startswith("hostile_") and p.stat().st_size < 600_000]
               + list((ROOT / "tflite_hotswap" / "models").glob("*.tflite")))
BASE = ROOT / "tests" / "models" / "version_1.tflite"
ANSWER_BOUND = 120.0  # seconds one swap may take before the child counts as hung
INTERESTING = [-2**31, -2, -1, 0, 1, 2, 3, 7, 16, 255, 256, 2**16, 2**24, 2**31 - 1]


def _index_fields(data: bytes) -> list[tuple[int, int]]:
    """(position, size 4) of every int the backends use as an index or a shape entry."""
    from tflite_hotswap.safety.references import _Table

    buf = memoryview(data)
    found: list[int] = []

    def vec(t: _Table, slot: int) -> None:
        first, n = t._vector(slot)
        found.extend(first + 4 * i for i in range(n))

    def scalar(t: _Table, slot: int) -> None:
        at = t.at(slot)
        if at is not None:
            found.append(at)

    model = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
    for sub in model.tables(8):
        vec(sub, 6)
        vec(sub, 8)
        for tensor in sub.tables(4):
            vec(tensor, 4)  # shape
            vec(tensor, 18)  # shape signature
            scalar(tensor, 8)  # buffer
        for op in sub.tables(10):
            scalar(op, 4)
            vec(op, 6)
            vec(op, 8)
    for sig in model.tables(18):
        scalar(sig, 12)
        for tm in sig.tables(4) + sig.tables(6):
            scalar(tm, 6)
    return [(p, 4) for p in found]


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One mutant of ``data`` and a word on how it was made."""
    out = bytearray(data)
    how = rng.random()
    if how < 0.15:
        cut = rng.randrange(8, len(data))
        return f"truncated at {cut}", bytes(out[:cut])
    if how < 0.45:
        spots = []
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(out))
            out[i] = rng.randrange(256)
            spots.append(i)
        return f"bytes {spots}", bytes(out)
    try:
        fields = _index_fields(data)
    except Exception:  # noqa: BLE001 (a seed we cannot read: flip bytes instead)
        fields = []
    if not fields:
        return mutate(data, rng)
    edits = []
    for _ in range(rng.randint(1, 3)):
        pos, _ = rng.choice(fields)
        value = rng.choice(INTERESTING + [rng.randrange(-64, 64)])
        struct.pack_into("<i", out, pos, value)
        edits.append((pos, value))
    return f"fields {edits}", bytes(out)


# ------------------------------------------------------------------ the child

def serve() -> None:
    """Swap each model path read on stdin into a Runtime; answer one line each."""
    import numpy as np

    from tflite_hotswap import HotswapError, Runtime

    # --no-isolate: to see what the probe saves the serving process from.
    rt = Runtime(str(BASE), isolate=None if os.environ.get("FUZZ_ISOLATE", "1") == "1" else False)
    print("ready", flush=True)
    for line in sys.stdin:
        path = line.strip()
        try:
            info = rt.swap(path, allow_contract_change=True)
            inputs = {s.name: np.zeros([d if d > 0 else 1 for d in s.shape], s.dtype)
                      for s in info.inputs}
            rt.run(inputs)
            verdict = "accepted"
        except HotswapError as e:
            verdict = f"refused {type(e).__name__}"
        except Exception as e:  # noqa: BLE001 (untyped: a finding, not a death)
            verdict = f"untyped {type(e).__name__}: {str(e)[:200]}"
        try:
            rt.swap(str(BASE), allow_contract_change=True)
        except HotswapError as e:
            verdict += f"; swap back failed: {type(e).__name__}"
        print(verdict, flush=True)
    rt.close()


# ------------------------------------------------------------------ the parent

class _Child:
    def __init__(self, workdir: str) -> None:
        env = dict(os.environ, TFLITE_HOTSWAP_PROBE_TIMEOUT=os.environ.get(
            "TFLITE_HOTSWAP_PROBE_TIMEOUT", "10"))
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=workdir)
        if self.answer(ANSWER_BOUND) != "ready":
            raise SystemExit(f"the serving child did not start (status {self.proc.poll()})")

    def answer(self, bound: float) -> str | None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], bound)
        return self.proc.stdout.readline().strip() if ready else None

    def ask(self, path: str) -> tuple[str, str | None]:
        """("answer", verdict) | ("died", signal name) | ("hung", None)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(path + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        verdict = self.answer(ANSWER_BOUND)
        if verdict:
            return "answer", verdict
        if verdict is None:
            self.proc.kill()
        status = self.proc.wait()
        if verdict is None:
            return "hung", None
        name = signal.Signals(-status).name if status < 0 else f"exit {status}"
        return "died", name

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def campaign(seconds: float, seed: int, out: pathlib.Path | None) -> dict[str, Any]:
    rng = random.Random(seed)
    seeds = [p.read_bytes() for p in SEEDS]
    counts: dict[str, Any] = {"backend": os.environ.get("TFLITE_HOTSWAP_BACKEND", "auto"),
                              "seed": seed, "mutants": 0, "accepted": 0, "refused": 0,
                              "untyped": [], "deaths": [], "hangs": []}
    deadline = time.monotonic() + seconds
    with tempfile.TemporaryDirectory() as workdir:
        child = _Child(workdir)
        while time.monotonic() < deadline:
            source = rng.randrange(len(seeds))
            how, data = mutate(seeds[source], rng)
            path = os.path.join(workdir, f"mutant_{counts['mutants']}.tflite")
            with open(path, "wb") as f:
                f.write(data)
            counts["mutants"] += 1
            kind, verdict = child.ask(path)
            if kind == "answer" and verdict is not None:
                if verdict.startswith("accepted"):
                    counts["accepted"] += 1
                elif verdict.startswith("refused"):
                    counts["refused"] += 1
                else:
                    counts["untyped"].append(f"{SEEDS[source].name} {how}: {verdict}")
                os.unlink(path)
                continue
            finding = {"seed_model": SEEDS[source].name, "mutation": how, "outcome": verdict or "hung"}
            counts["deaths" if kind == "died" else "hangs"].append(finding)
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                kept = out / f"crasher_{len(list(out.glob('*.tflite')))}.tflite"
                shutil.copy(path, kept)
                finding["file"] = str(kept)
            child.close()
            child = _Child(workdir)
        child.close()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float,
                        default=float(os.environ.get("TFLITE_HOTSWAP_FUZZ_SECONDS", "20")))
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--out", type=pathlib.Path, help="folder to keep crashers in")
    parser.add_argument("--no-isolate", action="store_true",
                        help="serve without the isolation probe (to measure what it prevents)")
    args = parser.parse_args()
    if args.no_isolate:
        os.environ["FUZZ_ISOLATE"] = "0"
    if args.serve:
        serve()
        return
    counts = campaign(args.seconds, args.seed, args.out)
    print(json.dumps(counts, indent=1))
    sys.exit(1 if counts["deaths"] or counts["hangs"] else 0)


if __name__ == "__main__":
    main()
