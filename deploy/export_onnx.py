"""IR → ONNX QDQ model, checked with onnx.checker and run with ONNX Runtime.

Every IR tensor becomes int8 codes (QuantizeLinear) followed by DequantizeLinear; ops run in float
on dequantised values (Conv / Gemm / Add / AveragePool / GlobalAveragePool / MaxPool / Reshape),
so a QDQ-aware runtime may fuse them into integer kernels. Layout: NCHW inside, the model input is
the IR input (int8 codes, NHWC, batch dimension "N") and the output is the IR output's int8 codes.

* Filters: per-output-channel DequantizeLinear (axis 0) of codes stored as INT4 when w_bits ≤ 4
  (needs opset ≥ 21), INT2 when w_bits ≤ 2 and opset ≥ 25, else INT8 (3/5/6/7-bit codes live in 8-bit
  containers, already inside their range). Biases: int32 with scale input_scale·w_scale.
* Sub-8-bit activation ranges and ReLU/ReLU6 clamps: Clip on the int8 codes between QuantizeLinear
  and DequantizeLinear ([act_min, act_max], exactly the IR's clamp).
* Not bit-exact with the integer reference: QuantizeLinear rounds half to even in float, the IR
  requantises in fixed point (tests check top-1 agreement and ≥ 99 % of outputs within 1 LSB).

Opsets: the installed onnx (1.23) defines up to opset 25+; ONNX Runtime 1.32 runs 21 (default) and 25.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploy.ir import Graph, IRError, Op

DEFAULT_OPSET = 21


def _weight_type(bits: int, opset: int) -> int:
    if bits <= 2 and opset >= 25:
        return TensorProto.INT2
    if bits <= 4 and opset >= 21:
        return TensorProto.INT4
    return TensorProto.INT8


class _Builder:
    def __init__(self, g: Graph, opset: int) -> None:
        self.g, self.opset = g, opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.float_of: dict[int, str] = {}  # IR tensor → name of its dequantised NCHW float value
        self.names: set[str] = set()

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

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def qparams(self, idx: int) -> tuple[str, str]:
        t = self.g.tensors[idx]
        return (self.const(f"{t.name}.scale", np.array(t.scale, np.float32)),
                self.const(f"{t.name}.zp", np.array(t.zero_point, np.int8)))

    def quantize_out(self, op: Op, y: str, idx: int, act_min: int = -128, act_max: int = 127) -> None:
        """float y → int8 codes of IR tensor idx (clamped) → dequantised float value."""
        t = self.g.tensors[idx]
        s, z = self.qparams(idx)
        q = self.node("QuantizeLinear", [y, s, z], f"{t.name}.q")
        if act_min > -128 or act_max < 127:
            lo = self.const(f"{t.name}.min", np.array(act_min, np.int8))
            hi = self.const(f"{t.name}.max", np.array(act_max, np.int8))
            q = self.node("Clip", [q, lo, hi], f"{t.name}.clip")
        self.codes_of[idx] = q
        self.float_of[idx] = self.node("DequantizeLinear", [q, s, z], f"{t.name}.dq")

    codes_of: dict[int, str]


def _weighted(b: _Builder, op: Op) -> None:
    g = b.g
    codes, w_scale, bias = g.const(op, "weights"), g.const(op, "w_scale"), g.const(op, "bias")
    s_in = g.tensors[op.inputs[0]].scale
    if op.kind == "conv2d":
        w = codes.transpose(0, 3, 1, 2)  # OHWI → OIHW
    elif op.kind == "depthwise_conv2d":
        w = codes.transpose(3, 0, 1, 2)  # 1HWC → C1HW
    else:
        w = codes  # OI
    wname = op.arrays["weights"].rsplit(".", 1)[0]  # instances of one layer share their constants
    wq = b.const(f"{wname}.w", w, _weight_type(op.attrs["w_bits"], b.opset))
    ws = b.const(f"{wname}.w_scale", w_scale.astype(np.float32))
    wz_type = {TensorProto.INT4: TensorProto.INT4, TensorProto.INT2: TensorProto.INT2}.get(_weight_type(op.attrs["w_bits"], b.opset))
    if wz_type is not None:
        wz = b.const(f"{wname}.w_zp", np.zeros(len(w_scale), np.int8), wz_type)
    else:
        wz = b.const(f"{wname}.w_zp", np.zeros(len(w_scale), np.int8))
    wf = f"{wname}.w_dq"
    if wf not in b.names:
        b.names.add(wf)
        b.node("DequantizeLinear", [wq, ws, wz], wf, axis=0)
    bname = f"{op.arrays['bias'].rsplit('.', 1)[0]}@{np.float32(s_in).view(np.int32)}"
    bq = b.const(f"{bname}.b", bias.astype(np.int32))
    bs = b.const(f"{bname}.b_scale", (np.float32(s_in) * w_scale.astype(np.float32)).astype(np.float32))
    bz = b.const(f"{bname}.b_zp", np.zeros(len(w_scale), np.int32))
    bf = f"{bname}.b_dq"
    if bf not in b.names:
        b.names.add(bf)
        b.node("DequantizeLinear", [bq, bs, bz], bf, axis=0)
    x = b.float_of[op.inputs[0]]
    if op.kind == "fully_connected":
        y = b.node("Gemm", [x, wf, bf], f"{op.name}.y", transB=1)
    else:
        t, l, bo, r = op.attrs["padding"]
        y = b.node("Conv", [x, wf, bf], f"{op.name}.y", strides=list(op.attrs["stride"]), pads=[t, l, bo, r],
                   kernel_shape=list(codes.shape[1:3]), group=len(w_scale) if op.kind == "depthwise_conv2d" else 1)
    b.quantize_out(op, y, op.outputs[0], op.attrs["act_min"], op.attrs["act_max"])


def _add(b: _Builder, op: Op) -> None:
    y = b.node("Add", [b.float_of[i] for i in op.inputs], f"{op.name}.y")
    b.quantize_out(op, y, op.outputs[0], op.attrs["act_min"], op.attrs["act_max"])


def _pool(b: _Builder, op: Op) -> None:
    x = b.float_of[op.inputs[0]]
    in_shape = b.g.tensors[op.inputs[0]].shape
    kh, kw = op.attrs["kernel"]
    t, l, bo, r = op.attrs["padding"]
    if op.kind == "avg_pool" and (kh, kw) == tuple(in_shape[1:3]) and not any(op.attrs["padding"]):
        y = b.node("GlobalAveragePool", [x], f"{op.name}.y")
    else:
        kind = "AveragePool" if op.kind == "avg_pool" else "MaxPool"
        y = b.node(kind, [x], f"{op.name}.y", kernel_shape=[kh, kw], strides=list(op.attrs["stride"]), pads=[t, l, bo, r])
    b.quantize_out(op, y, op.outputs[0], op.attrs["act_min"], op.attrs["act_max"])


def _reshape(b: _Builder, op: Op) -> None:
    shape = b.g.tensors[op.outputs[0]].shape
    if len(shape) == 2:
        b.float_of[op.outputs[0]] = b.node("Flatten", [b.float_of[op.inputs[0]]], f"{op.name}.y", axis=1)
    elif len(shape) == 4:
        nchw = np.array([-1, shape[3], shape[1], shape[2]], np.int64)
        b.float_of[op.outputs[0]] = b.node("Reshape", [b.float_of[op.inputs[0]], b.const(f"{op.name}.shape", nchw)], f"{op.name}.y")
    else:
        raise IRError(f"op '{op.name}': reshape to rank {len(shape)} has no ONNX mapping")
    b.codes_of[op.outputs[0]] = b.codes_of[op.inputs[0]]


def _requantize(b: _Builder, op: Op) -> None:
    b.quantize_out(op, b.float_of[op.inputs[0]], op.outputs[0], op.attrs.get("act_min", -128), op.attrs.get("act_max", 127))


EMITTERS = {"conv2d": _weighted, "depthwise_conv2d": _weighted, "fully_connected": _weighted, "add": _add,
            "avg_pool": _pool, "max_pool": _pool, "reshape": _reshape, "requantize": _requantize}


def to_onnx(g: Graph, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The IR as an ONNX QDQ model (checked with onnx.checker)."""
    if opset < 21:
        raise IRError(f"ONNX opset {opset} is too old: INT4 filters and per-axis int8 QDQ need opset ≥ 21")
    b = _Builder(g, opset)
    b.codes_of = {}
    (inp,) = g.inputs
    t_in = g.tensors[inp]
    s, z = b.qparams(inp)
    x = b.node("Transpose", ["input"], "input.nchw", perm=[0, 3, 1, 2])
    b.float_of[inp] = b.node("DequantizeLinear", [x, s, z], "input.dq")
    b.codes_of[inp] = "input"
    for op in g.ops:
        emit = EMITTERS.get(op.kind)
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
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="smpq-deploy")
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(g: Graph, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model.onnx``; returns the path."""
    path = Path(path)
    onnx.save(to_onnx(g, opset), str(path))
    return path


def run_onnxruntime(model: onnx.ModelProto | bytes | str | Path, x: np.ndarray) -> np.ndarray:
    """Int8 output codes of ONNX Runtime (CPU) for int8 inputs x (N, ...)."""
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(data if isinstance(data, bytes) else str(data), opts, providers=["CPUExecutionProvider"])
    return sess.run(["output"], {"input": np.asarray(x, np.int8)})[0]
