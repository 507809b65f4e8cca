"""IR → TFLite flatbuffer, written with the schema's Python object API (no TensorFlow needed).

Mapping (every IR op keeps its exact integer semantics in TFLite's int8 kernels):

* conv2d / depthwise_conv2d → CONV_2D / DEPTHWISE_CONV_2D with
  per-channel symmetric filters (quantized_dimension 0 for conv and FC, 3 for depthwise) and int32
  biases. Filters with w_bits ≤ 4 are stored as TensorType INT4, two codes per byte, low nibble first
  (LiteRT and TFLite Micro unpack them); wider filters are INT8. 1- and 2-bit filters also use INT4:
  TensorType INT2 exists in the schema, but CONV_2D rejects it in both runtimes (measured: LiteRT
  "filter->type == kTfLiteInt8 || filter->type == kTfLiteInt4 was not true"; TFLM fails to allocate).
* fully_connected → RESHAPE [1,1,1,K] → 1×1 CONV_2D → RESHAPE [1,N]. Measured with ai-edge-litert 2.3.0
  and tflite-micro (PyPI 2026-10): TFLM's FULLY_CONNECTED matches the IR bit for bit but rejects
  per-channel INT4 filters; LiteRT's per-channel FULLY_CONNECTED rounds differently (single rounding in
  its reference kernels, yet another rounding in the optimised ones: ±1 LSB on ~0.3 % of outputs), while
  CONV_2D is bit-exact in both runtimes. A 1×1 convolution is the same arithmetic as the IR's FC.
* TFLite only knows SAME/VALID padding: an IR padding that is neither becomes an explicit PAD op
  (int8 PAD fills with the zero point, i.e. zero contribution, exactly the IR's rule) before a VALID op.
* Clamps: TFLite's fused activations (NONE/RELU/RELU6) express only some ranges. The exporter fuses the
  tightest one that contains [act_min, act_max] and adds MAXIMUM / MINIMUM ops with an int8 constant
  for what remains (e.g. the top of a 4-bit unsigned activation, code −113).
* add → ADD, avg_pool / max_pool → AVERAGE_POOL_2D / MAX_POOL_2D, reshape → RESHAPE,
  requantize → QUANTIZE (int8 → int8).

Model input: the IR input tensor (int8, pixel − 128); output: the IR output (int8 logits).

``int8_weights=True`` writes every filter as INT8 (sub-8-bit codes stay restricted to their 2^b levels)
instead of packing ≤ 4-bit filters as INT4: for compilers that take only 8-bit weights (Arm's Vela
crashes on INT4 filters, see docs/ethos-u.md). ``op_origin`` (a list) receives, per TFLite operator, the
name of the IR op it was emitted for.
"""
from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tfl

from deploy.lower.ir import Graph, IRError, Op
from search.atomic import atomic_write_bytes

