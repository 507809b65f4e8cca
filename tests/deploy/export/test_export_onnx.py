"""ONNX export: both styles valid for onnx.checker and run in ONNX Runtime; the integer style is bit-exact with
the integer reference, the QDQ style agrees within the limits of float rounding."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from deploy.lower import reference
from deploy.export.onnx import run_onnxruntime, to_onnx
from deploy.lower.ir import IRError
from deploy.lower.irbuild import IRBuilder, synthetic_graph
from deploy.lower.lower import lower
from tests.deploy.lower.test_lower import MEAN, STD, normalise, random_bn_qat


@pytest.fixture(scope="module")
def synthetic():
    g = synthetic_graph(seed=0)
    x = np.random.default_rng(2).integers(-128, 128, (200, 8, 8, 3)).astype(np.int8)
    return g, x, reference.run(g, x, keep=True)


def _weight_types(model: onnx.ModelProto) -> dict[str, int]:
    return {t.name[:-2]: t.data_type for t in model.graph.initializer if t.name.endswith(".w")}


@pytest.mark.parametrize("style", ["qdq", "integer"])
@pytest.mark.parametrize("opset, two_bit", [(21, TensorProto.INT4), (25, TensorProto.INT2)])
def test_filter_storage_types(synthetic, opset, two_bit, style):
    g, _, _ = synthetic
    types = _weight_types(to_onnx(g, opset, style))
    for op in g.ops:
        if "weights" in op.arrays:
            b = op.attrs["w_bits"]
            want = two_bit if b <= 2 else TensorProto.INT4 if b <= 4 else TensorProto.INT8
            assert types[op.name] == want, (op.name, b)


@pytest.mark.parametrize("opset", [21, 25])
def test_integer_style_is_bit_exact(synthetic, opset):
    g, x, vals = synthetic
    model = to_onnx(g, opset, "integer")
    assert not {n.op_type for n in model.graph.node} & {"Conv", "Gemm", "QuantizeLinear", "DequantizeLinear"}
    out = run_onnxruntime(model, x)
    assert out.dtype == np.int8
    np.testing.assert_array_equal(out, vals[g.outputs[0]])


@pytest.mark.parametrize("opset", [21, 25])
def test_integer_style_is_bit_exact_in_the_onnx_reference_evaluator(synthetic, opset):
    """A second ONNX implementation (onnx.reference, numpy) gives the same codes: the integer graph's meaning
    does not hang on ONNX Runtime's choices (its divisions are exact, its remainders' signs specified)."""
    from onnx.reference import ReferenceEvaluator

    g, x, vals = synthetic
    for graph, inputs, want in ((g, x[:20], vals[g.outputs[0]][:20]),
                                (_edge_graph(), np.random.default_rng(4).integers(-128, 128, (20, 6, 6, 4)).astype(np.int8),
                                 None)):
        out = ReferenceEvaluator(to_onnx(graph, opset, "integer")).run(None, {"input": inputs})[0]
        np.testing.assert_array_equal(out, reference.run(graph, inputs) if want is None else want)


def _edge_graph(seed: int = 0):
    """Ops the synthetic graph does not reach: padded strided avg/max pools, a flatten of a 3×3×C map (NHWC
    order matters), 1-bit weights, a requantize with a positive shift (multiplier > 1), a clamped ADD."""
    rng = np.random.default_rng(seed)
    b = IRBuilder()
    x = b.tensor("input", [1, 6, 6, 4], 1 / 255, 8, signed=True, zero_point=-128)
    c = b.tensor("conv", [1, 6, 6, 4], 0.05, 8, signed=False)
    w = rng.choice(np.array([-1, 1], np.int8), (4, 3, 3, 4))
    b.weighted("conv2d", "conv", x, c, w, rng.uniform(0.01, 0.03, 4), rng.integers(-200, 200, 4), 1, padding=(1, 1, 1, 1))
    r = b.tensor("requant", [1, 6, 6, 4], 0.02, 8, signed=False)  # 0.05 / 0.02 > 1: left shift
    b.requantize("requant", c, r)
    a = b.like("avg", r, [1, 3, 3, 4])
    b.pool("avg_pool", "avg", r, a, (3, 3), (2, 2), (1, 1, 1, 1))
    m = b.like("max", r, [1, 3, 3, 4])
    b.pool("max_pool", "max", r, m, (3, 3), (2, 2), (1, 1, 1, 1))
    s = b.tensor("add", [1, 3, 3, 4], 0.03, 8, signed=False)
    b.add("add", a, m, s, act_max=-128 + 100)
    f = b.like("flatten", s, [1, 36])
    b.reshape("flatten", s, f)
    o = b.tensor("fc", [1, 5], 0.02, 8, signed=True)
    b.weighted("fully_connected", "fc", f, o, rng.integers(-7, 8, (5, 36)).astype(np.int8), rng.uniform(0.005, 0.02, 5),
               rng.integers(-500, 500, 5), 4)
    return b.finish([x], [o])


@pytest.mark.parametrize("style", ["qdq", "integer"])
def test_edge_ops(style):
    g = _edge_graph()
    x = np.random.default_rng(4).integers(-128, 128, (100, 6, 6, 4)).astype(np.int8)
    vals = reference.run(g, x, keep=True)
    assert g.ops[1].attrs["shift"] > 0
    ref = vals[g.outputs[0]]
    out = run_onnxruntime(to_onnx(g, 21, style), x)
    if style == "integer":
        np.testing.assert_array_equal(out, ref)
    else:  # float rounding differs, the flatten order does not (NCHW order: ~45 % within 1 LSB)
        assert (np.abs(out.astype(int) - ref) <= 1).mean() >= 0.9


def test_qdq_style_agrees_with_reference(synthetic):
    g, x, vals = synthetic
    out = run_onnxruntime(to_onnx(g, 21, "qdq"), x)
    ref = vals[g.outputs[0]]
    assert out.dtype == np.int8 and out.shape == ref.shape
    # float QDQ vs fixed point: ties and 1-LSB flips at 3-5-bit activations propagate, so the logits of
    # this deliberately harsh graph can differ by several LSB; the winning class must not change
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.97
    assert (np.abs(out.astype(int) - ref) <= 1).mean() >= 0.7


def test_qdq_first_layer_within_one_lsb(synthetic):
    """A single requantising layer: ≥ 99 % of outputs within 1 LSB (the only difference is rounding)."""
    g, x, vals = synthetic
    first = g.ops[0]
    model = to_onnx(g, 21, "qdq")
    clip = f"{g.tensors[first.outputs[0]].name}.clip"
    model.graph.output.append(onnx.helper.make_tensor_value_info(clip, TensorProto.INT8, None))
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    codes = sess.run([clip], {"input": x})[0].transpose(0, 2, 3, 1)
    d = np.abs(codes.astype(int) - vals[first.outputs[0]])
    assert (d <= 1).mean() >= 0.99 and (d == 0).mean() >= 0.99


@pytest.mark.parametrize("name", ["resnet8", "mbv2"])
def test_zoo_models_integer_style_bit_exact(name):
    """Lowered mixed-policy (2/3/4/5/8-bit) resnet8 and mbv2: ONNX Runtime on model.int.onnx = the reference."""
    q = random_bn_qat(name)
    g = lower(q, MEAN, STD, normalise(np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3)).astype(np.uint8)))
    assert {op.attrs.get("w_bits") for op in g.ops} >= {2, 3, 4, 5, 8}
    x = reference.to_int8_input(np.random.default_rng(9).integers(0, 256, (32, 32, 32, 3)).astype(np.uint8))
    np.testing.assert_array_equal(run_onnxruntime(to_onnx(g, 21, "integer"), x), reference.run(g, x))


def test_bad_style_and_old_opset_are_rejected(synthetic):
    with pytest.raises(IRError, match="opset 13 is too old"):
        to_onnx(synthetic[0], 13)
    with pytest.raises(IRError, match="choose 21..25"):
        to_onnx(synthetic[0], 30)
    with pytest.raises(IRError, match="unknown ONNX style"):
        to_onnx(synthetic[0], 21, "float")
