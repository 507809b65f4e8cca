"""EdMIPS-style mixed-precision supernet ("composite" layers) shared by SMPQ and the EdMIPS baseline.

Every quantizable layer keeps ONE floating-point weight and, per candidate bit width, its own LSQ
quantizer (own learned step). With weight candidates B_w and input-activation candidates B_a:

    mixed weight  W̃ = Σ_i π_i · Q_{b_i}(W)      mixed input  x̃ = Σ_j ρ_j · Q_{b_j}(x)

and the layer runs ONE convolution / matmul on (x̃, W̃).

Players and coefficients
    ``supernet.players`` lists every candidate as ``Player(layer, kind, bits)`` (kind ``'w'`` or ``'a'``),
    layer by layer in execution order, weights before activations, bits ascending. All per-candidate
    quantities are flat vectors over the players: ``alpha`` (an ``nn.Parameter``, the architecture
    parameters), ``mask`` (a 0/1 buffer) and the effective coefficients ``coefficients()``.
    For each group g (one layer's weight candidates, or its activation candidates):

        softmax mode:     π_i = m_i·exp(α_i) / Σ_{j∈g} m_j·exp(α_j)
        normalized mode:  π_i = m_i·max(α_i, 0) / Σ_{j∈g} m_j·max(α_j, 0)

    i.e. masked candidates get coefficient 0 and the others are renormalised. When a group's
    denominator is 0 (every candidate of that kind masked, or all unmasked α ≤ 0 in normalized mode)
    all its coefficients are 0: an all-masked weight group makes the layer's weight zero (the layer
    outputs its bias, if any), an all-masked activation group makes its input zero. The value then
    collapses, as a Shapley walk expects. Masked candidates are skipped, not computed.
    The coefficients reach the layers in ``Supernet.forward``; a mixed layer called on its own (e.g.
    by ``search.nn.models.quantizable_layers``' shape pass over ``supernet.model``) uses equal
    coefficients over its unmasked candidates.

Masked evaluation
    ``set_mask(mask)`` sets the whole network's mask with one copy (nothing is rebuilt).
    ``masked(mask)`` is a context manager (eval mode, no_grad, previous mask and mode restored);
    ``eval_masked(x, mask)`` evaluates one batch under it. BN statistics are never touched by it.
    Under no_grad, each candidate's quantized weight is cached until the weight or step changes
    (tracked by tensor version), so thousands of masked passes only re-quantize activations.

From scores to a policy
    ``derive_policy(scores)`` takes per-player scores (default α) and picks, per layer and kind, the
    best candidate (ties → the higher bit width); ``to_fixed(policy)`` builds the fixed-policy QAT model
    (``search.nn.qmodel``) from the supernet's weights, BN and the chosen candidates' steps; with the
    mask of ``policy_mask(policy)`` the supernet computes exactly what that model computes.
"""
from __future__ import annotations

import copy
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from search.errors import SearchError
from search.nn.models import quantizable_layers
from search.policy import LayerBits, Policy
from search.nn.qmodel import (QuantConv2d, QuantLayer, QuantLinear, model_input_shape, observe_and_init, probe_batch,
                           rebuild_layer, swap_module)
from search.nn.quantizers import ACT_BITS, WEIGHT_BITS, ActQuantizer, InitMethod, WeightQuantizer

CoefficientMode = Literal["softmax", "normalized"]
COEFFICIENT_MODES = ("softmax", "normalized")
BN_MODES = ("running", "batch")  # how BatchNorm normalises in a masked evaluation (Supernet.masked)
MEMORY_FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}  # layout → tensors' format
LAYOUTS = tuple(MEMORY_FORMATS)  # memory layout of the masked evaluations of a Shapley round (memory_layout)


class Player(NamedTuple):
    """One candidate: a layer's weight ('w') or input activation ('a') quantized at `bits`."""

    layer: str
    kind: str
    bits: int


class Mixture(NamedTuple):
    """A layer's candidates and their (differentiable) coefficients."""

    w_bits: tuple[int, ...]
    pi: Tensor
    a_bits: tuple[int, ...]
    rho: Tensor


