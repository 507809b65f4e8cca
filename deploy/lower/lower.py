"""Lowering: a fixed-policy QAT model (search/nn/qmodel.py) → the integer IR.

Decisions (each keeps the integer model faithful to the fake-quant PyTorch model):

* Input: raw uint8 pixels, as an MLPerf Tiny board receives them, enter as int8 codes pixel − 128
  (scale 1/255, zero point −128). The dataset normalisation (pixel/255 − mean_c)/std_c is per channel,
  so it cannot be folded into a per-tensor input scale, nor into the first layer's codes without
  re-quantising them, nor into its bias without breaking zero padding at the borders. It becomes a
  1×1 depthwise "normalise" op (w_bits 8, code k_c per channel, w_scale 1/(k_c·std_c), bias
  ≈ −mean_c·255·k_c; k_c and the bias chosen so that all 256 pixel values give exactly the codes of
  the fake-quant model's float32 pipeline, see :func:`normalise_params`) whose output is quantised exactly as the first layer's input quantizer
  (``a_quant``) quantises the normalised image; padding of the first layer is then zero, as in torch.
* BatchNorm (eval statistics) is folded into the per-output-channel weight SCALE, codes unchanged:
  weight quantisation is per output channel, BN is per output channel, so k_o·(codes·s_o) =
  codes·(k_o·s_o) exactly (a negative k_o negates the channel's codes); BN's shift and the layer's
  bias go into the int32 bias (scale input_scale·w_scale). Both steps are search.nn.qmodel's
  :func:`fold_layer` and :func:`bias_codes`, which :func:`search.nn.qmodel.fold_batchnorm` also uses: that
  deploy-faithful fake-quant model is what the integer model is compared with (rounding the bias to the
  int32 grid costs up to ~0.4 output LSB at 2–5-bit inputs, so the unfolded QAT model is not the reference).
* Activation tensors: the QAT model quantizes a value only where a layer reads it (its ``a_quant``).
  The lowering emits :func:`search.nn.graph.runtime_schedule` op for op — the schedule the cost model
  prices — so every node runs once: a conv/FC/add read by exactly one quantized layer writes
  directly in that layer's a-bit grid (single rounding from the accumulator, as fake quantization
  rounds the float value; ReLU/ReLU6 and the a-bit range become clamps). Any other value (residual
  paths, pooling, a value read at several grids, the logits) is written once into an int8 tensor with
  a scale calibrated on a few batches of the QAT model (min/max; zero point −128 when never negative,
  else symmetric), and each quantized layer reading it gets a REQUANTIZE into its grid right before it.
  Requantising rounds twice (the 8-bit grid, then the reader's), which :func:`faithful_model` models
  exactly; the alternative, running the producer once per reader grid (IR version 1), cost a second
  convolution/add and its output tensor in the arena (resnet8 W8A8: 442k MACs, arena 65,536 → 50,304 B).
* Pooling keeps its input's quantisation (TFLite's rule); flatten/reshape is a reshape; the logits are
  8-bit signed, calibrated.
* Supported torch ops: QuantConv2d (groups 1 or depthwise, zero padding, dilation 1), QuantLinear,
  BatchNorm2d after a layer, ReLU/ReLU6 after a layer or an add, add of two tensors, AvgPool2d /
  MaxPool2d / global average pooling (AdaptiveAvgPool2d(1), adaptive_avg_pool2d(·, 1), spatial mean),
  flatten/reshape to (N, C) of a 1×1 map, Identity/Dropout. Anything else is a one-line IRError.
* Fidelity: :func:`faithful_model` is the fake-quant PyTorch model of what is deployed (folded BN, int32
  biases, TFLite's double-rounding requantisation, the normalise op and the calibrated 8-bit tensors);
  it reproduces the integer reference's codes (measured bit-exact on trained resnet8 and random mbv2).
  The unfolded QAT model agrees only ~95 % top-1 at 2–5 bits, mostly because TFLite's
  MultiplyByQuantizedMultiplier rounds twice (up to 0.25 LSB off when s_in·s_w/s_out < 1/2).
* The arena is not planned here: the runtime's exporter plans it (search/planner.py's ``plan_arena``).
"""
from __future__ import annotations

import math
import operator
from typing import Any, Iterable

import numpy as np
import torch
from torch import fx, nn

