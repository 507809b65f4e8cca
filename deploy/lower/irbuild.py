"""Building IR graphs: tensors with their bit-width clamps, ops with TFLite requantisation parameters.

:class:`IRBuilder` is the one place where multipliers/shifts are derived from float scales (through
:mod:`deploy.lower.fixedpoint`, exactly as TFLite's Prepare step derives them), so an IR built here runs
bit-exactly in TFLite / TFLite Micro. :func:`synthetic_graph` builds a small random graph
(conv → depthwise → add → avg pool → reshape → FC, 2…8-bit weights, sub-8-bit activations) that
checks every backend's arithmetic without any trained model.
"""
from __future__ import annotations

import numpy as np

from deploy.lower.fixedpoint import add_params, conv_multiplier, requantize_multiplier
from deploy.lower.ir import Graph, Op, TensorSpec

def f32(x: float) -> float:
    """A scale as TFLite stores it (float32), returned as a Python float."""
    return float(np.float32(x))


def act_range(bits: int, signed: bool) -> tuple[int, int, int]:
    """(zero_point, qmin, qmax) of an a-bit activation in an int8 container.

    unsigned (after ReLU): zp = −128, codes −128 … −128 + 2^a − 1 (real 0 … (2^a − 1)·scale);
    signed: zp = 0, codes −2^(a−1) … 2^(a−1) − 1.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"activation bits must be 1..8, got {bits}")
    if signed:
        return 0, -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return -128, -128, -128 + (1 << bits) - 1


def weight_code_range(bits: int) -> tuple[int, int]:
    """Symmetric weight codes at `bits`: ±(2^(b−1) − 1) for b ≥ 2, {−1, +1} for b = 1."""
    if bits == 1:
        return -1, 1
    return -((1 << (bits - 1)) - 1), (1 << (bits - 1)) - 1


class IRBuilder:
    """Appends tensors and ops to a graph, computing every integer parameter from float scales."""

    def __init__(self) -> None:
        self.g = Graph([], [], [], [], {}, {})

    # tensors -----------------------------------------------------------------------------------
    def tensor(self, name: str, shape: list[int], scale: float, bits: int = 8, signed: bool = True,
               zero_point: int | None = None) -> int:
        """Add an int8 activation tensor (a-bit clamp from `bits`/`signed`); returns its index."""
        zp, qmin, qmax = act_range(bits, signed)
        if zero_point is not None:
            zp = zero_point
        self.g.tensors.append(TensorSpec(name, [int(s) for s in shape], f32(scale), int(zp), int(bits), qmin, qmax))
        return len(self.g.tensors) - 1

    def like(self, name: str, src: int, shape: list[int] | None = None) -> int:
        """A tensor with `src`'s quantisation (pools, reshape)."""
        t = self.g.tensors[src]
        self.g.tensors.append(TensorSpec(name, list(shape or t.shape), t.scale, t.zero_point, t.bits, t.qmin, t.qmax))
        return len(self.g.tensors) - 1

    def _const(self, key: str, value: np.ndarray) -> str:
        self.g.consts[key] = value
        return key

    def _clamp(self, out: int, act_min: int | None, act_max: int | None) -> tuple[int, int]:
        t = self.g.tensors[out]
        lo = t.qmin if act_min is None else max(t.qmin, act_min)
        hi = t.qmax if act_max is None else min(t.qmax, act_max)
        return int(lo), int(hi)

    # ops ---------------------------------------------------------------------------------------
    def _op(self, kind: str, name: str, inputs: list[int], outputs: list[int], attrs: dict,
            arrays: dict[str, np.ndarray] | None = None) -> Op:
        """Append an op and its arrays (keys "<name>.<array>")."""
        keys = {k: self._const(f"{name}.{k}", v) for k, v in (arrays or {}).items()}
        op = Op(kind, name, list(inputs), list(outputs), attrs, keys)
        self.g.ops.append(op)
        return op

    def weighted(self, kind: str, name: str, x: int, out: int, weights: np.ndarray, w_scale: np.ndarray,
                 bias: np.ndarray, w_bits: int, stride: tuple[int, int] = (1, 1),
                 padding: tuple[int, int, int, int] = (0, 0, 0, 0), act_min: int | None = None,
                 act_max: int | None = None) -> Op:
        """conv2d (OHWI), depthwise_conv2d (1HWC) or fully_connected (OI) with int8 codes, float32
        per-channel weight scales and an int32 bias (scale input_scale·w_scale)."""
        lo, hi = weight_code_range(w_bits)
        if weights.min() < lo or weights.max() > hi:
            raise ValueError(f"op '{name}': weight codes outside the {w_bits}-bit range [{lo}, {hi}]")
        w_scale = np.asarray(w_scale, np.float32)
        s_in, s_out = self.g.tensors[x].scale, self.g.tensors[out].scale
        mult_shift = [conv_multiplier(s_in, s, s_out) for s in w_scale]
        attrs: dict = {"w_bits": int(w_bits)}
        if kind != "fully_connected":
            attrs.update(stride=[int(s) for s in stride], padding=[int(p) for p in padding])
        attrs["act_min"], attrs["act_max"] = self._clamp(out, act_min, act_max)
        arrays = {
            "weights": np.asarray(weights, np.int8),
            "bias": np.asarray(bias, np.int32),
            "multiplier": np.array([m for m, _ in mult_shift], np.int32),
            "shift": np.array([s for _, s in mult_shift], np.int32),
            "w_scale": w_scale,
        }
        return self._op(kind, name, [x], [out], attrs, arrays)

    def add(self, name: str, a: int, b: int, out: int, act_min: int | None = None, act_max: int | None = None) -> Op:
        t = self.g.tensors
        attrs = add_params(t[a].scale, t[b].scale, t[out].scale)
        attrs["act_min"], attrs["act_max"] = self._clamp(out, act_min, act_max)
        return self._op("add", name, [a, b], [out], attrs)

    def pool(self, kind: str, name: str, x: int, out: int, kernel: tuple[int, int], stride: tuple[int, int],
             padding: tuple[int, int, int, int] = (0, 0, 0, 0)) -> Op:
        """avg_pool / max_pool: output quantisation must equal the input's (TFLite's rule)."""
        ti, to = self.g.tensors[x], self.g.tensors[out]
        if (ti.scale, ti.zero_point) != (to.scale, to.zero_point):
            raise ValueError(f"op '{name}': pooling needs equal input/output quantisation")
        attrs = {"kernel": list(kernel), "stride": list(stride), "padding": list(padding)}
        attrs["act_min"], attrs["act_max"] = self._clamp(out, None, None)
        return self._op(kind, name, [x], [out], attrs)

    def reshape(self, name: str, x: int, out: int) -> Op:
        return self._op("reshape", name, [x], [out], {})

    def requantize(self, name: str, x: int, out: int) -> Op:
        m, s = requantize_multiplier(self.g.tensors[x].scale, self.g.tensors[out].scale)
        lo, hi = self._clamp(out, None, None)
        return self._op("requantize", name, [x], [out], {"multiplier": m, "shift": s, "act_min": lo, "act_max": hi})

    def finish(self, inputs: list[int], outputs: list[int], **meta) -> Graph:
        self.g.inputs, self.g.outputs = list(inputs), list(outputs)
        self.g.meta.update(meta)
        return self.g


