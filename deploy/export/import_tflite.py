"""An int8 TFLite flatbuffer → the integer IR, so models made elsewhere run on our runtime bit-exactly.

Parsed with LiteRT's schema object API (``ai_edge_litert.schema_py_generated``, as deploy/export/tflite.py
writes it). Imported ops and their IR form (TFLite Micro's int8 arithmetic, its Prepare step reproduced):

* CONV_2D → conv2d (OHWI), DEPTHWISE_CONV_2D → depthwise_conv2d (1HWC, depth multiplier 1),
  FULLY_CONNECTED → fully_connected (OI); filters INT8 (w_bits 8) or packed INT4 (low nibble first, w_bits 4),
  symmetric (zero point 0), per-channel or per-tensor scales; bias INT32 (absent → 0); per-channel
  multiplier/shift from input_scale·w_scale/output_scale in double (deploy/lower/fixedpoint.conv_multiplier).
* SAME/VALID padding → explicit [top, left, bottom, right] (export_tflite.same_padding); strides as given;
  dilation 1 only.
* Fused NONE / RELU / RELU6 / RELU_N1_TO_1 → act_min/act_max, as CalculateActivationRangeQuantized
  (zero_point + round-half-away(f / scale), clamped to int8).
* ADD → add (deploy/lower/fixedpoint.add_params), AVERAGE_POOL_2D → avg_pool (input and output quantisation
  equal, as TFLite requires), RESHAPE → reshape, SOFTMAX → softmax (deploy/lower/softmax_int8.softmax_params).

Any other op, dtype or option is a one-line :class:`TFLiteImportError` naming the op and its index.
The input tensor keeps the model's own scale and zero point (e.g. KWS's zero point 83).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as tfl

from deploy.errors import DeployError
from deploy.export.tflite import same_padding
from deploy.lower.fixedpoint import add_params, conv_multiplier
from deploy.lower.ir import Graph, Op, TensorSpec
from deploy.lower.softmax_int8 import OUTPUT_SCALE, OUTPUT_ZERO_POINT, softmax_params

B = tfl.BuiltinOperator
OP_NAMES = {v: k for k, v in vars(B).items() if not k.startswith("_")}
TYPE_NAMES = {v: k for k, v in vars(tfl.TensorType).items() if not k.startswith("_")}
SUPPORTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "AVERAGE_POOL_2D", "RESHAPE", "SOFTMAX")
FILE_IDENTIFIER = b"TFL3"


class TFLiteImportError(DeployError):
    """A .tflite file this importer cannot read or does not support (one-line message)."""


def _round_half_away(x: float) -> int:
    return int(np.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def parse_model(data: bytes, source: str = "model.tflite") -> "tfl.ModelT":
    """The flatbuffer as LiteRT's object tree; one-line errors for what is not a readable TFLite model."""
    if len(data) < 8:
        raise TFLiteImportError(f"'{source}' is truncated ({len(data)} bytes): not a TFLite flatbuffer")
    if data[4:8] != FILE_IDENTIFIER:
        raise TFLiteImportError(f"'{source}' is not a TFLite model (file identifier {data[4:8]!r}, expected {FILE_IDENTIFIER!r})")
    try:
        model = tfl.ModelT.InitFromPackedBuf(bytearray(data), 0)
    except Exception as e:  # the flatbuffers reader raises struct/index/type errors on a cut or damaged buffer
        raise TFLiteImportError(f"'{source}' is truncated or corrupt ({type(e).__name__} while parsing the flatbuffer)") from None
    if not model.subgraphs or len(model.subgraphs) != 1:
        raise TFLiteImportError(f"'{source}' has {len(model.subgraphs or [])} subgraphs; import takes exactly one")
    return model


