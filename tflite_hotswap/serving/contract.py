"""A model's I/O contract, and whether one model can replace another.

The contract is what calling code depends on: input and output names, dtypes,
shapes (``-1`` for a dimension of any size) and quantization parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import IncompatibleModelError, MisuseError


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model.

    Attributes:
        name: the signature's name for it (or the tensor name without a signature).
        dtype: numpy dtype name, e.g. ``"float32"``.
        shape: dimensions; ``-1`` where any size is accepted.
        scales: quantization scales (empty when not quantized).
        zero_points: quantization zero points (empty when not quantized).
        index: the tensor's index in its subgraph (not part of the contract).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    scales: tuple[float, ...] = ()
    zero_points: tuple[int, ...] = ()
    index: int = -1

    @property
    def quantized(self) -> bool:
        return bool(self.scales)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["index"]
        d["shape"] = list(self.shape)
        d["scales"] = list(self.scales)
        d["zero_points"] = list(self.zero_points)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        """Raises: MisuseError: if a field is missing or of the wrong type."""
        try:
            return cls(str(d["name"]), str(d["dtype"]), tuple(int(x) for x in d["shape"]),
                       tuple(float(x) for x in d.get("scales", ())),
                       tuple(int(x) for x in d.get("zero_points", ())))
        except (KeyError, TypeError, ValueError) as e:
            raise MisuseError(f"tensor spec: expected name, dtype and shape, got {d!r}") from e


@dataclass(frozen=True)
class Contract:
    """Inputs and outputs of one signature of a model."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Contract:
        """Raises: MisuseError: if the dict is not a contract."""
        try:
            return cls(tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
                       tuple(TensorSpec.from_dict(t) for t in d["outputs"]))
        except (KeyError, TypeError) as e:
            raise MisuseError(f"contract: expected 'inputs' and 'outputs' lists, got {d!r}") from e

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise MisuseError(f"input name: expected one of {[t.name for t in self.inputs]}, got {name!r}")


def _spec(name: str, details: dict[str, Any]) -> TensorSpec:
    q = details.get("quantization_parameters") or {}
    scales = tuple(float(s) for s in np.asarray(q.get("scales", ())).ravel())
    zero_points = tuple(int(z) for z in np.asarray(q.get("zero_points", ())).ravel())
    shape = details.get("shape_signature")
    if shape is None or len(shape) == 0:
        shape = details["shape"]
    return TensorSpec(name, np.dtype(details["dtype"]).name, tuple(int(x) for x in shape),
                      scales, zero_points, int(details["index"]))


def signature_of(signatures: dict[str, Any], signature: str | None) -> str | None:
    """Resolve which signature to use among ``signatures`` (the model's signature defs).

    ``None`` picks the model's only signature, or none for a model without
    signatures (its primary subgraph's inputs and outputs are used).

    Raises:
        MisuseError: if the signature does not exist, or ``None`` is ambiguous.
    """
    names = list(signatures)
    if signature is None:
        if len(names) > 1:
            raise MisuseError(f"signature: the model has signatures {names}; expected one of them, got None")
        return names[0] if names else None
    if signature not in names:
        raise MisuseError(f"signature: expected one of {names}, got {signature!r}")
    return signature


def contract_of(interpreter: Any, signatures: dict[str, Any], signature: str | None,
                subgraph: int) -> Contract:
    """Read the contract of ``signature`` (already resolved by :func:`signature_of`).

    ``signatures`` is ``interpreter._get_full_signature_list()``, read once per
    model: the backends leak a little memory on every read.
    """
    if signature is None:
        inputs = [_spec(d["name"], d) for d in interpreter.get_input_details()]
        outputs = [_spec(d["name"], d) for d in interpreter.get_output_details()]
    else:
        defs = signatures[signature]
        inputs = [_spec(n, interpreter._get_tensor_details(i, subgraph)) for n, i in defs["inputs"].items()]
        outputs = [_spec(n, interpreter._get_tensor_details(i, subgraph))
                   for n, i in defs["outputs"].items()]
    return Contract(tuple(inputs), tuple(outputs))


def differences(serving: Contract, candidate: Contract) -> list[str]:
    """Every way in which ``candidate`` cannot stand in for ``serving``.

    A candidate may accept more than the serving model (a fixed dimension
    becoming ``-1``) but not less, and must produce the same outputs.
    """
    found: list[str] = []
    for kind, old_list, new_list in (("input", serving.inputs, candidate.inputs),
                                     ("output", serving.outputs, candidate.outputs)):
        old = {t.name: t for t in old_list}
        new = {t.name: t for t in new_list}
        for name in sorted(old.keys() - new.keys()):
            found.append(f"{kind} {name!r}: expected it, the new model has none")
        for name in sorted(new.keys() - old.keys()):
            found.append(f"{kind} {name!r}: new in the new model (serving model has {sorted(old)})")
        for name in sorted(old.keys() & new.keys()):
            a, b = old[name], new[name]
            if a.dtype != b.dtype:
                found.append(f"{kind} {name!r}: expected dtype {a.dtype}, got {b.dtype}")
            if not _shape_fits(a.shape, b.shape, widen_ok=(kind == "input")):
                found.append(f"{kind} {name!r}: expected shape {_fmt(a.shape)}, got {_fmt(b.shape)}")
            if (a.scales, a.zero_points) != (b.scales, b.zero_points):
                found.append(f"{kind} {name!r}: expected quantization scales={a.scales} "
                             f"zero_points={a.zero_points}, got scales={b.scales} "
                             f"zero_points={b.zero_points}")
    return found


def check_compatible(serving: Contract, candidate: Contract) -> None:
    """Raises: IncompatibleModelError: listing every difference, if there is any."""
    found = differences(serving, candidate)
    if found:
        raise IncompatibleModelError(
            "the new model's I/O contract differs from the serving model's: " + "; ".join(found)
            + " (pass allow_contract_change=True to swap anyway)", found)


def _shape_fits(old: tuple[int, ...], new: tuple[int, ...], widen_ok: bool) -> bool:
    if len(old) != len(new):
        return False
    # -1 in the old contract means callers may send any size: the new model
    # must accept any size too.  A fixed input may become -1 (it accepts more).
    return all(a == b or (widen_ok and b == -1) for a, b in zip(old, new))


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join("?" if d == -1 else str(d) for d in shape) + ")"
