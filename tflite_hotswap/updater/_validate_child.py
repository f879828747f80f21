"""The validation child: load a model, run it once, write its contract and outputs.

    python -m tflite_hotswap.updater._validate_child BACKEND SIGNATURE|- MODEL GOLDEN|- OUT [CHECKPOINTS|-]

Runs in its own short-lived process (started by ``validation.validate``):
a model that crashes the backend takes only this process down.  Writes OUT
as an ``.npz`` with ``contract`` (JSON bytes) and ``outputs/<name>`` arrays
(the model's own weights).  With CHECKPOINTS (JSON: the folder, the
``new_base`` policy and the signature names), it also restores the checkpoint
a runtime with those checkpoints would restore, runs the same inputs again and
adds ``checkpoint`` (JSON: its id and base) and ``served/<name>`` arrays, or
nothing when the policy restores none.  A CheckpointMismatchError is written
as ``checkpoint_error`` and ``checkpoint_differences``; any other Python-level
failure as ``error``, with exit status 3.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np


def _zeros(shape: tuple[int, ...], dtype: str) -> Any:
    return np.zeros([d if d > 0 else 1 for d in shape], dtype=np.dtype(dtype))


def _text(message: str) -> Any:
    return np.frombuffer(message.encode(), np.uint8)


def _run(rt: Any, inputs: dict[str, Any], prefix: str) -> dict[str, Any]:
    contract = rt.info.contract
    result = rt.run(inputs if len(inputs) != 1 else next(iter(inputs.values())))
    if not isinstance(result, dict):
        result = {contract.outputs[0].name: result}
    return {f"{prefix}/{k}": np.asarray(v) for k, v in result.items()}


def main(argv: list[str]) -> int:
    backend, signature, model, golden, out = argv[:5]
    checkpoints = argv[5] if len(argv) > 5 else "-"
    stage = ""
    try:
        from tflite_hotswap import Runtime
        from tflite_hotswap.errors import CheckpointMismatchError
        sig = None if signature == "-" else signature
        with Runtime(model, backend=backend, isolate=False, signature=sig) as rt:
            contract = rt.info.contract
            if golden != "-":
                with np.load(golden) as npz:
                    inputs = {t.name: npz[f"inputs/{t.name}"] for t in contract.inputs}
            else:
                inputs = {t.name: _zeros(tuple(t.shape), t.dtype) for t in contract.inputs}
            arrays = _run(rt, inputs, "outputs")
            arrays["contract"] = _text(json.dumps(contract.to_dict()))
        if checkpoints != "-":
            from tflite_hotswap.training import Checkpoints, SignatureNames
            spec = json.loads(checkpoints)
            ckpts = Checkpoints(spec["directory"], new_base=spec["new_base"],
                                names=SignatureNames(**spec["names"]))
            stage = "restoring this device's checkpoint: "
            try:
                with Runtime(model, backend=backend, isolate=False, signature=sig, checkpoints=ckpts) as served:
                    restored = served.info.checkpoint
                    if restored is not None:
                        arrays.update(_run(served, inputs, "served"))
                        base = ckpts.get(restored).base_sha256
                        arrays["checkpoint"] = _text(json.dumps({"id": restored, "base": base}))
            except CheckpointMismatchError as e:
                np.savez(out, checkpoint_error=_text(str(e)),
                         checkpoint_differences=_text(json.dumps(list(e.differences))))
                return 0
        np.savez(out, **arrays)
        return 0
    except Exception as e:  # noqa: BLE001 -- whatever it is, reported to the parent, which raises it typed
        np.savez(out, error=_text(f"{stage}{type(e).__name__}: {e}"))
        return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
