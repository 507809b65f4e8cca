"""Fixed-policy QAT models: any zoo model with its Conv2d/Linear layers swapped for quantized ones.

:func:`quantize_model` replaces every quantizable layer (``search.models.quantizable_layers``) by a
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

For lowering: every quantized layer exposes ``w_quant.bits``, ``w_quant.scale()`` (per channel),
``w_quant.codes(weight)``, ``a_quant.bits``, ``a_quant.scale()``, ``a_quant.signed``,
``a_quant.qmin/qmax``; :func:`layer_quant_params` collects them per layer in execution order.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search.errors import SearchError
from search.models import quantizable_layers
from search.policy import Policy
from search.quantizers import ActObserver, ActQuantizer, InitMethod, WeightQuantizer

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

    def _op(self, x: Tensor, w: Tensor) -> Tensor:
        if isinstance(self, nn.Conv2d):
            return self._conv_forward(x, w, self.bias)
        return F.linear(x, w, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self._observer is not None:
            self._observer.update(x)
            return self._op(x, self.weight)
        return self._op(self.quant_input(x), self.quant_weight())

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

    `loader` yields input tensors or (input, label) pairs (e.g. ``search.data.BatchLoader``). Weight
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
        raise SearchError("the model has no input_shape: build it with search.models.build_model or pass input_shape")
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
