"""Validation of a candidate version before any swap, in a separate process.

A short-lived child process (``python -m tflite_hotswap.updater._validate_child``)
loads the model with the serving backend and runs it once -- on the published
golden sample's inputs if there is one, else on zeros -- and hands back its
I/O contract and outputs.  A model that crashes or hangs the backend takes only
that child down.  This process then checks:

1. it loaded and ran (no crash, no error, within ``timeout``);
2. every floating-point output is finite;
3. with a golden sample, every output is within ``tolerance`` (maximum
   absolute difference) of the expected one;
4. its I/O contract matches the serving one, unless a change is allowed.

The golden sample is checked on the model's own (base) weights: that is what
the publisher measured.  On a device that trains (the runtime has
``checkpoints=``), the child also restores the checkpoint the runtime would
restore into the new version (by the checkpoints' ``new_base`` policy) and
runs the same inputs again: those outputs, the ones the device would serve,
must be finite too.  ``new_base="refuse"`` makes that restore raise
:class:`CheckpointMismatchError`, which is raised here as it is: the version
is not bad, this device's policy keeps it out.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CheckpointMismatchError, IncompatibleModelError, MisuseError, ValidationError
from ..serving.contract import Contract, check_compatible

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GoldenSample:
    """Inputs and expected outputs (an ``.npz`` of ``inputs/<name>``, ``outputs/<name>``) and a tolerance."""

    data: bytes
    tolerance: float


@dataclass(frozen=True)
class ValidationReport:
    """What validation found for a version that passed.

    Attributes:
        version: the version validated.
        contract: its I/O contract.
        seconds: wall time of the whole validation (child start-up included).
        golden: whether a golden sample was checked.
        max_abs_error: the largest difference from the golden outputs (None without one).
        checkpoint: the id of the checkpoint whose weights were also run (the
            ones the device would serve); None: the version would serve its
            own weights (no checkpoints, or none restored by the policy).
    """

    version: str
    contract: Contract
    seconds: float
    golden: bool
    max_abs_error: float | None
    checkpoint: str | None = None


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def validate(model_path: str, *, version: str, backend: str, golden: GoldenSample | None = None,
             serving: Contract | None = None, allow_contract_change: bool = False,
             signature: str | None = None, timeout: float = 60.0,
             checkpoints: Any = None) -> ValidationReport:
    """Validate ``model_path`` in a child process; return a report if it passes.

    Args:
        model_path: the verified model file.
        version: its version name (for messages).
        backend: the backend name to load it with (the serving one).
        golden: the published golden sample, if any.
        serving: the serving model's contract to match.
        allow_contract_change: accept a contract that differs from ``serving``.
        signature: the signature the serving runtime runs.
        timeout: seconds the child may take.
        checkpoints: the serving runtime's
            :class:`~tflite_hotswap.training.Checkpoints`: the weights the
            version would serve with them are run too (see the module doc).

    Raises:
        ValidationError: for any failed check; the message says what was
            expected and what was found.
        CheckpointMismatchError: if the checkpoints' ``new_base="refuse"``
            policy keeps the version out (or its own checkpoint does not fit it).
        MisuseError: if ``checkpoints`` is not a Checkpoints.
    """
    started = time.perf_counter()
    ckpt_arg = "-" if checkpoints is None else _checkpoints_arg(checkpoints)
    with tempfile.TemporaryDirectory(prefix="tflite-hotswap-validate-") as tmp:
        golden_path = "-"
        if golden is not None:
            golden_path = os.path.join(tmp, "golden.npz")
            with open(golden_path, "wb") as f:
                f.write(golden.data)
        out_path = os.path.join(tmp, "out.npz")
        result = _run_child(model_path, version, backend, signature, golden_path, out_path, timeout, ckpt_arg)
    contract = Contract.from_dict(json.loads(bytes(result["contract"]).decode()))
    outputs = {k[len("outputs/"):]: v for k, v in result.items() if k.startswith("outputs/")}
    _check_finite(version, outputs, "")
    checkpoint = None
    if "checkpoint" in result:
        restored = json.loads(bytes(result["checkpoint"]).decode())
        checkpoint = restored["id"]
        served = {k[len("served/"):]: v for k, v in result.items() if k.startswith("served/")}
        _check_finite(version, served, f"with the weights this device would serve (checkpoint {checkpoint}, "
                                       f"trained from base {restored['base'][:12]}): ")
    max_error = None
    if golden is not None:
        max_error = _compare_golden(version, golden, outputs)
    if serving is not None and not allow_contract_change:
        try:
            check_compatible(serving, contract)
        except IncompatibleModelError as e:
            raise ValidationError(version, f"I/O contract: expected the serving one; {'; '.join(e.differences)}") \
                from None
    seconds = time.perf_counter() - started
    return ValidationReport(version, contract, seconds, golden is not None, max_error, checkpoint)


def _checkpoints_arg(checkpoints: Any) -> str:
    """What the child needs to resolve the same checkpoint: folder, policy, signature names (JSON)."""
    from ..training.checkpoints import Checkpoints  # training sits beside the updater: imported on use
    if not isinstance(checkpoints, Checkpoints):
        raise MisuseError(f"checkpoints: expected a Checkpoints, got {type(checkpoints).__name__}")
    return json.dumps({"directory": checkpoints.directory, "new_base": checkpoints.new_base,
                       "names": dataclasses.asdict(checkpoints.names)})


def _check_finite(version: str, outputs: dict[str, Any], context: str) -> None:
    """Raises: ValidationError: if a floating-point output has a NaN or an infinity."""
    for name, value in outputs.items():
        if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
            raise ValidationError(version, f"{context}output {name!r}: expected finite values, found "
                                           f"{int(np.size(value) - np.count_nonzero(np.isfinite(value)))} "
                                           f"NaN/inf of {np.size(value)}")


def _run_child(model_path: str, version: str, backend: str, signature: str | None, golden_path: str,
               out_path: str, timeout: float, checkpoints: str = "-") -> dict[str, Any]:
    root = _package_root()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [sys.executable, "-m", "tflite_hotswap.updater._validate_child", backend, signature or "-",
           model_path, golden_path, out_path, checkpoints]
    try:
        proc = subprocess.run(cmd, check=False, env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ValidationError(version, f"expected the model to load and run within {timeout:g} s in an "
                                       f"isolated process, it did not") from None
    except OSError as e:
        raise ValidationError(version, f"could not start the validation process ({e})") from e
    if proc.returncode < 0:
        raise ValidationError(version, f"{backend} crashed ({signal.Signals(-proc.returncode).name}) loading "
                                       f"or running the model in an isolated process; expected a valid model")
    try:
        with np.load(out_path) as npz:
            result = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise ValidationError(version, f"the validation process exited with status {proc.returncode} "
                                       f"without a result ({e}; {tail[0][:200]})") from None
    if "checkpoint_error" in result:
        raise CheckpointMismatchError(
            f"{version}: {bytes(result['checkpoint_error']).decode(errors='replace')}",
            json.loads(bytes(result["checkpoint_differences"]).decode()))
    if "error" in result:
        raise ValidationError(version, f"expected the model to load and run, it failed: "
                                       f"{bytes(result['error']).decode(errors='replace')}")
    return result


def _compare_golden(version: str, golden: GoldenSample, outputs: dict[str, Any]) -> float:
    try:
        with np.load(io.BytesIO(golden.data)) as npz:
            expected = {k[len("outputs/"):]: npz[k] for k in npz.files if k.startswith("outputs/")}
    except (OSError, ValueError) as e:
        raise ValidationError(version, f"golden sample: expected an .npz, could not read it ({e})") from None
    worst = 0.0
    for name, want in expected.items():
        if name not in outputs:
            raise ValidationError(version, f"golden sample: expected output {name!r}, the model has "
                                           f"{sorted(outputs)}")
        got = outputs[name]
        if got.shape != want.shape:
            raise ValidationError(version, f"golden output {name!r}: expected shape {want.shape}, found "
                                           f"{got.shape}")
        diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0.0
        if not diff <= golden.tolerance:
            raise ValidationError(version, f"golden output {name!r}: expected within {golden.tolerance:g} "
                                           f"of the published values, found a difference of {diff:g}")
        worst = max(worst, diff)
    return worst
