"""Fixed-policy QAT models: any zoo model with its Conv2d/Linear layers swapped for quantized ones.

:func:`quantize_model` replaces every quantizable layer (``search.nn.models.quantizable_layers``) by a
:class:`QuantConv2d` / :class:`QuantLinear` — subclasses of ``nn.Conv2d`` / ``nn.Linear`` with the same
name, weight and bias — that fake-quantizes its INPUT activation (``a_quant``, a_bits) and its WEIGHT
(``w_quant``, w_bits, per output channel). Nothing else changes: BatchNorm, ReLU, adds and pooling stay
floating point during QAT (deploy folds BN and lowers the rest to integer ops).

Activation signedness is decided from data: a layer's input quantizer is signed iff a negative value
is observed at that input — the network input and e.g. MobileNetV2's linear-bottleneck outputs are
signed; inputs fed by ReLU/ReLU6 (or pooling of them) never are. :func:`quantize_model` decides it
provisionally from one seeded random N(0,1) batch; :func:`calibrate` re-decides it from real data
(which is authoritative) and initialises every step (weights per channel, activations per tensor).
Calibration forwards run the FP network (quantizers bypassed) in eval mode, so BN statistics are
untouched.

Deploy-faithful evaluation: :func:`fold_batchnorm` returns an eval-only copy computing what the integer
model (deploy/lower/lower.py) computes: every BN is folded into its layer's per-channel weight SCALE (codes
unchanged, :func:`fold_layer`), the folded bias is rounded to the int32 grid of step s_in·s_w
(:func:`bias_codes`) — lower.py uses the same two functions, so the two cannot drift — and layers
compute exact integer accumulators. Given the integer runtime's requantizer, directly connected layers
also reproduce its (TFLite double-rounding) requantisation; ``deploy.lower.lower.faithful_model`` adds the grids
only the lowered graph knows (normalise op, calibrated residual/pool/logit tensors) and is bit-exact with
the integer reference. QAT itself trains the unfolded form (BN batch statistics, float bias).

For lowering: every quantized layer exposes ``w_quant.bits``, ``w_quant.scale()`` (per channel),
``w_quant.codes(weight)``, ``a_quant.bits``, ``a_quant.scale()``, ``a_quant.signed``,
``a_quant.qmin/qmax``; :func:`layer_quant_params` collects them per layer in execution order.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search.errors import SearchError
from search.nn.models import quantizable_layers
from search.policy import Policy
from search.nn.quantizers import ActObserver, ActQuantizer, InitMethod, WeightQuantizer

PROBE_BATCH = 4


class QuantLayer:
    """Mixin of every quantized layer (fixed or mixed): forward = op(quant_input(x), quant_weight()).

    While an :class:`ActObserver` is attached (:func:`calibrate`), the layer records its input and
    runs in floating point.
    """

    _observer: ActObserver | None = None
    weight: Tensor
    bias: Tensor | None

    def quant_input(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def quant_weight(self) -> Tensor:
        raise NotImplementedError

    def weight_quantizers(self) -> list[WeightQuantizer]:
        raise NotImplementedError

    def act_quantizers(self) -> list[ActQuantizer]:
        raise NotImplementedError

    def _op(self, x: Tensor, w: Tensor, bias: Tensor | None = None, deployed: bool = False) -> Tensor:
        b = bias if deployed else self.bias
        if isinstance(self, nn.Conv2d):
            return self._conv_forward(x, w, b)
        return F.linear(x, w, b)

    def forward(self, x: Tensor) -> Tensor:
        if self._observer is not None:
            self._observer.update(x)
            return self._op(x, self.weight)
        if getattr(self, "deployed_codes", None) is not None:
            return self._deployed_forward(x)
        return self._op(self.quant_input(x), self.quant_weight())

    @torch.no_grad()
    def _deployed_forward(self, x: Tensor) -> Tensor:
        """Deploy-faithful mode (:func:`fold_batchnorm`): the exact integer accumulator Σ codes·codes + int32
        bias, returned as a float64 real value acc·s_in·s_w[c]. The input codes are either the requantised
        accumulator of the producing layer (when a requantizer was given) or the input quantizer's codes."""
        src = getattr(self, "deployed_src", None)
        if src is not None:
            codes = self._requantize_input(x, src)
        else:
            codes = self.a_quant.codes(x)[0]
        acc = self._op(codes.double(), self.deployed_codes, self.deployed_bias, deployed=True)
        return acc * self.deployed_acc_scale.view(-1, *([1] * (acc.dim() - 2)))

    def _requantize_input(self, x: Tensor, src: "_Requant") -> Tensor:
        p = src.acc_scale.view(-1, *([1] * (x.dim() - 2)))
        acc = torch.round(x.double() / p).to(torch.int64)  # exact: x = acc·p of a layer in deploy-faithful mode
        codes = torch.from_numpy(src.requantize(acc.cpu().numpy(), src.in_scale, src.w_scale, src.out_scale))
        codes = codes.to(x.device).clamp(src.lo, src.hi)
        return torch.where(x >= 6.0, src.hi, codes) if src.relu6 else codes  # ReLU6 hid the accumulator

    @torch.no_grad()
    def init_steps(self, observer: ActObserver | None, method: InitMethod = "mse") -> None:
        """Initialise weight steps from the weight and, given an observer, activation steps and signedness."""
        for q in self.weight_quantizers():
            q.init_from(self.weight, method)
        if observer is not None:
            for a in self.act_quantizers():
                a.init_from(observer.samples(), signed=observer.signed, method=method)


