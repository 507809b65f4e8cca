"""The integer reference: a pure-numpy executor of the IR with TFLite's int8 kernel semantics.

It is the truth every backend (LiteRT, TFLite Micro, ONNX Runtime, the C runtime) is compared with.
Batched over images; accumulators are exact integers (products summed by BLAS in float32 when every partial sum
stays below 2^24, else float64), requantisation goes through :mod:`deploy.lower.fixedpoint`.

Semantics (TFLite reference_integer_ops): conv/depthwise/FC accumulate Σ w·(x − zp_in) with padded
positions contributing zero, add the int32 bias, requantise per channel, add zp_out, clamp to
[act_min, act_max]; AVG_POOL averages codes over the in-bounds window, rounding halves away from zero;
MAX_POOL takes the max of in-bounds codes; ADD and REQUANTIZE are TFLite's int8 ADD and QUANTIZE;
SOFTMAX is TFLite's int8 softmax (deploy/lower/softmax_int8.py).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from deploy.lower.fixedpoint import add_int8, multiply_by_quantized_multiplier, requantize_int8
from deploy.lower.ir import Graph, IRError, Op
from deploy.lower.softmax_int8 import softmax_int8


def _exact_dtype(w: np.ndarray, fan_in: int) -> type:
    """float32 when every partial sum of Σ w·(x − zp) stays below 2^24 (exact), else float64."""
    bound = fan_in * 255 * int(np.abs(w.astype(np.int64)).max(initial=0))
    return np.float32 if bound < (1 << 24) else np.float64


def _pad_shifted(x: np.ndarray, zp: int, pad: list[int], dtype: type) -> np.ndarray:
    """(x − zp), zero-padded [top, left, bottom, right] (padding contributes zero)."""
    t, l, b, r = pad
    return np.pad(x.astype(dtype) - dtype(zp), ((0, 0), (t, b), (l, r), (0, 0)))


def _out_size(size: int, k: int, stride: int, p0: int, p1: int) -> int:
    return (size + p0 + p1 - k) // stride + 1


def _requant(acc: np.ndarray, g: Graph, op: Op) -> np.ndarray:
    out_t = g.tensors[op.outputs[0]]
    y = multiply_by_quantized_multiplier(acc, g.const(op, "multiplier").astype(np.int64),
                                         g.const(op, "shift").astype(np.int64)) + out_t.zero_point
    return np.clip(y, op.attrs["act_min"], op.attrs["act_max"]).astype(np.int8)


def accumulate(g: Graph, op: Op, x: np.ndarray) -> np.ndarray:
    """The int32 accumulator (Σ w·(x − zp_in) + bias) of a conv2d / depthwise_conv2d / fully_connected op."""
    if op.kind == "fully_connected":
        zp = g.tensors[op.inputs[0]].zero_point
        acc = (x.reshape(x.shape[0], -1).astype(np.float64) - zp) @ g.const(op, "weights").astype(np.float64).T
    else:
        acc = _conv_acc(g, op, x, op.kind == "depthwise_conv2d")
    return np.rint(acc).astype(np.int64) + g.const(op, "bias").astype(np.int64)


def _conv_acc(g: Graph, op: Op, x: np.ndarray, depthwise: bool) -> np.ndarray:
    zp = g.tensors[op.inputs[0]].zero_point
    w = g.const(op, "weights")  # OHWI or 1HWC
    dtype = _exact_dtype(w, w[0].size if not depthwise else w.shape[1] * w.shape[2])
    w = w.astype(dtype)
    _, kh, kw, _ = w.shape
    sh, sw = op.attrs["stride"]
    pad = op.attrs["padding"]
    xp = _pad_shifted(x, zp, pad, dtype)
    n, h, wd, _ = x.shape
    oh, ow = _out_size(h, kh, sh, pad[0], pad[2]), _out_size(wd, kw, sw, pad[1], pad[3])
    cout = w.shape[3] if depthwise else w.shape[0]
    acc = np.zeros((n, oh, ow, cout), dtype)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
            if depthwise:
                acc += patch * w[0, i, j, :]
            else:
                acc += patch @ w[:, i, j, :].T
    return acc


def _weighted(g: Graph, op: Op, x: np.ndarray) -> np.ndarray:
    return _requant(accumulate(g, op, x), g, op)


def in_bounds_count(op: Op, h: int, w: int) -> np.ndarray:
    """(OH, OW): how many taps of each pooling window lie inside the h×w input (AVG_POOL's divisor)."""
    (kh, kw), (sh, sw), (t, l, b, r) = op.attrs["kernel"], op.attrs["stride"], op.attrs["padding"]

    def along(n: int, k: int, s: int, p0: int, p1: int) -> np.ndarray:
        start = np.arange(_out_size(n, k, s, p0, p1)) * s - p0
        return np.clip(start + k, 0, n) - np.clip(start, 0, n)

    return np.outer(along(h, kh, sh, t, b), along(w, kw, sw, l, r)).astype(np.int64)


def _pool(g: Graph, op: Op, x: np.ndarray, kind: str) -> np.ndarray:
    kh, kw = op.attrs["kernel"]
    sh, sw = op.attrs["stride"]
    t, l, b, r = op.attrs["padding"]
    n, h, w, c = x.shape
    oh, ow = _out_size(h, kh, sh, t, b), _out_size(w, kw, sw, l, r)
    if kind == "avg":
        xp = np.pad(x.astype(np.int64), ((0, 0), (t, b), (l, r), (0, 0)))
        acc = np.zeros((n, oh, ow, c), np.int64)
    else:
        xp = np.pad(x.astype(np.int64), ((0, 0), (t, b), (l, r), (0, 0)), constant_values=-(1 << 40))
        acc = np.full((n, oh, ow, c), -(1 << 40), np.int64)
    for i in range(kh):
        for j in range(kw):
            sl = (slice(None), slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw), slice(None))
            if kind == "avg":
                acc += xp[sl]
            else:
                acc = np.maximum(acc, xp[sl])
    if kind == "avg":
        count = in_bounds_count(op, h, w)[None, :, :, None]
        half = count // 2
        # C division truncates toward zero; (acc ± count/2) / count rounds halves away from zero
        num = np.where(acc > 0, acc + half, acc - half)
        acc = np.sign(num) * (np.abs(num) // count)
    return np.clip(acc, op.attrs["act_min"], op.attrs["act_max"]).astype(np.int8)


def _add(g: Graph, op: Op, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    t1, t2, to = (g.tensors[i] for i in (*op.inputs, op.outputs[0]))
    if a.shape != b.shape:
        raise IRError(f"op '{op.name}': ADD inputs have shapes {a.shape} and {b.shape}; broadcasting is not supported")
    return add_int8(a, b, t1.zero_point, t2.zero_point, to.zero_point, op.attrs, op.attrs["act_min"], op.attrs["act_max"])


def _requantize(g: Graph, op: Op, x: np.ndarray) -> np.ndarray:
    ti, to = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
    return requantize_int8(x, ti.zero_point, to.zero_point, op.attrs["multiplier"], op.attrs["shift"],
                           op.attrs.get("act_min", -128), op.attrs.get("act_max", 127))


def _softmax(g: Graph, op: Op, x: np.ndarray) -> np.ndarray:
    a = op.attrs
    return softmax_int8(x, a["input_multiplier"], a["input_left_shift"], a["diff_min"])


def _reshape(g: Graph, op: Op, x: np.ndarray) -> np.ndarray:
    shape = g.tensors[op.outputs[0]].shape
    return x.reshape((x.shape[0], *shape[1:]))


KERNELS: dict[str, Callable[..., np.ndarray]] = {
    "conv2d": _weighted,
    "depthwise_conv2d": _weighted,
    "fully_connected": _weighted,
    "add": _add,
    "avg_pool": lambda g, op, x: _pool(g, op, x, "avg"),
    "max_pool": lambda g, op, x: _pool(g, op, x, "max"),
    "reshape": _reshape,
    "requantize": _requantize,
    "softmax": _softmax,
}


def run(g: Graph, x: np.ndarray, keep: bool = False) -> np.ndarray | dict[int, np.ndarray]:
    """Execute the IR on int8 inputs x of shape (N, *input_shape[1:]); returns the int8 output codes
    (N, ...) — or, with keep=True, every tensor's codes by tensor index."""
    x = np.asarray(x)
    if x.dtype != np.int8:
        raise IRError(f"reference input must be int8 codes (got {x.dtype}); convert uint8 pixels with to_int8_input()")
    in_spec = g.tensors[g.inputs[0]]
    if tuple(x.shape[1:]) != tuple(in_spec.shape[1:]):
        raise IRError(f"reference input shape {x.shape[1:]} does not match the model input {tuple(in_spec.shape[1:])}")
    values: dict[int, np.ndarray] = {g.inputs[0]: x}
    for op in g.ops:
        kernel = KERNELS.get(op.kind)
        if kernel is None:
            raise IRError(f"op '{op.name}' has unknown kind '{op.kind}' (known: {', '.join(KERNELS)})")
        values[op.outputs[0]] = kernel(g, op, *(values[i] for i in op.inputs))
    return values if keep else values[g.outputs[0]]


def to_int8_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels (as an MLPerf Tiny board receives them) → the IR's int8 input codes (pixel − 128)."""
    return (np.asarray(pixels, np.int16) - 128).astype(np.int8)


def dequantize(g: Graph, codes: np.ndarray, tensor: int | None = None) -> np.ndarray:
    """Real values of a tensor's int8 codes (default: the model output)."""
    t = g.tensors[g.outputs[0] if tensor is None else tensor]
    return (codes.astype(np.float64) - t.zero_point) * t.scale