class _MixedLayer(QuantLayer):
    """A quantizable layer with candidate quantizers; coefficients are handed in by the Supernet per forward."""

    w_bits: tuple[int, ...]
    a_bits: tuple[int, ...]
    w_quants: nn.ModuleList
    a_quants: nn.ModuleList

    def _setup(self, w_bits: Sequence[int], a_bits: Sequence[int]) -> None:
        self.w_bits, self.a_bits = tuple(w_bits), tuple(a_bits)
        self.w_quants = nn.ModuleList(WeightQuantizer(b, self.weight.shape[0]) for b in self.w_bits)
        self.a_quants = nn.ModuleList(ActQuantizer(b) for b in self.a_bits)
        self._pi: Tensor | None = None
        self._rho: Tensor | None = None
        self._active_w = list(range(len(self.w_bits)))
        self._active_a = list(range(len(self.a_bits)))
        self._wcache: dict[int, tuple[tuple[int, ...], Tensor]] = {}

    def weight_quantizers(self) -> list[WeightQuantizer]:
        return list(self.w_quants)  # type: ignore[arg-type]

    def act_quantizers(self) -> list[ActQuantizer]:
        return list(self.a_quants)  # type: ignore[arg-type]

    def _coef(self, which: str) -> Tensor:
        c = self._pi if which == "w" else self._rho
        if c is None:  # run outside Supernet.forward (e.g. a shape-tracing pass): uniform over the unmasked candidates
            active = self._active_w if which == "w" else self._active_a
            n = len(self.w_bits if which == "w" else self.a_bits)
            c = torch.zeros(n, device=self.weight.device)
            c[active] = 1.0 / max(len(active), 1)
        return c

    def _candidate_weight(self, i: int) -> Tensor:
        q = self.w_quants[i]
        if torch.is_grad_enabled():
            return q(self.weight)
        key = (self.weight.data_ptr(), self.weight._version, q.step.data_ptr(), q.step._version)
        hit = self._wcache.get(i)
        if hit is None or hit[0] != key:
            hit = (key, q(self.weight))
            self._wcache[i] = hit
        return hit[1]

    def quant_weight(self) -> Tensor:
        pi = self._coef("w")
        if not self._active_w:
            return torch.zeros_like(self.weight)
        out = pi[self._active_w[0]] * self._candidate_weight(self._active_w[0])
        for i in self._active_w[1:]:
            out = out + pi[i] * self._candidate_weight(i)
        return out

    def quant_input(self, x: Tensor) -> Tensor:
        rho = self._coef("a")
        active = self._active_a
        if not active:
            return torch.zeros_like(x)
        if torch.is_grad_enabled():
            out = rho[active[0]] * self.a_quants[active[0]](x)
            for j in active[1:]:
                out = out + rho[j] * self.a_quants[j](x)
            return out
        # no_grad (masked evaluation): accumulate in place; a lone candidate with coefficient 1 is returned as is
        out = self.a_quants[active[0]](x)
        if len(active) == 1 and float(rho[active[0]]) == 1.0:
            return out
        out.mul_(rho[active[0]])
        for j in active[1:]:
            out.add_(self.a_quants[j](x).mul_(rho[j]))
        return out

    @classmethod
    def from_float(cls, layer: nn.Module, w_bits: Sequence[int], a_bits: Sequence[int]) -> "_MixedLayer":
        new = rebuild_layer(cls, layer)
        new._setup(w_bits, a_bits)
        return new.to(layer.weight.device)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, w_bits={self.w_bits}, a_bits={self.a_bits}"  # type: ignore[misc]


class MixedConv2d(_MixedLayer, nn.Conv2d):
    """Composite Conv2d: one FP weight, per-candidate weight and input quantizers, one convolution."""


class MixedLinear(_MixedLayer, nn.Linear):
    """Composite Linear: one FP weight, per-candidate weight and input quantizers, one matmul."""


def _check_bits(bits: Sequence[int], allowed: tuple[int, ...], what: str) -> tuple[int, ...]:
    out = tuple(sorted(set(int(b) for b in bits)))
    if not out or any(b not in allowed for b in out):
        raise SearchError(f"supernet {what} candidates must be a non-empty list within {allowed[0]}..{allowed[-1]}, got {list(bits)}")
    return out


