"""IR → ONNX in two styles, each checked with onnx.checker and run with ONNX Runtime.

* ``qdq`` (``model.onnx``): the interchange form. Every IR tensor becomes int8 codes
  (QuantizeLinear) followed by DequantizeLinear; ops run in float on dequantised values
  (Conv / Gemm / Add / AveragePool / GlobalAveragePool / MaxPool), so QDQ-aware toolchains and
  runtimes can fuse them into their own integer kernels. It is *not* bit-exact with the integer
  reference: QuantizeLinear rounds the float result once, half to even, where TFLite requantises in
  fixed point with two roundings halves-away; and float32 sums of dequantised products carry their
  own rounding error. A 1-LSB flip in a 2–4-bit activation moves the next layer by several LSB, so
  the differences grow with depth (tests measure them; see docs/onnx.md).
* ``integer`` (``model.int.onnx``): TFLite's integer arithmetic written with standard ONNX ops, so
  ONNX Runtime reproduces the integer reference bit for bit: ConvInteger / MatMulInteger on the int8
  codes (int32 accumulators, padding with the input zero point), the int32 bias, and
  MultiplyByQuantizedMultiplier (SaturatingRoundingDoublingHighMul + RoundingDivideByPOT) as a
  model-local function (domain "smpq") of int64 Mul / Mod / Div with exact divisions; ADD, AVG_POOL
  (window sums by ConvInteger with ones, rounding division by the in-bounds count) and QUANTIZE
  likewise. Bit-exact in ONNX Runtime and in onnx.reference (tests).

Both styles: layout NCHW inside; the model input is the IR input (int8 codes, NHWC, batch "N") and
the output is the IR output's int8 codes. Filters are stored as INT4 when w_bits ≤ 4 (opset ≥ 21),
INT2 when w_bits ≤ 2 and opset ≥ 25, else INT8 (3/5/6/7-bit codes live in 8-bit containers, already
inside their range); the integer style Casts them to int8 for ConvInteger. Sub-8-bit activation
ranges and ReLU clamps are a Clip on the codes ([act_min, act_max], exactly the IR's clamp).

Opsets: the installed onnx (1.23) defines up to opset 25+; ONNX Runtime 1.32 runs 21 (default) and 25.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploy.lower.ir import Graph, IRError, Op
from deploy.lower.reference import in_bounds_count
from search.atomic import atomic_write_bytes

DEFAULT_OPSET = 21
OPSETS = range(21, 26)  # INT4 and per-axis QDQ need 21; ONNX Runtime 1.32 runs up to 25 (INT2 from 25)
STYLES = ("qdq", "integer")
#: the file each style is written to in a run folder
FILE_NAMES = {"qdq": "model.onnx", "integer": "model.int.onnx"}


def _weight_type(bits: int, opset: int) -> int:
    if bits <= 2 and opset >= 25:
        return TensorProto.INT2
    if bits <= 4 and opset >= 21:
        return TensorProto.INT4
    return TensorProto.INT8


class _Builder:
    """Nodes and initializers of one model; every IR tensor has its int8 NCHW codes in ``codes_of``
    (and, in the qdq style, its dequantised float value in ``float_of``)."""

    def __init__(self, g: Graph, opset: int, style: str) -> None:
        self.g, self.opset, self.style = g, opset, style
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.names: set[str] = set()
        self.codes_of: dict[int, str] = {}
        self.float_of: dict[int, str] = {}

    def const(self, name: str, arr: np.ndarray, dtype: int | None = None) -> str:
        if name in self.names:
            return name  # shared constant (another instance of the same layer)
        self.names.add(name)
        arr = np.asarray(arr)
        if dtype in (TensorProto.INT4, TensorProto.INT2):
            t = helper.make_tensor(name, dtype, list(arr.shape), arr.astype(np.int8).ravel().tolist())
        else:
            t = numpy_helper.from_array(arr, name)
        self.inits.append(t)
        return name

    def i64(self, value: int | np.ndarray, name: str | None = None) -> str:
        """An int64 value; scalars are shared constants, arrays that fit are stored as int32 and Cast."""
        arr = np.asarray(value, np.int64)
        if name is None:
            return self.const(f"i64[{int(arr)}]", arr)
        if arr.size > 1 and np.abs(arr).max() < (1 << 31):
            return self.node("Cast", [self.const(f"{name}.i32", arr.astype(np.int32))], name, shared=True,
                             to=TensorProto.INT64)
        return self.const(name, arr)

    def node(self, op: str, inputs: list[str], output: str, shared: bool = False, **attrs) -> str:
        """Append a node named after its one output; a `shared` node (dequantised constants of a layer
        with several instances) is added once."""
        if output in self.names:
            if shared:
                return output
            raise IRError(f"ONNX export: two nodes named '{output}' (IR tensor or op names collide)")
        self.names.add(output)
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def weights(self, op: Op, layout: str) -> tuple[str, str]:
        """(base name, stored filter codes) of a weighted op in ONNX layout ("OIHW" or "IO" for MatMul,
        "OI" for Gemm), shared by the instances of one layer."""
        w = self.g.const(op, "weights")
        if op.kind == "conv2d":
            w = w.transpose(0, 3, 1, 2)  # OHWI → OIHW
        elif op.kind == "depthwise_conv2d":
            w = w.transpose(3, 0, 1, 2)  # 1HWC → C1HW
        elif layout == "IO":
            w = w.T
        wname = op.arrays["weights"].rsplit(".", 1)[0]
        return wname, self.const(f"{wname}.w", w, _weight_type(op.attrs["w_bits"], self.opset))


# ---------------------------------------------------------------------------------------------
# qdq style


def _quantize_out(b: _Builder, y: str, idx: int, act_min: int = -128, act_max: int = 127) -> None:
    """float y → int8 codes of IR tensor idx (clamped) → dequantised float value."""
    t = b.g.tensors[idx]
    s, z = _qparams(b, idx)
    q = b.node("QuantizeLinear", [y, s, z], f"{t.name}.q")
    if act_min > -128 or act_max < 127:
        q = b.node("Clip", [q, b.const(f"{t.name}.min", np.array(act_min, np.int8)),
                            b.const(f"{t.name}.max", np.array(act_max, np.int8))], f"{t.name}.clip")
    b.codes_of[idx] = q
    b.float_of[idx] = b.node("DequantizeLinear", [q, s, z], f"{t.name}.dq")


def _qparams(b: _Builder, idx: int) -> tuple[str, str]:
    t = b.g.tensors[idx]
    return (b.const(f"{t.name}.scale", np.array(t.scale, np.float32)),
            b.const(f"{t.name}.zp", np.array(t.zero_point, np.int8)))


def _qdq_weighted(b: _Builder, op: Op) -> None:
    g = b.g
    w_scale, bias = g.const(op, "w_scale"), g.const(op, "bias")
    s_in = g.tensors[op.inputs[0]].scale
    wname, wq = b.weights(op, "OI")
    wtype = _weight_type(op.attrs["w_bits"], b.opset)
    ws = b.const(f"{wname}.w_scale", w_scale.astype(np.float32))
    wz = b.const(f"{wname}.w_zp", np.zeros(len(w_scale), np.int8), wtype if wtype != TensorProto.INT8 else None)
    wf = b.node("DequantizeLinear", [wq, ws, wz], f"{wname}.w_dq", shared=True, axis=0)
    bname = f"{op.arrays['bias'].rsplit('.', 1)[0]}@{np.float32(s_in).view(np.int32)}"
    bq = b.const(f"{bname}.b", bias.astype(np.int32))
    bs = b.const(f"{bname}.b_scale", (np.float32(s_in) * w_scale.astype(np.float32)).astype(np.float32))
    bz = b.const(f"{bname}.b_zp", np.zeros(len(w_scale), np.int32))
    bf = b.node("DequantizeLinear", [bq, bs, bz], f"{bname}.b_dq", shared=True, axis=0)
    x = b.float_of[op.inputs[0]]
    if op.kind == "fully_connected":
        y = b.node("Gemm", [x, wf, bf], f"{op.name}.y", transB=1)
    else:
        kh, kw = g.const(op, "weights").shape[1:3]
        t, l, bo, r = op.attrs["padding"]
        y = b.node("Conv", [x, wf, bf], f"{op.name}.y", strides=list(op.attrs["stride"]), pads=[t, l, bo, r],
                   kernel_shape=[kh, kw], group=len(w_scale) if op.kind == "depthwise_conv2d" else 1)
    _quantize_out(b, y, op.outputs[0], op.attrs["act_min"], op.attrs["act_max"])


def _qdq_add(b: _Builder, op: Op) -> None:
    y = b.node("Add", [b.float_of[i] for i in op.inputs], f"{op.name}.y")
    _quantize_out(b, y, op.outputs[0], op.attrs["act_min"], op.attrs["act_max"])


def _qdq_pool(b: _Builder, op: Op) -> None:
    x = b.float_of[op.inputs[0]]
    in_shape = b.g.tensors[op.inputs[0]].shape
    kh, kw = op.attrs["kernel"]
    t, l, bo, r = op.attrs["padding"]
    if op.kind == "avg_pool" and (kh, kw) == tuple(in_shape[1:3]) and not any(op.attrs["padding"]):
        y = b.node("GlobalAveragePool", [x], f"{op.name}.y")
    else:
        kind = "AveragePool" if op.kind == "avg_pool" else "MaxPool"
        y = b.node(kind, [x], f"{op.name}.y", kernel_shape=[kh, kw], strides=list(op.attrs["stride"]), pads=[t, l, bo, r])
    _quantize_out(b, y, op.outputs[0], op.attrs["act_min"], op.attrs["act_max"])


def _qdq_requantize(b: _Builder, op: Op) -> None:
    _quantize_out(b, b.float_of[op.inputs[0]], op.outputs[0], op.attrs.get("act_min", -128), op.attrs.get("act_max", 127))


# ---------------------------------------------------------------------------------------------
# integer style


FUNCTION_DOMAIN = "smpq"
MBQM = "MultiplyByQuantizedMultiplier"


def _mbqm_function(opset: int) -> onnx.FunctionProto:
    """TFLite MultiplyByQuantizedMultiplier as a model-local ONNX function on int64 tensors, equal to
    deploy.lower.fixedpoint.multiply_by_quantized_multiplier: y = RDBP(SRDHM(x · 2^left, m), right), with
    pow_left = 2^left and pow_right = 2^right broadcast against x. Inputs are accumulators well inside
    int32, so the int32 wrap of ``x << left`` never happens."""
    def const(name: str, value: int) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [], [value]))

    def n(op: str, inputs: list[str], output: str, **attrs) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [output], **attrs)

    i64 = TensorProto.INT64
    body = [
        const("zero", 0), const("one", 1), const("two", 2), const("p31", 1 << 31),
        const("nudge_pos", 1 << 30), const("nudge_neg", 1 - (1 << 30)),
        # SaturatingRoundingDoublingHighMul: (x·m + nudge) / 2^31 truncated toward zero (an exact division
        # after subtracting the C-style remainder: Mod with fmod=1 keeps the dividend's sign)
        n("Mul", ["x", "pow_left"], "shifted"), n("Mul", ["shifted", "multiplier"], "ab"),
        n("Less", ["ab", "zero"], "ab_neg"), n("Where", ["ab_neg", "nudge_neg", "nudge_pos"], "nudge"),
        n("Add", ["ab", "nudge"], "nudged"), n("Mod", ["nudged", "p31"], "rem31", fmod=1),
        n("Sub", ["nudged", "rem31"], "exact31"), n("Div", ["exact31", "p31"], "high"),
        # RoundingDivideByPOT: floor(high / 2^e) + (remainder > (2^e − 1)/2 + [high < 0])
        n("Mod", ["high", "pow_right"], "rem"), n("Sub", ["high", "rem"], "exact"), n("Div", ["exact", "pow_right"], "floor"),
        n("Less", ["high", "zero"], "neg_b"), n("Cast", ["neg_b"], "neg", to=i64),
        n("Sub", ["pow_right", "one"], "mask"), n("Div", ["mask", "two"], "half"), n("Add", ["half", "neg"], "threshold"),
        n("Greater", ["rem", "threshold"], "up_b"), n("Cast", ["up_b"], "up", to=i64), n("Add", ["floor", "up"], "y"),
    ]
    return helper.make_function(FUNCTION_DOMAIN, MBQM, ["x", "multiplier", "pow_left", "pow_right"], ["y"], body,
                                [helper.make_opsetid("", opset)])


def _multiply_by_quantized_multiplier(b: _Builder, x: str, multiplier: np.ndarray | int, shift: np.ndarray | int,
                                      name: str) -> str:
    """One call of the model's MultiplyByQuantizedMultiplier function (per-channel arrays or scalars)."""
    shift = np.asarray(shift, np.int64)
    one = np.int64(1)
    pow_left, pow_right = one << np.maximum(shift, 0), one << np.maximum(-shift, 0)
    args = [b.i64(multiplier, f"{name}.multiplier" if np.ndim(multiplier) else None),
            b.i64(pow_left, f"{name}.pow_left" if pow_left.ndim else None),
            b.i64(pow_right, f"{name}.pow_right" if pow_right.ndim else None)]
    return b.node(MBQM, [x, *args], f"{name}.y", domain=FUNCTION_DOMAIN)


