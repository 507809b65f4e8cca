"""TFLite flatbuffer written from the IR: TFLite Micro and LiteRT bit-exact with the integer reference."""
from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as tfl

from deploy.lower import reference
from deploy.export.tflite import pack_int4, same_padding, to_tflite
from deploy.lower.irbuild import synthetic_graph
from deploy.export.tflm import run_litert, run_tflm, tflm_arena_bytes


@pytest.fixture(scope="module")
def synthetic():
    g = synthetic_graph(seed=0)
    x = np.random.default_rng(1).integers(-128, 128, (64, 8, 8, 3)).astype(np.int8)
    return g, x, reference.run(g, x), to_tflite(g)


def test_pack_int4_low_nibble_first():
    assert pack_int4(np.array([1, -1, -8, 7, 3], np.int8)).tolist() == [0xF1, 0x78, 0x03]


def test_same_padding():
    assert same_padding([32, 32], [3, 3], [2, 2]) == [0, 0, 1, 1]
    assert same_padding([32, 32], [3, 3], [1, 1]) == [1, 1, 1, 1]


def test_tflm_bit_exact_on_synthetic(synthetic):
    g, x, ref, model = synthetic
    np.testing.assert_array_equal(run_tflm(model, x), ref)


def test_litert_bit_exact_on_synthetic(synthetic):
    g, x, ref, model = synthetic
    np.testing.assert_array_equal(run_litert(model, x), ref)


def test_filters_int4_up_to_4_bits(synthetic):
    g, _, _, model = synthetic
    m = tfl.ModelT.InitFromObj(tfl.Model.GetRootAsModel(model, 0))
    types = {t.name.decode() if isinstance(t.name, bytes) else t.name: t.type for t in m.subgraphs[0].tensors}
    for op in g.ops:
        if "weights" in op.arrays:
            want = tfl.TensorType.INT4 if op.attrs["w_bits"] <= 4 else tfl.TensorType.INT8
            assert types[f"{op.name}/weights"] == want, op.name
    dw = next(t for t in m.subgraphs[0].tensors if (t.name.decode() if isinstance(t.name, bytes) else t.name) == "dw/weights")
    assert dw.quantization.quantizedDimension == 3


def test_tflm_arena_bytes(synthetic):
    g, x, _, model = synthetic
    arena = tflm_arena_bytes(model, x[0])
    biggest = max(int(np.prod(t.shape)) for t in g.tensors)
    assert arena >= biggest  # at least the largest activation lives in the arena
    assert tflm_arena_bytes(model, x[1]) == arena


def test_bad_model_is_one_line_error():
    from deploy.export.tflm import RuntimeFailure

    with pytest.raises(RuntimeFailure):
        run_litert(b"not a flatbuffer" * 4, np.zeros((1, 8, 8, 3), np.int8))