def rebuild_layer(cls: type, layer: nn.Module) -> nn.Module:
    """A `cls` instance (a Conv2d/Linear subclass) with `layer`'s hyper-parameters, sharing its weight and bias."""
    if isinstance(layer, nn.Conv2d):
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                  layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode)
    elif isinstance(layer, nn.Linear):
        new = cls(layer.in_features, layer.out_features, layer.bias is not None)
    else:
        raise TypeError(f"cannot quantize {type(layer).__name__}: only Conv2d and Linear are quantizable")
    new.weight = layer.weight
    if layer.bias is not None:
        new.bias = layer.bias
    new.train(layer.training)
    return new.to(layer.weight.device)


def swap_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path `name`."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


class _FixedLayer(QuantLayer):
    w_quant: WeightQuantizer
    a_quant: ActQuantizer

    def quant_input(self, x: Tensor) -> Tensor:
        return self.a_quant(x)

    def quant_weight(self) -> Tensor:
        return self.w_quant(self.weight)

    def weight_quantizers(self) -> list[WeightQuantizer]:
        return [self.w_quant]

    def act_quantizers(self) -> list[ActQuantizer]:
        return [self.a_quant]

    @classmethod
    def from_float(cls, layer: nn.Module, w_quant: WeightQuantizer, a_quant: ActQuantizer) -> "_FixedLayer":
        """The quantized version of `layer` (shares its parameters) with the given quantizers."""
        new = rebuild_layer(cls, layer)
        new.w_quant = w_quant.to(layer.weight.device)
        new.a_quant = a_quant.to(layer.weight.device)
        return new


class QuantConv2d(_FixedLayer, nn.Conv2d):
    """Conv2d with LSQ fake quantization of its input (a_quant) and weight (w_quant, per output channel)."""


class QuantLinear(_FixedLayer, nn.Linear):
    """Linear with LSQ fake quantization of its input (a_quant) and weight (w_quant, per output feature)."""