class Supernet(nn.Module):
    """Mixed-precision supernet over a zoo model (see the module docstring for the exact semantics)."""

    def __init__(self, model: nn.Module, w_bits: Sequence[int] = (2, 4, 8), a_bits: Sequence[int] = (2, 4, 8),
                 first_last_8bit: bool = False, coefficient_mode: CoefficientMode = "softmax", *,
                 input_shape: tuple[int, int, int] | None = None, inplace: bool = False,
                 method: InitMethod = "mse", seed: int = 0) -> None:
        super().__init__()
        if coefficient_mode not in COEFFICIENT_MODES:
            raise SearchError(f"unknown coefficient mode '{coefficient_mode}': use one of {', '.join(COEFFICIENT_MODES)}")
        self.w_bits = _check_bits(w_bits, WEIGHT_BITS, "weight-bit")
        self.a_bits = _check_bits(a_bits, ACT_BITS, "activation-bit")
        self.first_last_8bit = first_last_8bit
        self.coefficient_mode: CoefficientMode = coefficient_mode
        shape = model_input_shape(model, input_shape)
        if not inplace:
            model = copy.deepcopy(model)
        layers = quantizable_layers(model, shape)
        players: list[Player] = []
        groups: list[int] = []
        self._layers: list[tuple[str, _MixedLayer, slice, slice]] = []
        for idx, (name, layer) in enumerate(layers):
            if isinstance(layer, QuantLayer):
                raise SearchError(f"layer '{name}' is already quantized: build the supernet from the floating-point model")
            held = first_last_8bit and idx in (0, len(layers) - 1)
            wb, ab = ((8,), (8,)) if held else (self.w_bits, self.a_bits)
            cls = MixedConv2d if isinstance(layer, nn.Conv2d) else MixedLinear
            mixed = cls.from_float(layer, wb, ab)
            swap_module(model, name, mixed)
            ws = slice(len(players), len(players) + len(wb))
            players += [Player(name, "w", b) for b in wb]
            as_ = slice(len(players), len(players) + len(ab))
            players += [Player(name, "a", b) for b in ab]
            groups += [2 * idx] * len(wb) + [2 * idx + 1] * len(ab)
            self._layers.append((name, mixed, ws, as_))
        self.model = model
        self.input_shape = shape
        self.players: tuple[Player, ...] = tuple(players)
        self._index = {p: i for i, p in enumerate(players)}
        self.num_groups = 2 * len(layers)
        device = next(model.parameters()).device
        self.register_buffer("group", torch.tensor(groups, dtype=torch.long, device=device), persistent=False)
        self.register_buffer("mask", torch.ones(len(players), device=device), persistent=False)
        self.alpha = nn.Parameter(torch.zeros(len(players), device=device))
        self.image_weights: Tensor | None = None  # per-image weights of the batch statistics (set_image_weights)
        observe_and_init(self, [probe_batch(shape, seed).to(device)], method, seed)

    # ---- players and flat vectors -------------------------------------------------------------
    @property
    def num_players(self) -> int:
        return len(self.players)

    @property
    def layer_names(self) -> list[str]:
        return [n for n, *_ in self._layers]

    def player_index(self, layer: str, kind: str, bits: int) -> int:
        """Position of a candidate in the flat player vector (SearchError if it is not a candidate)."""
        try:
            return self._index[Player(layer, kind, bits)]
        except KeyError:
            raise SearchError(f"layer '{layer}' has no {'weight' if kind == 'w' else 'activation'} candidate at {bits} bits; "
                              f"candidates: {self.candidates(layer) if layer in self.layer_names else 'unknown layer'}") from None

    def candidates(self, layer: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(weight bit candidates, activation bit candidates) of a layer."""
        for name, mod, _, _ in self._layers:
            if name == layer:
                return mod.w_bits, mod.a_bits
        raise SearchError(f"'{layer}' is not a layer of the supernet")

    def layer_slices(self) -> dict[str, tuple[slice, slice]]:
        """Layer name → (slice of its weight players, slice of its activation players) in the flat vector."""
        return {n: (ws, as_) for n, _, ws, as_ in self._layers}

    def split(self, flat: Tensor) -> dict[str, dict[str, Tensor]]:
        """Flat per-player vector → {layer: {'w': values over w_bits, 'a': values over a_bits}} (views)."""
        self._check_flat(flat)
        return {n: {"w": flat[ws], "a": flat[as_]} for n, _, ws, as_ in self._layers}

    def join(self, per_layer: Mapping[str, Mapping[str, Tensor | Sequence[float]]]) -> Tensor:
        """Inverse of :meth:`split` (every layer and kind must be given)."""
        out = torch.empty(self.num_players, device=self.mask.device)
        for n, _, ws, as_ in self._layers:
            if n not in per_layer:
                raise SearchError(f"per-layer values miss layer '{n}'")
            out[ws] = torch.as_tensor(per_layer[n]["w"], dtype=out.dtype, device=out.device)
            out[as_] = torch.as_tensor(per_layer[n]["a"], dtype=out.dtype, device=out.device)
        return out

    def _check_flat(self, v: Tensor) -> None:
        if v.shape != (self.num_players,):
            raise SearchError(f"expected a vector over the {self.num_players} players, got shape {tuple(v.shape)}")

    # ---- coefficients ----------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """[alpha] — what EdMIPS optimises (SMPQ never puts it in an optimizer)."""
        return [self.alpha]

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter but alpha: FP weights, BN affine, LSQ steps."""
        return (p for p in self.parameters() if p is not self.alpha)

    @torch.no_grad()
    def set_alpha(self, values: Tensor | Sequence[float]) -> None:
        """Overwrite alpha in place (SMPQ: contribution weights set from outside)."""
        v = torch.as_tensor(values, dtype=self.alpha.dtype, device=self.alpha.device)
        self._check_flat(v)
        self.alpha.copy_(v)

    def coefficients(self, mask: Tensor | None = None, alpha: Tensor | None = None) -> Tensor:
        """Effective per-player coefficients (differentiable w.r.t. alpha) under `mask` (default: the current one)."""
        m = self.mask if mask is None else mask
        a = self.alpha if alpha is None else alpha
        on = m > 0
        if self.coefficient_mode == "softmax":
            gmax = torch.full((self.num_groups,), -torch.inf, device=a.device, dtype=a.dtype)
            gmax = gmax.scatter_reduce(0, self.group, torch.where(on, a, -torch.inf), "amax", include_self=True)
            z = torch.where(on, a - torch.where(torch.isfinite(gmax), gmax, 0.0)[self.group], 0.0)
            e = torch.exp(z) * m
        else:
            e = torch.clamp(a, min=0) * m
        denom = torch.zeros(self.num_groups, device=a.device, dtype=a.dtype).index_add(0, self.group, e)[self.group]
        return torch.where(denom > 0, e / torch.where(denom > 0, denom, 1.0), 0.0)

    def layer_mixtures(self, mask: Tensor | None = None) -> dict[str, Mixture]:
        """Per layer: candidate bits and differentiable coefficients (for the expected-cost terms of EdMIPS)."""
        c = self.coefficients(mask)
        return {n: Mixture(mod.w_bits, c[ws], mod.a_bits, c[as_]) for n, mod, ws, as_ in self._layers}

    # ---- masks ---------------------------------------------------------------------------------
    @torch.no_grad()
    def set_mask(self, mask: Tensor | Sequence[float] | None) -> None:
        """Set the 0/1 mask over all players in one call (None: everything on)."""
        if mask is None:
            self.mask.fill_(1.0)
        else:
            m = torch.as_tensor(mask, device=self.mask.device).to(self.mask.dtype)
            self._check_flat(m)
            self.mask.copy_(m)
        flags = (self.mask != 0).tolist()
        for _, mod, ws, as_ in self._layers:
            mod._active_w = [i for i, f in enumerate(flags[ws]) if f]
            mod._active_a = [j for j, f in enumerate(flags[as_]) if f]

    def policy_mask(self, policy: Policy) -> Tensor:
        """The 0/1 mask that keeps exactly the policy's weight and activation candidate in every layer."""
        resolved = policy.resolve(self.layer_names, self.first_last_8bit)
        m = torch.zeros(self.num_players, device=self.mask.device)
        for name, bits in resolved.items():
            m[self.player_index(name, "w", bits.w_bits)] = 1.0
            m[self.player_index(name, "a", bits.a_bits)] = 1.0
        return m

    @contextmanager
    def masked(self, mask: Tensor | Sequence[float] | None = None, bn: str = "running") -> Iterator["Supernet"]:
        """Eval mode + no_grad (+ `mask` if given); restores the previous mask and train/eval mode.

        `bn`: how BatchNorm normalises — ``"running"`` by its running statistics (eval mode), ``"batch"`` by the
        statistics of the batch being evaluated (what a policy's BatchNorm statistics become once re-estimated
        for its own quantized activations; the running statistics are left untouched)."""
        if bn not in BN_MODES:
            raise SearchError(f"BatchNorm mode must be one of {', '.join(BN_MODES)}, got '{bn}'")
        prev, was_training = self.mask.clone(), self.training
        self.eval()
        norms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if bn == "batch" else []
        tracked = [(m.track_running_stats, m.__dict__.get("forward")) for m in norms]
        weights = self.image_weights
        try:
            for m in norms:  # batch statistics, nothing recorded (no running-statistics update, no counter)
                m.train()
                m.track_running_stats = False
                m.forward = _BatchNormByImage(m, self)
            if mask is not None:
                self.set_mask(mask)
            with torch.no_grad():
                yield self
        finally:
            for m, (t, forward) in zip(norms, tracked):
                m.track_running_stats = t
                if forward is None:
                    del m.forward
                else:
                    m.forward = forward
            self.image_weights = weights
            self.set_mask(prev)
            self.train(was_training)

    def set_image_weights(self, weights: Tensor | None) -> None:
        """Per-image weights (summing to 1) of the BatchNorm statistics under ``masked(bn="batch")``, for a batch
        that does not sample the images uniformly (``search.image_strata``): the weighted statistics estimate the
        same population statistics a uniform batch's do. None: every image counts alike (the plain batch norm)."""
        self.image_weights = weights

    def eval_masked(self, x: Tensor, mask: Tensor | Sequence[float] | None = None) -> Tensor:
        """Logits of `x` under `mask` with BN in eval mode and no gradient; nothing is left changed."""
        with self.masked(mask):
            return self(x)

    def forward(self, x: Tensor) -> Tensor:
        c = self.coefficients()
        try:
            for _, mod, ws, as_ in self._layers:
                mod._pi, mod._rho = c[ws], c[as_]
            return self.model(x)
        finally:
            for _, mod, _, _ in self._layers:
                mod._pi = mod._rho = None

    # ---- policies ------------------------------------------------------------------------------
    def derive_policy(self, scores: Tensor | Sequence[float] | None = None) -> Policy:
        """Per layer, the weight and activation candidate with the highest score (default alpha; ties → more bits)."""
        s = (self.alpha.detach() if scores is None else torch.as_tensor(scores, dtype=torch.float64)).cpu()
        self._check_flat(s)
        out = []
        for name, mod, ws, as_ in self._layers:
            best = []
            for bits, vals in ((mod.w_bits, s[ws].tolist()), (mod.a_bits, s[as_].tolist())):
                best.append(max(zip(vals, bits))[1])
            out.append((name, LayerBits(*best)))
        return Policy(out)

    def to_fixed(self, policy: Policy) -> nn.Module:
        """The fixed-policy QAT model (``search.nn.qmodel`` layers) with this supernet's weights, BN and the
        chosen candidates' quantizers (steps and signedness) copied; the supernet is left unchanged."""
        resolved = policy.resolve(self.layer_names, self.first_last_8bit)
        idx = {n: (self.player_index(n, "w", b.w_bits) - ws.start, self.player_index(n, "a", b.a_bits) - as_.start)
               for (n, _, ws, as_), b in zip(self._layers, resolved.values())}
        fixed = copy.deepcopy(self.model)
        for name, (i, j) in idx.items():
            layer = fixed.get_submodule(name)
            assert isinstance(layer, _MixedLayer)
            cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
            swap_module(fixed, name, cls.from_float(layer, layer.w_quants[i], layer.a_quants[j]))
        fixed.input_shape = self.input_shape  # type: ignore[attr-defined]
        fixed.qpolicy = resolved  # type: ignore[attr-defined]
        return fixed


_INPLACE_OPERATORS = frozenset(getattr(operator, f"i{name}") for name in (
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift", "rshift"))


def masked_correct(sn: Supernet, loader: Iterable[tuple[Tensor, Tensor]], mask: Tensor, bn: str = "running") -> Tensor:
    """Per image of `loader` (in its order): does the supernet under `mask` (one candidate per group: the fixed
    policy's model) classify it correctly; `bn` as in :meth:`Supernet.masked` — with ``"batch"`` the batches
    must mix the classes (:func:`search.nn.data.mixed_batches`). Nothing is left changed."""
    dev = sn.mask.device
    hits = []
    with sn.masked(mask, bn):
        for x, y in loader:
            hits.append((sn(x.to(dev)).argmax(1) == y.to(dev)).cpu())
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


class _BatchNormByImage:
    """A BatchNorm's forward under ``masked(bn="batch")``: the module's own while the supernet has no image
    weights, else normalisation by the image-weighted batch mean and (biased) variance."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm, sn: Supernet) -> None:
        self.norm, self.sn = norm, sn

    def __call__(self, x: Tensor) -> Tensor:
        m, w = self.norm, self.sn.image_weights
        if w is None:
            return type(m).forward(m, x)
        if len(w) != len(x):
            raise SearchError(f"image weights cover {len(w)} images, the batch has {len(x)}")
        flat = x.flatten(2) if x.dim() > 2 else x[:, :, None]                # (N, C, positions)
        mean_i, square_i = flat.mean(2).double(), (flat * flat).mean(2).double()  # per image and channel
        wd = w.double()
        mean = wd @ mean_i
        var = (wd @ square_i - mean * mean).clamp_min(0.0)                    # the biased variance, as BatchNorm's
        return nn.functional.batch_norm(x, mean.to(x.dtype), var.to(x.dtype), m.weight, m.bias, False, 0.0, m.eps)


@contextmanager
def memory_layout(sn: Supernet, layout: str) -> Iterator[None]:
    """Inside: the supernet's 4-D parameters and buffers in `layout` (its inputs should be too); after:
    contiguous (NCHW) again, values unchanged. ``channels_last`` lets oneDNN pick its faster CPU
    convolution kernels (mbv2's masked evaluations ≈ 1.5×, ``bench/shapley_speed.py --layouts``), whose
    different summation order changes sums by float rounding, which can move an activation across a
    quantization boundary — not bit for bit like ``nchw``."""
    if layout not in LAYOUTS:
        raise SearchError(f"memory layout must be one of {', '.join(LAYOUTS)}, got '{layout}'")
    if layout == "nchw":
        yield
        return
    sn.to(memory_format=MEMORY_FORMATS[layout])
    try:
        yield
    finally:
        sn.to(memory_format=torch.contiguous_format)


def hit_rate(hits: Tensor) -> float:
    """The share of images right, from per-image hits (:func:`masked_correct`); 0 for none."""
    return int(hits.sum()) / max(len(hits), 1)


def masked_accuracy(sn: Supernet, loader: Iterable[tuple[Tensor, Tensor]], mask: Tensor, bn: str = "running") -> float:
    """Top-1 of the supernet under `mask` over every batch of `loader` (:func:`masked_correct`'s hit rate)."""
    return hit_rate(masked_correct(sn, loader, mask, bn))


class IncrementalForward:
    """Exact masked evaluation that recomputes only what a mask change can reach (Shapley walks).

    The supernet's model is traced once with torch.fx (mixed layers as leaves). Each call compares every
    mixed layer's active candidates and coefficients with the previous call's; a graph node is recomputed
    only when it is such a changed layer or consumes a recomputed node, every other node returns its
    value from the previous call. A walk changes one layer per step, so the layers before it (and the
    branches not fed by it) are reused. The recomputed nodes run the same modules on the same inputs as
    :meth:`Supernet.forward`, so the logits are bit-identical to it. A new input tensor (another batch),
    or weights/steps that changed since the previous call, recompute everything. A module with
    ``inplace=True`` (ReLU6) runs in place only where its input is a computed node read by nothing else (that
    node is recomputed exactly when it is, so no cached value it overwrites is read again); elsewhere — the
    model's input, a value with other readers — it runs out of place (same values either way). A graph with
    in-place functions or methods is not cached at all (plain forward).
    Use under :meth:`Supernet.masked` (eval mode, no gradient).
    """

    def __init__(self, supernet: Supernet) -> None:
        from search.nn.graph import fx_trace

        self.sn = supernet
        self.graph = fx_trace(supernet.model)
        self.modules = dict(supernet.model.named_modules())
        self.nodes = list(self.graph.nodes)
        self.pos = {n: i for i, n in enumerate(self.nodes)}
        self.inputs = [[self.pos[a] for a in n.all_input_nodes] for n in self.nodes]
        by_name = {name: mod for name, mod, _, _ in supernet._layers}
        self.layer_of = [by_name.get(str(n.target)) if n.op == "call_module" else None for n in self.nodes]
        self.cacheable = not any(
            (n.op == "call_method" and str(n.target).endswith("_") and not str(n.target).startswith("__"))
            or (n.op == "call_function" and n.target in _INPLACE_OPERATORS)
            or (n.op == "call_function" and n.kwargs.get("inplace", False))
            for n in self.nodes)
        readers = [0] * len(self.nodes)
        for ins in self.inputs:
            for j in ins:
                readers[j] += 1
        self.out_of_place = {  # in-place modules whose input may be read again: run with inplace=False there
            i for i, n in enumerate(self.nodes)
            if n.op == "call_module" and getattr(self.modules[str(n.target)], "inplace", False) is True
            and not (len(self.inputs[i]) == 1 and readers[self.inputs[i][0]] == 1
                     and self.nodes[self.inputs[i][0]].op in ("call_module", "call_function", "call_method"))}
        self.values: list = [None] * len(self.nodes)
        self.key: tuple | None = None
        self.prev: dict[int, tuple] = {}
        self.recomputed = self.total = 0   # node evaluations done / that a full forward would do

    def _state_key(self, x: Tensor) -> tuple:
        params = tuple((p.data_ptr(), p._version) for p in self.sn.weight_parameters())
        bufs = tuple((b.data_ptr(), b._version) for n, b in self.sn.model.named_buffers())
        return (id(x), x.data_ptr(), x._version, params, bufs)

    def __call__(self, x: Tensor) -> Tensor:
        sn = self.sn
        if not self.cacheable:
            return sn(x)
        c = sn.coefficients()
        key = self._state_key(x)
        fresh = key != self.key
        changed: set[int] = set()
        for i, (_, mod, ws, as_) in enumerate(sn._layers):
            state = (tuple(mod._active_w), tuple(mod._active_a), c[ws].clone(), c[as_].clone())
            old = self.prev.get(i)
            if old is None or old[:2] != state[:2] or not torch.equal(old[2], state[2]) or not torch.equal(old[3], state[3]):
                changed.add(id(mod))
            self.prev[i] = state
        try:
            for _, mod, ws, as_ in sn._layers:
                mod._pi, mod._rho = c[ws], c[as_]
            out = self._run(x, fresh, changed)
        finally:
            for _, mod, _, _ in sn._layers:
                mod._pi = mod._rho = None
        self.key = key
        return out

    def _run(self, x: Tensor, fresh: bool, changed: set[int]) -> Tensor:
        from torch.fx.node import map_arg

        dirty = [False] * len(self.nodes)
        vals = self.values
        for i, n in enumerate(self.nodes):
            lay = self.layer_of[i]
            if n.op == "placeholder":
                dirty[i] = fresh
            else:
                dirty[i] = fresh or (lay is not None and id(lay) in changed) or any(dirty[j] for j in self.inputs[i])
            if n.op == "output":
                return map_arg(n.args[0], lambda a: vals[self.pos[a]])
            self.total += 1
            if not dirty[i] and vals[i] is not None:
                continue
            self.recomputed += 1
            if n.op == "placeholder":
                vals[i] = x
                continue
            args = map_arg(n.args, lambda a: vals[self.pos[a]])
            kwargs = map_arg(n.kwargs, lambda a: vals[self.pos[a]])
            if n.op == "call_module":
                mod = self.modules[str(n.target)]
                if i in self.out_of_place:
                    mod.inplace = False
                    try:
                        vals[i] = mod(*args, **kwargs)
                    finally:
                        mod.inplace = True
                else:
                    vals[i] = mod(*args, **kwargs)
            elif n.op == "call_function":
                vals[i] = n.target(*args, **kwargs)
            elif n.op == "call_method":
                vals[i] = getattr(args[0], str(n.target))(*args[1:], **kwargs)
            elif n.op == "get_attr":
                obj = self.sn.model
                for part in str(n.target).split("."):
                    obj = getattr(obj, part)
                vals[i] = obj
        raise SearchError("the traced graph has no output node")
