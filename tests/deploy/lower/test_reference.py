"""The integer reference against independent naive loops, TFLite's pooling rules and the IR files."""
from __future__ import annotations

import numpy as np
import pytest

from deploy.lower import reference
from deploy.lower.fixedpoint import multiply_by_quantized_multiplier
from deploy.lower.ir import Graph, IRError
from deploy.lower.irbuild import IRBuilder, synthetic_graph


def _naive_conv(x, w, bias, zp, stride, pad, depthwise):
    n, h, wd, c = x.shape
    t, l, b, r = pad
    kh, kw = w.shape[1:3]
    oh, ow = (h + t + b - kh) // stride + 1, (wd + l + r - kw) // stride + 1
    cout = w.shape[3] if depthwise else w.shape[0]
    acc = np.zeros((n, oh, ow, cout), np.int64)
    for i in range(oh):
        for j in range(ow):
            for di in range(kh):
                for dj in range(kw):
                    yy, xx = i * stride + di - t, j * stride + dj - l
                    if not (0 <= yy < h and 0 <= xx < wd):
                        continue  # padding contributes zero
                    v = x[:, yy, xx, :].astype(np.int64) - zp
                    if depthwise:
                        acc[:, i, j, :] += v * w[0, di, dj, :]
                    else:
                        acc[:, i, j, :] += v @ w[:, di, dj, :].T.astype(np.int64)
    return acc + bias


@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("stride, pad", [(1, (1, 1, 1, 1)), (2, (1, 1, 1, 1)), (2, (0, 0, 1, 1))])
def test_conv_matches_naive_loops(depthwise, stride, pad):
    rng = np.random.default_rng(3)
    c = 4
    b = IRBuilder()
    x = b.tensor("x", [1, 7, 7, c], 0.05, 8, signed=False)
    h = (7 + pad[0] + pad[2] - 3) // stride + 1
    y = b.tensor("y", [1, h, h, c if depthwise else 5], 0.1, 5, signed=True)
    w = rng.integers(-7, 8, (1, 3, 3, c) if depthwise else (5, 3, 3, c)).astype(np.int8)
    n_out = c if depthwise else 5
    bias = rng.integers(-300, 300, n_out).astype(np.int32)
    op = b.weighted("depthwise_conv2d" if depthwise else "conv2d", "op", x, y, w, rng.uniform(0.01, 0.05, n_out),
                    bias, 4, (stride, stride), pad)
    g = b.finish([x], [y])
    xs = rng.integers(-128, 128, (3, 7, 7, c)).astype(np.int8)
    acc = _naive_conv(xs, w, bias, -128, stride, pad, depthwise)
    expected = multiply_by_quantized_multiplier(acc, g.const(op, "multiplier").astype(np.int64),
                                                g.const(op, "shift").astype(np.int64))
    expected = np.clip(expected + g.tensors[y].zero_point, op.attrs["act_min"], op.attrs["act_max"])
    assert op.attrs["act_min"] == -16 and op.attrs["act_max"] == 15  # signed 5-bit clamp
    np.testing.assert_array_equal(reference.run(g, xs), expected)


def test_avg_pool_rounds_half_away_from_zero_and_ignores_padding():
    b = IRBuilder()
    x = b.tensor("x", [1, 2, 2, 1], 0.1, 8, signed=True)
    y = b.like("y", x, [1, 1, 1, 1])
    b.pool("avg_pool", "gap", x, y, (2, 2), (1, 1))
    g = b.finish([x], [y])
    xs = np.array([[1, 2, 0, 0], [-1, -2, 0, 0], [1, 1, 1, 2], [3, 3, 3, 4]], np.int8).reshape(4, 2, 2, 1)
    # sums 3, −3, 5, 13 over 4: 0.75→1, −0.75→−1, 1.25→1, 3.25→3
    assert reference.run(g, xs).ravel().tolist() == [1, -1, 1, 3]
    b = IRBuilder()
    x = b.tensor("x", [1, 2, 2, 1], 0.1, 8, signed=True)
    y = b.like("y", x, [1, 2, 2, 1])
    b.pool("avg_pool", "p", x, y, (2, 2), (1, 1), (0, 0, 1, 1))
    g = b.finish([x], [y])
    xs = np.array([1, 2, -3, -4], np.int8).reshape(1, 2, 2, 1)
    # windows: {1,2,−3,−4}/4 = −1; {2,−4}/2 = −1; {−3,−4}/2 = −3.5 → −4; {−4} = −4
    assert reference.run(g, xs).ravel().tolist() == [-1, -1, -4, -4]


def test_max_pool_and_clamps():
    b = IRBuilder()
    x = b.tensor("x", [1, 2, 2, 1], 0.1, 8, signed=False)
    y = b.tensor("y", [1, 2, 2, 1], 0.1, 3, signed=False)
    b.requantize("rq", x, y)  # same scale: pure clamp to 3 bits (−128 … −121)
    z = b.like("z", y, [1, 1, 1, 1])
    b.pool("max_pool", "mp", y, z, (2, 2), (2, 2))
    g = b.finish([x], [z])
    xs = np.array([[-128, -127, -126, -125], [-128, 0, 5, -128]], np.int8).reshape(2, 2, 2, 1)
    assert reference.run(g, xs).ravel().tolist() == [-125, -121]


def test_synthetic_graph_save_load_roundtrip(tmp_path):
    g = synthetic_graph(seed=4)
    x = np.random.default_rng(0).integers(-128, 128, (16, 8, 8, 3)).astype(np.int8)
    out = reference.run(g, x)
    g.save(tmp_path / "model")
    g2 = Graph.load(tmp_path / "model")
    np.testing.assert_array_equal(reference.run(g2, x), out)
    assert len(np.unique(out)) > 20  # the synthetic graph is calibrated: outputs are not saturated/constant


def test_bad_inputs_are_one_line_errors(tmp_path):
    g = synthetic_graph(seed=1)
    with pytest.raises(IRError, match="int8"):
        reference.run(g, np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(IRError, match="shape"):
        reference.run(g, np.zeros((1, 9, 8, 3), np.int8))
    with pytest.raises(IRError, match="missing"):
        Graph.load(tmp_path / "nothing")
    (tmp_path / "bad.ir.json").write_text("{not json")
    (tmp_path / "bad.ir.npz").write_bytes(b"")
    with pytest.raises(IRError, match="unreadable"):
        Graph.load(tmp_path / "bad")


def test_to_int8_input():
    assert reference.to_int8_input(np.array([0, 128, 255], np.uint8)).tolist() == [-128, 0, 127]