from deploy.lower import reference
from deploy.lower.ir import Graph, IRError, Op, TensorSpec
from deploy.lower.irbuild import IRBuilder, f32
from deploy.lower.fixedpoint import conv_multiplier
from search.errors import SearchError
from search.nn.graph import MODIFYING, QUANTIZABLE, ExecGraph, Node, RuntimeOp, Schedule, runtime_schedule, trace_graph
from search.nn.qmodel import QuantLayer, fit_bias, fold_batchnorm, fold_layer

NORMALISE_CODE = 127
_VIEWS = ("flatten", "reshape")


def _qkey(layer: QuantLayer) -> tuple[int, bool, float]:
    a = layer.a_quant
    return (int(a.bits), bool(a.signed), f32(a.scale()))


def _trace(model: nn.Module, shape: tuple[int, ...]) -> tuple[fx.GraphModule, ExecGraph, Schedule]:
    """The model's execution graph and the schedule the device runs (search/nn/graph.py, shared with the cost model)."""
    try:
        gm, graph = trace_graph(model, shape)
    except SearchError as e:
        raise IRError(str(e)) from None
    return gm, graph, runtime_schedule(graph)


def _label(n: Node) -> str:
    return n.module or n.fx_name


def _check(model: nn.Module, graph: ExecGraph, sched: Schedule) -> None:
    """One-line IRErrors for what the integer IR cannot express (the graph walker accepts more)."""
    for n in graph.nodes:
        m = model.get_submodule(n.module) if n.module else None
        if n.quantizable:
            if not isinstance(m, QuantLayer):
                raise IRError(f"layer '{_label(n)}' ({type(m).__name__}) is not quantized: lower a QAT model "
                              f"(search.nn.qmodel.quantize_model)")
            if isinstance(m, nn.Conv2d):
                if m.groups != 1 and m.out_channels != m.in_channels:
                    raise IRError(f"layer '{_label(n)}': grouped convolution (groups={m.groups}) is not supported")
                if tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
                    raise IRError(f"layer '{_label(n)}': only dilation 1 and explicit zero padding are supported")
        if n.in_place and n.op_type in MODIFYING and n.output in graph.inputs:
            raise IRError(f"'{_label(n)}' modifies the model input; only a BatchNorm/ReLU after a layer or add can be lowered")
        if n.in_place and n.op_type in _VIEWS and len(n.in_shapes[0]) == 3 and n.in_shapes[0][1:] != (1, 1):
            raise IRError(f"reshape '{n.fx_name}' flattens a {n.in_shapes[0][1]}×{n.in_shapes[0][2]} map; only 1×1 maps "
                          f"can be flattened (add global pooling first)")
    for op in sched.ops:
        if op.kind == "elementwise":
            what = "BatchNorm" if op.node.op_type == "bn" else "ReLU"
            raise IRError(f"{what} '{_label(op.node)}' reads a value that other ops also read; only a {what} right "
                          f"after a layer{' or add' if what != 'BatchNorm' else ''} can be lowered")
        folded = [m for m in op.fused if m.op_type in MODIFYING]
        for i, m in enumerate(folded):
            if m.op_type == "bn":
                if i or op.kind != "conv2d" and op.kind != "depthwise_conv2d" or \
                        not isinstance(model.get_submodule(m.module or ""), nn.BatchNorm2d):
                    raise IRError(f"BatchNorm '{_label(m)}' does not directly follow a convolution; it cannot be folded")
            elif op.kind not in QUANTIZABLE + ("add",) or any(f.op_type != "bn" for f in folded[:i]):
                after = op.kind if op.kind == "pool" or i == 0 else folded[i - 1].op_type
                raise IRError(f"activation '{_label(m)}' follows a {after}; only ReLU/ReLU6 after a layer or add can be lowered")
        if op.kind == "pool":
            _pool_attrs(model, op.node)


