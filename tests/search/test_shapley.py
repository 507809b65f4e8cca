"""The generic Monte-Carlo Shapley estimator on games with known exact values, and the α update."""
from __future__ import annotations

import numpy as np
import pytest

from search.shapley import (ShapleyResult, estimate_shapley, exact_shapley, last_of_group, last_stratified_order,
                            singleton_contributions, update_alpha)


def test_additive_game_is_exact_after_one_permutation() -> None:
    weights = np.array([0.3, -0.1, 0.5, 0.0, 0.25, 0.05])
    game = lambda mask: float(weights[mask].sum())  # noqa: E731
    res = estimate_shapley(game, len(weights), n_permutations=1, threshold=0.0, rng=np.random.default_rng(7))
    np.testing.assert_allclose(res.psi, weights, atol=1e-12)
    np.testing.assert_allclose(exact_shapley(game, len(weights)), weights, atol=1e-12)
    assert res.n_evaluations == len(weights) + 1 and res.n_saved_by_truncation == 0


def _glove_like_game(n: int = 7):
    """A non-additive monotone game: a weighted sum plus pairwise synergies, passed through a concave cap."""
    r = np.random.default_rng(11)
    w = r.uniform(0.0, 1.0, n)
    syn = np.triu(r.uniform(0.0, 0.6, (n, n)), 1)

    def game(mask: np.ndarray) -> float:
        m = mask.astype(float)
        return float(np.sqrt(w @ m + m @ syn @ m))
    return game


def test_estimate_converges_to_exact_values_as_permutations_grow() -> None:
    n = 7
    game = _glove_like_game(n)
    exact = exact_shapley(game, n)
    assert exact.sum() == pytest.approx(game(np.ones(n, bool)) - game(np.zeros(n, bool)))  # efficiency
    errs = {}
    for m in (10, 1000):
        per_seed = [np.abs(estimate_shapley(game, n, m, threshold=0.0, rng=np.random.default_rng(s)).psi - exact).max()
                    for s in range(5)]
        errs[m] = float(np.mean(per_seed))
    assert errs[1000] < errs[10] / 3  # Monte-Carlo error shrinks ~ 1/sqrt(M)
    assert errs[1000] < 0.02


