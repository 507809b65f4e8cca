"""Lowering: a fixed-policy QAT model (search/qmodel.py) → the integer IR.

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
  bias go into the int32 bias (scale input_scale·w_scale). Both steps are search.qmodel's
  :func:`fold_layer` and :func:`bias_codes`, which :func:`search.qmodel.fold_batchnorm` also uses: that
  deploy-faithful fake-quant model is what the integer model is compared with (rounding the bias to the
  int32 grid costs up to ~0.4 output LSB at 2–5-bit inputs, so the unfolded QAT model is not the reference).
* Activation tensors: the QAT model quantizes a value only where a layer reads it (its ``a_quant``).
  A conv/FC/add is therefore emitted once per distinct input quantizer of its readers, each instance
  writing directly in that quantizer's a-bit grid (single rounding from the accumulator, exactly as
  fake quantization rounds the float value; ReLU/ReLU6 and the a-bit range become clamps); the
  instances share their weight/bias arrays (same npz keys, one copy in every file). Requantising one
  8-bit tensor into each reader's grid instead would round twice and flip ~s8/s_a of the codes (≈ 9 %
  at 4 bits), which measurably breaks the agreement with the fake-quant model. Readers that take the
  float value (residual ADDs, pooling, the logits) get one more instance writing an int8 tensor with a
  scale calibrated on a few batches of the QAT model (min/max; zero point −128 when never negative,
  else symmetric). Pooling/reshape outputs reach quantized readers through REQUANTIZE.
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
* Tensor arena offsets from search/planner.py's greedy planner are recorded in graph.meta
  (``arena_bytes``, ``arena_offsets`` per tensor index).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

from deploy import reference
from deploy.ir import Graph, IRError, TensorSpec
from deploy.irbuild import IRBuilder, f32
from deploy.fixedpoint import conv_multiplier
from search.qmodel import QuantConv2d, QuantLayer, QuantLinear, fit_bias, fold_batchnorm, fold_layer

_LEAVES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Identity, nn.Dropout, nn.Flatten,
           nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)
NORMALISE_CODE = 127


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


@dataclass
class _Group:
    """A fused op of the torch graph: layer(+BN)(+ReLU/ReLU6), add(+ReLU), pool, reshape or the input."""

    kind: str                       # input | layer | add | pool | reshape
    name: str
    inputs: list["_Group"]
    shape: tuple[int, ...]          # torch shape without batch (C, H, W) or (N,)
    module: nn.Module | None = None
    bn: nn.BatchNorm2d | None = None
    act: str | None = None          # relu | relu6
    pool: dict[str, Any] = field(default_factory=dict)
    node: fx.Node | None = None     # fx node whose value is this group's output
    readers: list["_Group"] = field(default_factory=list)
    lo: float = math.inf
    hi: float = -math.inf


def _qkey(layer: QuantLayer) -> tuple[int, bool, float]:
    a = layer.a_quant
    return (int(a.bits), bool(a.signed), f32(a.scale()))


def _trace(model: nn.Module, shape: tuple[int, ...]) -> fx.GraphModule:
    try:
        gm = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as e:  # noqa: BLE001 - fx raises many types
        raise IRError(f"cannot trace {type(model).__name__} with torch.fx: {str(e).splitlines()[0]}") from None
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(1, *shape))
    return gm


def _shape(n: fx.Node) -> tuple[int, ...]:
    return tuple(int(d) for d in n.meta["tensor_meta"].shape[1:])


def _is_global_pool(n: fx.Node, m: nn.Module | None) -> bool:
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return m.output_size in (1, (1, 1))
    if n.op == "call_function" and n.target is F.adaptive_avg_pool2d:
        return n.args[1] in (1, (1, 1))
    if (n.op == "call_method" and n.target == "mean") or (n.op == "call_function" and n.target is torch.mean):
        dims = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        return sorted(d % 4 for d in dims) == [2, 3]
    return False


def _groups(gm: fx.GraphModule) -> list[_Group]:
    """Fuse the fx graph into groups (see module docstring); unsupported ops raise IRError."""
    modules = dict(gm.named_modules())
    of: dict[fx.Node, _Group] = {}
    groups: list[_Group] = []

    def new(g: _Group, n: fx.Node) -> None:
        g.node = n
        for i in g.inputs:
            i.readers.append(g)
        groups.append(g)
        of[n] = g

    def fuse_target(n: fx.Node, what: str) -> _Group:
        src = of[n.args[0]]
        if len(n.args[0].users) != 1:
            raise IRError(f"{what} '{n.name}' reads a value that other ops also read; only a {what} right after a "
                          f"layer{' or add' if what != 'BatchNorm' else ''} can be lowered")
        return src

    for n in gm.graph.nodes:
        if n.op == "placeholder":
            new(_Group("input", "input", [], _shape(n)), n)
            continue
        if n.op == "output":
            continue
        m = modules.get(str(n.target)) if n.op == "call_module" else None
        label = str(n.target) if m is not None else getattr(n.target, "__name__", str(n.target))
        if isinstance(m, (QuantConv2d, QuantLinear)):
            if isinstance(m, QuantConv2d):
                if m.groups not in (1, m.in_channels) or (m.groups != 1 and m.out_channels != m.in_channels):
                    raise IRError(f"layer '{label}': grouped convolution (groups={m.groups}) is not supported")
                if tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
                    raise IRError(f"layer '{label}': only dilation 1 and explicit zero padding are supported")
            new(_Group("layer", str(n.target), [of[n.args[0]]], _shape(n), m), n)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            raise IRError(f"layer '{label}' ({type(m).__name__}) is not quantized: lower a QAT model (search.qmodel.quantize_model)")
        elif isinstance(m, nn.BatchNorm2d):
            src = fuse_target(n, "BatchNorm")
            if src.kind != "layer" or src.bn is not None or src.act is not None or not isinstance(src.module, nn.Conv2d):
                raise IRError(f"BatchNorm '{label}' does not directly follow a convolution; it cannot be folded")
            src.bn, src.node = m, n
            of[n] = src
        elif isinstance(m, (nn.ReLU, nn.ReLU6)) or (n.op != "call_module" and (
                n.target in (F.relu, torch.relu, F.relu6) or n.target == "relu"
                or (n.target is F.hardtanh and tuple(n.args[1:3]) == (0.0, 6.0)))):
            src = fuse_target(n, "ReLU")
            if src.kind not in ("layer", "add") or src.act is not None:
                raise IRError(f"activation '{label}' follows a {src.kind}; only ReLU/ReLU6 after a layer or add can be lowered")
            src.act = "relu6" if isinstance(m, nn.ReLU6) or n.target in (F.relu6, F.hardtanh) else "relu"
            src.node = n
            of[n] = src
        elif isinstance(m, (nn.Identity, nn.Dropout)) or (n.op == "call_method" and n.target == "contiguous") \
                or (n.op == "call_function" and n.target is F.dropout):
            of[n] = of[n.args[0]]
        elif n.op in ("call_function", "call_method") and n.target in (operator.add, torch.add, "add", operator.iadd):
            args = [a for a in n.args if isinstance(a, fx.Node)]
            if len(args) != 2 or len(n.args) != 2 or n.kwargs:
                raise IRError(f"add '{n.name}' must add exactly two tensors")
            new(_Group("add", n.name, [of[a] for a in args], _shape(n)), n)
        elif _is_global_pool(n, m):
            new(_Group("pool", label if m is not None else n.name, [of[n.args[0]]], _shape(n),
                       pool={"kind": "avg_pool", "global": True}), n)
            if n.op != "call_module" and n.target in ("mean", torch.mean) and len(_shape(n)) != 3:
                groups[-1].pool["flat"] = True  # mean without keepdim also flattens
        elif isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)):
            pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
            if getattr(m, "ceil_mode", False) or (isinstance(m, nn.MaxPool2d) and pair(m.dilation) != (1, 1)):
                raise IRError(f"pooling '{label}': ceil_mode/dilation are not supported")
            if isinstance(m, nn.AvgPool2d) and any(pair(m.padding)) and m.count_include_pad:
                raise IRError(f"pooling '{label}': padded AvgPool2d must use count_include_pad=False (TFLite's rule)")
            new(_Group("pool", label, [of[n.args[0]]], _shape(n), pool={
                "kind": "avg_pool" if isinstance(m, nn.AvgPool2d) else "max_pool", "kernel": pair(m.kernel_size),
                "stride": pair(m.stride or m.kernel_size), "padding": pair(m.padding)}), n)
        elif isinstance(m, nn.Flatten) or (n.op == "call_function" and n.target in (torch.flatten, torch.reshape)) \
                or (n.op == "call_method" and n.target in ("flatten", "view", "reshape")):
            src = of[n.args[0]]
            if len(src.shape) == 3 and src.shape[1:] != (1, 1):
                raise IRError(f"reshape '{label}' flattens a {src.shape[1]}×{src.shape[2]} map; only 1×1 maps can be "
                              f"flattened (add global pooling first)")
            new(_Group("reshape", n.name, [src], _shape(n)), n)
        elif n.op == "call_function" and n.target is getattr and n.args[1] == "shape" or \
                (n.op == "call_method" and n.target == "size"):
            continue
        else:
            kind = type(m).__name__ if m is not None else label
            raise IRError(f"op '{kind}' (graph node '{n.name}') cannot be lowered to the integer IR; supported: quantized "
                          f"Conv2d/Linear, BatchNorm2d, ReLU, ReLU6, add, avg/max/global pooling, flatten")
    return groups


class _Recorder(fx.Interpreter):
    """Runs the traced QAT model and records min/max of every group output."""

    def __init__(self, gm: fx.GraphModule, watch: dict[fx.Node, _Group]) -> None:
        super().__init__(gm)
        self.watch = watch

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        g = self.watch.get(n)
        if g is not None:
            g.lo, g.hi = min(g.lo, float(out.min())), max(g.hi, float(out.max()))
        return out


def _calibrated(b: IRBuilder, name: str, g: _Group, nhwc: list[int]) -> int:
    """An 8-bit int8 tensor covering the calibrated range of group `g`."""
    if g.lo >= 0:
        return b.tensor(name, nhwc, max(g.hi, 1e-8) / 255, 8, signed=False)
    return b.tensor(name, nhwc, max(abs(g.lo), abs(g.hi), 1e-8) / 127, 8, signed=True)


def _nhwc(shape: tuple[int, ...]) -> list[int]:
    return [1, shape[1], shape[2], shape[0]] if len(shape) == 3 else [1, *shape]


def _fold(layer: QuantLayer, bn: nn.BatchNorm2d | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes in TFLite layout, folded float32 per-channel scale, folded real bias) of a layer
    (search.qmodel.fold_layer, the same folding the deploy-faithful fake-quant model uses)."""
    codes, scale, bias = fold_layer(layer, bn)
    if isinstance(layer, nn.Conv2d):
        codes = codes.transpose(1, 2, 3, 0) if layer.groups != 1 else codes.transpose(0, 2, 3, 1)  # 1HWC / OHWI
    return codes.astype(np.int8), scale, bias


