"""Ω(Q) as the search sees it: the cost-model protocol, the result types, budgets and the mixture.

The search never knows a device or a format: it receives a :class:`CostModel` (Ω of a discrete
policy, and the per-candidate table the knapsack needs) from the outside — deploy hands it
``deploy.devices.cost.BlobCostModel``, which prices the ``.smpq`` blob and the runtime's arena. BOPs
are a property of the model (MACs · w · a per layer) and are computed here. :class:`MixtureCost` is
the exact expectation of a cost model's table under a mixture policy (EdMIPS, SMPQ's trade-off value).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol, Sequence

import torch

from search.budget import Budget
from search.errors import SearchError
from search.nn.graph import ExecGraph, Node
from search.planner import MemoryPlan
from search.policy import Policy
from search.nn.quantizers import ACT_BITS, WEIGHT_BITS


def layer_bops(node: Node, w_bits: float, a_bits: float) -> float:
    """MACs · w · a of one quantizable layer."""
    return node.macs * w_bits * a_bits


# ---------------------------------------------------------------------------- results
@dataclass(frozen=True)
class LayerCost:
    """One runtime op's row of Ω (w_bits/a_bits are None except for quantizable layers)."""

    name: str
    op_type: str
    macs: int
    params: int
    w_bits: int | None
    a_bits: int | None
    bops: float
    flash_bytes: int          # the op's data in the blob: channel parameters (+ the layer's weights on its
                              # first instance); records are counted once for the blob
    scratch_bytes: int
    cycles: float | None
    latency_s: float | None

@dataclass(frozen=True)
class Violation:
    """One budget a policy exceeds."""

    name: str
    value: float
    limit: float

    def __str__(self) -> str:
        return f"{self.name} {self.value:.6g} exceeds the budget {self.limit:.6g}"

@dataclass(frozen=True)
class Omega:
    """Ω of a discrete policy: totals, a per-runtime-op table and the arena plan.

    ``plan.buffers`` are the runtime tensors (named ``t<id>``, in :class:`Schedule` order) followed
    by the scratch buffers (``scratch:<op name>``) — as the cost model plans them.
    """

    bops: float
    flash_bytes: int
    sram_bytes: int
    latency_s: float | None
    macs: int
    params: int
    layers: tuple[LayerCost, ...]
    plan: MemoryPlan = field(repr=False)
    schedule: Any = field(repr=False)   # the cost model's op schedule (deploy.devices.cost.Schedule)

    def as_dict(self) -> dict[str, float]:
        """The budgeted quantities by name (latency_s only when a latency model was given)."""
        d: dict[str, float] = {"bops": self.bops, "flash_bytes": self.flash_bytes, "sram_bytes": self.sram_bytes}
        if self.latency_s is not None:
            d["latency_s"] = self.latency_s
        return d

def resolve_policy(graph: ExecGraph, policy: Mapping[str, Sequence[int]]) -> Policy:
    """`policy` (a Policy or a plain dict name → (w_bits, a_bits)) validated against the graph's layers."""
    pol = policy if isinstance(policy, Policy) else Policy(policy)
    return pol.resolve(graph.layer_names())

def uniform_policy(graph: ExecGraph, w_bits: int, a_bits: int) -> Policy:
    """Every quantizable layer of `graph` at (w_bits, a_bits)."""
    return Policy.uniform(graph.layer_names(), w_bits, a_bits)

def check(result: Omega, budget: Budget) -> list[Violation]:
    """The budgets of `budget` that `result` exceeds (empty: the policy fits)."""
    out = []
    for name, limit in budget.items().items():
        value = getattr(result, name)
        if value is None:
            raise SearchError(f"the budget limits {name} but Ω has no {name}: give the cost model a latency model")
        if value > limit:
            out.append(Violation(name, float(value), float(limit)))
    return out


# ---------------------------------------------------------------------------- knapsack table
@dataclass(frozen=True)
class Candidate:
    """One (w_bits, a_bits) choice of one layer: additive costs and its own SRAM working set."""

    w_bits: int
    a_bits: int
    costs: dict[str, float]   # bops, flash_bytes, and latency_s when a latency model is given
    sram_bytes: int           # the layer's input + output activations + its scratch
    feasible: bool = True     # False if sram_bytes exceeds the SRAM budget given to layer_options

@dataclass(frozen=True)
class LayerOptions:
    """All candidates of one quantizable layer."""

    name: str
    options: tuple[Candidate, ...]

@dataclass(frozen=True)
class OptionTable:
    """Per-layer candidates plus the policy-independent part: total = fixed + Σ chosen candidates.

    Iterating yields the :class:`LayerOptions` in layer order.
    """

    layers: tuple[LayerOptions, ...]
    fixed: dict[str, float]

    def __iter__(self) -> Iterator[LayerOptions]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> LayerOptions:
        return self.layers[i]

def check_candidates(w_candidates: Sequence[int], a_candidates: Sequence[int]) -> tuple[list[int], list[int]]:
    """The candidates as int lists; a SearchError if one is empty or out of range."""
    ws, as_ = [int(b) for b in w_candidates], [int(b) for b in a_candidates]
    if not ws or not as_:
        raise SearchError("the cost model needs at least one weight and one activation bit width candidate")
    bad = [f"w{b}" for b in ws if b not in WEIGHT_BITS] + [f"a{b}" for b in as_ if b not in ACT_BITS]
    if bad:
        raise SearchError(f"bit width candidate(s) {', '.join(bad)} out of range: weights take "
                          f"{min(WEIGHT_BITS)}..{max(WEIGHT_BITS)} bits, activations {min(ACT_BITS)}..{max(ACT_BITS)}")
    return ws, as_