def test_truncation_saves_evaluations_and_its_error_is_bounded() -> None:
    n, m, thr = 8, 50, 0.5
    game = _glove_like_game(n)
    full = estimate_shapley(game, n, m, threshold=0.0, rng=np.random.default_rng(3))
    trunc = estimate_shapley(game, n, m, threshold=thr, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(full.permutations, trunc.permutations)
    assert trunc.n_saved_by_truncation > 0
    assert trunc.n_evaluations + trunc.n_saved_by_truncation == full.n_evaluations
    v_full, v_empty = game(np.ones(n, bool)), game(np.zeros(n, bool))
    for p in range(m):
        perm = trunc.permutations[p]
        kept = trunc.contributions[p][perm] != 0
        j = len(perm) if kept.all() else int(np.argmin(kept))  # first player given 0 (this game has no zero drops)
        np.testing.assert_allclose(trunc.contributions[p][perm[:j]], full.contributions[p][perm[:j]])
        assert np.all(trunc.contributions[p][perm[j:]] == 0)
        dropped = full.contributions[p][perm[j:]].sum()
        # Telescoping: what the skipped players would have added is v(S_t) − v(∅) < thr · v(full).
        assert -1e-12 <= dropped < thr * v_full - v_empty + 1e-12
    gap = (full.psi - trunc.psi).sum()
    assert 0 <= gap < thr * v_full


def test_robust_psi_is_mean_minus_std() -> None:
    game = _glove_like_game(5)
    res = estimate_shapley(game, 5, 20, threshold=0.0, rng=np.random.default_rng(0), robust=True)
    np.testing.assert_allclose(res.psi, res.contributions.mean(0) - res.contributions.std(0))


def test_fresh_game_per_permutation_hook_is_called_before_each_walk() -> None:
    calls: list[int] = []
    shift = {"v": 0.0}

    def game(mask: np.ndarray) -> float:
        return float(mask.sum()) + shift["v"]

    def hook(p: int) -> None:
        calls.append(p)
        shift["v"] = 10.0 * p  # a different "batch" per permutation; constant within a walk
    res = estimate_shapley(game, 4, 3, threshold=0.0, rng=np.random.default_rng(0), on_permutation=hook)
    assert calls == [0, 1, 2]
    np.testing.assert_allclose(res.psi, np.ones(4))
    np.testing.assert_allclose(res.full_values, [4.0, 14.0, 24.0])


def test_alpha_update_matches_hand_computation() -> None:
    alpha = np.array([0.01, -0.02, 0.0])
    q = np.array([0.0, 0.6, 0.8])
    psi = np.array([3.0, 0.0, 4.0])
    a1, q1 = update_alpha(alpha, q, psi, xi=0.1, beta=0.8, lam=0.2)
    # ψ/‖ψ‖ = (0.6, 0, 0.8); q = 0.8·(0, 0.6, 0.8) + 0.2·(0.6, 0, 0.8) = (0.12, 0.48, 0.80)
    np.testing.assert_allclose(q1, [0.12, 0.48, 0.80])
    norm = np.sqrt(0.12**2 + 0.48**2 + 0.80**2)
    np.testing.assert_allclose(a1, [0.01 + 0.1 * 0.12 / norm, -0.02 + 0.1 * 0.48 / norm, 0.1 * 0.80 / norm])
    a0, q0 = update_alpha(alpha, np.zeros(3), np.zeros(3))
    np.testing.assert_array_equal(a0, alpha) and np.testing.assert_array_equal(q0, np.zeros(3))
    with pytest.raises(ValueError, match="β \\+ λ"):
        update_alpha(alpha, q, psi, beta=0.5, lam=0.2)


def test_mean_update_is_the_running_mean_of_psi() -> None:
    from search.shapley import update_alpha_mean

    alpha0 = np.array([0.001, -0.002, 0.0])
    psis = [np.array([0.1, -0.2, 0.0]), np.array([0.3, 0.0, -0.1]), np.array([-0.1, 0.1, 0.4])]
    mean = np.zeros(3)
    for k, psi in enumerate(psis, 1):
        alpha, mean = update_alpha_mean(alpha0, mean, psi, k)
        np.testing.assert_allclose(alpha, alpha0 + np.mean(psis[:k], axis=0), atol=1e-15)
    with pytest.raises(ValueError):
        update_alpha_mean(alpha0, mean, psis[0], 0)


def test_antithetic_walks_reverse_their_partner_and_reduce_the_error() -> None:
    n = 7
    game = _glove_like_game(n)
    exact = exact_shapley(game, n)
    res = estimate_shapley(game, n, 4, threshold=0.0, rng=np.random.default_rng(0), antithetic=True)
    np.testing.assert_array_equal(res.permutations[1], res.permutations[0][::-1])
    np.testing.assert_array_equal(res.permutations[3], res.permutations[2][::-1])
    assert not np.array_equal(res.permutations[2], res.permutations[0])

    def err(anti: bool) -> float:
        return float(np.mean([np.abs(estimate_shapley(game, n, 20, threshold=0.0, rng=np.random.default_rng(s),
                                                      antithetic=anti).psi - exact).mean() for s in range(30)]))
    assert err(True) < 0.8 * err(False)


def test_walk_evaluations_add_up_and_show_truncation() -> None:
    game = _glove_like_game(7)
    res = estimate_shapley(game, 7, 6, threshold=0.9, rng=np.random.default_rng(2))
    assert res.walk_evaluations is not None and res.walk_evaluations.sum() == res.n_evaluations
    assert (res.walk_evaluations <= 8).all() and (res.walk_evaluations < 8).any()  # some walk was cut short


def test_last_stratified_order_makes_every_member_last_once_per_block() -> None:
    group = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 5])
    lasts = []
    for walk in range(12):
        perm = last_stratified_order(np.random.default_rng(walk), group, walk, seed=3)
        assert sorted(perm.tolist()) == list(range(len(group)))
        lasts.append({int(group[j]): int(j) for j in perm})  # the last member of each group in removal order
    for g, size in ((0, 4), (1, 3), (2, 2), (5, 1)):
        members = np.flatnonzero(group == g).tolist()
        for start in range(0, 12, size):
            assert sorted(last[g] for last in lasts[start:start + size]) == members