class _Importer:
    """Walks one subgraph in operator order, creating IR tensors on first use."""

    def __init__(self, model: "tfl.ModelT", source: str) -> None:
        self.model, self.source = model, source
        self.sg = model.subgraphs[0]
        self.tensors: list[TensorSpec] = []
        self.ir_index: dict[int, int] = {}
        self.ops: list[Op] = []
        self.consts: dict[str, np.ndarray] = {}
        self.where = ""

    # errors --------------------------------------------------------------------------------------
    def fail(self, msg: str) -> TFLiteImportError:
        return TFLiteImportError(f"'{self.source}' {self.where}: {msg}")

    # tensors ---------------------------------------------------------------------------------------
    def tname(self, i: int) -> str:
        n = self.sg.tensors[i].name
        return n.decode(errors="replace") if isinstance(n, bytes) else str(n)

    def quant(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        q = self.sg.tensors[i].quantization
        if q is None or q.scale is None or len(q.scale) == 0:
            raise self.fail(f"tensor '{self.tname(i)}' has no quantisation parameters (not an int8-quantised model)")
        zp = np.zeros(len(q.scale), np.int64) if q.zeroPoint is None or len(q.zeroPoint) == 0 else np.asarray(q.zeroPoint, np.int64)
        return np.asarray(q.scale, np.float32), zp, int(q.quantizedDimension)

    def data(self, i: int) -> np.ndarray | None:
        t = self.sg.tensors[i]
        buf = self.model.buffers[t.buffer] if 0 <= t.buffer < len(self.model.buffers or []) else None
        if buf is None:
            return None
        if getattr(buf, "offset", 0):
            raise self.fail(f"tensor '{self.tname(i)}' keeps its data outside the flatbuffer (offset buffers are not supported)")
        return None if buf.data is None or len(buf.data) == 0 else np.asarray(buf.data, np.uint8)

    def act(self, i: int) -> int:
        """The IR tensor of activation tensor `i` (int8, one scale and zero point)."""
        if i in self.ir_index:
            return self.ir_index[i]
        t = self.sg.tensors[i]
        if t.type != tfl.TensorType.INT8:
            kind = "a float model" if t.type in (tfl.TensorType.FLOAT32, tfl.TensorType.FLOAT16) else "not an int8 model"
            raise self.fail(f"tensor '{self.tname(i)}' is {TYPE_NAMES.get(t.type, t.type)}: {kind}; import takes "
                            f"fully int8-quantised models (int8 activations, int8/int4 filters)")
        if self.data(i) is not None:
            raise self.fail(f"tensor '{self.tname(i)}' is a constant where an activation is expected")
        scale, zp, _ = self.quant(i)
        if len(scale) != 1:
            raise self.fail(f"activation '{self.tname(i)}' has {len(scale)} scales; activations need one")
        shape = [int(s) for s in (t.shape if t.shape is not None else [])]
        if not shape or shape[0] != 1:
            raise self.fail(f"activation '{self.tname(i)}' has shape {shape}; import takes batch 1")
        self.tensors.append(TensorSpec(self.tname(i), shape, float(scale[0]), int(zp[0])))
        self.ir_index[i] = len(self.tensors) - 1
        return self.ir_index[i]

    def spec(self, i: int) -> TensorSpec:
        return self.tensors[self.act(i)]

    def filt(self, i: int, channels: int, qdim: int) -> tuple[np.ndarray, int, np.ndarray]:
        """(int8 codes in the tensor's shape, w_bits, per-channel float32 scales) of a constant filter."""
        t = self.sg.tensors[i]
        raw = self.data(i)
        if raw is None:
            raise self.fail(f"filter '{self.tname(i)}' is not a constant")
        shape = [int(s) for s in t.shape]
        n = int(np.prod(shape))
        if t.type == tfl.TensorType.INT8:
            bits, codes = 8, raw.view(np.int8)[:n]
        elif t.type == tfl.TensorType.INT4:
            nib = np.empty(raw.size * 2, np.int8)
            nib[0::2], nib[1::2] = raw & 0x0F, raw >> 4
            bits, codes = 4, ((nib ^ 8) - 8)[:n].astype(np.int8)
        else:
            raise self.fail(f"filter '{self.tname(i)}' is {TYPE_NAMES.get(t.type, t.type)}; import takes INT8 or INT4 filters")
        if codes.size != n:
            raise self.fail(f"filter '{self.tname(i)}' holds {codes.size} values for shape {shape}")
        scale, zp, dim = self.quant(i)
        if np.any(zp != 0):
            raise self.fail(f"filter '{self.tname(i)}' has a non-zero zero point; filters must be symmetric")
        if len(scale) == 1:
            scale = np.full(channels, scale[0], np.float32)
        elif len(scale) != channels or dim != qdim:
            raise self.fail(f"filter '{self.tname(i)}' has {len(scale)} scales along dimension {dim}; expected 1 or "
                            f"{channels} along dimension {qdim}")
        return codes.reshape(shape).copy(), bits, scale

    def bias(self, i: int, channels: int) -> np.ndarray:
        if i < 0:
            return np.zeros(channels, np.int32)
        t = self.sg.tensors[i]
        raw = self.data(i)
        if t.type != tfl.TensorType.INT32 or raw is None or raw.size != 4 * channels:
            raise self.fail(f"bias '{self.tname(i)}' must be a constant INT32 vector of {channels} values")
        return raw.view("<i4").astype(np.int32)

    # attributes --------------------------------------------------------------------------------------
    def act_range(self, fused: int, out: TensorSpec) -> tuple[int, int]:
        """TFLite's CalculateActivationRangeQuantized for an int8 output."""
        A = tfl.ActivationFunctionType
        quant = lambda f: out.zero_point + _round_half_away(float(np.float32(f) / np.float32(out.scale)))  # noqa: E731
        if fused == A.NONE:
            return -128, 127
        if fused == A.RELU:
            return max(-128, quant(0.0)), 127
        if fused == A.RELU6:
            return max(-128, quant(0.0)), min(127, quant(6.0))
        if fused == A.RELU_N1_TO_1:
            return max(-128, quant(-1.0)), min(127, quant(1.0))
        names = {v: k for k, v in vars(A).items() if not k.startswith("_")}
        raise self.fail(f"fused activation {names.get(fused, fused)} is not supported (NONE, RELU, RELU6, RELU_N1_TO_1)")

    def padding(self, pad: int, in_shape: list[int], k: list[int], stride: list[int]) -> list[int]:
        if pad == tfl.Padding.VALID:
            return [0, 0, 0, 0]
        if pad == tfl.Padding.SAME:
            return same_padding(in_shape[1:3], k, stride)
        raise self.fail(f"padding {pad} is neither SAME nor VALID")

    def check_out(self, out: TensorSpec, expect: list[int]) -> None:
        if [int(s) for s in out.shape] != [int(s) for s in expect]:
            raise self.fail(f"output '{out.name}' has shape {out.shape}, the op computes {expect}")

    def add_op(self, kind: str, name: str, inputs: list[int], output: int, attrs: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
        keys = {}
        for key, arr in (arrays or {}).items():
            keys[key] = f"{name}.{key}"
            self.consts[keys[key]] = arr
        self.ops.append(Op(kind, name, inputs, [output], attrs, keys))

    # ops ---------------------------------------------------------------------------------------------
    def weighted(self, kind: str, name: str, ins: list[int], out_i: int, opts) -> None:
        x, out = self.act(ins[0]), self.act(out_i)
        xs, os_ = self.tensors[x], self.tensors[out]
        wt = self.sg.tensors[ins[1]]
        if kind == "fully_connected":
            if opts is not None and opts.weightsFormat != tfl.FullyConnectedOptionsWeightsFormat.DEFAULT:
                raise self.fail("FULLY_CONNECTED with shuffled weights is not supported")
            n = int(wt.shape[0])
            codes, bits, ws = self.filt(ins[1], n, 0)
            if codes.ndim != 2 or codes.shape[1] != int(np.prod(xs.shape)):
                raise self.fail(f"filter shape {list(codes.shape)} does not match the input's {int(np.prod(xs.shape))} elements")
            if os_.shape[-1] != n or int(np.prod(os_.shape)) != n:
                raise self.fail(f"output '{os_.name}' has shape {os_.shape}; expected [1, {n}]")
            attrs: dict = {"w_bits": bits}
        else:
            depthwise = kind == "depthwise_conv2d"
            n = int(wt.shape[3] if depthwise else wt.shape[0])
            codes, bits, ws = self.filt(ins[1], n, 3 if depthwise else 0)
            if opts.dilationHFactor != 1 or opts.dilationWFactor != 1:
                raise self.fail(f"dilation {opts.dilationHFactor}×{opts.dilationWFactor} is not supported (1 only)")
            if depthwise and (codes.shape[0] != 1 or n != xs.shape[3]):
                raise self.fail(f"depth multiplier {n // max(xs.shape[3], 1)} is not supported (1 only)")
            if not depthwise and codes.shape[3] != xs.shape[3]:
                raise self.fail(f"filter has {codes.shape[3]} input channels, the input {xs.shape[3]} (grouped convolution)")
            k, stride = [int(codes.shape[1]), int(codes.shape[2])], [int(opts.strideH), int(opts.strideW)]
            pad = self.padding(opts.padding, xs.shape, k, stride)
            oh = (xs.shape[1] + pad[0] + pad[2] - k[0]) // stride[0] + 1
            ow = (xs.shape[2] + pad[1] + pad[3] - k[1]) // stride[1] + 1
            self.check_out(os_, [1, oh, ow, n])
            attrs = {"stride": stride, "padding": pad, "w_bits": bits}
        fused = opts.fusedActivationFunction if opts is not None else tfl.ActivationFunctionType.NONE
        attrs["act_min"], attrs["act_max"] = self.act_range(fused, os_)
        mult, shift = zip(*(conv_multiplier(xs.scale, float(s), os_.scale) for s in ws))
        arrays = {"weights": codes, "bias": self.bias(ins[2] if len(ins) > 2 else -1, n),
                  "multiplier": np.array(mult, np.int32), "shift": np.array(shift, np.int32), "w_scale": ws}
        self.add_op(kind, name, [x], out, attrs, arrays)

    def add(self, name: str, ins: list[int], out_i: int, opts) -> None:
        a, b, out = self.act(ins[0]), self.act(ins[1]), self.act(out_i)
        ta, tb, to = self.tensors[a], self.tensors[b], self.tensors[out]
        if ta.shape != tb.shape or ta.shape != to.shape:
            raise self.fail(f"ADD of shapes {ta.shape} and {tb.shape} (broadcasting is not supported)")
        attrs = dict(add_params(ta.scale, tb.scale, to.scale))
        attrs["act_min"], attrs["act_max"] = self.act_range(opts.fusedActivationFunction, to)
        self.add_op("add", name, [a, b], out, attrs)

    def avg_pool(self, name: str, ins: list[int], out_i: int, opts) -> None:
        x, out = self.act(ins[0]), self.act(out_i)
        xs, os_ = self.tensors[x], self.tensors[out]
        if np.float32(xs.scale) != np.float32(os_.scale) or xs.zero_point != os_.zero_point:
            raise self.fail("input and output quantisation differ (TFLite's int8 AVERAGE_POOL_2D requires them equal)")
        k, stride = [int(opts.filterHeight), int(opts.filterWidth)], [int(opts.strideH), int(opts.strideW)]
        pad = self.padding(opts.padding, xs.shape, k, stride)
        oh = (xs.shape[1] + pad[0] + pad[2] - k[0]) // stride[0] + 1
        ow = (xs.shape[2] + pad[1] + pad[3] - k[1]) // stride[1] + 1
        self.check_out(os_, [1, oh, ow, xs.shape[3]])
        lo, hi = self.act_range(opts.fusedActivationFunction, os_)
        self.add_op("avg_pool", name, [x], out, {"kernel": k, "stride": stride, "padding": pad, "act_min": lo, "act_max": hi})

    def reshape(self, name: str, ins: list[int], out_i: int, opts) -> None:
        x, out = self.act(ins[0]), self.act(out_i)
        xs, os_ = self.tensors[x], self.tensors[out]
        if int(np.prod(xs.shape)) != int(np.prod(os_.shape)):
            raise self.fail(f"RESHAPE from {xs.shape} to {os_.shape} changes the element count")
        if np.float32(xs.scale) != np.float32(os_.scale) or xs.zero_point != os_.zero_point:
            raise self.fail("RESHAPE changes the quantisation (scale or zero point)")
        self.add_op("reshape", name, [x], out, {})

    def softmax(self, name: str, ins: list[int], out_i: int, opts) -> None:
        x, out = self.act(ins[0]), self.act(out_i)
        xs, os_ = self.tensors[x], self.tensors[out]
        if xs.shape != os_.shape:
            raise self.fail(f"SOFTMAX input {xs.shape} and output {os_.shape} differ")
        if abs(os_.scale - OUTPUT_SCALE) > 1e-3 * OUTPUT_SCALE or os_.zero_point != OUTPUT_ZERO_POINT:
            raise self.fail(f"int8 SOFTMAX output must have scale 1/256 and zero point -128 (has {os_.scale}, {os_.zero_point})")
        try:
            attrs = softmax_params(float(opts.beta), xs.scale)
        except ValueError as e:
            raise self.fail(str(e)) from None
        self.add_op("softmax", name, [x], out, attrs)

    def run(self) -> Graph:
        sg = self.sg
        handlers = {"CONV_2D": lambda *a: self.weighted("conv2d", *a),
                    "DEPTHWISE_CONV_2D": lambda *a: self.weighted("depthwise_conv2d", *a),
                    "FULLY_CONNECTED": lambda *a: self.weighted("fully_connected", *a),
                    "ADD": self.add, "AVERAGE_POOL_2D": self.avg_pool, "RESHAPE": self.reshape, "SOFTMAX": self.softmax}
        if len(sg.inputs) != 1 or len(sg.outputs) != 1:
            raise TFLiteImportError(f"'{self.source}' has {len(sg.inputs)} inputs and {len(sg.outputs)} outputs; import takes one of each")
        self.where = "input"
        graph_in = self.act(int(sg.inputs[0]))
        for index, op in enumerate(sg.operators or []):
            oc = self.model.operatorCodes[op.opcodeIndex]
            code = max(int(oc.builtinCode), int(oc.deprecatedBuiltinCode))
            opname = OP_NAMES.get(code, f"builtin {code}") if code != B.CUSTOM else f"CUSTOM '{oc.customCode}'"
            self.where = f"operator {index} ({opname})"
            if opname not in handlers:
                raise self.fail(f"op {opname} is not supported (supported: {', '.join(SUPPORTED)})")
            ins = [int(i) for i in op.inputs]
            if len(op.outputs) != 1 or any(i < 0 for i in ins[:1]):
                raise self.fail("expected one input activation and one output")
            if op.builtinOptions is None and opname not in ("RESHAPE", "FULLY_CONNECTED"):
                raise self.fail("the operator has no options")
            name = f"{index:02d}_{opname.lower()}"
            try:
                handlers[opname](name, ins, int(op.outputs[0]), op.builtinOptions)
            except (IndexError, TypeError, ValueError, AttributeError) as e:  # indices or fields a damaged file got wrong
                raise self.fail(f"malformed operator ({type(e).__name__}: {e})") from None
        self.where = "output"
        out_t = int(sg.outputs[0])
        if out_t not in self.ir_index:
            raise self.fail("the output is not produced by any operator")
        meta = {"name": Path(self.source).stem, "source": "tflite", "source_file": Path(self.source).name}
        return Graph(self.tensors, self.ops, [graph_in], [self.ir_index[out_t]], self.consts, meta)


def import_tflite_bytes(data: bytes, source: str = "model.tflite") -> Graph:
    """The integer IR of an int8 TFLite flatbuffer (see the module docstring)."""
    return _Importer(parse_model(data, source), source).run()


def import_tflite(path: str | Path) -> Graph:
    """The integer IR of the int8 ``.tflite`` file at `path`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TFLiteImportError(f"'{path}' does not exist") from None
    except IsADirectoryError:
        raise TFLiteImportError(f"'{path}' is a folder, not a .tflite file") from None
    return import_tflite_bytes(data, str(path))


def quantize_input(g: Graph, values: np.ndarray) -> np.ndarray:
    """Real input values (e.g. uint8 pixels for a model whose input scale is in pixel units) → int8 codes
    with the model's input scale and zero point (TFLite's Quantize: round half away, clamp)."""
    t = g.tensors[g.inputs[0]]
    v = np.asarray(values, np.float64) / float(np.float32(t.scale))
    q = np.sign(v) * np.floor(np.abs(v) + 0.5) + t.zero_point
    return np.clip(q, -128, 127).astype(np.int8)