def quant_layers(model: nn.Module) -> list[tuple[str, QuantLayer]]:
    """(name, layer) of every quantized layer, in module registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLayer)]


def _batches_x(loader: Iterable[Any], n_batches: int) -> Iterable[Tensor]:
    for b in islice(loader, n_batches):
        yield b[0] if isinstance(b, (tuple, list)) else b


@torch.no_grad()
def observe_and_init(model: nn.Module, batches: Iterable[Tensor], method: InitMethod = "mse", seed: int = 0) -> int:
    """Run `batches` through the FP network (eval mode) recording every quantized layer's input, then
    initialise all steps and activation signedness from what was seen. Returns the number of batches."""
    layers = quant_layers(model)
    observers = {n: ActObserver(seed=seed + i) for i, (n, _) in enumerate(layers)}
    was_training = model.training
    model.eval()
    count = 0
    try:
        for name, layer in layers:
            layer._observer = observers[name]
        for x in batches:
            model(x)
            count += 1
    finally:
        for _, layer in layers:
            layer._observer = None
        model.train(was_training)
    if count == 0:
        raise SearchError("calibration got no batches: pass a loader that yields at least one batch")
    for n, layer in layers:
        layer.init_steps(observers[n] if observers[n].count else None, method)
    return count


def calibrate(model: nn.Module, loader: Iterable[Any], n_batches: int = 8, method: InitMethod = "mse", seed: int = 0) -> int:
    """Initialise every quantizer of `model` (QAT model or supernet) from `n_batches` of `loader`.

    `loader` yields input tensors or (input, label) pairs (e.g. ``search.nn.data.BatchLoader``). Weight
    steps come from the weights, activation steps and signedness from the observed inputs (MSE-optimal
    steps by default, ``method="lsq"`` for LSQ's rule). BN statistics are not changed.
    Returns the number of batches used.
    """
    if n_batches < 1:
        raise SearchError(f"calibration needs at least one batch, got n_batches={n_batches}")
    return observe_and_init(model, _batches_x(loader, n_batches), method, seed)


def probe_batch(input_shape: tuple[int, ...], seed: int = 0, n: int = PROBE_BATCH) -> Tensor:
    """A seeded random N(0,1) batch used to decide signedness and steps before real calibration."""
    return torch.randn((n, *input_shape), generator=torch.Generator().manual_seed(seed))


def model_input_shape(model: nn.Module, input_shape: tuple[int, int, int] | None) -> tuple[int, int, int]:
    shape = input_shape or getattr(model, "input_shape", None)
    if shape is None:
        raise SearchError("the model has no input_shape: build it with search.nn.models.build_model or pass input_shape")
    return tuple(shape)  # type: ignore[return-value]


def quantize_model(model: nn.Module, policy: Policy, first_last_8bit: bool = False, *,
                   input_shape: tuple[int, int, int] | None = None, inplace: bool = False,
                   method: InitMethod = "mse", seed: int = 0) -> nn.Module:
    """A QAT copy of `model` quantized by `policy` (validated: a mismatch is a one-line SearchError).

    With `first_last_8bit`, the first and last quantizable layers are held at w8/a8 (the policy may
    omit them). Weight steps are initialised from the weights; activation steps and signedness
    provisionally from a seeded random batch — call :func:`calibrate` with real data before QAT.
    The result carries ``.qpolicy`` (the resolved Policy) and ``.input_shape``.
    """
    shape = model_input_shape(model, input_shape)
    layers = quantizable_layers(model, shape)
    resolved = policy.resolve([n for n, _ in layers], first_last_8bit)
    if not inplace:
        model = copy.deepcopy(model)
        layers = quantizable_layers(model, shape)
    for name, layer in layers:
        if isinstance(layer, QuantLayer):
            raise SearchError(f"layer '{name}' is already quantized: pass the floating-point model to quantize_model")
        bits = resolved[name]
        cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
        swap_module(model, name, cls.from_float(layer, WeightQuantizer(bits.w_bits, layer.weight.shape[0]),
                                                ActQuantizer(bits.a_bits)))
    observe_and_init(model, [probe_batch(shape, seed).to(next(model.parameters()).device)], method, seed)
    model.input_shape = shape  # type: ignore[attr-defined]
    model.qpolicy = resolved  # type: ignore[attr-defined]
    return model


def policy_of(model: nn.Module) -> Policy:
    """The policy a fixed QAT model implements, read from its quantizers (execution order)."""
    out = []
    for name, layer in quantizable_layers(model):
        if not isinstance(layer, _FixedLayer):
            raise SearchError(f"layer '{name}' is not a fixed-policy quantized layer: quantize the model first")
        out.append((name, (layer.w_quant.bits, layer.a_quant.bits)))
    return Policy(out)


def fold_layer(layer: QuantLayer, bn: nn.BatchNorm2d | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int64 weight codes in torch layout, folded float32 per-channel scale > 0, folded float64 real bias)
    of a fixed-policy layer followed by `bn` (eval statistics) or None.

    BN is per output channel like the weight step, so k·(codes·s) = codes·(k·s): the codes are kept and
    the scale absorbs k = γ/σ (a negative k negates the channel's codes); the bias becomes k·(b − μ) + β."""
    codes, scale = layer.w_quant.codes(layer.weight.detach())
    codes = codes.cpu().numpy().astype(np.int64)
    scale = scale.cpu().numpy().astype(np.float64)
    bias = layer.bias.detach().cpu().double().numpy() if layer.bias is not None else np.zeros(len(scale))
    if bn is not None:
        k = (bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)).cpu().numpy()
        bias = k * (bias - bn.running_mean.detach().cpu().double().numpy()) + bn.bias.detach().cpu().double().numpy()
        scale = scale * k
    neg = scale < 0
    codes[neg] = -codes[neg]
    return codes, np.abs(scale).astype(np.float32), bias