def _to_codes(b: _Builder, y: str, op: Op, zero_point: int = 0) -> None:
    """int64 y (+ output zero point) → clamp [act_min, act_max] → int8 codes of the op's output."""
    t = b.g.tensors[op.outputs[0]]
    if zero_point:
        y = b.node("Add", [y, b.i64(zero_point)], f"{t.name}.zp_added")
    lo, hi = op.attrs.get("act_min", -128), op.attrs.get("act_max", 127)
    y = b.node("Clip", [y, b.i64(lo), b.i64(hi)], f"{t.name}.clip")
    b.codes_of[op.outputs[0]] = b.node("Cast", [y], f"{t.name}.codes", to=TensorProto.INT8)


def _centered(b: _Builder, idx: int, name: str) -> str:
    """int64 (codes − zero point) of IR tensor idx."""
    x = b.node("Cast", [b.codes_of[idx]], f"{name}.i64", to=TensorProto.INT64)
    zp = b.g.tensors[idx].zero_point
    return b.node("Sub", [x, b.i64(zp)], f"{name}.centered") if zp else x


def _padded(b: _Builder, x: str, padding: list[int], value: int, name: str) -> str:
    t, l, bo, r = padding
    if not any(padding):
        return x
    pads = b.i64(np.array([0, 0, t, l, 0, 0, bo, r], np.int64), f"{name}.pads")
    return b.node("Pad", [x, pads, b.const(f"i8[{value}]", np.array(value, np.int8))], f"{name}.padded")