def tflite_requantize(acc: np.ndarray, in_scale: float, w_scale: np.ndarray, out_scale: float) -> np.ndarray:
    """Per-channel (axis 1) requantisation of int32 accumulators exactly as the IR's conv/FC ops do it
    (TFLite multipliers from float32 scales, MultiplyByQuantizedMultiplier); zero point and clamp not applied.
    The requantizer of :func:`search.qmodel.fold_batchnorm` (see :func:`faithful_model`)."""
    from deploy.fixedpoint import multiply_by_quantized_multiplier

    ms = np.array([conv_multiplier(in_scale, s, out_scale) for s in np.asarray(w_scale)], np.int64)
    view = (1, -1, *([1] * (acc.ndim - 2)))
    return multiply_by_quantized_multiplier(acc.astype(np.int64), ms[:, 0].reshape(view), ms[:, 1].reshape(view))


def faithful_model(model: nn.Module, graph: Graph) -> nn.Module:
    """The fake-quant PyTorch model that computes what `graph` (:func:`lower` of `model`) deploys, for
    evaluation: :func:`search.qmodel.fold_batchnorm` with TFLite requantisation between directly connected
    layers, plus the tensors the QAT model leaves in float, in the graph's own grids — the first layer's
    input is the normalise op's output code of each pixel value (a table of 256 per channel), and each
    residual ADD reads its inputs in the calibrated 8-bit grids of the graph (requantised from the producing
    layer's accumulator). Remaining differences are ties of the ADD/pool/requantize roundings.
    Takes the normalised float batches the QAT model takes."""
    folded = fold_batchnorm(model, tflite_requantize)
    fx_graph = _Tracer().trace(folded)
    gm = fx.GraphModule(folded, fx_graph)
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
        layer, act = _producer(arg, modules)
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
            if src is not None and src.kind == "requantize":
                ti, to = graph.tensors[src.inputs[0]], graph.tensors[src.outputs[0]]
                n.replace_input_with(n.args[0], insert(n, _Requantize(ti, to, src.attrs), n.args[0]))
        elif n.op == "output":
            n.replace_input_with(n.args[0], grid(n, graph.outputs[0], n.args[0]))
    gm.recompile()
    return gm.eval()