def _pool_attrs(model: nn.Module, n: Node) -> dict[str, Any]:
    """The IR attributes of a pool node (global average, or a module AvgPool2d / MaxPool2d); IRError otherwise."""
    kind = n.attrs["kind"]
    if kind in ("adaptive_avg", "mean"):
        if len(n.out_shape) == 3 and n.out_shape[1:] != (1, 1):
            raise IRError(f"pooling '{_label(n)}': adaptive pooling to {n.out_shape[1]}×{n.out_shape[2]} is not supported "
                          f"(only global pooling to 1×1)")
        return {"kind": "avg_pool", "global": True, "flat": len(n.out_shape) != 3}
    m = model.get_submodule(n.module) if n.module else None
    if not isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)):
        raise IRError(f"pooling '{_label(n)}': functional avg/max pooling cannot be lowered; use nn.AvgPool2d / nn.MaxPool2d")
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    if getattr(m, "ceil_mode", False) or (isinstance(m, nn.MaxPool2d) and pair(m.dilation) != (1, 1)):
        raise IRError(f"pooling '{_label(n)}': ceil_mode/dilation are not supported")
    if isinstance(m, nn.AvgPool2d) and any(pair(m.padding)) and m.count_include_pad:
        raise IRError(f"pooling '{_label(n)}': padded AvgPool2d must use count_include_pad=False (TFLite's rule)")
    return {"kind": "avg_pool" if isinstance(m, nn.AvgPool2d) else "max_pool", "kernel": pair(m.kernel_size),
            "stride": pair(m.stride or m.kernel_size), "padding": pair(m.padding)}


def _value_node(op: RuntimeOp) -> str:
    """The fx node holding `op`'s output value (after the in-place ops folded into it)."""
    return (op.fused[-1] if op.fused else op.node).fx_name


class _Recorder(fx.Interpreter):
    """Runs the traced QAT model and records min/max of the watched fx nodes' outputs."""

    def __init__(self, gm: fx.GraphModule, watch: set[str]) -> None:
        super().__init__(gm)
        self.range = {name: (math.inf, -math.inf) for name in watch}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.range:
            lo, hi = self.range[n.name]
            self.range[n.name] = min(lo, float(out.min())), max(hi, float(out.max()))
        return out


def _calibrated(b: IRBuilder, name: str, lo: float, hi: float, nhwc: list[int]) -> int:
    """An 8-bit int8 tensor covering the calibrated range [lo, hi]."""
    if lo >= 0:
        return b.tensor(name, nhwc, max(hi, 1e-8) / 255, 8, signed=False)
    return b.tensor(name, nhwc, max(abs(lo), abs(hi), 1e-8) / 127, 8, signed=True)


def _nhwc(shape: tuple[int, ...]) -> list[int]:
    return [1, shape[1], shape[2], shape[0]] if len(shape) == 3 else [1, *shape]


