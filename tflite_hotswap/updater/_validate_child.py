"""The validation child: load a model, run it once, write its contract and outputs.

    python -m tflite_hotswap.updater._validate_child BACKEND SIGNATURE|- MODEL GOLDEN|- OUT

Runs in its own short-lived process (started by ``validation.validate``):
a model that crashes the backend takes only this process down.  Writes OUT
as an ``.npz`` with ``contract`` (JSON bytes) and ``outputs/<name>`` arrays;
on a Python-level failure writes ``error`` instead and exits with status 3.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np


def _zeros(shape: tuple[int, ...], dtype: str) -> Any:
    return np.zeros([d if d > 0 else 1 for d in shape], dtype=np.dtype(dtype))


def main(argv: list[str]) -> int:
    backend, signature, model, golden, out = argv
    try:
        from tflite_hotswap import Runtime
        with Runtime(model, backend=backend, isolate=False,
                     signature=None if signature == "-" else signature) as rt:
            contract = rt.info.contract
            if golden != "-":
                with np.load(golden) as npz:
                    inputs = {t.name: npz[f"inputs/{t.name}"] for t in contract.inputs}
            else:
                inputs = {t.name: _zeros(tuple(t.shape), t.dtype) for t in contract.inputs}
            result = rt.run(inputs if len(inputs) != 1 else next(iter(inputs.values())))
            if not isinstance(result, dict):
                result = {contract.outputs[0].name: result}
            arrays: dict[str, Any] = {f"outputs/{k}": np.asarray(v) for k, v in result.items()}
            arrays["contract"] = np.frombuffer(json.dumps(contract.to_dict()).encode(), np.uint8)
            np.savez(out, **arrays)
        return 0
    except Exception as e:  # noqa: BLE001 -- whatever it is, reported to the parent, which raises it typed
        np.savez(out, error=np.frombuffer(f"{type(e).__name__}: {e}".encode(), np.uint8))
        return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
