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


@dataclass
class ShapleyResult:
    """ψ (one value per player) and the raw per-permutation contributions of one estimate."""

    psi: np.ndarray               # (n_players,) float64
    contributions: np.ndarray     # (n_permutations, n_players) float64; 0 for players past truncation
    permutations: np.ndarray      # (n_permutations, n_players) int64, removal order
    full_values: np.ndarray       # (n_permutations,) v(grand coalition) on each permutation's game
    n_evaluations: int            # value-function calls made
    n_saved_by_truncation: int    # calls a walk without truncation would have made on top


def estimate_shapley(value_fn: ValueFn, n_players: int, n_permutations: int = 10, threshold: float = 0.5,
                     rng: np.random.Generator | None = None, robust: bool = False,
                     on_permutation: Callable[[int], None] | None = None) -> ShapleyResult:
    """Estimate Shapley values of `value_fn` from `n_permutations` random truncated removal walks.

    `threshold` = 0 disables truncation. `robust` returns mean − std over permutations (Shapley-NAS)
    instead of the mean. `on_permutation(p)` is called before walk `p` starts, e.g. to draw a fresh
    validation batch: the game may change between permutations but not within one.
    """
    if n_players < 1:
        raise ValueError(f"a game needs at least one player, got n_players={n_players}")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be ≥ 1, got {n_permutations}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1) (0 disables truncation), got {threshold}")
    rng = rng if rng is not None else np.random.default_rng(0)
    contributions = np.zeros((n_permutations, n_players), dtype=np.float64)
    permutations = np.zeros((n_permutations, n_players), dtype=np.int64)
    full_values = np.zeros(n_permutations, dtype=np.float64)
    n_eval = n_saved = 0
    for p in range(n_permutations):
        perm = rng.permutation(n_players)
        permutations[p] = perm
        if on_permutation is not None:
            on_permutation(p)
        mask = np.ones(n_players, dtype=bool)
        v_full = float(value_fn(mask.copy()))
        n_eval += 1
        full_values[p] = v_full
        cutoff = threshold * v_full
        v_prev = v_full
        for j, player in enumerate(perm):
            if threshold > 0 and v_prev < cutoff:
                n_saved += n_players - j
                break
            mask[player] = False
            v = float(value_fn(mask.copy()))
            n_eval += 1
            contributions[p, player] = v_prev - v
            v_prev = v
    psi = contributions.mean(axis=0)
    if robust:
        psi = psi - contributions.std(axis=0)
    return ShapleyResult(psi, contributions, permutations, full_values, n_eval, n_saved)


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