def bias_codes(bias: np.ndarray, in_scale: float, w_scale: np.ndarray) -> np.ndarray:
    """The int32-grid codes (int64, unclipped) of a real per-channel bias whose step is in_scale·w_scale[c]
    (in_scale and w_scale as float32, the precision the IR stores them in)."""
    step = np.float64(np.float32(in_scale)) * np.asarray(w_scale, np.float32).astype(np.float64)
    return np.round(np.asarray(bias, np.float64) / step).astype(np.int64)


#: The largest bias code the IR stores (int32).
BIAS_CODE_LIMIT = 2**31 - 1


def fit_bias(codes: np.ndarray, w_scale: np.ndarray, bias: np.ndarray, in_scale: float, channel_axis: int = 0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, w_scale, int64 bias codes) with every bias code within ±BIAS_CODE_LIMIT.

    A channel whose folded scale is so small that its bias cannot be stored (a BatchNorm with γ/σ ≈ 0:
    the channel outputs its bias, its weights contribute less than a bias step) gets zero weight codes
    (output channels along `channel_axis`)
    and the smallest float32 scale at which its bias fits. Other channels are returned unchanged, so
    a model without such channels lowers byte for byte as before. lower.py and fold_batchnorm both call
    this, so the IR and the deploy-faithful model agree."""
    step = np.float64(np.float32(in_scale)) * np.asarray(w_scale, np.float32).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        over = ~(np.abs(np.round(np.asarray(bias, np.float64) / step)) <= BIAS_CODE_LIMIT)  # a zero step is over too
    if not over.any():
        return codes, w_scale, bias_codes(bias, in_scale, w_scale)
    codes, w_scale = codes.copy(), np.asarray(w_scale, np.float32).copy()
    np.moveaxis(codes, channel_axis, 0)[over] = 0
    need = np.abs(np.asarray(bias, np.float64)[over]) / (np.float64(np.float32(in_scale)) * BIAS_CODE_LIMIT)
    w_scale[over] = np.nextafter(need.astype(np.float32), np.float32(np.inf))
    return codes, w_scale, bias_codes(bias, in_scale, w_scale)


Requantizer = Callable[[np.ndarray, float, np.ndarray, float], np.ndarray]
"""(int64 accumulators (N, C, ...), input scale, per-channel weight scale (C,), output scale) → int64
output codes before zero point and clamp, e.g. TFLite's per-channel MultiplyByQuantizedMultiplier."""


@dataclass
class _Requant:
    """How a deploy-faithful layer turns its producer's accumulator into its own input codes."""

    requantize: Requantizer
    acc_scale: Tensor   # float64 (C,): s_in·s_w[c] of the producer
    in_scale: float
    w_scale: np.ndarray
    out_scale: float
    lo: int
    hi: int
    relu6: bool = False


def _graph_links(model: nn.Module) -> tuple[dict[str, str], dict[str, tuple[str, str | None]]]:
    """(conv layer → the BatchNorm2d folded into it, reader layer → (producer layer, activation) for every
    quantized layer whose input the producer writes directly into its grid), both read off
    :func:`search.nn.graph.runtime_schedule` — the schedule the lowering emits."""
    from search.nn.graph import extract_graph, runtime_schedule

    sched = runtime_schedule(extract_graph(model))
    bns, sources = {}, {}
    for op in sched.ops:
        if op.node is None or not op.node.quantizable:
            continue
        bn = next((m for m in op.fused if m.op_type in ("bn", "relu", "relu6")), None)
        if bn is not None and bn.op_type == "bn" and op.kind != "fully_connected" \
                and isinstance(model.get_submodule(bn.module or ""), nn.BatchNorm2d):
            bns[op.node.name] = bn.module
        src = sched.producer(op.inputs[0])
        if src is not None and src.node is not None and src.node.quantizable:
            sources[op.node.name] = (src.node.name, src.act)
    return bns, sources