BUILTIN = {
    "conv2d": tfl.BuiltinOperator.CONV_2D,
    "depthwise_conv2d": tfl.BuiltinOperator.DEPTHWISE_CONV_2D,
    "fully_connected": tfl.BuiltinOperator.FULLY_CONNECTED,
    "add": tfl.BuiltinOperator.ADD,
    "avg_pool": tfl.BuiltinOperator.AVERAGE_POOL_2D,
    "max_pool": tfl.BuiltinOperator.MAX_POOL_2D,
    "reshape": tfl.BuiltinOperator.RESHAPE,
    "requantize": tfl.BuiltinOperator.QUANTIZE,
    "pad": tfl.BuiltinOperator.PAD,
    "minimum": tfl.BuiltinOperator.MINIMUM,
    "maximum": tfl.BuiltinOperator.MAXIMUM,
}
INT4_MAX_BITS = 4  # filters at ≤ 4 bits are stored as INT4


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """Pack int8 codes in [−8, 7] two per byte, low nibble first (TFLite's INT4 layout)."""
    flat = np.asarray(codes, np.int8).ravel().astype(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def same_padding(in_hw: list[int], k: list[int], stride: list[int]) -> list[int]:
    """TFLite's SAME padding [top, left, bottom, right] for an input size, kernel and stride."""
    pads = []
    for size, kk, s in zip(in_hw, k, stride):
        out = -(-size // s)
        total = max((out - 1) * s + kk - size, 0)
        pads.append((total // 2, total - total // 2))
    return [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]


class _Writer:
    """Accumulates TFLite tensors, buffers, operator codes and operators."""

    def __init__(self, g: Graph, int8_weights: bool = False) -> None:
        self.g = g
        self.int8_weights = int8_weights
        self.model = tfl.ModelT()
        self.model.version = 3
        self.model.description = "smpq-deploy integer model"
        self.model.buffers = [tfl.BufferT()]
        self.model.operatorCodes = []
        self.sub = tfl.SubGraphT()
        self.sub.tensors, self.sub.operators = [], []
        self.codes: dict[int, int] = {}
        self.ir_tensor: dict[int, int] = {}
        self.shared: dict[tuple, tuple[int, int]] = {}

    def buffer(self, data: np.ndarray | None) -> int:
        b = tfl.BufferT()
        if data is not None:
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
        self.model.buffers.append(b)
        return len(self.model.buffers) - 1

    def tensor(self, name: str, shape: list[int], ttype: int, scale: list[float] | None = None,
               zp: list[int] | None = None, qdim: int = 0, data: np.ndarray | None = None) -> int:
        t = tfl.TensorT()
        t.name, t.shape, t.type = name, np.array(shape, np.int32), ttype
        t.buffer = self.buffer(data) if data is not None else 0
        if scale is not None:
            q = tfl.QuantizationParametersT()
            q.scale = np.array(scale, np.float32)
            q.zeroPoint = np.array(zp, np.int64)
            q.quantizedDimension = qdim
            t.quantization = q
        self.sub.tensors.append(t)
        return len(self.sub.tensors) - 1

    def act(self, idx: int) -> int:
        """The TFLite tensor of IR tensor `idx` (created on first use)."""
        if idx not in self.ir_tensor:
            s = self.g.tensors[idx]
            self.ir_tensor[idx] = self.tensor(s.name, s.shape, tfl.TensorType.INT8, [s.scale], [s.zero_point])
        return self.ir_tensor[idx]

    def like(self, idx: int, name: str, shape: list[int] | None = None) -> int:
        s = self.g.tensors[idx]
        return self.tensor(name, shape or s.shape, tfl.TensorType.INT8, [s.scale], [s.zero_point])

    def op(self, kind: str, inputs: list[int], outputs: list[int], opt_type: int = 0, options=None) -> None:
        code = BUILTIN[kind]
        if code not in self.codes:
            oc = tfl.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
            self.model.operatorCodes.append(oc)
            self.codes[code] = len(self.model.operatorCodes) - 1
        o = tfl.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self.codes[code], np.array(inputs, np.int32), np.array(outputs, np.int32)
        o.builtinOptionsType, o.builtinOptions = opt_type, options
        self.sub.operators.append(o)

    # clamps --------------------------------------------------------------------------------------
    def fused_range(self, out_idx: int, fused: int) -> tuple[int, int]:
        s = self.g.tensors[out_idx]
        quant = lambda f: s.zero_point + int(np.round(np.float32(f) / np.float32(s.scale)))  # noqa: E731
        lo, hi = -128, 127
        if fused in (tfl.ActivationFunctionType.RELU, tfl.ActivationFunctionType.RELU6):
            lo = max(lo, quant(0.0))
        if fused == tfl.ActivationFunctionType.RELU6:
            hi = min(hi, quant(6.0))
        return lo, hi

    def pick_fused(self, op: Op) -> tuple[int, tuple[int, int]]:
        """The fused activation whose range contains [act_min, act_max] with the fewest extra ops."""
        lo, hi = op.attrs["act_min"], op.attrs["act_max"]
        best = None
        A = tfl.ActivationFunctionType
        for fused in (A.RELU6, A.RELU, A.NONE):
            if fused == A.RELU6 and 6.0 / self.g.tensors[op.outputs[0]].scale >= 2**31:
                continue  # TFLite rejects a RELU6 whose bound overflows int32 (a near-zero scale)
            flo, fhi = self.fused_range(op.outputs[0], fused)
            if flo <= lo and fhi >= hi:
                extra = (flo < lo) + (fhi > hi)
                if best is None or extra < best[0]:
                    best = (extra, fused, (flo, fhi))
        assert best is not None
        return best[1], best[2]

    def emit_clamped(self, op: Op, produced_range: tuple[int, int], emit) -> None:
        """Emit the main op via emit(out_tensor) and MAXIMUM/MINIMUM for the rest of the clamp."""
        lo, hi = op.attrs.get("act_min", -128), op.attrs.get("act_max", 127)
        plo, phi = produced_range
        steps = [(k, v) for k, v, need in (("maximum", lo, plo < lo), ("minimum", hi, phi > hi)) if need]
        out = self.act(op.outputs[0])
        cur = out if not steps else self.like(op.outputs[0], f"{op.name}/unclamped")
        emit(cur)
        s = self.g.tensors[op.outputs[0]]
        for i, (kind, value) in enumerate(steps):
            const = self.tensor(f"{op.name}/{kind}_bound", [1], tfl.TensorType.INT8, [s.scale], [s.zero_point],
                                data=np.array([value], np.int8))
            dst = out if i == len(steps) - 1 else self.like(op.outputs[0], f"{op.name}/{kind}")
            self.op(kind, [cur, const], [dst], tfl.BuiltinOptions.MaximumMinimumOptions, tfl.MaximumMinimumOptionsT())
            cur = dst


def _padding(w: _Writer, op: Op, x: int, k: list[int]) -> tuple[int, int]:
    """(TFLite padding enum, input tensor) for the op's explicit padding, inserting PAD if needed."""
    pad, stride = op.attrs["padding"], op.attrs["stride"]
    in_shape = w.g.tensors[op.inputs[0]].shape
    if not any(pad):
        return tfl.Padding.VALID, x
    if pad == same_padding(in_shape[1:3], k, stride):
        return tfl.Padding.SAME, x
    if op.kind in ("avg_pool", "max_pool"):
        raise IRError(f"op '{op.name}': pooling padding {pad} is neither SAME nor VALID; TFLite cannot express it")
    t, l, b, r = pad
    shape = [in_shape[0], in_shape[1] + t + b, in_shape[2] + l + r, in_shape[3]]
    paddings = w.tensor(f"{op.name}/paddings", [4, 2], tfl.TensorType.INT32,
                        data=np.array([[0, 0], [t, b], [l, r], [0, 0]], np.int32))
    padded = w.like(op.inputs[0], f"{op.name}/padded", shape)
    w.op("pad", [x, paddings], [padded], tfl.BuiltinOptions.PadOptions, tfl.PadOptionsT())
    return tfl.Padding.VALID, padded


def _weighted(w: _Writer, op: Op) -> None:
    g = w.g
    codes, bias, w_scale = g.const(op, "weights"), g.const(op, "bias"), g.const(op, "w_scale")
    s_in = g.tensors[op.inputs[0]].scale
    int4 = op.attrs["w_bits"] <= INT4_MAX_BITS and not w.int8_weights
    qdim = 3 if op.kind == "depthwise_conv2d" else 0
    n = len(w_scale)
    shape = list(codes.shape) if op.kind != "fully_connected" else [codes.shape[0], 1, 1, codes.shape[1]]
    bscale = [float(np.float32(s_in) * np.float32(s)) for s in w_scale]
    key = (op.arrays["weights"], op.arrays["bias"], op.arrays["w_scale"], float(s_in))
    if key in w.shared:  # another instance of the same layer (other output grid): same constants
        filt, b = w.shared[key]
    else:
        filt = w.tensor(f"{op.name}/weights", shape, tfl.TensorType.INT4 if int4 else tfl.TensorType.INT8,
                        [float(s) for s in w_scale], [0] * n, qdim, pack_int4(codes) if int4 else codes.astype(np.int8))
        b = w.tensor(f"{op.name}/bias", [n], tfl.TensorType.INT32, bscale, [0] * n, 0, bias.astype(np.int32))
        w.shared[key] = (filt, b)
    fused, rng = w.pick_fused(op)
    x = w.act(op.inputs[0])
    if op.kind == "fully_connected":
        _fc_as_conv(w, op, x, filt, b, fused, rng)
        return
    k = list(codes.shape[1:3])
    padding, x = _padding(w, op, x, k)
    if op.kind == "conv2d":
        opts, otype = tfl.Conv2DOptionsT(), tfl.BuiltinOptions.Conv2DOptions
    else:
        opts, otype = tfl.DepthwiseConv2DOptionsT(), tfl.BuiltinOptions.DepthwiseConv2DOptions
        opts.depthMultiplier = 1
    opts.padding, (opts.strideH, opts.strideW) = padding, op.attrs["stride"]
    opts.dilationHFactor = opts.dilationWFactor = 1
    opts.fusedActivationFunction = fused
    w.emit_clamped(op, rng, lambda out: w.op(op.kind, [x, filt, b], [out], otype, opts))


def _reshape_to(w: _Writer, src: int, dst: int, shape: list[int], name: str) -> None:
    new = w.tensor(f"{name}/shape", [len(shape)], tfl.TensorType.INT32, data=np.array(shape, np.int32))
    opts = tfl.ReshapeOptionsT()
    opts.newShape = list(shape)
    w.op("reshape", [src, new], [dst], tfl.BuiltinOptions.ReshapeOptions, opts)


def _fc_as_conv(w: _Writer, op: Op, x: int, filt: int, b: int, fused: int, rng: tuple[int, int]) -> None:
    """FULLY_CONNECTED as RESHAPE → 1×1 CONV_2D → RESHAPE: LiteRT's per-channel FULLY_CONNECTED rounds
    differently from TFLM (±1 LSB near halves), its CONV_2D does not; TFLM's FULLY_CONNECTED also
    rejects per-channel INT4 filters, its CONV_2D takes them."""
    k, n = w.g.tensors[op.inputs[0]].shape[-1], w.g.tensors[op.outputs[0]].shape[-1]
    x4 = w.like(op.inputs[0], f"{op.name}/input_4d", [1, 1, 1, k])
    _reshape_to(w, x, x4, [1, 1, 1, k], f"{op.name}/input_4d")
    opts = tfl.Conv2DOptionsT()
    opts.padding, opts.strideH, opts.strideW = tfl.Padding.VALID, 1, 1
    opts.dilationHFactor = opts.dilationWFactor = 1
    opts.fusedActivationFunction = fused

    def emit(out: int) -> None:
        y4 = w.like(op.outputs[0], f"{op.name}/output_4d", [1, 1, 1, n])
        w.op("conv2d", [x4, filt, b], [y4], tfl.BuiltinOptions.Conv2DOptions, opts)
        _reshape_to(w, y4, out, w.g.tensors[op.outputs[0]].shape, f"{op.name}/output_2d")

    w.emit_clamped(op, rng, emit)


def _add(w: _Writer, op: Op) -> None:
    fused, rng = w.pick_fused(op)
    opts = tfl.AddOptionsT()
    opts.fusedActivationFunction = fused
    a, b = (w.act(i) for i in op.inputs)
    w.emit_clamped(op, rng, lambda out: w.op("add", [a, b], [out], tfl.BuiltinOptions.AddOptions, opts))


def _pool(w: _Writer, op: Op) -> None:
    src = w.g.tensors[op.inputs[0]]
    padding, x = _padding(w, op, w.act(op.inputs[0]), op.attrs["kernel"])
    opts = tfl.Pool2DOptionsT()
    opts.padding, (opts.strideH, opts.strideW) = padding, op.attrs["stride"]
    opts.filterHeight, opts.filterWidth = op.attrs["kernel"]
    w.emit_clamped(op, (src.qmin, src.qmax), lambda out: w.op(op.kind, [x], [out], tfl.BuiltinOptions.Pool2DOptions, opts))


def _reshape(w: _Writer, op: Op) -> None:
    _reshape_to(w, w.act(op.inputs[0]), w.act(op.outputs[0]), w.g.tensors[op.outputs[0]].shape, op.name)


def _requantize(w: _Writer, op: Op) -> None:
    x = w.act(op.inputs[0])
    w.emit_clamped(op, (-128, 127), lambda out: w.op("requantize", [x], [out], tfl.BuiltinOptions.QuantizeOptions,
                                                     tfl.QuantizeOptionsT()))


EMITTERS = {"conv2d": _weighted, "depthwise_conv2d": _weighted, "fully_connected": _weighted, "add": _add,
            "avg_pool": _pool, "max_pool": _pool, "reshape": _reshape, "requantize": _requantize}


def to_tflite(g: Graph, *, int8_weights: bool = False, op_origin: list[str] | None = None) -> bytes:
    """Serialise the IR as a TFLite flatbuffer (bytes); see the module docstring for the options."""
    w = _Writer(g, int8_weights)
    inputs = [w.act(i) for i in g.inputs]
    for op in g.ops:
        emitter = EMITTERS.get(op.kind)
        if emitter is None:
            raise IRError(f"op '{op.name}' of kind '{op.kind}' has no TFLite mapping")
        emitter(w, op)
        if op_origin is not None:
            op_origin.extend([op.name] * (len(w.sub.operators) - len(op_origin)))
    w.sub.inputs = np.array(inputs, np.int32)
    w.sub.outputs = np.array([w.act(i) for i in g.outputs], np.int32)
    w.sub.name = "main"
    w.model.subgraphs = [w.sub]
    builder = flatbuffers.Builder(1024)
    builder.Finish(w.model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def export_tflite(g: Graph, path: str | Path) -> Path:
    """Write ``model.tflite``; returns the path."""
    path = Path(path)
    atomic_write_bytes(path, to_tflite(g))
    return path