def bops_options(graph: ExecGraph, w_candidates: Sequence[int], a_candidates: Sequence[int]) -> OptionTable:
    """The knapsack table of BOPs alone (a model property: no cost model needed)."""
    ws, as_ = check_candidates(w_candidates, a_candidates)
    layers = tuple(LayerOptions(n.name, tuple(Candidate(w, a, {"bops": float(layer_bops(n, w, a))}, 0)
                                              for w in ws for a in as_)) for n in graph.layers())
    return OptionTable(layers, {"bops": 0.0})


# ---------------------------------------------------------------------------- the protocol


class CostModel(Protocol):
    """What the search needs from a deployment's cost model (implemented by deploy.devices.cost.BlobCostModel)."""

    def omega(self, graph: ExecGraph, policy: Mapping[str, Sequence[int]]) -> Omega:
        """Ω of a discrete policy (latency_s None without a latency model)."""
        ...

    def layer_options(self, graph: ExecGraph, w_candidates: Sequence[int], a_candidates: Sequence[int], *,
                      sram_budget: int | None = None) -> OptionTable:
        """Every layer's candidates with additive costs: ``omega(...).X == fixed[X] + Σ_l candidate_l.costs[X]``
        for X in bops, flash_bytes (and latency_s with a latency model)."""
        ...

    def describe(self) -> dict[str, Any]:
        """The settings that determine its figures (recorded with the search's settings)."""
        ...


# ---------------------------------------------------------------------------- mixture (EdMIPS)
Probs = Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | torch.Tensor


class MixtureCost:
    """Expected Ω costs of a mixture policy, differentiable in the probabilities.

    Each layer l picks w_i with probability π_l[i] and a_j with ρ_l[j] independently, so
    E[X] = fixed_X + Σ_l π_lᵀ X_l ρ_l with X_l[i, j] the layer's candidate cost from the cost model's
    :meth:`CostModel.layer_options` (exact expectation of the discrete Ω; one-hot probabilities give
    the discrete value). Without a cost model only BOPs are known. Build once, call every step.
    """

    def __init__(self, graph: ExecGraph, w_candidates: Sequence[int], a_candidates: Sequence[int],
                 cost_model: CostModel | None = None) -> None:
        table = cost_model.layer_options(graph, w_candidates, a_candidates) if cost_model is not None \
            else bops_options(graph, w_candidates, a_candidates)
        self.names = graph.layer_names()
        self.w_candidates, self.a_candidates = check_candidates(w_candidates, a_candidates)
        nw, na = len(self.w_candidates), len(self.a_candidates)
        self.keys = tuple(table.fixed)
        self.fixed = dict(table.fixed)
        self.tables = {k: torch.tensor([[o.costs[k] for o in lo.options] for lo in table], dtype=torch.float64)
                       .reshape(len(self.names), nw, na) for k in self.keys}
        self.total_macs = float(sum(n.macs for n in graph.layers()))

    def _stack(self, probs: Probs, n: int, what: str) -> torch.Tensor:
        if isinstance(probs, Mapping):
            missing = [k for k in self.names if k not in probs]
            if missing:
                raise SearchError(f"{what} probabilities are missing for layer '{missing[0]}'")
            probs = [probs[k] for k in self.names]
        p = probs if isinstance(probs, torch.Tensor) else torch.stack([torch.as_tensor(x) for x in probs])
        if tuple(p.shape) != (len(self.names), n):
            raise SearchError(f"{what} probabilities must have shape (layers={len(self.names)}, candidates={n}), "
                              f"got {tuple(p.shape)}")
        return p.to(torch.float64)

    def __call__(self, w_probs: Probs, a_probs: Probs) -> dict[str, torch.Tensor]:
        """Expected bops, flash_bytes (and latency_s) as float64 scalar tensors."""
        p = self._stack(w_probs, len(self.w_candidates), "weight")
        r = self._stack(a_probs, len(self.a_candidates), "activation")
        return {k: self.fixed[k] + torch.einsum("lw,lwa,la->", p, self.tables[k], r) for k in self.keys}

    def bops(self, w_probs: Probs, a_probs: Probs, normalized: bool = False) -> torch.Tensor:
        """E[BOPs]; `normalized` divides by the layers' total MACs (EdMIPS: mean bit product per MAC, 64 at W8A8)."""
        p = self._stack(w_probs, len(self.w_candidates), "weight")
        r = self._stack(a_probs, len(self.a_candidates), "activation")
        e = torch.einsum("lw,lwa,la->", p, self.tables["bops"], r)
        return e / self.total_macs if normalized else e


def expected_bops(graph: ExecGraph, w_probs: Probs, a_probs: Probs, w_candidates: Sequence[int],
                  a_candidates: Sequence[int], normalized: bool = False) -> torch.Tensor:
    """E[BOPs] of a mixture (see :class:`MixtureCost`; hold one of those in a training loop)."""
    return MixtureCost(graph, w_candidates, a_candidates).bops(w_probs, a_probs, normalized)
