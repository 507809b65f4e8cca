"""The budget-exact policy choice: optimal vs brute force, always feasible, impossible budgets name the minimum."""
from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from search.errors import SearchError
from search.knapsack import Option, layer_scores, next_best, select_policy, solve_mckp, softmax_scores


def _instance(rng: np.random.Generator, n_layers: int, n_opts: int) -> list[list[Option]]:
    layers = []
    for _ in range(n_layers):
        opts = []
        for i in range(n_opts):
            bits = int(rng.integers(2, 9))
            macs = float(rng.integers(1_000, 100_000))
            opts.append(Option(bits, 8, float(rng.random()),
                               {"bops": macs * bits * 8, "flash_bytes": float(rng.integers(100, 5000)),
                                "latency_s": float(rng.random() * 1e-3)},
                               float(rng.integers(500, 4000))))
        layers.append(opts)
    return layers


def _omega(options, fixed=None, extra_sram=0.0):
    fixed = fixed or {}

    def evaluate(choice):
        out = {k: fixed.get(k, 0.0) + sum(options[l][i].costs[k] for l, i in enumerate(choice))
               for k in ("bops", "flash_bytes", "latency_s")}
        ws = [options[l][i].sram_bytes for l, i in enumerate(choice)]
        # a planner that sees more than each layer's own working set: neighbours overlap a little
        out["sram_bytes"] = max(ws) + extra_sram * max(a + b for a, b in zip(ws, ws[1:] + [0]))
        return out
    return evaluate


def _brute(options, limits, evaluate):
    best, best_choice = -np.inf, None
    for choice in itertools.product(*[range(len(o)) for o in options]):
        om = evaluate(list(choice))
        if all(om[k] <= v for k, v in limits.items()):
            s = sum(options[l][i].score for l, i in enumerate(choice))
            if s > best + 1e-12:
                best, best_choice = s, list(choice)
    return best, best_choice


