"""Monte-Carlo Shapley values of a cooperative game by truncated removal walks, and SMPQ's α update.

The estimator is generic: a game is a value function over a coalition mask (a numpy bool vector,
True = the player is present). Each sampled permutation starts from the grand coalition and removes
players one by one in permutation order; a player's marginal contribution is the value drop its
removal causes. A permutation is truncated once the value falls below ``threshold × v(full)``: the
players not yet removed get 0 for that permutation, which saves their evaluations.

Truncation bound (used by the tests): along one walk the contributions telescope, so the players
skipped by truncation would together have contributed exactly ``v(S_t) − v(∅)``, where ``S_t`` is
the coalition at truncation. For a monotone game with v(∅) ≥ 0 that sum lies in
``[0, threshold × v(full))``, hence the per-permutation total of what truncation drops is bounded by
``threshold × v(full)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

ValueFn = Callable[[np.ndarray], float]
Gather = Callable[[np.ndarray], np.ndarray]


@dataclass
class ShapleyResult:
    """ψ (one value per player) and the raw per-permutation contributions of one estimate."""

    psi: np.ndarray               # (n_players,) float64
    contributions: np.ndarray     # (n_permutations, n_players) float64; 0 for players past truncation
    permutations: np.ndarray      # (n_permutations, n_players) int64, removal order
    full_values: np.ndarray       # (n_permutations,) v(grand coalition) on each permutation's game
    n_evaluations: int            # value-function calls made
    n_saved_by_truncation: int    # calls a walk without truncation would have made on top
    walk_evaluations: np.ndarray | None = None  # (n_permutations,) value-function calls of each walk


def estimate_shapley(value_fn: ValueFn, n_players: int, n_permutations: int = 10, threshold: float = 0.5,
                     rng: np.random.Generator | None = None, robust: bool = False,
                     on_permutation: Callable[[int], None] | None = None,
                     permutation_rng: Callable[[int], np.random.Generator] | None = None,
                     shard: tuple[int, int] = (0, 1), gather: Gather | None = None,
                     antithetic: bool = False, order: Callable[[int], np.ndarray] | None = None) -> ShapleyResult:
    """Estimate Shapley values of `value_fn` from `n_permutations` random truncated removal walks.

    `threshold` = 0 disables truncation. `robust` returns mean − std over permutations (Shapley-NAS)
    instead of the mean. `on_permutation(p)` is called before walk `p` starts, e.g. to draw a fresh
    validation batch: the game may change between permutations but not within one.

    Sharding (several processes): with ``permutation_rng(p)`` the removal order of walk `p` comes from
    its own generator instead of successive draws from `rng`, so it does not depend on which process
    walks it. With ``shard=(r, N)`` this process walks only the permutations p ≡ r (mod N);
    ``gather(rows)`` must return every process's (n_permutations, ·) array (``search.distributed.
    gather_rows`` with owner ``p mod N``); the result is then the same on every process and
    bit-identical to ``shard=(0, 1)``.

    `antithetic` (variance reduction, antithetic permutations): every odd walk p removes the players in the
    reverse order of walk p − 1, so a player removed early in one walk is removed late in its partner;
    its draw from `rng` / `permutation_rng(p)` is not used. Still unbiased (each walk's order is uniform).

    `order(p)`: the removal order of walk p, given by the caller (e.g. :func:`last_stratified_order`);
    it replaces the draws from `rng` / `permutation_rng`.
    """
    if n_players < 1:
        raise ValueError(f"a game needs at least one player, got n_players={n_players}")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be ≥ 1, got {n_permutations}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1) (0 disables truncation), got {threshold}")
    me, world = shard
    if world > 1 and (permutation_rng is None or gather is None):
        raise ValueError("a sharded estimate needs permutation_rng (per-walk generators) and gather")
    rng = rng if rng is not None else np.random.default_rng(0)
    # one row per walk: contributions (n) | removal order (n) | v(full) | evaluations | saved by truncation
    rows = np.zeros((n_permutations, 2 * n_players + 3), dtype=np.float64)
    perm = np.arange(n_players)
    for p in range(n_permutations):
        if order is not None:
            perm = np.asarray(order(p), dtype=np.int64)
        elif antithetic and p % 2 == 1:
            perm = perm[::-1].copy()
        else:
            perm = permutation_rng(p).permutation(n_players) if permutation_rng is not None else rng.permutation(n_players)
        if p % world != me:
            continue
        if on_permutation is not None:
            on_permutation(p)
        rows[p] = _walk(value_fn, perm, threshold)
    if world > 1:
        assert gather is not None
        rows = gather(rows)
    contributions = rows[:, :n_players].copy()
    permutations = rows[:, n_players:2 * n_players].astype(np.int64)
    psi = contributions.mean(axis=0)
    if robust:
        psi = psi - contributions.std(axis=0)
    return ShapleyResult(psi, contributions, permutations, rows[:, 2 * n_players].copy(),
                         int(rows[:, -2].sum()), int(rows[:, -1].sum()), rows[:, -2].astype(np.int64))


def _walk(value_fn: ValueFn, perm: np.ndarray, threshold: float) -> np.ndarray:
    """One truncated removal walk: [contributions | perm | v(full) | evaluations | saved]."""
    n = len(perm)
    row = np.zeros(2 * n + 3, dtype=np.float64)
    row[n:2 * n] = perm
    mask = np.ones(n, dtype=bool)
    v_full = float(value_fn(mask.copy()))
    n_eval, n_saved = 1, 0
    cutoff = threshold * v_full
    v_prev = v_full
    for j, player in enumerate(perm):
        if threshold > 0 and v_prev < cutoff:
            n_saved = n - j
            break
        mask[player] = False
        v = float(value_fn(mask.copy()))
        n_eval += 1
        row[player] = v_prev - v
        v_prev = v
    row[2 * n:] = (v_full, n_eval, n_saved)
    return row


def last_stratified_order(rng: np.random.Generator, group: np.ndarray, walk: int, seed: int) -> np.ndarray:
    """A uniformly random removal order in which each group's last member is stratified: the walks are cut
    into blocks of |g| consecutive walks, and within a block every member of g is the last one once (in an
    order drawn from (`seed`, g, block), so that which members are last in different groups stay independent).
    Given the last members, the rest of the order is uniform; over whole blocks the estimate is unbiased."""
    perm = rng.permutation(len(group))
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        block = np.random.default_rng([seed, int(g), walk // len(members)]).permutation(members)
        chosen = block[walk % len(members)]
        slots = np.flatnonzero(group[perm] == g)  # positions the group occupies in the order
        where = slots[np.flatnonzero(perm[slots] == chosen)[0]]
        perm[where], perm[slots[-1]] = perm[slots[-1]], perm[where]
    return perm


def last_of_group(res: ShapleyResult, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per player, the sum of its marginal contributions over the walks in which it was the last member of
    its group to be removed (before any truncation), and the number of those walks.

    In SMPQ's fallback game that step is the switch from the candidate alone in its layer to the
    fallback: the candidate's value as the layer's only choice, in the context the walk has reached."""
    n = res.contributions.shape[1]
    total, count = np.zeros(n), np.zeros(n, dtype=np.int64)
    removed = (res.walk_evaluations if res.walk_evaluations is not None
               else np.full(len(res.permutations), n + 1)) - 1
    for p, perm in enumerate(res.permutations):
        done = perm[: int(removed[p])]
        last: dict[int, int] = {}
        for player in done:
            last[int(group[player])] = int(player)
        for g, player in last.items():
            if np.count_nonzero(group[done] == g) == np.count_nonzero(group == g):  # the whole group was removed
                total[player] += res.contributions[p, player]
                count[player] += 1
    return total, count


def singleton_contributions(value_fn: ValueFn, n_players: int, same_as_empty: np.ndarray | None = None
                            ) -> tuple[np.ndarray, float, int]:
    """Every player's value alone, v({i}) − v(∅); also v(∅) and the number of evaluations made.

    This is the Shapley value's first stratum (each player's marginal contribution to the empty coalition),
    computed exactly; it equals the Shapley value when the game is additive. In SMPQ's fallback game {i}
    is "candidate i alone in its layer, every other layer at its widest candidate" and ∅ is uniform W8A8.
    `same_as_empty[i]`: the game plays {i} exactly as ∅ (in the fallback game, a group's widest candidate),
    so its contribution is 0 without an evaluation."""
    skip = np.zeros(n_players, dtype=bool) if same_as_empty is None else np.asarray(same_as_empty, dtype=bool)
    empty = np.zeros(n_players, dtype=bool)
    v_empty = float(value_fn(empty.copy()))
    out = np.zeros(n_players, dtype=np.float64)
    for i in np.flatnonzero(~skip):
        alone = empty.copy()
        alone[i] = True
        out[i] = float(value_fn(alone)) - v_empty
    return out, v_empty, 1 + int(np.count_nonzero(~skip))


def exact_shapley(value_fn: ValueFn, n_players: int) -> np.ndarray:
    """Exact Shapley values by enumerating all 2^n coalitions (for tests and tiny games, n ≤ 16)."""
    if n_players > 16:
        raise ValueError(f"exact enumeration is for n ≤ 16 players, got {n_players}")
    from math import factorial

    values = np.empty(1 << n_players, dtype=np.float64)
    for code in range(1 << n_players):
        mask = np.array([(code >> i) & 1 for i in range(n_players)], dtype=bool)
        values[code] = float(value_fn(mask))
    weight = [factorial(s) * factorial(n_players - s - 1) / factorial(n_players) for s in range(n_players)]
    phi = np.zeros(n_players, dtype=np.float64)
    for code in range(1 << n_players):
        size = bin(code).count("1")
        for i in range(n_players):
            if not (code >> i) & 1:
                phi[i] += weight[size] * (values[code | (1 << i)] - values[code])
    return phi


def update_alpha(alpha: np.ndarray, q: np.ndarray, psi: np.ndarray, xi: float = 0.1, beta: float = 0.8,
                 lam: float = 0.2, eps: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """One SMPQ step (paper Eq. 8–9): q ← β q + λ ψ/‖ψ‖₂, α ← α + ξ q/‖q‖₂; returns (α, q).

    A zero ψ (or q) contributes nothing instead of dividing by zero. β + λ must equal 1.
    """
    if abs(beta + lam - 1.0) > 1e-9:
        raise ValueError(f"β + λ must be 1 (momentum convex combination), got β={beta}, λ={lam}")
    psi = np.asarray(psi, dtype=np.float64)
    q_new = beta * np.asarray(q, dtype=np.float64) + lam * psi / max(float(np.linalg.norm(psi)), eps)
    alpha_new = np.asarray(alpha, dtype=np.float64) + xi * q_new / max(float(np.linalg.norm(q_new)), eps)
    return alpha_new, q_new


def update_alpha_mean(alpha0: np.ndarray, mean: np.ndarray, psi: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The project's default update: the running mean of ψ over rounds 1..k, α = α₀ + mean; returns (α, mean).

    Unlike Eq. 8–9 (:func:`update_alpha`) nothing is normalised: α keeps ψ's units (accuracy), so scores
    of different layers are comparable and their spread is not capped at ξ per round.
    """
    if k < 1:
        raise ValueError(f"the round count k must be >= 1, got {k}")
    mean_new = np.asarray(mean, dtype=np.float64) + (np.asarray(psi, dtype=np.float64) - mean) / k
    return np.asarray(alpha0, dtype=np.float64) + mean_new, mean_new