@torch.no_grad()
def fold_batchnorm(model: nn.Module, requantize: Requantizer | None = None) -> nn.Module:
    """An eval-mode, deploy-faithful copy of a fixed-policy QAT model (evaluation only; `model` is unchanged).

    Each BatchNorm2d that directly follows a quantized conv is folded into it (and replaced by Identity);
    every layer computes its exact integer accumulator with the bias rounded to the int32 grid, as
    deploy/lower/lower.py stores it. With `requantize` (the integer runtime's requantisation, e.g.
    ``deploy.lower.lower.tflite_requantize``), a layer fed directly by another layer (through BN/ReLU/ReLU6 only)
    gets its input codes by requantising that accumulator, exactly as the integer op does — TFLite's
    double rounding differs from rounding the real value by up to 0.25 LSB when s_in·s_w/s_out < 1/2.
    Inputs reached through adds or pooling are quantized by the layer's ``a_quant`` as in QAT."""
    model = copy.deepcopy(model).eval()
    bns, sources = _graph_links(model)
    layers = dict(quantizable_layers(model))
    folded = {}
    for name, layer in layers.items():
        if not isinstance(layer, _FixedLayer):
            raise SearchError(f"layer '{name}' is not a fixed-policy quantized layer: quantize the model first")
        bn = model.get_submodule(bns[name]) if name in bns else None
        codes, scale, bias = fold_layer(layer, bn)
        s_in = float(np.float32(layer.a_quant.scale()))
        codes, scale, bias_q = fit_bias(codes, scale, bias, s_in)
        folded[name] = (s_in, scale)
        dev = layer.weight.device
        layer.register_buffer("deployed_codes", torch.from_numpy(codes.astype(np.float64)).to(dev), persistent=False)
        layer.register_buffer("deployed_bias", torch.from_numpy(bias_q.astype(np.float64)).to(dev), persistent=False)
        layer.register_buffer("deployed_acc_scale", torch.from_numpy(s_in * scale.astype(np.float64)).to(dev),
                              persistent=False)
    for name in bns.values():
        swap_module(model, name, nn.Identity())
    if requantize is not None:
        for name, (src, act) in sources.items():
            a = layers[name].a_quant
            s_in, w_scale = folded[src]
            out = float(np.float32(a.scale()))
            lo = max(a.qmin, 0) if act else a.qmin
            hi = min(a.qmax, int(np.floor(6.0 / out + 0.5))) if act == "relu6" else a.qmax
            layers[name].deployed_src = _Requant(requantize, layers[src].deployed_acc_scale, s_in, w_scale, out, lo, hi,
                                                 act == "relu6")
    return model


@dataclass(frozen=True)
class LayerQuant:
    """Quantization parameters of one layer, as the integer lowering needs them."""

    w_bits: int
    w_scale: np.ndarray  # float32 (C_out,)
    w_qmin: int
    w_qmax: int
    a_bits: int
    a_scale: float
    a_signed: bool
    a_qmin: int
    a_qmax: int


def layer_quant_params(model: nn.Module) -> dict[str, LayerQuant]:
    """Per quantized layer (execution order): weight bits/per-channel scale/range, input bits/scale/signedness/range."""
    out: dict[str, LayerQuant] = {}
    for name, layer in quantizable_layers(model):
        if not isinstance(layer, _FixedLayer):
            raise SearchError(f"layer '{name}' is not a fixed-policy quantized layer: quantize the model first")
        w, a = layer.w_quant, layer.a_quant
        out[name] = LayerQuant(w.bits, w.scale().cpu().numpy().astype(np.float32), w.qmin, w.qmax,
                               a.bits, a.scale(), a.signed, a.qmin, a.qmax)
    return out