def _fold(layer: QuantLayer, bn: nn.BatchNorm2d | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes in TFLite layout, folded float32 per-channel scale, folded real bias) of a layer
    (search.nn.qmodel.fold_layer, the same folding the deploy-faithful fake-quant model uses)."""
    codes, scale, bias = fold_layer(layer, bn)
    if isinstance(layer, nn.Conv2d):
        codes = codes.transpose(1, 2, 3, 0) if layer.groups != 1 else codes.transpose(0, 2, 3, 1)  # 1HWC / OHWI
    return codes.astype(np.int8), scale, bias


def tflite_requantize(acc: np.ndarray, in_scale: float, w_scale: np.ndarray, out_scale: float) -> np.ndarray:
    """Per-channel (axis 1) requantisation of int32 accumulators exactly as the IR's conv/FC ops do it
    (TFLite multipliers from float32 scales, MultiplyByQuantizedMultiplier); zero point and clamp not applied.
    The requantizer of :func:`search.nn.qmodel.fold_batchnorm` (see :func:`faithful_model`)."""
    from deploy.lower.fixedpoint import multiply_by_quantized_multiplier

    ms = np.array([conv_multiplier(in_scale, s, out_scale) for s in np.asarray(w_scale)], np.int64)
    view = (1, -1, *([1] * (acc.ndim - 2)))
    return multiply_by_quantized_multiplier(acc.astype(np.int64), ms[:, 0].reshape(view), ms[:, 1].reshape(view))


def faithful_model(model: nn.Module, graph: Graph) -> nn.Module:
    """The fake-quant PyTorch model that computes what `graph` (:func:`lower` of `model`) deploys, for
    evaluation: :func:`search.nn.qmodel.fold_batchnorm` with TFLite requantisation between directly connected
    layers, plus the tensors the QAT model leaves in float, in the graph's own grids — the first layer's
    input is the normalise op's output code of each pixel value (a table of 256 per channel), and each
    residual ADD reads its inputs in the calibrated 8-bit grids of the graph (requantised from the producing
    layer's accumulator). Remaining differences are ties of the ADD/pool/requantize roundings.
    Takes the normalised float batches the QAT model takes."""
    folded = fold_batchnorm(model, tflite_requantize)
    gm, folded_graph = trace_graph(folded)
    fx_graph = gm.graph
    value_of = {m.fx_name: op for op in runtime_schedule(folded_graph).ops if op.node is not None
                for m in (op.node, *op.fused)}  # fx node → the op whose output value it holds
    modules = dict(gm.named_modules())
    ops = {op.name: op for op in graph.ops}
    mean, std = (torch.tensor(graph.meta[k], dtype=torch.float64).view(1, -1, 1, 1) for k in ("mean", "std"))
    normalise_of = {op.outputs[0]: op for op in graph.ops if op.name.split("#")[0] == "normalise"}
    pixels = (np.arange(256, dtype=np.int64) - 128).astype(np.int8).reshape(256, 1, 1, 1)
    count = 0

    def pixel_codes(layer: str) -> nn.Module:
        """Pixel → `layer`'s input codes, through the normalise op that feeds it (a table of 256 per channel)."""
        norm = normalise_of[ops[layer].inputs[0]]
        out_t = graph.tensors[norm.outputs[0]]
        codes = reference.KERNELS[norm.kind](graph, norm, np.repeat(pixels, len(graph.meta["mean"]), axis=3))
        table = torch.from_numpy(codes[:, 0, 0, :].astype(np.float64) - out_t.zero_point)  # (256, C)
        return _PixelCodes(mean, std, table, float(np.float32(out_t.scale)))

    def insert(before: fx.Node, mod: nn.Module, arg: fx.Node) -> fx.Node:
        nonlocal count
        count += 1
        gm.add_submodule(f"faithful_{count}", mod)
        with fx_graph.inserting_before(before):
            return fx_graph.call_module(f"faithful_{count}", (arg,))

    def grid(before: fx.Node, tensor: int, arg: fx.Node) -> fx.Node:
        t = graph.tensors[tensor]
        src = value_of.get(arg.name)  # the op whose output `arg` is (None: an inserted grid, or the input)
        layer = src.node.name if src is not None and src.node.quantizable else None
        act = src.act if src is not None else None
        hi = min(t.qmax, t.zero_point + int(np.floor(6.0 / t.scale + 0.5))) if act == "relu6" else t.qmax
        return insert(before, _ToGrid(float(np.float32(t.scale)), t.zero_point, max(t.qmin, t.zero_point) if act
                                      else t.qmin, hi, modules[layer] if layer else None, act == "relu6"), arg)

    for n in list(fx_graph.nodes):
        if n.op == "placeholder":
            for user in list(n.users):
                if user.op == "call_module" and isinstance(modules[str(user.target)], QuantLayer):
                    user.replace_input_with(n, insert(user, pixel_codes(str(user.target)), n))
        elif n.op == "call_function" and n.target in (operator.add, torch.add) and n.name in ops:
            n.args = tuple(grid(n, ti, a) for a, ti in zip(n.args, ops[n.name].inputs))
        elif n.op in ("call_module", "call_function", "call_method") and \
                ops.get(str(n.target) if n.op == "call_module" else n.name, _NO_OP).kind in ("avg_pool", "max_pool"):
            op = ops[str(n.target) if n.op == "call_module" else n.name]
            n.replace_input_with(n.args[0], grid(n, op.inputs[0], n.args[0]))
            after = n.next
            out = grid(after, op.outputs[0], n)
            for user in [u for u in n.users if u is not out]:
                user.replace_input_with(n, out)
        elif n.op == "call_module" and isinstance(modules[str(n.target)], QuantLayer):
            src = next((op for op in graph.ops if ops[str(n.target)].inputs[0] in op.outputs), None)
            if src is not None and src.kind == "requantize":  # the 8-bit value, then the requantisation into the grid
                ti, to = graph.tensors[src.inputs[0]], graph.tensors[src.outputs[0]]
                n.replace_input_with(n.args[0], insert(n, _Requantize(ti, to, src.attrs),
                                                       grid(n, src.inputs[0], n.args[0])))
        elif n.op == "output":
            n.replace_input_with(n.args[0], grid(n, graph.outputs[0], n.args[0]))
    gm.recompile()
    return gm.eval()


_NO_OP = type("_NoOp", (), {"kind": None})()


class _PixelCodes(nn.Module):
    """The normalise op's output (real values) for a normalised image: pixels recovered, looked up per channel."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, table: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.mean, self.std, self.table, self.scale = mean, std, table, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.round((x.double() * self.std + self.mean) * 255).long().clamp(0, 255)
        return self.table[p, torch.arange(p.shape[1]).view(1, -1, 1, 1)] * self.scale


class _Requantize(nn.Module):
    """The IR's REQUANTIZE (TFLite int8 QUANTIZE) of an on-grid real value from tensor `ti`'s grid to `to`'s."""

    def __init__(self, ti: TensorSpec, to: TensorSpec, attrs: dict[str, Any]) -> None:
        super().__init__()
        self.ti, self.to, self.attrs = ti, to, attrs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from deploy.lower.fixedpoint import requantize_int8

        codes = torch.round(x.double() / np.float32(self.ti.scale)).long().cpu().numpy() + self.ti.zero_point
        a = self.attrs
        out = requantize_int8(codes, self.ti.zero_point, self.to.zero_point, a["multiplier"], a["shift"],
                              a.get("act_min", -128), a.get("act_max", 127))
        return torch.from_numpy((out.astype(np.float64) - self.to.zero_point) * np.float32(self.to.scale)).to(x.device)


class _ToGrid(nn.Module):
    """A value in an IR tensor's grid: requantised from `layer`'s accumulator as its integer op does, else rounded."""

    def __init__(self, scale: float, zp: int, lo: int, hi: int, layer: QuantLayer | None, relu6: bool = False) -> None:
        super().__init__()
        self.scale, self.zp, self.lo, self.hi, self.relu6 = scale, zp, lo, hi, relu6
        self.layer = [layer]  # not a submodule: the layer stays where it is in the model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer[0]
        if layer is not None:
            acc_scale = layer.deployed_acc_scale.view(1, -1, *([1] * (x.dim() - 2)))
            acc = torch.round(x.double() / acc_scale).long()
            s_in = float(np.float32(layer.a_quant.scale()))
            w_scale = (layer.deployed_acc_scale.cpu().numpy() / s_in).astype(np.float32)
            codes = torch.from_numpy(tflite_requantize(acc.cpu().numpy(), s_in, w_scale, self.scale)).to(x.device)
        else:
            v = x.double() / self.scale + self.zp  # averages of codes (pooling) hit exact halves: like the IR,
            codes = torch.sign(v) * torch.floor(torch.abs(v) + 0.5 + 1e-9) - self.zp  # round stored codes away from 0
        codes = (codes + self.zp).clamp(self.lo, self.hi)
        if self.relu6:  # ReLU6 hid the accumulator of saturated values: the integer op clamps them to hi
            codes = torch.where(x >= 6.0, self.hi, codes)
        return (codes - self.zp).double() * self.scale


def lower(model: nn.Module, mean: Iterable[float], std: Iterable[float], calib: Iterable[torch.Tensor] | torch.Tensor,
          name: str = "model") -> Graph:
    """The integer IR of a fixed-policy QAT `model` (eval mode; BN statistics used as they are).

    `mean`/`std`: the dataset normalisation (per channel, pixel/255 units) the model was trained with;
    `calib`: normalised float batches (N, C, H, W) to calibrate the tensors the QAT model leaves in
    floating point (residual paths, add outputs, logits).
    """
    shape = tuple(getattr(model, "input_shape", ()) or ())
    if len(shape) != 3:
        raise IRError("the model has no input_shape (C, H, W): build it with search.nn.models.build_model")
    mean, std = np.asarray(list(mean), np.float64), np.asarray(list(std), np.float64)
    if mean.shape != (shape[0],) or std.shape != (shape[0],) or (std <= 0).any():
        raise IRError(f"normalisation mean/std must have {shape[0]} entries (one per input channel) and std > 0")
    model = model.eval()
    gm, graph, sched = _trace(model, shape)
    _check(model, graph, sched)
    if len(graph.outputs) != 1:
        raise IRError(f"the model has {len(graph.outputs)} outputs; exactly one is supported")
    with torch.no_grad():
        rec = _Recorder(gm, {_value_node(op) for op in sched.ops if op.node is not None})
        for x in ([calib] if isinstance(calib, torch.Tensor) else calib):
            rec.run(x[0] if isinstance(x, (tuple, list)) else x)
    if not all(np.isfinite(v).all() for v in rec.range.values()):
        raise IRError("calibration got no batches: pass at least one normalised input batch")
    return _emit(model, graph, sched, rec.range, mean, std, shape, name)


def _torch_input_codes(layer: QuantLayer, mean: np.ndarray, std: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(256, C): the input codes the fake-quant model computes for every pixel value of every channel —
    search.nn.data.BatchLoader.normalize then the layer's own input quantizer (float32, its LSQ step)."""
    x = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1).expand(256, *shape).float()
    x = (x / 255.0 - torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)) / \
        torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    with torch.no_grad():
        fq = layer.a_quant(x)
    return torch.round(fq / layer.a_quant.step.detach()).numpy()[:, :, 0, 0].astype(np.int64)