def _int_weighted(b: _Builder, op: Op) -> None:
    g = b.g
    zp = g.tensors[op.inputs[0]].zero_point
    x_zp = b.const(f"i8[{zp}]", np.array(zp, np.int8))
    wname, wq = b.weights(op, "IO")
    if _weight_type(op.attrs["w_bits"], b.opset) != TensorProto.INT8:
        wq = b.node("Cast", [wq], f"{wname}.w_int8", shared=True, to=TensorProto.INT8)
    channels = len(g.const(op, "bias"))
    shape = (channels,) if op.kind == "fully_connected" else (channels, 1, 1)
    if op.kind == "fully_connected":
        acc = b.node("MatMulInteger", [b.codes_of[op.inputs[0]], wq, x_zp], f"{op.name}.acc")
    else:
        # padded positions hold the zero point, so they contribute zero to Σ w·(x − zp)
        x = _padded(b, b.codes_of[op.inputs[0]], op.attrs["padding"], zp, op.name)
        acc = b.node("ConvInteger", [x, wq, x_zp], f"{op.name}.acc", strides=list(op.attrs["stride"]),
                     kernel_shape=list(g.const(op, "weights").shape[1:3]),
                     group=channels if op.kind == "depthwise_conv2d" else 1)
    bname = op.arrays["bias"].rsplit(".", 1)[0]
    acc = b.node("Add", [b.node("Cast", [acc], f"{op.name}.acc64", to=TensorProto.INT64),
                         b.i64(g.const(op, "bias").reshape(shape), f"{bname}.bias")], f"{op.name}.acc_bias")
    y = _multiply_by_quantized_multiplier(b, acc, g.const(op, "multiplier").reshape(shape),
                                          g.const(op, "shift").reshape(shape), f"{op.name}.rq")
    _to_codes(b, y, op, g.tensors[op.outputs[0]].zero_point)


