"""HAWQ-v3 baseline: Hutchinson traces against exact Hessians, determinism, and whole searches under a budget."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deploy.devices.cost import BlobCostModel
from search.budget import Budget
from search.errors import SearchError
from search.hawq import HawqConfig, hessian_traces, hutchinson, weight_error
from search.policy import validate_policy_file
from search.nn.qat import QATConfig
from search.runner import SearchSettings, run_search, select
from tests.digits_fp import fp  # noqa: F401  (a pytest fixture)


def test_hutchinson_matches_the_exact_trace_of_a_quadratic_within_its_error_bar() -> None:
    g = torch.Generator().manual_seed(1)
    m = torch.randn(12, 12, generator=g, dtype=torch.float64)
    a = m @ m.T + torch.diag(torch.arange(12, dtype=torch.float64))  # H of ½ xᵀAx; blocks: x[:5], x[5:]
    blocks = [torch.zeros(5, dtype=torch.float64), torch.zeros(7, dtype=torch.float64)]

    def hvp(v: list[torch.Tensor]) -> list[torch.Tensor]:
        hv = a @ torch.cat(v)
        return [hv[:5], hv[5:]]

    est = hutchinson(hvp, blocks, seed=3, min_samples=400, max_samples=400)
    exact = np.array([float(a[:5, :5].trace()), float(a[5:, 5:].trace())])
    assert est.n_samples == 400 and not est.converged
    assert np.all(np.abs(est.mean - exact) <= 4 * est.stderr)
    assert np.all(est.stderr > 0) and np.all(est.stderr < 0.2 * exact)   # the bar is informative
    assert [h["n"] for h in est.history] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 400]
    # a diagonal Hessian is estimated exactly by every Rademacher sample: the stopping rule fires at min_samples
    d = torch.diag(torch.arange(1, 13, dtype=torch.float64))
    est = hutchinson(lambda v: [(d @ torch.cat(v))[:5], (d @ torch.cat(v))[5:]], blocks, seed=0, min_samples=4, max_samples=50)
    assert est.converged and est.n_samples == 4 and est.mean.tolist() == [15.0, 63.0] and np.all(est.stderr == 0)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def _tiny() -> tuple[_Tiny, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = _Tiny().double()
    x = torch.randn(3, 1, 5, 5, dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    return net, x, y


def test_traces_of_a_tiny_network_match_its_full_hessian() -> None:
    net, x, y = _tiny()
    layers = [("conv", net.conv), ("fc", net.fc)]
    est, inputs = hessian_traces(net, layers, x, y, HawqConfig(min_samples=300, max_samples=300, seed=5))
    ce = nn.functional.cross_entropy

    def loss_of_conv_w(w):
        return ce(net.fc(torch.tanh(nn.functional.conv2d(x, w, net.conv.bias)).flatten(1)), y)

    def loss_of_fc_w(w):
        return ce(nn.functional.linear(torch.tanh(net.conv(x)).flatten(1), w, net.fc.bias), y)

    def loss_of_conv_in(z):
        return ce(net.fc(torch.tanh(net.conv(z)).flatten(1)), y)

    def loss_of_fc_in(z):
        return ce(net.fc(z), y)

    hf = torch.autograd.functional.hessian
    points = [net.conv.weight.detach(), net.fc.weight.detach(), x, torch.tanh(net.conv(x)).flatten(1).detach()]
    exact = [float(hf(f, p).reshape(p.numel(), p.numel()).trace())
             for f, p in zip((loss_of_conv_w, loss_of_fc_w, loss_of_conv_in, loss_of_fc_in), points)]
    assert torch.equal(inputs[0], x) and torch.allclose(inputs[1], points[3])
    for k, e in enumerate(exact):
        assert abs(est.mean[k] - e) <= 4 * est.stderr[k] + 1e-12, (k, est.mean[k], e, est.stderr[k])
    # the linear layer's weight Hessian of a softmax loss is PSD: a positive trace, well resolved
    assert exact[1] > 0 and est.stderr[1] < 0.25 * exact[1]


def test_trace_estimates_are_deterministic_for_a_seed() -> None:
    net, x, y = _tiny()
    layers = [("conv", net.conv), ("fc", net.fc)]
    cfg = HawqConfig(min_samples=5, max_samples=20, seed=7)
    a, _ = hessian_traces(net, layers, x, y, cfg)
    b, _ = hessian_traces(net, layers, x, y, cfg)
    c, _ = hessian_traces(net, layers, x, y, HawqConfig(min_samples=5, max_samples=20, seed=8))
    assert np.array_equal(a.mean, b.mean) and np.array_equal(a.stderr, b.stderr) and a.history == b.history
    assert not np.array_equal(a.mean, c.mean)
    assert net.training  # restored


def test_quantisation_error_falls_with_bits() -> None:
    w = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    errs = [weight_error(w, b) for b in (2, 3, 4, 6, 8)]
    assert all(e1 > e2 > 0 for e1, e2 in zip(errs, errs[1:]))


def test_bad_estimator_settings_are_one_line_errors() -> None:
    with pytest.raises(SearchError, match="min_samples"):
        HawqConfig(min_samples=10, max_samples=5)
    with pytest.raises(SearchError, match="tol"):
        HawqConfig(tol=0)


# ------------------------------------------------------------------------ whole searches (digits, ResNet-8)
def _settings(fp: dict, out: Path, **kw) -> SearchSettings:
    base = dict(method="hawq", fp=fp["path"], output=str(out), accelerator="cpu", progress=False,
                qat=QATConfig(epochs=0, batch_size=64, progress=False), subset=512, cost_model=BlobCostModel(),
                hawq={"batch_size": 64, "min_samples": 8, "max_samples": 24, "tol": 1e-3})
    base.update(kw)
    return SearchSettings(**base)


def test_hawq_search_meets_a_binding_budget_and_reports_convergence(fp: dict, tmp_path: Path) -> None:
    budget = Budget(bops=0.8 * fp["w4a4"].bops)
    outcome = run_search(_settings(fp, tmp_path, budget=budget), dataset=fp["dataset"])
    record = json.loads(outcome.policy_path.read_text())
    validate_policy_file(outcome.policy_path)
    assert outcome.omega.bops <= budget.bops and record["budget"]["bops"]["ok"]
    assert record["selection"]["how"] == "knapsack"  # the argmax (all 8 bit) cannot fit
    details = record["method_details"]
    free = [L for L in record["layers"] if not L["held_8bit"]]
    assert set(details["traces"]) == {L["name"] for L in free}
    assert 8 <= details["samples"] <= 24 and details["hessian_vector_products"] == details["samples"]
    for L in free:
        t = details["traces"][L["name"]]
        assert t["w"]["history"][-1]["n"] == details["samples"] and t["w"]["stderr"] >= 0
        w = {int(b): v for b, v in L["scores"]["w"].items()}
        assert w[2] >= w[4] >= w[8] >= 0  # sensitivity never grows with bits
    log = [json.loads(line) for line in (tmp_path / "hawq_log.jsonl").read_text().splitlines()]
    assert log[-1]["n"] == details["samples"] and len(log[-1]["mean"]) == 2 * len(free)
    again = run_search(_settings(fp, tmp_path / "again", budget=budget), dataset=fp["dataset"])
    assert again.policy == outcome.policy  # deterministic for a seed


def test_the_budget_step_gives_the_more_sensitive_layer_more_bits(fp: dict) -> None:
    graph = fp["graph"]
    free = graph.layer_names()[1:-1]
    s = SearchSettings(method="hawq", fp=fp["path"], output="unused", cost_model=BlobCostModel(), progress=False,
                       budget=Budget(bops=fp["w4a4"].bops))
    for hot in (free[1], free[-2]):
        scores = {n: {"w": {2: 1.0, 4: 0.1, 8: 0.0}, "a": {2: 1.0, 4: 0.1, 8: 0.0}} for n in free}
        scores[hot] = {"w": {2: 1e3, 4: 1e2, 8: 0.0}, "a": {2: 1e3, 4: 1e2, 8: 0.0}}
        policy, sel, _ = select(graph, scores, s, "resnet8", sensitivity=True)
        assert sel.how == "knapsack" and sel.omega["bops"] <= s.budget.bops
        assert (policy[hot].w_bits, policy[hot].a_bits) == (8, 8)
        others = [policy[n].w_bits * policy[n].a_bits for n in free if n != hot]
        assert min(others) < 64 and np.mean(others) < 64