def test_stratified_orders_keep_the_shapley_estimate_unbiased() -> None:
    game, n = _glove_like_game(6), 6
    group = np.array([0, 0, 0, 1, 1, 1])
    res = estimate_shapley(game, n, n_permutations=3000, threshold=0.0,
                           order=lambda p: last_stratified_order(np.random.default_rng(p), group, p, seed=0))
    np.testing.assert_allclose(res.psi, exact_shapley(game, n), atol=0.01)


def test_stratified_orders_reduce_the_error_where_the_last_of_a_group_carries_the_value() -> None:
    # a fallback-like game: a group's value is its best present member's, or the fallback's (1.0) when empty,
    # so most of a member's Shapley value is earned in the walks where it is its group's last
    group = np.repeat(np.arange(3), 3)
    quality = np.array([0.2, 0.5, 1.4, 0.1, 0.9, 0.6, 0.3, 1.2, 0.8])

    def game(m: np.ndarray) -> float:
        return float(sum(quality[(group == g) & m].max() if ((group == g) & m).any() else 1.0 for g in range(3)))
    exact = exact_shapley(game, 9)

    def err(stratified: bool) -> float:
        order = (lambda s: lambda p: last_stratified_order(np.random.default_rng([s, p]), group, p, seed=s)) if stratified else None
        return float(np.mean([np.abs(estimate_shapley(game, 9, 12, threshold=0.0, rng=np.random.default_rng(s),
                                                      order=order(s) if order else None).psi - exact).mean()
                              for s in range(40)]))
    assert err(True) < 0.8 * err(False)


def test_last_of_group_sums_the_contribution_of_each_groups_last_removal() -> None:
    group = np.array([0, 0, 1, 1])
    perms = np.array([[0, 2, 1, 3], [3, 1, 0, 2], [1, 2, 0, 3]])
    contrib = np.arange(12, dtype=float).reshape(3, 4)
    # walk 2 was truncated after two removals (3 evaluations): no group was removed whole
    res = ShapleyResult(contrib.mean(0), contrib, perms, np.ones(3), 13, 2, np.array([5, 5, 3]))
    total, count = last_of_group(res, group)
    # walk 0: group 0 last = 1, group 1 last = 3; walk 1: group 0 last = 0, group 1 last = 2
    np.testing.assert_array_equal(count, [1, 1, 1, 1])
    np.testing.assert_allclose(total, [contrib[1, 0], contrib[0, 1], contrib[1, 2], contrib[0, 3]])


def test_singleton_contributions_are_the_shapley_value_of_an_additive_game_and_not_otherwise() -> None:
    weights = np.array([0.3, -0.1, 0.05, 0.0, 0.2])
    additive = lambda m: 1.0 + float(weights[m].sum())  # noqa: E731
    calls = []
    single, empty, made = singleton_contributions(lambda m: calls.append(m.copy()) or additive(m), 5)
    assert made == len(calls) == 6 and empty == 1.0 and not calls[0].any() and all(c.sum() == 1 for c in calls[1:])
    np.testing.assert_allclose(single, exact_shapley(additive, 5), atol=1e-12)
    # with an interaction (players 0 and 1 only pay off together) the first stratum misses half of it
    pair = lambda m: additive(m) + (0.4 if m[0] and m[1] else 0.0)  # noqa: E731
    single, _, _ = singleton_contributions(pair, 5)
    np.testing.assert_allclose(exact_shapley(pair, 5) - single, [0.2, 0.2, 0, 0, 0], atol=1e-12)


def test_singletons_the_game_plays_as_the_empty_coalition_are_zero_without_an_evaluation() -> None:
    weights = np.array([0.3, -0.1, 0.05, 0.0, 0.2])
    calls = []
    game = lambda m: calls.append(m.copy()) or 1.0 + float(weights[m].sum())  # noqa: E731
    skip = np.array([False, True, False, False, True])
    single, empty, made = singleton_contributions(game, 5, same_as_empty=skip)
    assert made == len(calls) == 4 and not any(c[1] or c[4] for c in calls)
    np.testing.assert_allclose(single, [0.3, 0.0, 0.05, 0.0, 0.0], atol=1e-12)