@pytest.mark.parametrize("seed", range(12))
def test_knapsack_is_optimal_and_feasible_vs_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    options = _instance(rng, n_layers=int(rng.integers(2, 5)), n_opts=int(rng.integers(2, 5)))
    fixed = {"bops": 1000.0, "flash_bytes": 50.0, "latency_s": 1e-5}
    evaluate = _omega(options, fixed)
    # budgets between the cheapest and the most expensive policy, so they bind
    lo = {k: fixed[k] + sum(min(o.costs[k] for o in opts) for opts in options) for k in fixed}
    hi = {k: fixed[k] + sum(max(o.costs[k] for o in opts) for opts in options) for k in fixed}
    limits = {k: lo[k] + rng.uniform(0.2, 0.8) * (hi[k] - lo[k]) for k in fixed}
    limits["sram_bytes"] = float(np.median([o.sram_bytes for opts in options for o in opts])) + 1500
    best, best_choice = _brute(options, limits, evaluate)
    if best_choice is None:
        with pytest.raises(SearchError):
            select_policy(options, limits, evaluate, fixed)
        return
    sel = select_policy(options, limits, evaluate, fixed)
    om = evaluate(sel.choice)
    assert all(om[k] <= v for k, v in limits.items()), (om, limits)
    assert sel.score == pytest.approx(best, abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_next_best_policies_are_the_brute_force_ranking(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    options = _instance(rng, n_layers=3, n_opts=3)
    fixed = {"bops": 0.0, "flash_bytes": 0.0, "latency_s": 0.0}
    evaluate = _omega(options, fixed)
    lo = sum(min(o.costs["bops"] for o in opts) for opts in options)
    hi = sum(max(o.costs["bops"] for o in opts) for opts in options)
    limits = {"bops": lo + 0.6 * (hi - lo)}
    sel = select_policy(options, limits, evaluate, fixed)
    more = next_best(options, limits, evaluate, sel, 4, fixed)
    score = lambda c: sum(options[l][i].score for l, i in enumerate(c))  # noqa: E731
    feasible = sorted((score(c) for c in itertools.product(*[range(3)] * 3)
                       if evaluate(list(c))["bops"] <= limits["bops"]), reverse=True)
    got = [score(c) for c in [sel.choice, *more]]
    assert len({tuple(c) for c in [sel.choice, *more]}) == len(got)  # all different policies
    np.testing.assert_allclose(got, feasible[:len(got)], atol=1e-9)  # the best, in order
    assert len(got) == min(5, len(feasible))


def test_argmax_policy_kept_when_it_fits() -> None:
    options = _instance(np.random.default_rng(0), 4, 3)
    evaluate = _omega(options)
    sel = select_policy(options, {"bops": 1e12, "flash_bytes": 1e9}, evaluate)
    assert sel.how == "argmax"
    assert sel.choice == [max(range(3), key=lambda i: opts[i].score) for opts in options]


@pytest.mark.parametrize("seed", range(6))
def test_planner_excess_is_tightened_until_feasible(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    options = _instance(rng, 4, 4)
    evaluate = _omega(options, extra_sram=0.1)
    worst = max(evaluate([max(range(4), key=lambda i: o[i].sram_bytes) for o in options])["sram_bytes"], 1)
    lean = evaluate([min(range(4), key=lambda i: o[i].sram_bytes) for o in options])["sram_bytes"]
    limits = {"sram_bytes": (lean + worst) / 2}
    try:
        sel = select_policy(options, limits, evaluate)
    except SearchError as e:  # allowed only if brute force agrees nothing fits
        assert _brute(options, limits, evaluate)[1] is None, str(e)
        return
    assert evaluate(sel.choice)["sram_bytes"] <= limits["sram_bytes"]


def test_impossible_budget_names_the_minimum() -> None:
    options = _instance(np.random.default_rng(3), 3, 3)
    fixed = {"flash_bytes": 10.0}
    evaluate = _omega(options, fixed)
    smallest = fixed["flash_bytes"] + sum(min(o.costs["flash_bytes"] for o in opts) for opts in options)
    with pytest.raises(SearchError) as ei:
        select_policy(options, {"flash_bytes": smallest * 0.9, "bops": 1e15}, evaluate, fixed, what="toy with bits {2..8}")
    msg = str(ei.value)
    assert "\n" not in msg and "flash budget" in msg and "toy with bits {2..8}" in msg
    shown = float(re.search(r"smallest achievable is ([0-9.]+) (KB|B)", msg).group(1))
    unit = 1024 if "smallest achievable is" in msg and re.search(r"achievable is [0-9.]+ KB", msg) else 1
    assert shown * unit == pytest.approx(smallest, rel=2e-3)
    assert "BOPs" not in msg.split("(")[0]  # the satisfiable budget is not reported as violated


def test_impossible_sram_names_planner_minimum() -> None:
    options = _instance(np.random.default_rng(4), 3, 3)
    evaluate = _omega(options)
    lean = max(min(o.sram_bytes for o in opts) for opts in options)
    with pytest.raises(SearchError, match=r"peak SRAM budget .* smallest achievable is"):
        select_policy(options, {"sram_bytes": lean - 1, "flash_bytes": 1.0}, evaluate)


def test_softmax_scores_preserve_order_and_sum_to_one() -> None:
    p = softmax_scores({2: 0.1, 4: 2.0, 8: -1.0})
    assert sum(p.values()) == pytest.approx(1.0) and max(p, key=p.get) == 4
    s = layer_scores({4: 1.0, 8: 0.0}, {8: 3.0, 4: 0.0})
    assert max(s, key=s.get) == (4, 8)
    with pytest.raises(SearchError):
        softmax_scores({2: float("nan")})


def test_solve_mckp_returns_none_when_infeasible() -> None:
    options = [[Option(2, 8, 1.0, {"bops": 10.0})], [Option(2, 8, 1.0, {"bops": 10.0})]]
    assert solve_mckp(options, {"bops": 15.0}) is None
    assert solve_mckp(options, {"bops": 20.0}) == [0, 0]
