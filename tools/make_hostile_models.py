"""Make the hostile .tflite fixtures (tests/models/hostile_*.tflite) from the valid ones.

Each is a valid model with one field edited, the way the hardening review
(issue 6) broke the backends: indices that name nothing, a cost bomb, ranks
beyond 16, a string input.  Deterministic: re-running writes the same bytes.
Run from anywhere, with a Python that has tflite_hotswap and flatbuffers
installed (``.venv-litert``):

    .venv-litert/bin/python tools/make_hostile_models.py
"""

from __future__ import annotations

import copy
import pathlib
import sys
from typing import Any, Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import tflite_tree as T

MODELS = pathlib.Path(__file__).resolve().parent.parent / "tests" / "models"
Tree = dict[str, Any]


def _sub(m: Tree) -> Tree:
    return m["Subgraphs"][0]


def op_output_minus1(m: Tree) -> None:
    """LiteRT: SIGSEGV in AllocateTensors."""
    _sub(m)["Operators"][0]["Outputs"] = T.Vec.of_ints(4, [-1])


def signature_missing_subgraph(m: Tree) -> None:
    """LiteRT: SIGSEGV in get_input_details."""
    m["SignatureDefs"][0]["SubgraphIndex"] = T.u32(5)


def signature_missing_tensor(m: Tree) -> None:
    m["SignatureDefs"][0]["Outputs"][0]["TensorIndex"] = T.u32(999)


def opcode_out_of_range(m: Tree) -> None:
    _sub(m)["Operators"][1]["OpcodeIndex"] = T.u32(99)


def tensor_buffer_out_of_range(m: Tree) -> None:
    _sub(m)["Tensors"][3]["Buffer"] = T.u32(999)


def subgraph_input_out_of_range(m: Tree) -> None:
    _sub(m)["Inputs"] = T.Vec.of_ints(4, [999])


def operator_input_below_minus1(m: Tree) -> None:
    _sub(m)["Operators"][0]["Inputs"] = T.Vec.of_ints(4, [0, 3, -2])


def while_missing_subgraph(m: Tree) -> None:
    """WHILE options naming subgraphs that do not exist (the model has one)."""
    op = _sub(m)["Operators"][1]
    union = next(k for k, v in T.UNIONS["BuiltinOptions"].items() if v == "WhileOptions")
    op["BuiltinOptionsType"] = bytes([union])
    op["BuiltinOptions"] = {"_type": "WhileOptions", "CondSubgraphIndex": T.i32(0),
                            "BodySubgraphIndex": T.i32(3)}


def shape_bomb(m: Tree) -> None:
    """One shape entry: a [1, 16] input becomes [2**24, 16], 1 GiB, and so every activation."""
    _sub(m)["Tensors"][0]["Shape"] = T.Vec.of_ints(4, [2**24, 16])


def _extra_input(m: Tree, name: bytes, shape: list[int], dtype: int) -> None:
    """Add an input the model's operators never read: valid for TFLite, seen by the binding."""
    sub = _sub(m)
    sub["Tensors"].append({"_type": "Tensor", "Name": name, "Shape": T.Vec.of_ints(4, shape),
                           "Type": bytes([dtype])})
    index = len(sub["Tensors"]) - 1
    sub["Inputs"] = T.Vec.of_ints(4, sub["Inputs"].ints() + [index])
    m["SignatureDefs"][0]["Inputs"].append({"_type": "TensorMap", "Name": name,
                                            "TensorIndex": T.u32(index)})


def _rank(rank: int) -> Callable[[Tree], None]:
    def edit(m: Tree) -> None:
        _extra_input(m, b"deep", [1] * (rank - 1) + [2], 0)  # FLOAT32
    edit.__doc__ = f"A second, unused float input of rank {rank} (the binding keeps 16 dimensions)."
    return edit


def string_input(m: Tree) -> None:
    """A second, unused string input: LiteRT's tensor() segfaults on it."""
    _extra_input(m, b"text", [1], 5)  # TensorType.STRING


def output_is_input(m: Tree) -> None:
    """A second output, "echo", that is the input tensor itself: valid, and lent input memory would alias it."""
    sg, sd = _sub(m), m["SignatureDefs"][0]
    inp = sg["Inputs"].ints()[0]
    sg["Outputs"] = T.Vec.of_ints(4, sg["Outputs"].ints() + [inp])
    echo = copy.deepcopy(sd["Outputs"][0])
    echo["Name"] = b"echo"
    echo["TensorIndex"] = T.u32(inp)
    sd["Outputs"] = sd["Outputs"] + [echo]