_NO_OP = type("_NoOp", (), {"kind": None})()


def _producer(n: fx.Node, modules: dict[str, nn.Module]) -> tuple[str | None, str | None]:
    """(the quantized layer whose output node `n` is, through Identity/ReLU/ReLU6 only, or None; the activation on the way)."""
    act = None
    while n.op == "call_module" and not isinstance(modules[str(n.target)], QuantLayer):
        m = modules[str(n.target)]
        if isinstance(m, (nn.ReLU, nn.ReLU6)):
            act = act or ("relu6" if isinstance(m, nn.ReLU6) else "relu")
        elif not isinstance(m, nn.Identity):
            return None, act
        n = n.args[0]
    return (str(n.target) if n.op == "call_module" else None), act


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
        from deploy.fixedpoint import requantize_int8

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
        raise IRError("the model has no input_shape (C, H, W): build it with search.models.build_model")
    mean, std = np.asarray(list(mean), np.float64), np.asarray(list(std), np.float64)
    if mean.shape != (shape[0],) or std.shape != (shape[0],) or (std <= 0).any():
        raise IRError(f"normalisation mean/std must have {shape[0]} entries (one per input channel) and std > 0")
    model = model.eval()
    gm = _trace(model, shape)
    groups = _groups(gm)
    with torch.no_grad():
        rec = _Recorder(gm, {g.node: g for g in groups})
        for x in ([calib] if isinstance(calib, torch.Tensor) else calib):
            rec.run(x[0] if isinstance(x, (tuple, list)) else x)
    if not np.isfinite(groups[-1].hi):
        raise IRError("calibration got no batches: pass at least one normalised input batch")
    return _emit(groups, mean, std, shape, name)