def calibrated_scale(real: np.ndarray, bits: int, signed: bool, percentile: float = 99.9) -> float:
    """A scale mapping the `percentile` of |real| (signed) or of real (unsigned) to the top code."""
    top = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    v = np.percentile(np.abs(real) if signed else np.maximum(real, 0), percentile)
    return f32(max(float(v), 1e-6) / top)


def _probe(b: IRBuilder, kind: str, x: int, codes: np.ndarray, weights: np.ndarray, w_scale: np.ndarray,
           bias: np.ndarray, stride=(1, 1), padding=(0, 0, 0, 0)) -> np.ndarray:
    """Real-valued output (before requantisation) of a weighted op on calibration codes."""
    from deploy.lower.reference import accumulate

    op = Op(kind, "probe", [0], [0], {"stride": list(stride), "padding": list(padding)}, {"weights": "w", "bias": "b"})
    tmp = Graph([b.g.tensors[x]], [op], [0], [0], {"w": weights, "b": bias})
    return accumulate(tmp, op, codes) * b.g.tensors[x].scale * np.asarray(w_scale, np.float64)


def synthetic_graph(seed: int = 0, hw: int = 8, cin: int = 3, classes: int = 10, calib: int = 64) -> Graph:
    """A random integer graph exercising every op and 2/3/4/5/8-bit weights with sub-8-bit activations:

    input (int8) → conv3x3 s1 (4-bit w, 4-bit act, ReLU) ─→ depthwise3x3 s2 SAME (3-bit w, 5-bit act, ReLU) ─┐
                                                      └─→ conv3x3 s2 pad 1 (2-bit w, signed 8-bit act) ─── ADD (ReLU, 8-bit)
    → requantize (6-bit) → max_pool 2x2 → avg_pool (global) → reshape → FC (5-bit w, 3-bit act) → FC (8-bit w).

    Output scales are calibrated on `calib` random images so that every clamp is exercised.
    """
    from deploy.lower.reference import run as run_reference

    rng = np.random.default_rng(seed)
    b = IRBuilder()
    c1 = 8

    def codes(shape: tuple[int, ...], bits: int) -> np.ndarray:
        lo, hi = weight_code_range(bits)
        w = rng.integers(lo, hi + 1, size=shape)
        return np.where(w == 0, 1, w).astype(np.int8) if bits == 1 else w.astype(np.int8)

    x = b.tensor("input", [1, hw, hw, cin], 1 / 255, 8, signed=True, zero_point=-128)
    b.g.inputs = [x]
    vals = {x: rng.integers(-128, 128, size=(calib, hw, hw, cin)).astype(np.int8)}

    def weighted(kind, name, src, shape, w_bits, a_bits, signed, stride=(1, 1), padding=(0, 0, 0, 0)):
        w = codes(shape, w_bits)
        ws = rng.uniform(0.5, 1.5, shape[-1] if kind == "depthwise_conv2d" else shape[0]).astype(np.float32)
        s_in = b.g.tensors[src].scale
        nb = len(ws)
        real = _probe(b, kind, src, vals[src], w, ws, np.zeros(nb, np.int32), stride, padding)
        std = float(real.std()) or 1.0
        ws = (ws / std).astype(np.float32)  # unit-variance pre-activations
        bias = np.round(rng.normal(0, 0.5, nb) / (s_in * ws)).astype(np.int32)
        real = _probe(b, kind, src, vals[src], w, ws, bias, stride, padding)
        out_shape = [1, *real.shape[1:]]
        out = b.tensor(name, out_shape, calibrated_scale(real, a_bits, signed, 99.0), a_bits, signed)
        b.weighted(kind, name, src, out, w, ws, bias, w_bits, stride, padding)
        vals[out] = run_reference(b.g, vals[x], keep=True)[out]
        return out

    t1 = weighted("conv2d", "conv1", x, (c1, 3, 3, cin), 4, 4, False, padding=(1, 1, 1, 1))
    t2 = weighted("depthwise_conv2d", "dw", t1, (1, 3, 3, c1), 3, 5, False, (2, 2), (0, 0, 1, 1))
    t3 = weighted("conv2d", "shortcut", t1, (c1, 3, 3, c1), 2, 8, True, (2, 2), (1, 1, 1, 1))
    g = b.g
    real = sum((vals[t] - g.tensors[t].zero_point) * g.tensors[t].scale for t in (t2, t3))
    t4 = b.tensor("add", g.tensors[t2].shape, calibrated_scale(real, 8, False, 99.0), 8, signed=False)
    b.add("add", t2, t3, t4)
    t5 = b.tensor("requant", g.tensors[t4].shape, g.tensors[t4].scale * 2.5, bits=6, signed=False)
    b.requantize("requant", t4, t5)
    h2 = g.tensors[t5].shape[1]
    t6 = b.like("maxpool", t5, [1, h2 // 2, h2 // 2, c1])
    b.pool("max_pool", "maxpool", t5, t6, (2, 2), (2, 2))
    t7 = b.like("avgpool", t6, [1, 1, 1, c1])
    b.pool("avg_pool", "avgpool", t6, t7, (h2 // 2, h2 // 2), (1, 1))
    t8 = b.like("flatten", t7, [1, c1])
    b.reshape("flatten", t7, t8)
    vals[t8] = run_reference(b.g, vals[x], keep=True)[t8]
    t9 = weighted("fully_connected", "fc1", t8, (16, c1), 5, 3, False)
    t10 = weighted("fully_connected", "fc2", t9, (classes, 16), 8, 8, True)
    return b.finish([x], [t10], source="synthetic", seed=seed)
