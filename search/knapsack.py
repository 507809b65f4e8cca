"""Budget-exact choice of the final discrete policy: a multiple-choice knapsack solved exactly.

Every quantizable layer offers candidates (w_bits, a_bits), each with a score (how much the search
wants it) and its Ω costs. Budgets are hard:

1. If the argmax policy (each layer's best-scored candidate) satisfies every budget, it is kept.
2. Otherwise the policy maximising the summed scores subject to the *additive* budgets (BOPs, flash,
   latency: sums of per-layer costs plus a fixed part) is found exactly with ``scipy.optimize.milp``
   (HiGHS, relative MIP gap 0).
3. Peak SRAM is a max, not a sum: candidates whose own working set exceeds the SRAM budget are
   removed before solving, and the solution is verified with the full Ω evaluation (the memory
   planner). If the planner still reports an excess, the per-layer SRAM limit is lowered to the next
   smaller working-set size present and the knapsack solved again, until the planner agrees or no
   smaller size is left (then the budget is reported as not met).

An impossible budget raises :class:`SearchError` naming the smallest achievable value of every
violated budget.

Scores: ``layer_scores`` turns the searchers' per-(layer, weight|activation, bit) contribution scores
into candidate scores: within each layer and kind the raw scores are normalised with a softmax (the
supernet's own mixing weights π = softmax(α), so scores of different layers are comparable
probabilities in [0, 1] and a layer's argmax is unchanged); a candidate (w, a) scores π_w + π_a.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from search.errors import SearchError

ADDITIVE = ("bops", "flash_bytes", "latency_s")
SRAM = "sram_bytes"


@dataclass(frozen=True)
class Option:
    """One candidate of one layer: bit widths, score, additive costs and its own SRAM working set."""

    w_bits: int
    a_bits: int
    score: float
    costs: Mapping[str, float]  # keys from ADDITIVE
    sram_bytes: float = 0.0


@dataclass
class Selection:
    """The chosen candidate index per layer, how it was chosen, and its verified Ω."""

    choice: list[int]
    how: str  # "argmax" | "knapsack"
    omega: dict[str, float]
    score: float
    rounds: int = 0
    details: dict = field(default_factory=dict)


def softmax_scores(raw: Mapping[int, float]) -> dict[int, float]:
    """Softmax over one layer's raw scores of one kind (bit → score)."""
    bits = sorted(raw)
    v = np.array([float(raw[b]) for b in bits], dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise SearchError(f"contribution scores must be finite numbers, got {dict(raw)}")
    e = np.exp(v - v.max())
    return {b: float(x) for b, x in zip(bits, e / e.sum())}


def layer_scores(w_scores: Mapping[int, float], a_scores: Mapping[int, float]) -> dict[tuple[int, int], float]:
    """Candidate score π_w + π_a for every (w_bits, a_bits) pair of one layer (see module docstring)."""
    pw, pa = softmax_scores(w_scores), softmax_scores(a_scores)
    return {(w, a): pw[w] + pa[a] for w in pw for a in pa}


def additive_totals(options: Sequence[Sequence[Option]], choice: Sequence[int],
                    fixed: Mapping[str, float] | None = None) -> dict[str, float]:
    """Sum of each additive cost over the chosen candidates, plus the fixed part."""
    fixed = fixed or {}
    return {k: float(fixed.get(k, 0.0)) + sum(float(options[l][i].costs.get(k, 0.0)) for l, i in enumerate(choice))
            for k in ADDITIVE}


def summed_score(options: Sequence[Sequence[Option]], choice: Sequence[int]) -> float:
    """Σ score of the chosen candidates (what the knapsack maximises)."""
    return float(sum(options[l][i].score for l, i in enumerate(choice)))


def violations(omega: Mapping[str, float], limits: Mapping[str, float]) -> dict[str, float]:
    """The budgets of `limits` that the full Ω `omega` exceeds (beyond float rounding), with their values."""
    return {k: float(omega[k]) for k in limits if float(omega[k]) > limits[k] * (1 + 1e-12)}


def _check_instance(options: Sequence[Sequence[Option]]) -> None:
    if not options:
        raise SearchError("the knapsack needs at least one quantizable layer")
    for l, opts in enumerate(options):
        if not opts:
            raise SearchError(f"layer {l} has no candidate bit widths: allow at least one weight and one activation width")


def solve_mckp(options: Sequence[Sequence[Option]], limits: Mapping[str, float],
               fixed: Mapping[str, float] | None = None, sram_limit: float | None = None,
               exclude: Sequence[Sequence[int]] = ()) -> list[int] | None:
    """Exact multiple-choice knapsack: one candidate per layer, maximise Σ score s.t. Σ cost_k + fixed_k ≤ limit_k.

    Candidates with ``sram_bytes > sram_limit`` are excluded, and so is every choice in `exclude` (one
    no-good cut each: at most L − 1 of its L candidates together). Returns the chosen index per layer, or
    None when no choice satisfies the limits.
    """
    _check_instance(options)
    fixed = fixed or {}
    offsets = np.cumsum([0] + [len(o) for o in options])
    n = int(offsets[-1])
    flat = [o for opts in options for o in opts]
    c = -np.array([o.score for o in flat], dtype=np.float64)
    upper = np.ones(n)
    if sram_limit is not None:
        upper = np.array([0.0 if o.sram_bytes > sram_limit else 1.0 for o in flat])
    for l in range(len(options)):
        if not upper[offsets[l]:offsets[l + 1]].any():
            return None
    rows, lo, hi = [], [], []
    for l in range(len(options)):  # exactly one candidate per layer
        r = np.zeros(n)
        r[offsets[l]:offsets[l + 1]] = 1.0
        rows.append(r), lo.append(1.0), hi.append(1.0)
    for choice in exclude:  # no-good cut: not this exact choice again
        r = np.zeros(n)
        r[[int(offsets[l]) + int(i) for l, i in enumerate(choice)]] = 1.0
        rows.append(r), lo.append(-np.inf), hi.append(len(options) - 1.0)
    keys = [k for k in ADDITIVE if limits.get(k) is not None]
    slack = {k: 0.0 for k in keys}
    for _ in range(4):  # re-solve if HiGHS' feasibility tolerance let a sum creep over its limit
        crows, chi = [], []
        for k in keys:
            scale = max(abs(float(limits[k])), 1e-30)  # rows scaled to O(1) for a well-conditioned LP
            crows.append(np.array([float(o.costs.get(k, 0.0)) for o in flat]) / scale)
            chi.append((float(limits[k]) - float(fixed.get(k, 0.0)) - slack[k]) / scale)
        A = np.array(rows + crows)
        cons = LinearConstraint(A, np.array(lo + [-np.inf] * len(keys)), np.array(hi + chi))
        res = milp(c, integrality=np.ones(n), bounds=Bounds(np.zeros(n), upper), constraints=cons,
                   options={"mip_rel_gap": 0.0, "presolve": True})
        if res.x is None:
            return None
        x = np.round(res.x).astype(int)
        choice = [int(np.argmax(x[offsets[l]:offsets[l + 1]])) for l in range(len(options))]
        totals = additive_totals(options, choice, fixed)
        over = {k: totals[k] - float(limits[k]) for k in keys if totals[k] > float(limits[k])}
        if not over:
            return choice
        for k, v in over.items():
            slack[k] += v * 1.0001 + 1e-12 * abs(float(limits[k]))
    return None


def minimum_additive(options: Sequence[Sequence[Option]], fixed: Mapping[str, float] | None = None,
                     sram_limit: float | None = None) -> dict[str, float]:
    """Smallest achievable value of each additive cost alone (per layer the cheapest allowed candidate)."""
    fixed = fixed or {}
    out = {}
    for k in ADDITIVE:
        total = float(fixed.get(k, 0.0))
        for opts in options:
            allowed = [o for o in opts if sram_limit is None or o.sram_bytes <= sram_limit] or list(opts)
            total += min(float(o.costs.get(k, 0.0)) for o in allowed)
        out[k] = total
    return out


def _fmt(key: str, value: float) -> str:
    if key in ("flash_bytes", "sram_bytes"):
        return f"{value / 1024:.2f} KB" if value >= 1024 else f"{value:.0f} B"
    if key == "latency_s":
        return f"{value * 1e3:.3f} ms"
    return f"{value / 1e6:.3f} MBOPs" if value >= 1e6 else f"{value:.0f} BOPs"


_LABEL = {"flash_bytes": "flash", "sram_bytes": "peak SRAM", "latency_s": "latency", "bops": "BOPs"}


def _impossible(parts: list[str]) -> SearchError:
    return SearchError(f"{'; '.join(parts)}: relax the budget or allow lower bit widths")


def select_policy(options: Sequence[Sequence[Option]], limits: Mapping[str, float | None],
                  evaluate: Callable[[list[int]], Mapping[str, float]],
                  fixed: Mapping[str, float] | None = None, what: str = "this model") -> Selection:
    """Choose one candidate per layer that satisfies every budget in `limits` (keys ADDITIVE + SRAM).

    `evaluate(choice)` returns the full Ω of a choice (bops, flash_bytes, sram_bytes, latency_s) —
    the ground truth every result is verified with. `what` names the instance in error messages,
    e.g. "resnet8 with bits {2..8}".
    """
    _check_instance(options)
    limits = {k: float(v) for k, v in limits.items() if v is not None}
    unknown = set(limits) - set(ADDITIVE) - {SRAM}
    if unknown:
        raise SearchError(f"unknown budget(s) {sorted(unknown)}; known: {', '.join(ADDITIVE + (SRAM,))}")
    for k, v in limits.items():
        if not math.isfinite(v) or v <= 0:
            raise SearchError(f"{_LABEL[k]} budget must be a positive number, got {v}")

    argmax = [max(range(len(opts)), key=lambda i: (opts[i].score, -i)) for opts in options]
    omega = dict(evaluate(argmax))
    if not violations(omega, limits):
        return Selection(argmax, "argmax", omega, summed_score(options, argmax))

    add_limits = {k: v for k, v in limits.items() if k in ADDITIVE}
    sram_limit = limits.get(SRAM)
    # Impossible alone? Name the smallest achievable value of each violated budget.
    mins = minimum_additive(options, fixed)
    parts = [f"{_LABEL[k]} budget {_fmt(k, v)} is impossible for {what}: the smallest achievable is {_fmt(k, mins[k])}"
             for k, v in add_limits.items() if mins[k] > v * (1 + 1e-12)]
    if sram_limit is not None:
        lean = [min(range(len(opts)), key=lambda i: (opts[i].sram_bytes, -opts[i].score)) for opts in options]
        min_sram = float(evaluate(lean)[SRAM])
        if min_sram > sram_limit:
            parts.append(f"peak SRAM budget {_fmt(SRAM, sram_limit)} is impossible for {what}: "
                         f"the smallest achievable is {_fmt(SRAM, min_sram)}")
    if parts:
        raise _impossible(parts)

    # Per-layer SRAM filter, walked down over the distinct working-set sizes while the planner still
    # reports an excess (peak SRAM also depends on neighbouring tensors, which the filter cannot see).
    sizes = sorted({float(o.sram_bytes) for opts in options for o in opts}, reverse=True)
    layer_limit = sram_limit
    for rounds in range(1, len(sizes) + 2):
        choice = solve_mckp(options, add_limits, fixed, layer_limit)
        if choice is None and layer_limit != sram_limit:
            raise SearchError(f"peak SRAM budget {_fmt(SRAM, float(sram_limit))} cannot be met for {what} together with the "
                              f"other budgets (the memory planner exceeds it for every policy they allow): relax it or them")
        if choice is None:
            together = ", ".join(f"{_LABEL[k]} {_fmt(k, v)}" for k, v in limits.items())
            raise SearchError(f"budgets {together} cannot be met together for {what} (each alone is achievable; "
                              f"smallest alone: " + ", ".join(f"{_LABEL[k]} {_fmt(k, mins[k])}" for k in add_limits)
                              + "): relax one of them or allow lower bit widths")
        omega = dict(evaluate(choice))
        bad = violations(omega, limits)
        if not bad:
            return Selection(choice, "knapsack", omega, summed_score(options, choice), rounds,
                             {"sram_layer_limit": layer_limit})
        if set(bad) - {SRAM} or sram_limit is None:
            raise SearchError(f"the knapsack's policy violates {', '.join(_LABEL[k] for k in bad)} under the full Ω "
                              f"model although its per-layer sums fit: the cost model's per-layer options and its "
                              f"totals disagree ({ {k: omega[k] for k in bad} })")
        widest = max(float(options[l][i].sram_bytes) for l, i in enumerate(choice))
        smaller = [s for s in sizes if s < widest]
        if not smaller:
            break
        layer_limit = smaller[0]
    raise SearchError(f"peak SRAM budget {_fmt(SRAM, sram_limit)} could not be met for {what} together with the other "
                      f"budgets (the memory planner exceeds it for every policy the knapsack allows): relax it")


def next_best(options: Sequence[Sequence[Option]], limits: Mapping[str, float | None],
              evaluate: Callable[[list[int]], Mapping[str, float]], first: Selection, k: int,
              fixed: Mapping[str, float] | None = None) -> list[list[int]]:
    """Up to `k` further choices after `first` (a :func:`select_policy` result), best summed score first: the
    same knapsack (and per-layer SRAM filter) with a no-good cut for every choice found so far. Each is
    verified with the full Ω `evaluate`; one that exceeds a budget there is skipped (at most 4k are tried)."""
    limits = {key: float(v) for key, v in limits.items() if v is not None}
    add_limits = {key: v for key, v in limits.items() if key in ADDITIVE}
    layer_limit = first.details.get("sram_layer_limit", limits.get(SRAM))
    found, out = [list(first.choice)], []
    for _ in range(4 * k):
        if len(out) == k:
            break
        choice = solve_mckp(options, add_limits, fixed, layer_limit, exclude=found)
        if choice is None:
            break
        found.append(choice)
        if not violations(evaluate(choice), limits):
            out.append(choice)
    return out
