"""Composite supernet: players, masks and renormalisation, masked evaluation, policies, fixed models."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from search.errors import SearchError
from search.nn.models import build_model, quantizable_layers
from search.policy import Policy
from search.nn.qmodel import QuantLayer, policy_of
from search.supernet import Player, Supernet

SHAPE = (3, 32, 32)
W_BITS, A_BITS = (1, 2, 4, 8), (2, 4, 8)


def _trained_ish(name: str, seed: int) -> nn.Module:
    """A zoo model with non-trivial BN statistics (so BN and its folding matter in the comparisons)."""
    torch.manual_seed(seed)
    m = build_model(name, SHAPE, 10)
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1, generator=g)
            mod.running_var.uniform_(0.5, 2.0, generator=g)
            mod.weight.data.uniform_(0.5, 1.5, generator=g)
            mod.bias.data.normal_(0, 0.1, generator=g)
    return m.eval()


@pytest.fixture(scope="module")
def supernets() -> dict[str, Supernet]:
    out = {}
    for name in ("resnet8", "mbv2"):
        sn = Supernet(_trained_ish(name, 1), W_BITS, A_BITS, first_last_8bit=True)
        sn.set_alpha(torch.randn(sn.num_players, generator=torch.Generator().manual_seed(2)))
        out[name] = sn
    return out


def _random_policy(sn: Supernet, seed: int) -> Policy:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sn.layer_names:
        wb, ab = sn.candidates(n)
        out.append((n, (wb[int(torch.randint(len(wb), (1,), generator=g))], ab[int(torch.randint(len(ab), (1,), generator=g))])))
    return Policy(out)


def test_players_and_flat_vectors(supernets):
    sn = supernets["resnet8"]
    names = sn.layer_names
    assert names == [n for n, _ in quantizable_layers(_trained_ish("resnet8", 1))]
    # first and last layers only have 8-bit candidates; the others every candidate
    assert sn.candidates(names[0]) == ((8,), (8,)) and sn.candidates(names[-1]) == ((8,), (8,))
    assert sn.candidates(names[1]) == (W_BITS, A_BITS)
    assert sn.num_players == 4 + (len(names) - 2) * (len(W_BITS) + len(A_BITS))
    assert sn.players[2] == Player(names[1], "w", 1) and sn.players[2 + len(W_BITS)] == Player(names[1], "a", 2)
    for i, p in enumerate(sn.players):
        assert sn.player_index(*p) == i
    v = torch.arange(sn.num_players, dtype=torch.float32)
    per_layer = sn.split(v)
    assert per_layer[names[1]]["w"].tolist() == [2.0, 3.0, 4.0, 5.0]
    assert torch.equal(sn.join(per_layer), v)
    with pytest.raises(SearchError, match="players"):
        sn.set_mask(torch.ones(3))
    with pytest.raises(SearchError, match="no weight candidate at 3 bits"):
        sn.player_index(names[1], "w", 3)


def test_mask_renormalises_and_all_masked_groups_are_zero(supernets):
    sn = supernets["resnet8"]
    alpha = sn.alpha.detach()
    mask = (torch.rand(sn.num_players, generator=torch.Generator().manual_seed(5)) > 0.4).float()
    n1 = sn.layer_names[1]
    ws, as_ = sn.layer_slices()[n1]
    mask[as_] = 0.0  # every activation candidate of layer 1 masked
    mask[ws] = torch.tensor([1.0, 0.0, 1.0, 1.0])
    c = sn.coefficients(mask)
    e = torch.exp(alpha[ws]) * mask[ws]
    torch.testing.assert_close(c[ws], e / e.sum())
    assert torch.equal(c[as_], torch.zeros(len(A_BITS)))
    # every group sums to 1 unless entirely masked
    for n, (w_sl, a_sl) in sn.layer_slices().items():
        for sl in (w_sl, a_sl):
            expected = 1.0 if mask[sl].sum() > 0 else 0.0
            assert abs(float(c[sl].sum().detach()) - expected) < 1e-6, n
    # huge alpha spreads do not produce NaN (per-group max subtraction)
    wild = alpha * 1e4
    assert torch.isfinite(sn.coefficients(mask, wild)).all()


def test_all_masked_weights_zero_the_layer():
    sn = Supernet(_trained_ish("resnet8", 3), (2, 4), (4, 8))
    first = sn.model.get_submodule(sn.layer_names[0])
    ws, _ = sn.layer_slices()[sn.layer_names[0]]
    mask = torch.ones(sn.num_players)
    mask[ws] = 0
    seen = {}
    first.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    sn.eval_masked(torch.randn(2, *SHAPE), mask)
    assert torch.equal(seen["out"], torch.zeros_like(seen["out"]))  # conv1 has no bias: zero output


def test_normalized_mode():
    sn = Supernet(_trained_ish("resnet8", 3), (2, 4), (4, 8), coefficient_mode="normalized")
    alpha = torch.rand(sn.num_players, generator=torch.Generator().manual_seed(0))
    alpha[0] = -1.0
    sn.set_alpha(alpha)
    c = sn.coefficients()
    ws, _ = sn.layer_slices()[sn.layer_names[0]]
    assert float(c[0].detach()) == 0.0 and abs(float(c[ws].sum().detach()) - 1) < 1e-6
    torch.testing.assert_close(c[1], alpha[1] / alpha[ws][1:].sum())
    with pytest.raises(SearchError, match="coefficient mode"):
        Supernet(_trained_ish("resnet8", 3), coefficient_mode="linear")


@pytest.mark.parametrize("name", ["resnet8", "mbv2"])
def test_one_hot_mask_equals_fixed_policy_model(supernets, name):
    sn = supernets[name]
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(7))
    for seed in range(2 if name == "resnet8" else 1):
        policy = _random_policy(sn, seed)
        fixed = sn.to_fixed(policy).eval()
        assert policy_of(fixed) == policy
        assert not any(isinstance(m, QuantLayer) and not hasattr(m, "w_quant") for m in fixed.modules())
        y_sn = sn.eval_masked(x, sn.policy_mask(policy))
        with torch.no_grad():
            y_fixed = fixed(x)
        torch.testing.assert_close(y_sn, y_fixed, rtol=0, atol=1e-6)
        # and a different policy gives a different function (the comparison has teeth)
        other = sn.eval_masked(x, sn.policy_mask(_random_policy(sn, seed + 10)))
        assert (other - y_fixed).abs().max() > 1e-3


def test_to_fixed_copies_and_rejects_foreign_bits(supernets):
    sn = supernets["resnet8"]
    policy = _random_policy(sn, 0)
    fixed = sn.to_fixed(policy)
    n = sn.layer_names[1]
    assert fixed.get_submodule(n).weight is not sn.model.get_submodule(n).weight
    bad = Policy([(k, (3, 4) if k == n else b) for k, b in policy.items()])
    with pytest.raises(SearchError, match=f"'{n}' has no weight candidate at 3 bits"):
        sn.to_fixed(bad)


def test_masked_evaluation_leaves_bn_mask_and_mode_untouched():
    sn = Supernet(_trained_ish("resnet8", 4), (2, 4, 8), (4, 8))
    sn.train()
    before = {k: v.clone() for k, v in sn.state_dict().items() if "running" in k or "num_batches" in k}
    prev_mask = torch.ones(sn.num_players)
    prev_mask[3] = 0
    sn.set_mask(prev_mask)
    x = torch.randn(8, *SHAPE)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        sn.eval_masked(x, (torch.rand(sn.num_players, generator=g) > 0.3).float())
    with sn.masked(torch.ones(sn.num_players)) as s:
        assert not s.training and not torch.is_grad_enabled()
        s(x)
    assert sn.training and torch.equal(sn.mask, prev_mask)
    for k, v in before.items():
        assert torch.equal(sn.state_dict()[k], v), k
    sn(x)  # an ordinary training-mode forward does update BN (the check above has teeth)
    assert any(not torch.equal(sn.state_dict()[k], v) for k, v in before.items())


def test_weight_cache_follows_weight_updates():
    sn = Supernet(_trained_ish("resnet8", 5), (2, 4), (4, 8)).eval()
    x = torch.randn(2, *SHAPE)
    y0 = sn.eval_masked(x)
    assert torch.equal(sn.eval_masked(x), y0)
    with torch.no_grad():
        sn.model.get_submodule(sn.layer_names[2]).weight.mul_(-1.0)  # in place, like an optimizer step
    y1 = sn.eval_masked(x)
    with torch.enable_grad():
        sn.eval()
        y_ref = sn(x).detach()  # grad mode: no cache at all
    assert not torch.equal(y1, y0) and torch.equal(y1, y_ref)


class _CountConvs(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.convs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.conv2d, nn.functional.conv2d):
            self.convs += 1
        return func(*args, **(kwargs or {}))


def test_one_convolution_per_layer_and_alpha_gets_gradients():
    sn = Supernet(_trained_ish("resnet8", 6), W_BITS, A_BITS).train()
    n_convs = sum(isinstance(m, nn.Conv2d) for _, m in quantizable_layers(_trained_ish("resnet8", 6)))
    with _CountConvs() as counter:
        loss = sn(torch.randn(2, *SHAPE)).logsumexp(dim=1).mean()
    assert counter.convs == n_convs
    loss.backward()
    assert sn.alpha.grad is not None and sn.alpha.grad.abs().sum() > 0  # EdMIPS trains softmax(α)
    assert [p for p in sn.arch_parameters()] == [sn.alpha]
    assert all(p is not sn.alpha for p in sn.weight_parameters())
    mix = sn.layer_mixtures()
    assert list(mix) == sn.layer_names and mix[sn.layer_names[1]].w_bits == W_BITS


def test_derive_policy_picks_argmax_ties_to_more_bits(supernets):
    sn = supernets["resnet8"]
    scores = torch.zeros(sn.num_players)
    n1, n2 = sn.layer_names[1], sn.layer_names[2]
    scores[sn.player_index(n1, "w", 2)] = 3.0
    scores[sn.player_index(n1, "a", 4)] = 1.0
    p = sn.derive_policy(scores)
    assert p[n1] == (2, 4)
    assert p[n2] == (8, 8)  # all tied → the most bits
    assert p[sn.layer_names[0]] == (8, 8)
    assert list(p) == sn.layer_names
