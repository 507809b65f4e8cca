"""Damaged and unsupported variants of the MLPerf Tiny IC model, shared by test_import_tflite.py and the
bad-input catalogue (test_bad_input.py). Rewritten with LiteRT's schema object API."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import flatbuffers
from ai_edge_litert import schema_py_generated as tfl

MODELS = Path(__file__).resolve().parent.parent.parent / "shared" / "models" / "mlperf-tiny"
IC = MODELS / "ic_resnet8_int8.tflite"


def mutated(data: bytes, edit: Callable[["tfl.ModelT"], None]) -> bytes:
    """`data` parsed, changed by `edit`, serialised again."""
    m = tfl.ModelT.InitFromPackedBuf(bytearray(data), 0)
    edit(m)
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def to_float(m: "tfl.ModelT") -> None:
    """Make the input tensor FLOAT32 (what a float model's input is)."""
    m.subgraphs[0].tensors[m.subgraphs[0].inputs[0]].type = tfl.TensorType.FLOAT32


def unsupported_op(m: "tfl.ModelT") -> None:
    """Turn operator 12 (the IC model's AVERAGE_POOL_2D) into a MAX_POOL_2D, which import does not take."""
    oc = m.operatorCodes[m.subgraphs[0].operators[12].opcodeIndex]
    oc.builtinCode = oc.deprecatedBuiltinCode = tfl.BuiltinOperator.MAX_POOL_2D


BAD_TFLITE: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda good: good[:1000],
    "wrong-magic": lambda good: good[:4] + b"XXXX" + good[8:],
    "float": lambda good: mutated(good, to_float),
    "unsupported-op": lambda good: mutated(good, unsupported_op),
}