def _int_add(b: _Builder, op: Op) -> None:
    a = op.attrs
    scaled = []
    for k, idx in enumerate(op.inputs, 1):
        v = b.node("Mul", [_centered(b, idx, f"{op.name}.in{k}"), b.i64(1 << a["left_shift"])], f"{op.name}.in{k}.shifted")
        scaled.append(_multiply_by_quantized_multiplier(b, v, a[f"in{k}_multiplier"], a[f"in{k}_shift"], f"{op.name}.in{k}"))
    total = b.node("Add", scaled, f"{op.name}.sum")
    y = _multiply_by_quantized_multiplier(b, total, a["out_multiplier"], a["out_shift"], f"{op.name}.out")
    _to_codes(b, y, op, b.g.tensors[op.outputs[0]].zero_point)


def _int_pool(b: _Builder, op: Op) -> None:
    x = b.codes_of[op.inputs[0]]
    kh, kw = op.attrs["kernel"]
    stride, padding = list(op.attrs["stride"]), op.attrs["padding"]
    if op.kind == "max_pool":  # ONNX MaxPool ignores padded positions, as TFLite does
        t, l, bo, r = padding
        y = b.node("MaxPool", [x], f"{op.name}.max", kernel_shape=[kh, kw], strides=stride, pads=[t, l, bo, r])
        y = b.node("Cast", [y], f"{op.name}.max64", to=TensorProto.INT64)
        return _to_codes(b, y, op)
    # AVG_POOL: Σ in-bounds codes (a depthwise ConvInteger with ones; padding adds 0) divided by the
    # in-bounds count, halves away from zero: (Σ ± count/2) / count, truncated
    _, h, w, c = b.g.tensors[op.inputs[0]].shape
    ones = b.const(f"ones[{c},{kh},{kw}]", np.ones((c, 1, kh, kw), np.int8))
    total = b.node("ConvInteger", [_padded(b, x, padding, 0, op.name), ones], f"{op.name}.sum32",
                   strides=stride, kernel_shape=[kh, kw], group=c)
    total = b.node("Cast", [total], f"{op.name}.sum", to=TensorProto.INT64)
    count = in_bounds_count(op, h, w)[None, None]
    cnt, half = b.i64(count, f"{op.name}.count"), b.i64(count // 2, f"{op.name}.half")
    positive = b.node("Greater", [total, b.i64(0)], f"{op.name}.pos")
    num = b.node("Where", [positive, b.node("Add", [total, half], f"{op.name}.up"),
                           b.node("Sub", [total, half], f"{op.name}.down")], f"{op.name}.num")
    rem = b.node("Mod", [num, cnt], f"{op.name}.rem", fmod=1)
    y = b.node("Div", [b.node("Sub", [num, rem], f"{op.name}.exact"), cnt], f"{op.name}.avg")
    _to_codes(b, y, op)


def _int_requantize(b: _Builder, op: Op) -> None:
    x = _centered(b, op.inputs[0], op.name)
    y = _multiply_by_quantized_multiplier(b, x, op.attrs["multiplier"], op.attrs["shift"], f"{op.name}.rq")
    _to_codes(b, y, op, b.g.tensors[op.outputs[0]].zero_point)


# ---------------------------------------------------------------------------------------------
# shared


def _reshape(b: _Builder, op: Op) -> None:
    """IR reshape (NHWC memory order) on NCHW values: through NHWC unless the spatial size is 1×1."""
    in_shape, shape = b.g.tensors[op.inputs[0]].shape, b.g.tensors[op.outputs[0]].shape
    if len(shape) not in (2, 4):
        raise IRError(f"op '{op.name}': reshape to rank {len(shape)} has no ONNX mapping")
    spatial = len(in_shape) == 4 and in_shape[1] * in_shape[2] > 1

    def apply(value: str, tag: str) -> str:
        if spatial:
            value = b.node("Transpose", [value], f"{op.name}.{tag}.nhwc", perm=[0, 2, 3, 1])
        if len(shape) == 2:
            return b.node("Flatten", [value], f"{op.name}.{tag}", axis=1)
        value = b.node("Reshape", [value, b.i64(np.array([-1, *shape[1:]], np.int64), f"{op.name}.shape")],
                       f"{op.name}.{tag}.reshaped")
        return b.node("Transpose", [value], f"{op.name}.{tag}", perm=[0, 3, 1, 2])

    codes = b.codes_of[op.outputs[0]] = apply(b.codes_of[op.inputs[0]], "codes")
    if b.style == "qdq":  # reshape the codes, then dequantise (Q → layout ops on int8 → DQ)
        b.float_of[op.outputs[0]] = b.node("DequantizeLinear", [codes, *_qparams(b, op.outputs[0])], f"{op.name}.dq")


EMITTERS = {
    "qdq": {"conv2d": _qdq_weighted, "depthwise_conv2d": _qdq_weighted, "fully_connected": _qdq_weighted,
            "add": _qdq_add, "avg_pool": _qdq_pool, "max_pool": _qdq_pool, "reshape": _reshape,
            "requantize": _qdq_requantize},
    "integer": {"conv2d": _int_weighted, "depthwise_conv2d": _int_weighted, "fully_connected": _int_weighted,
                "add": _int_add, "avg_pool": _int_pool, "max_pool": _int_pool, "reshape": _reshape,
                "requantize": _int_requantize},
}


def check_opset(opset: int) -> None:
    """One-line error for an opset outside :data:`OPSETS`."""
    if opset < OPSETS.start:
        raise IRError(f"ONNX opset {opset} is too old: INT4 filters and per-axis int8 QDQ need opset ≥ {OPSETS.start}")
    if opset not in OPSETS:
        raise IRError(f"ONNX opset {opset} is not supported: choose {OPSETS.start}..{OPSETS.stop - 1} "
                      "(25 stores 2-bit filters as INT2)")


def to_onnx(g: Graph, opset: int = DEFAULT_OPSET, style: str = "qdq") -> onnx.ModelProto:
    """The IR as an ONNX model of the given style ("qdq" or "integer"), checked with onnx.checker."""
    if style not in EMITTERS:
        raise IRError(f"unknown ONNX style '{style}': choose from {', '.join(STYLES)}")
    check_opset(opset)
    b = _Builder(g, opset, style)
    (inp,) = g.inputs
    t_in = g.tensors[inp]
    b.codes_of[inp] = b.node("Transpose", ["input"], "input.nchw", perm=[0, 3, 1, 2])
    if style == "qdq":
        b.float_of[inp] = b.node("DequantizeLinear", [b.codes_of[inp], *_qparams(b, inp)], "input.dq")
    for op in g.ops:
        emit = EMITTERS[style].get(op.kind)
        if emit is None:
            raise IRError(f"op '{op.name}' of kind '{op.kind}' has no ONNX mapping")
        emit(b, op)
    (out,) = g.outputs
    t_out = g.tensors[out]
    codes = b.codes_of[out]
    if len(t_out.shape) == 4:
        codes = b.node("Transpose", [codes], "output.nhwc_codes", perm=[0, 2, 3, 1])
    b.node("Identity", [codes], "output")
    graph = helper.make_graph(
        b.nodes, g.meta.get("name", "smpq"),
        [helper.make_tensor_value_info("input", TensorProto.INT8, ["N", *t_in.shape[1:]])],
        [helper.make_tensor_value_info("output", TensorProto.INT8, ["N", *t_out.shape[1:]])],
        b.inits)
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(FUNCTION_DOMAIN, 1)] if style == "integer" else [])
    model = helper.make_model(graph, opset_imports=imports, producer_name="smpq-deploy",
                              functions=[_mbqm_function(opset)] if style == "integer" else [],
                              doc_string=f"smpq-deploy ONNX export, style {style}")
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(g: Graph, path: str | Path, opset: int = DEFAULT_OPSET, style: str = "qdq") -> Path:
    """Write the model (``model.onnx`` for qdq, ``model.int.onnx`` for integer by convention); returns the path."""
    path = Path(path)
    atomic_write_bytes(path, to_onnx(g, opset, style).SerializeToString())
    return path


def run_onnxruntime(model: onnx.ModelProto | bytes | str | Path, x: np.ndarray) -> np.ndarray:
    """Int8 output codes of ONNX Runtime (CPU) for int8 inputs x (N, ...)."""
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(data if isinstance(data, bytes) else str(data), opts, providers=["CPUExecutionProvider"])
    return sess.run(["output"], {"input": np.asarray(x, np.int8)})[0]