def many_references(m: Tree) -> Tree:
    """990,000 entries of Model.buffers pointing at one table: the verifier's cost bomb."""
    shared: Tree = {"_type": "Buffer"}
    m["Buffers"] = m["Buffers"] + [shared] * 990_000
    return m


def shared_operator(m: Tree) -> None:
    """4,000 operator entries pointing at one operator of 4,000 inputs: quadratic index checks."""
    op = _sub(m)["Operators"][0]
    op["Inputs"] = T.Vec.of_ints(4, [0] * 4000)
    _sub(m)["Operators"] = [op] * 4000


def shared_signature(m: Tree) -> None:
    """4,000 signatures pointing at one SignatureDef of 4,000 tensor maps: quadratic index checks."""
    sig = m["SignatureDefs"][0]
    sig["Inputs"] = [sig["Inputs"][0]] * 4000
    m["SignatureDefs"] = [sig] * 4000


_OFFSET, _SIZE = 0x1122334455667788, 0x0102030405060708  # placeholders, found in the bytes


def large_custom_options_wrap(m: Tree) -> Callable[[bytes], bytes]:
    """An operator's large custom options at offset 2**64 - 2**40: offset + size wraps to the
    model's length, which passes TFLite's own check, and the backends read 2**40 bytes back."""
    m["OperatorCodes"].append({"_type": "OperatorCode", "DeprecatedBuiltinCode": bytes([32]),
                               "CustomCode": b"Mfcc", "BuiltinCode": T.u32(32), "Version": T.u32(1)})
    op = _sub(m)["Operators"][0]
    op["OpcodeIndex"] = T.u32(len(m["OperatorCodes"]) - 1)
    for key in ("BuiltinOptionsType", "BuiltinOptions"):
        op.pop(key, None)
    op["LargeCustomOptionsOffset"] = _OFFSET.to_bytes(8, "little")
    op["LargeCustomOptionsSize"] = _SIZE.to_bytes(8, "little")

    def finish(data: bytes) -> bytes:
        out = bytearray(data)
        out += (1 << 40).to_bytes(8, "little") + bytes([(9 << 2) | 3, 8])  # a flexbuffer map's root
        offset = 2**64 - 2**40
        for placeholder, value in ((_OFFSET, offset), (_SIZE, (len(out) - offset) % 2**64)):
            at = out.index(placeholder.to_bytes(8, "little"))
            out[at:at + 8] = value.to_bytes(8, "little")
        return bytes(out)

    return finish


HOSTILE: dict[str, tuple[str, Callable[[Tree], Any]]] = {
    "hostile_op_output_minus1": ("version_1", op_output_minus1),
    "hostile_signature_missing_subgraph": ("version_1", signature_missing_subgraph),
    "hostile_signature_missing_tensor": ("version_1", signature_missing_tensor),
    "hostile_opcode_out_of_range": ("version_1", opcode_out_of_range),
    "hostile_tensor_buffer_out_of_range": ("version_1", tensor_buffer_out_of_range),
    "hostile_subgraph_input_out_of_range": ("version_1", subgraph_input_out_of_range),
    "hostile_operator_input_below_minus1": ("version_1", operator_input_below_minus1),
    "hostile_while_missing_subgraph": ("version_1", while_missing_subgraph),
    "hostile_shape_bomb": ("version_1", shape_bomb),
    "hostile_rank17": ("version_1", _rank(17)),
    "hostile_rank24": ("version_1", _rank(24)),
    "hostile_rank200": ("version_1", _rank(200)),
    "hostile_string_input": ("version_1", string_input),
    "hostile_many_references": ("tiny_f32", many_references),
    "hostile_output_is_input": ("tiny_f32", output_is_input),
    "hostile_shared_operator": ("tiny_f32", shared_operator),
    "hostile_shared_signature": ("version_1", shared_signature),
    "hostile_large_custom_options_wrap": ("tiny_f32", large_custom_options_wrap),
}


def main() -> None:
    for name, (source, edit) in HOSTILE.items():
        tree = T.decode((MODELS / f"{source}.tflite").read_bytes())
        tree = copy.deepcopy(tree)
        finish = edit(tree)  # may return a last edit of the bytes
        data = T.encode(tree)
        if callable(finish):
            data = finish(data)
        (MODELS / f"{name}.tflite").write_bytes(data)
        print(f"tests/models/{name}.tflite: {len(data)} bytes ({edit.__doc__ or edit.__name__})"
              .split("\n")[0])


if __name__ == "__main__":
    main()