def normalise_params(mean: np.ndarray, std: np.ndarray, out: TensorSpec, layer: QuantLayer,
                     shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (weight code k, int32 bias) of the normalise op, chosen so that the integer op
    reproduces the fake-quant model's input codes for all 256 pixel values wherever possible.

    Only 256 values per channel exist, so a few of them can sit within float32 noise of a rounding tie;
    among k ∈ [1, 127] and biases next to round(−mean·255·k) the first exact match is taken (else the
    closest), so the integer model quantises the image exactly as the QAT model does."""
    from deploy.lower.fixedpoint import conv_multiplier, multiply_by_quantized_multiplier

    pixels = np.arange(256, dtype=np.int64)
    codes, biases = [], []
    target = _torch_input_codes(layer, mean, std, shape) + out.zero_point
    for c, (m, sd) in enumerate(zip(mean, std)):
        want = target[:, c]
        best = None
        for k in range(NORMALISE_CODE, 0, -1):
            mult, shift = conv_multiplier(1 / 255, f32(1.0 / (k * sd)), out.scale)
            b0 = int(np.round(-m * 255 * k))
            for bias in (b0, b0 - 1, b0 + 1):
                got = np.clip(multiply_by_quantized_multiplier(k * pixels + bias, mult, shift) + out.zero_point,
                              out.qmin, out.qmax)
                miss = int((got != want).sum())
                if best is None or miss < best[0]:
                    best = (miss, k, bias)
                if miss == 0:
                    break
            if best[0] == 0:
                break
        codes.append(best[1])
        biases.append(best[2])
    return np.array(codes), np.array(biases, np.int64)


def _emit(model: nn.Module, graph: ExecGraph, sched: Schedule, ranges: dict[str, tuple[float, float]],
          mean: np.ndarray, std: np.ndarray, shape: tuple[int, ...], name: str) -> Graph:
    """The IR of `sched`: one IR op per runtime op, in its order (plus a reshape per folded view)."""
    b = IRBuilder()
    x_in = b.tensor("input", [1, shape[1], shape[2], shape[0]], 1 / 255, 8, signed=True, zero_point=-128)
    ir = {t.id: x_in for t in sched.tensors if t.source in graph.inputs and t.grid_of is None}  # runtime → IR tensor
    layers: dict[str, QuantLayer] = {n.name: model.get_submodule(n.module) for n in graph.layers()}
    normalised = 0
    for op in sched.ops:
        nhwc = _nhwc(sched.tensors[op.output].shape)
        if op.kind == "normalise":  # the raw input into the reader's grid
            layer = layers[op.reader.name]
            bits, signed, step = _qkey(layer)
            out = b.tensor(f"{op.reader.name}.input", nhwc, step, bits, signed)
            code, bias = normalise_params(mean, std, b.g.tensors[out], layer, shape)
            w_scale = np.array([f32(1.0 / (k * sd)) for k, sd in zip(code, std)], np.float32)
            b.weighted("depthwise_conv2d", f"normalise#{normalised}" if normalised else "normalise", x_in, out,
                       code.astype(np.int8).reshape(1, 1, 1, -1), w_scale, bias.astype(np.int32), 8)
            normalised += 1
        elif op.kind == "requantize":  # an 8-bit value into the reader's grid
            src = ir[op.inputs[0]]
            bits, signed, step = _qkey(layers[op.reader.name])
            out = b.tensor(f"{op.reader.name}.input", nhwc, step, bits, signed)  # one per reader: a unique name
            b.requantize(f"{b.g.tensors[src].name}.requant_{op.reader.name}", src, out)
        elif op.kind == "pool":
            out = _emit_pool(b, op, _pool_attrs(model, op.node), ir[op.inputs[0]])
        else:  # a layer or an add, written in its reader's grid or in a calibrated 8-bit tensor
            grid = sched.tensors[op.output].grid_of
            if grid is not None:
                bits, signed, step = _qkey(layers[grid])
                out = b.tensor(op.name, nhwc, step, bits, signed)
            else:
                out = _calibrated(b, op.name, *ranges[_value_node(op)], nhwc)
            ot = b.g.tensors[out]
            act_min = ot.zero_point if op.act else None
            act_max = ot.zero_point + int(np.floor(6.0 / ot.scale + 0.5)) if op.act == "relu6" else None
            if op.node.quantizable:
                bn = next((m for m in op.fused if m.op_type == "bn"), None)
                _emit_layer(b, layers[op.name], bn and model.get_submodule(bn.module), op.name, ir[op.inputs[0]], out,
                            act_min, act_max)
            else:
                b.add(op.name, ir[op.inputs[0]], ir[op.inputs[1]], out, act_min, act_max)
        for v in op.fused:  # views: a reshape op each
            if v.op_type in _VIEWS:
                view = b.like(v.fx_name, out, _nhwc(v.out_shape))
                b.reshape(v.fx_name, out, view)
                out = view
        ir[op.output] = out
    final = next(t.id for t in sched.tensors if t.source == graph.outputs[0] and t.grid_of is None)
    return b.finish([x_in], [ir[final]], name=name, mean=mean.tolist(), std=std.tolist())


def _emit_pool(b: IRBuilder, op: RuntimeOp, pool: dict[str, Any], src: int) -> int:
    """An avg_pool / max_pool op (global pooling: kernel = the input map), then a reshape when it also flattens."""
    in_shape = b.g.tensors[src].shape
    n = op.node
    if pool.get("global"):
        kernel, stride, pad = (in_shape[1], in_shape[2]), (1, 1), (0, 0, 0, 0)
        pooled = b.like(op.name, src, [1, 1, 1, in_shape[3]])
    else:
        kernel, stride = pool["kernel"], pool["stride"]
        ph, pw = pool["padding"]
        pad = (ph, pw, ph, pw)
        pooled = b.like(op.name, src, [1, n.out_shape[1], n.out_shape[2], n.out_shape[0]])
    b.pool(pool["kind"], op.name, src, pooled, kernel, stride, pad)
    if not pool.get("flat"):
        return pooled
    out = b.like(op.name + ".flat", pooled, _nhwc(n.out_shape))
    b.reshape(op.name + ".flat", pooled, out)
    return out


def _emit_layer(b: IRBuilder, layer: QuantLayer, bn: nn.BatchNorm2d | None, name: str, x: int, out: int,
                act_min: int | None, act_max: int | None) -> Op:
    """One conv2d / depthwise_conv2d / fully_connected op of `layer` (BN folded)."""
    codes, w_scale, bias_real = _fold(layer, bn)
    s_in = b.g.tensors[x].scale
    depthwise = isinstance(layer, nn.Conv2d) and layer.groups != 1  # 1HWC: channels last
    codes, w_scale, bias = fit_bias(codes, w_scale, bias_real, s_in, channel_axis=-1 if depthwise else 0)
    if isinstance(layer, nn.Linear):
        kind, stride, pad = "fully_connected", (1, 1), (0, 0, 0, 0)
    else:
        kind = "conv2d" if layer.groups == 1 else "depthwise_conv2d"
        ph, pw = layer.padding
        stride, pad = tuple(layer.stride), (ph, pw, ph, pw)
    return b.weighted(kind, name, x, out, codes, w_scale, bias.astype(np.int32), layer.w_quant.bits, stride, pad,
                      act_min, act_max)