def _torch_input_codes(layer: QuantLayer, mean: np.ndarray, std: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(256, C): the input codes the fake-quant model computes for every pixel value of every channel —
    search.data.BatchLoader.normalize then the layer's own input quantizer (float32, its LSQ step)."""
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
    from deploy.fixedpoint import conv_multiplier, multiply_by_quantized_multiplier

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


def _emit(groups: list[_Group], mean: np.ndarray, std: np.ndarray, shape: tuple[int, ...], name: str) -> Graph:
    b = IRBuilder()
    tensor_of: dict[int, int] = {}            # id(group) → IR tensor of its value
    quantized: dict[tuple[int, tuple], int] = {}  # (id(group), quantizer key) → IR tensor in that grid
    outputs = [g for g in groups if not g.readers]
    x_in = b.tensor("input", [1, shape[1], shape[2], shape[0]], 1 / 255, 8, signed=True, zero_point=-128)

    def q_tensor(src: _Group, layer: QuantLayer) -> int:
        """The IR tensor holding `src`'s value in `layer`'s input-quantizer grid (requantizing if needed)."""
        key = _qkey(layer)
        if (id(src), key) in quantized:
            return quantized[(id(src), key)]
        bits, signed, step = key
        nhwc = _nhwc(src.shape)
        if src.kind == "input":
            t = b.tensor(f"{layer_name(layer)}.input", nhwc, step, bits, signed)
            code, bias = normalise_params(mean, std, b.g.tensors[t], layer, shape)
            w_scale = np.array([f32(1.0 / (k * sd)) for k, sd in zip(code, std)], np.float32)
            k = sum(op.name.split("#")[0] == "normalise" for op in b.g.ops)  # one per input grid
            b.weighted("depthwise_conv2d", f"normalise#{k}" if k else "normalise", x_in, t,
                       code.astype(np.int8).reshape(1, 1, 1, -1), w_scale, bias.astype(np.int32), 8)
        else:
            src_t = tensor_of[id(src)]
            st = b.g.tensors[src_t]
            if (st.scale, st.bits, st.zero_point) == (step, bits, -128 if not signed else 0):
                t = src_t
            else:
                t = b.tensor(f"{src.name}.q{bits}{'s' if signed else 'u'}", nhwc, step, bits, signed)
                b.requantize(f"{src.name}.requant_{layer_name(layer)}", src_t, t)
        quantized[(id(src), key)] = t
        return t

    names = {}

    def layer_name(layer: QuantLayer) -> str:
        return names.get(id(layer), "layer")

    for g in groups:
        if g.kind == "layer":
            names[id(g.module)] = g.name
    for g in groups:
        if g.kind == "input":
            continue
        nhwc = _nhwc(g.shape)
        if g.kind in ("layer", "add"):
            # one op instance per distinct reader quantizer (single rounding, like the fake-quant model),
            # plus one into a calibrated 8-bit tensor for readers that take the float value
            keys = list(dict.fromkeys(_qkey(r.module) for r in g.readers if r.kind == "layer"))
            targets = []
            for key in keys:
                bits, signed, step = key
                t = b.tensor(g.name if not targets else f"{g.name}.q{bits}{'s' if signed else 'u'}", nhwc, step, bits, signed)
                quantized[(id(g), key)] = t
                targets.append(t)
            if any(r.kind != "layer" for r in g.readers) or g in outputs:
                targets.append(_calibrated(b, g.name if not targets else f"{g.name}.float8", g, nhwc))
            first = None
            for i, out in enumerate(targets):
                op_name = g.name if i == 0 else f"{g.name}#{i}"
                ot = b.g.tensors[out]
                act_min = ot.zero_point if g.act else None
                act_max = ot.zero_point + int(np.floor(6.0 / ot.scale + 0.5)) if g.act == "relu6" else None
                if g.kind == "layer":
                    op = _emit_layer(b, g, op_name, q_tensor(g.inputs[0], g.module), out, act_min, act_max, first)
                    first = first or op
                else:
                    a, c = (tensor_of[id(inp)] for inp in g.inputs)
                    b.add(op_name, a, c, out, act_min, act_max)
            out = targets[-1]
        elif g.kind == "pool":
            src = tensor_of[id(g.inputs[0])]
            in_shape = b.g.tensors[src].shape
            if g.pool.get("global"):
                kernel, stride, pad = (in_shape[1], in_shape[2]), (1, 1), (0, 0, 0, 0)
                pooled = b.like(g.name, src, [1, 1, 1, in_shape[3]])
            else:
                kernel, stride = g.pool["kernel"], g.pool["stride"]
                ph, pw = g.pool["padding"]
                pad = (ph, pw, ph, pw)
                pooled = b.like(g.name, src, [1, g.shape[1], g.shape[2], g.shape[0]])
            b.pool(g.pool["kind"], g.name, src, pooled, kernel, stride, pad)
            out = pooled
            if g.pool.get("flat"):
                out = b.like(g.name + ".flat", pooled, nhwc)
                b.reshape(g.name + ".flat", pooled, out)
        elif g.kind == "reshape":
            src = tensor_of[id(g.inputs[0])]
            out = b.like(g.name, src, nhwc)
            b.reshape(g.name, src, out)
        tensor_of[id(g)] = out
    if len(outputs) != 1:
        raise IRError(f"the model has {len(outputs)} outputs; exactly one is supported")
    graph = b.finish([x_in], [tensor_of[id(outputs[0])]], name=name, mean=mean.tolist(), std=std.tolist())
    plan_ir_arena(graph)
    return graph


def _emit_layer(b: IRBuilder, g: _Group, name: str, x: int, out: int, act_min: int | None, act_max: int | None,
                share=None):
    """One conv2d / depthwise_conv2d / fully_connected op of layer group `g` (BN folded)."""
    layer = g.module
    codes, w_scale, bias_real = _fold(layer, g.bn)
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
                      act_min, act_max, share)


def plan_ir_arena(g: Graph) -> None:
    """Record the format-independent IR arena in g.meta: every IR tensor (reshapes too), no scratch, output live to the last op."""
    from search.planner import Buffer, live_ranges, plan_greedy

    lives = live_ranges(len(g.tensors), [(op.inputs, op.outputs) for op in g.ops], g.inputs, g.outputs, end=len(g.ops) - 1)
    bufs = [Buffer(int(np.prod(t.shape)), *lives[i], t.name) for i, t in enumerate(g.tensors)]
    plan = plan_greedy(bufs)
    g.meta["arena_bytes"] = plan.arena_bytes
    g.meta["arena_offsets"] = list(plan.offsets)
    g.meta["arena_alignment"] = plan.alignment
