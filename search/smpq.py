"""SMPQ: Shapley-based mixed-precision search on the composite supernet (IJCAI'25, as the project fixes it).

Schedule (one *unit* of work between two checkpoints each):

    warm-up: ``warmup_epochs`` epochs of SGD on the supernet weights W (train split)
    round 0: Shapley round → α update
    then, for r = 1 .. rounds−1: W training (one epoch, or ``steps_per_round`` steps) → round r

(No W training after the last round: it could not change α, hence not the policy.)

Shapley round: the players are the supernet's candidates ``(layer, 'w'|'a', bits)`` of every layer
that has a choice (a layer held at a single candidate — first/last at 8 bits — is always present:
removing it only collapses the network). Per permutation a fresh validation batch is drawn; the
value of a coalition is the top-1 accuracy of the supernet with the other candidates masked (BN in
eval mode, no gradient), optionally minus ``penalty × Σ_k max(0, E[Ω_k]/Ω0_k − 1)`` over the budgets
the mixture cost model can express (``value="tradeoff"``: bops, flash_bytes, latency_s; E[Ω] is the
expectation under the coalition's renormalised mixture coefficients). ``value="probability"``: the
mean softmax probability of each image's true class instead of top-1 — a smooth accuracy, in which an
image near the decision boundary moves the value a little instead of flipping it by 1/batch (a different
game: docs/results.md measures its noise and ranking against top-1's). Estimation, truncation and the
α updates are in :mod:`search.shapley`; α is never in an optimizer.

The game and the update (``game``, ``update``; preset ``paper`` = the paper as written, see
:data:`PRESETS` and docs/results.md for the measurements behind the default):

* ``game="zero"`` (paper): a group (one layer's weight or activation candidates) with every candidate
  removed zeroes that layer's weight or input. Then a candidate's marginal contribution is almost only
  whether it is the group's last survivor, which says nothing about its bit width (the diagnosis).
  ``game="fallback"`` (default): an emptied group falls back to its widest candidate (8 bits), i.e.
  v(S) is the accuracy of S with the widest candidate of every emptied group put back; a candidate's
  contribution is then what its bits gain or lose against the reference. (The walk never collapses,
  so truncation rarely fires in this game.)
* ``update="paper"``: q ← β q + λ ψ/‖ψ‖₂, α ← α + ξ q/‖q‖₂ (Eq. 8–9). α moves by ξ per round in norm
  over *all* players, ≈ ξ/√P per candidate, so α stays near uniform and its softmax is flat.
  ``update="mean"`` (default): α = α₀ + the mean of ψ over the rounds so far — an estimate of each
  candidate's contribution in accuracy units, comparable across layers, which the budget step
  (knapsack) maximises as an additive score (``SearchResult.details["additive_scores"]``).
* ``score="shapley"`` (default): α from ψ as above. ``score="last"``: α = α₀ + each candidate's mean
  contribution over the walks in which it is the *last* of its group to be removed — in the fallback game
  the step from "this candidate alone in its layer" to the fallback, i.e. what the deployed policy (one
  candidate per layer) gets from it, in the contexts the walks reach. ψ averages that step with the
  steps where other candidates of the layer remain (the mixture), which the deployed policy never has;
  measured on CIFAR-10 ψ stops improving at τ ≈ 0.35 against the measured contribution however many
  walks, the last-of-group score does not (docs/results.md). The walks are stratified so that over
  |g| consecutive walks every member of group g is last once (:func:`search.shapley.last_stratified_order`).
  ``score="singleton"``: no walks; per validation batch (``permutations`` of them per round) every
  candidate's v({i}) − v(∅) (:func:`search.shapley.singleton_contributions`): the candidate alone in its
  layer with every other layer at its 8-bit fallback, against uniform W8A8 — the Shapley value's first
  stratum, exact, in n + 1 − (number of groups) evaluations per batch (a group's widest candidate alone
  is W8A8 itself: 0 without evaluating it); α = α₀ + its mean over the batches. The contexts ψ
  averages over (mixtures, other layers already low-bit) are what the measurements show misleads the
  budget step (docs/results.md: the oracle rows); this score drops them. Under torch.distributed every
  rank evaluates every batch (identical results, no speed-up).

Mixture coefficients during W training and during the rounds (``mixture="alpha"``, the default):
per layer and kind, softmax(α/τ) over that layer's candidates, i.e. the supernet's own softmax
coefficient mode fed with α/τ. Why: it keeps the composite layer a convex combination (the same
semantics EdMIPS trains, so both methods share one supernet), masked candidates are renormalised
away exactly as in a Shapley walk, and since every update moves α by at most ξ in norm, the mixture
starts uniform and only gradually favours the candidates that contribute — every candidate keeps
being trained, so the next round's values stay fair. ``mixture="uniform"`` trains with equal weights.

Scores: the final α per candidate (:attr:`SearchResult.scores`); the argmax policy per layer and kind
(:meth:`Supernet.derive_policy`, ties → more bits; the budget step is the knapsack's job).
Randomness of a round: the removal order of walk p in round r comes from its own generator seeded by
(seed, r, p), and so does its validation batch. Under torch.distributed (:mod:`search.distributed`)
rank k walks the p ≡ k (mod N) and the walks are gathered on every rank, so ψ, α and the policy are
bit-identical for any number of processes (given the same W); W training runs under DDP.

Files in the run folder: ``search_state.pt`` (after every unit, atomic), ``smpq_log.jsonl`` (one
record per unit: ψ, α, evaluations, evaluations saved by truncation, wall time) and ``supernet.pt``.

Cost of a round: every value is a masked forward pass (masked candidates are skipped) through
:class:`search.supernet.IncrementalForward`, which recomputes only the graph nodes a walk step's
mask change reaches and reuses the rest from the walk's previous step; ψ is bit-identical to plain
forward passes (``tests/search/test_shapley.py``; timings: ``bench/shapley_speed.py``).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search import distributed
from search.budget import Budget
from search.cost import MixtureCost
from search.nn.data import BatchLoader, Dataset
from search.edmips import mixture_cost_for, mixture_probs
from search.errors import SearchError
from search.search_state import STATE_FILE, SearchResult, SupernetSearch
from search.shapley import (ShapleyResult, estimate_shapley, last_of_group, last_stratified_order,
                            singleton_contributions, update_alpha, update_alpha_mean)
from search.image_strata import ImageStrata, stratify
from search.supernet import (BN_MODES, LAYOUTS, MEMORY_FORMATS, IncrementalForward, Supernet, masked_correct,
                             memory_layout)
from search.nn.train import deterministic_mode, resolve_device

LOG_FILE = "smpq_log.jsonl"
VALUES = ("accuracy", "tradeoff", "probability")
MIXTURES = ("alpha", "uniform")
GAMES = ("fallback", "zero")
UPDATES = ("mean", "paper")
SCORES = ("shapley", "last", "singleton")
IMAGES = ("uniform", "stratified")
PRESETS: dict[str, dict[str, Any]] = {
    # the project's default: removing a group's last candidate falls back to its widest one, α = mean ψ
    "default": {},
    # the paper as written: an emptied group zeroes the layer's weight or input; α by Eq. 8-9 (ξ, β, λ)
    "paper": {"game": "zero", "update": "paper"},
}


@dataclass
class SMPQConfig:
    """Hyper-parameters of one SMPQ search (defaults from the paper where it fixes them)."""

    warmup_epochs: int = 1
    rounds: int = 10
    steps_per_round: int | None = None  # W-training steps between rounds; None: one epoch
    permutations: int = 10              # M
    threshold: float = 0.5              # truncation at threshold × v(full); 0 disables
    xi: float = 0.1                     # ξ
    beta: float = 0.8                   # β (momentum of q)
    lam: float = 0.2                    # λ = 1 − β
    robust: bool = False                # ψ = mean − std over permutations (Shapley-NAS)
    antithetic: bool = False            # odd walks reverse the previous walk's order (same batch as it)
    stratified: bool = False            # walks stratified by each group's last member (score "last" always is)
    value: str = "accuracy"             # "tradeoff": accuracy − penalty × budget overshoot of E[Ω]; "probability": mean p(true class)
    penalty: float = 1.0
    val_batch_size: int = 256
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    game: str = "fallback"              # an emptied group: "fallback" to its widest candidate, "zero" (paper)
    update: str = "mean"                # α = α0 + mean of ψ over rounds; "paper": Eq. 8-9 with ξ, β, λ
    score: str = "shapley"              # α from ψ; "last": the walks' last-of-group steps; "singleton": v({i}) − v(∅)
    mixture: str = "alpha"              # softmax(α/τ) per layer and kind, or "uniform"
    bn: str = "running"                 # BatchNorm in the game: running statistics, or "batch" (the batch's own)
    images: str = "uniform"             # each batch's images: uniform, or "stratified" (search.image_strata; measured worse)
    layout: str = "nchw"                # memory layout of the rounds' evaluations; "channels_last": faster on CPU, not bit for bit
    temperature: float = 1.0            # τ
    alpha_init_std: float = 1e-3        # small random α breaks ties
    subset: int | None = None           # first N train / val images
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.warmup_epochs >= 0, f"warmup epochs must be >= 0 (got {self.warmup_epochs})"),
            (self.rounds >= 1, f"rounds must be >= 1 (got {self.rounds})"),
            (self.steps_per_round is None or self.steps_per_round >= 0, f"steps per round must be >= 0 (got {self.steps_per_round})"),
            (self.permutations >= 1, f"permutations must be >= 1 (got {self.permutations})"),
            (0 <= self.threshold < 1, f"truncation threshold must be in [0, 1) (got {self.threshold})"),
            (self.xi > 0, f"xi must be > 0 (got {self.xi})"),
            (0 <= self.beta <= 1 and abs(self.beta + self.lam - 1) < 1e-9, f"beta + lambda must be 1 with beta in [0, 1] (got {self.beta}, {self.lam})"),
            (self.value in VALUES, f"value must be one of {', '.join(VALUES)} (got '{self.value}')"),
            (self.penalty >= 0, f"penalty must be >= 0 (got {self.penalty})"),
            (self.val_batch_size >= 1 and self.batch_size >= 1, f"batch sizes must be >= 1 (got {self.val_batch_size}, {self.batch_size})"),
            (self.lr > 0, f"learning rate must be > 0 (got {self.lr})"),
            (self.game in GAMES, f"game must be one of {', '.join(GAMES)} (got '{self.game}')"),
            (self.update in UPDATES, f"update must be one of {', '.join(UPDATES)} (got '{self.update}')"),
            (self.score in SCORES, f"score must be one of {', '.join(SCORES)} (got '{self.score}')"),
            (self.score == "shapley" or (self.game == "fallback" and self.update == "mean" and not self.antithetic),
             f"score '{self.score}' needs game 'fallback', update 'mean' and no antithetic walks"),
            (not (self.stratified and self.antithetic), "stratified and antithetic walks exclude each other: choose one"),
            (self.mixture in MIXTURES, f"mixture must be one of {', '.join(MIXTURES)} (got '{self.mixture}')"),
            (self.bn in BN_MODES, f"bn must be one of {', '.join(BN_MODES)} (got '{self.bn}')"),
            (self.images in IMAGES, f"images must be one of {', '.join(IMAGES)} (got '{self.images}')"),
            (self.layout in LAYOUTS, f"layout must be one of {', '.join(LAYOUTS)} (got '{self.layout}')"),
            (self.temperature > 0, f"temperature must be > 0 (got {self.temperature})"),
            (self.alpha_init_std >= 0, f"alpha init std must be >= 0 (got {self.alpha_init_std})"),
            (self.subset is None or self.subset >= 1, f"subset must be >= 1 image (got {self.subset})"),
        ]
        for ok, message in checks:
            if not ok:
                raise SearchError(f"smpq: {message}")


def smpq_options(options: dict[str, Any]) -> dict[str, Any]:
    """SMPQConfig fields from user options: ``preset`` ("default" or "paper") expanded, explicit fields win."""
    opts = dict(options)
    preset = opts.pop("preset", "default")
    if preset not in PRESETS:
        raise SearchError(f"smpq: unknown preset '{preset}': use one of {', '.join(PRESETS)}")
    return {**PRESETS[preset], **opts}


def search_units(warmup_epochs: int, rounds: int) -> list[tuple[str, int]]:
    """The SMPQ schedule: warm-up epochs, then round 0, then (train, round) for every later round."""
    units = [("warmup", e) for e in range(warmup_epochs)]
    for r in range(rounds):
        if r > 0:
            units.append(("train", r))
        units.append(("round", r))
    return units


# --------------------------------------------------------------------------------- SMPQ
def widest_candidates(supernet: Supernet) -> torch.Tensor:
    """Per group (layer and kind), the flat index of its widest candidate (the fallback of an emptied group)."""
    best: dict[int, int] = {}
    for i, (p, g) in enumerate(zip(supernet.players, supernet.group.tolist())):
        if g not in best or p.bits > supernet.players[best[g]].bits:
            best[g] = i
    return torch.tensor([best[g] for g in range(supernet.num_groups)], device=supernet.mask.device)


def game_players(supernet: Supernet) -> np.ndarray:
    """Flat indices of the Shapley game's players: the candidates of every group (layer and kind) that has a
    choice; a group held at a single candidate (first/last at 8 bits) is always present."""
    group = supernet.group.cpu().numpy()
    return np.flatnonzero(np.bincount(group, minlength=supernet.num_groups)[group] > 1)


def coalition_mask(supernet: Supernet, players: torch.Tensor, coalition: np.ndarray, game: str,
                   widest: torch.Tensor | None = None) -> torch.Tensor:
    """The supernet mask a coalition of `players` (flat indices) is evaluated with; non-players are present.

    ``game="fallback"``: a group left without any candidate gets its widest candidate back (`widest`
    from :func:`widest_candidates`); ``game="zero"``: it stays empty (the layer's weight or input is zero).
    """
    mask = torch.ones(supernet.num_players, device=supernet.mask.device)
    mask[players] = torch.from_numpy(np.asarray(coalition, dtype=np.float32)).to(mask.device)
    if game == "fallback":
        widest = widest_candidates(supernet) if widest is None else widest
        present = torch.zeros(supernet.num_groups, device=mask.device).index_add_(0, supernet.group, mask)
        mask[widest[present == 0]] = 1.0
    return mask


def _budget_overshoot(supernet: Supernet, cost: MixtureCost, limits: dict[str, float], mask: torch.Tensor) -> float:
    w, a = mixture_probs(supernet, cost, mask)
    expected = cost(w, a)
    return float(sum(max(0.0, float(expected[k].detach()) / lim - 1.0) for k, lim in limits.items()))


def run_smpq(supernet: Supernet, dataset: Dataset, cfg: SMPQConfig, out_dir: str | Path,
             device: str | torch.device = "auto", budget: Budget | None = None, cost: MixtureCost | None = None,
             state_name: str = STATE_FILE, log_name: str = LOG_FILE) -> SearchResult:
    """Run (or resume, or just reload) an SMPQ search in `out_dir`; see the module docstring.

    `budget` and `cost` are only used by ``value="tradeoff"`` (`cost` defaults to
    :func:`mixture_cost_for` without a cost model: BOPs only). The same arguments give the same result,
    also when the search was killed and restarted at any point.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    limits: dict[str, float] = {}
    if cfg.value == "tradeoff":
        if cost is None:
            cost = mixture_cost_for(supernet)
        limits = {k: float(v) for k, v in (budget.items() if budget else {}).items() if k in cost.keys}
        if not limits:
            raise SearchError("smpq: the accuracy–complexity value needs a bops, flash_bytes or latency_s budget "
                              "(with a latency model for latency): give one or use value='accuracy'")
    with deterministic_mode(dev):
        return SMPQSearch(supernet, dataset, cfg, out, dev, cost, limits, state_name, log_name).run()


class SMPQSearch(SupernetSearch):
    """Warm-up, then Shapley rounds with α updates, W training between rounds (module docstring)."""

    method = "smpq"
    incremental = True  # masked passes through IncrementalForward (False: plain forward; for bench/shapley_speed.py)

    def __init__(self, supernet: Supernet, dataset: Dataset, cfg: SMPQConfig, out: Path, dev: torch.device,
                 cost: MixtureCost | None, limits: dict[str, float], state_name: str, log_name: str) -> None:
        self.cost, self.limits = cost, limits
        super().__init__(supernet, dataset, cfg, out, dev, state_name, log_name, {
            "limits": limits,
            "cost": None if cost is None else [cost.names, cost.w_candidates, cost.a_candidates, list(cost.keys)]})
        supernet.alpha.requires_grad_(False)
        if len(self.val_split) == 0:
            raise SearchError(f"dataset '{dataset.name}' has an empty validation split: SMPQ measures Shapley values on it")
        val_loader = BatchLoader(self.val_split, dataset, len(self.val_split))
        self.val_x = val_loader.normalize(val_loader.x).to(dev)
        self.val_y = val_loader.y.to(dev)
        self.game_players = game_players(supernet)
        if len(self.game_players) == 0:
            raise SearchError("smpq: no layer has more than one bit-width candidate: give more w/a bit candidates")
        self.q = np.zeros(supernet.num_players)  # "paper": momentum q; "mean": the mean ψ so far
        self.alpha0 = self.alpha.copy()
        self.widest = widest_candidates(supernet)
        self.evaluations = self.saved = 0
        self.group = supernet.group.cpu().numpy()
        self.game_group = self.group[self.game_players]
        self.last_sum = np.zeros(supernet.num_players)   # scores "last"/"singleton": Σ and count of contributions
        self.last_count = np.zeros(supernet.num_players, dtype=np.int64)

    def _plan(self) -> tuple[list[tuple[str, int]], dict[str, int]]:
        cfg = self.cfg
        per_round = self.steps_per_epoch if cfg.steps_per_round is None else cfg.steps_per_round
        return (search_units(cfg.warmup_epochs, cfg.rounds),
                {"warmup": self.steps_per_epoch, "train": per_round, "round": cfg.permutations})

    def _extra_state(self) -> dict[str, Any]:
        return {"q": torch.from_numpy(self.q.copy()), "evaluations": self.evaluations, "saved": self.saved,
                "last_sum": torch.from_numpy(self.last_sum.copy()), "last_count": torch.from_numpy(self.last_count.copy())}

    def _restore_extra(self, s: dict[str, Any]) -> None:
        self.q = s["q"].cpu().numpy().copy()
        self.evaluations, self.saved = int(s["evaluations"]), int(s["saved"])
        if "last_sum" in s:  # states written before score "last" existed hold none
            self.last_sum = s["last_sum"].cpu().numpy().copy()
            self.last_count = s["last_count"].cpu().numpy().copy()

    def _details(self) -> dict[str, Any]:
        return {"value_evaluations": self.evaluations, "saved_by_truncation": self.saved,
                "game_players": self.game_players.tolist(), "mixture": self.cfg.mixture,
                "temperature": self.cfg.temperature, "game": self.cfg.game, "update": self.cfg.update,
                "score": self.cfg.score,
                "additive_scores": self.cfg.update == "mean"}

    def _before_unit(self) -> None:
        """The coefficients W training and the rounds use: softmax(α/τ) per layer and kind, or uniform."""
        mix = self.alpha / self.cfg.temperature if self.cfg.mixture == "alpha" else np.zeros_like(self.alpha)
        self.supernet.set_alpha(torch.from_numpy(mix).float())

    def _unit(self, kind: str, index: int, advance: Callable[..., None]) -> dict[str, Any]:
        if kind != "round":
            record = self._train(kind, index, advance)
            record.pop("extra_loss", None)
            return record
        return self._shapley_round(index, advance)

    def _shapley_round(self, r: int, advance: Callable[..., None]) -> dict[str, Any]:
        sn, cfg = self.supernet, self.cfg
        t0 = time.perf_counter()
        res, forward = (self.estimate_singletons if cfg.score == "singleton" else self.estimate_round)(r, advance)
        psi = np.zeros(sn.num_players)
        psi[self.game_players] = res.psi
        if cfg.update == "paper":
            self.alpha, self.q = update_alpha(self.alpha, self.q, psi, cfg.xi, cfg.beta, cfg.lam)
        else:
            self.alpha, self.q = update_alpha_mean(self.alpha0, self.q, psi, r + 1)
        if cfg.score != "shapley":
            total, count = (last_of_group(res, self.game_group) if cfg.score == "last" else
                            (res.contributions.sum(0), np.full(len(self.game_players), len(res.contributions))))
            self.last_sum[self.game_players] += total
            self.last_count[self.game_players] += count
            self.alpha = self.alpha0 + self.last_scores()
        self.evaluations += res.n_evaluations
        self.saved += res.n_saved_by_truncation
        reuse = {} if not isinstance(forward, IncrementalForward) else {
            "nodes_recomputed_fraction": forward.recomputed / max(forward.total, 1)}
        return {"kind": "round", "index": r, "psi": psi.tolist(), "alpha": self.alpha.tolist(), **reuse,
                "n_evaluations": res.n_evaluations, "n_saved_by_truncation": res.n_saved_by_truncation,
                "full_value_mean": float(res.full_values.mean()), "wall_s": time.perf_counter() - t0}

    def _last_stratified(self, r: int) -> Callable[[int], np.ndarray]:
        """Score ``last`` (or ``stratified`` walks): walk p of round r removes a uniformly random order in which
        every group's last member cycles through its members over consecutive walks (:func:`search.shapley.last_stratified_order`)."""
        return lambda p: last_stratified_order(np.random.default_rng([self.cfg.seed, 12, r, p]), self.game_group,
                                               r * self.cfg.permutations + p, self.cfg.seed)

    def last_scores(self) -> np.ndarray:
        """Score ``last``: per candidate the mean of its last-of-group contributions so far (its value as its
        layer's only candidate against the fallback, in the walks' contexts); a candidate not measured yet
        (fewer walks so far than its group has candidates, or truncated walks) gets its group's lowest
        measured score, 0 when none is."""
        mean = np.divide(self.last_sum, self.last_count, out=np.zeros_like(self.last_sum), where=self.last_count > 0)
        group = self.group
        for i in np.flatnonzero(self.last_count == 0):
            measured = (group == group[i]) & (self.last_count > 0)
            mean[i] = mean[measured].min() if measured.any() else 0.0
        return mean

    def estimate_round(self, r: int, advance: Callable[..., None] = lambda *a, **k: None
                       ) -> tuple[ShapleyResult, IncrementalForward | Supernet]:
        """The Shapley estimate of round `r` on the current weights (ψ over :attr:`game_players`, per-walk
        contributions), without touching α; also the forward used (for its reuse counters)."""
        sn, cfg = self.supernet, self.cfg
        forward = IncrementalForward(sn) if self.incremental else sn
        walked: list[int] = []
        new_batch, value, screened = self._game(r, forward, advance, walked)
        with sn.masked(bn=cfg.bn), memory_layout(sn, cfg.layout):
            world = distributed.world_size()
            res = estimate_shapley(value, len(self.game_players), cfg.permutations, cfg.threshold, robust=cfg.robust,
                                   on_permutation=new_batch,
                                   permutation_rng=lambda p: np.random.default_rng([cfg.seed, 12, r, p]),
                                   shard=(distributed.rank(), world),
                                   gather=lambda rows: distributed.gather_rows(rows, lambda p: p % world),
                                   antithetic=cfg.antithetic, order=self._last_stratified(r) if cfg.score == "last" or cfg.stratified else None)
        advance(cfg.permutations - len(walked) + 1)
        res.n_evaluations += screened
        return res, forward

    def estimate_singletons(self, r: int, advance: Callable[..., None] = lambda *a, **k: None
                            ) -> tuple[ShapleyResult, IncrementalForward | Supernet]:
        """Score ``singleton``: on each of round `r`'s ``permutations`` batches, v({i}) − v(∅) of every game
        player, as a :class:`ShapleyResult` (one row per batch; ψ = their mean; ``full_values``: v(∅), i.e.
        uniform W8A8); the same batches as the walks of :meth:`estimate_round` would use."""
        sn, cfg = self.supernet, self.cfg
        forward = IncrementalForward(sn) if self.incremental else sn
        walked: list[int] = []
        new_batch, value, screened = self._game(r, forward, advance, walked)
        n = len(self.game_players)
        players = torch.from_numpy(self.game_players).to(self.dev)
        nobody = coalition_mask(sn, players, np.zeros(n, dtype=bool), cfg.game, self.widest)
        same_as_empty = np.array([torch.equal(coalition_mask(sn, players, np.eye(1, n, i, dtype=bool)[0], cfg.game, self.widest),
                                              nobody) for i in range(n)])
        rows, empty, evaluations = np.zeros((cfg.permutations, n)), np.zeros(cfg.permutations), screened
        with sn.masked(bn=cfg.bn), memory_layout(sn, cfg.layout):
            for p in range(cfg.permutations):
                new_batch(p)
                rows[p], empty[p], made = singleton_contributions(value, n, same_as_empty)
                evaluations += made
        advance(cfg.permutations - len(walked) + 1)
        return ShapleyResult(psi=rows.mean(0), contributions=rows, permutations=np.tile(np.arange(n), (cfg.permutations, 1)),
                             full_values=empty, n_evaluations=evaluations, n_saved_by_truncation=0), forward

    def _game(self, r: int, forward: IncrementalForward | Supernet, advance: Callable[..., None], walked: list[int]
              ) -> tuple[Callable[[int], None], Callable[[np.ndarray], float], int]:
        """Round `r`'s game: ``new_batch(p)`` draws walk p's validation batch (recording p in `walked`, calling
        `advance` from the second walk on), ``value(coalition)`` is the coalition's value on the current batch;
        also the evaluations spent on screening the images (``images: stratified``, else 0)."""
        sn, cfg, dev = self.supernet, self.cfg, self.dev
        n_val = len(self.val_y)
        batch: dict[str, torch.Tensor | None] = {}
        players = torch.from_numpy(self.game_players).to(dev)
        strata, screened = self._screen(players) if cfg.images == "stratified" else (None, 0)
        memory_format = MEMORY_FORMATS[cfg.layout]  # the supernet's, under memory_layout(sn, cfg.layout)

        def new_batch(p: int) -> None:
            pb = p - p % 2 if cfg.antithetic else p  # an antithetic pair plays the same game (batch)
            rng = np.random.default_rng([cfg.seed, 13, r, pb])  # walk p's batch: the same whichever rank walks it
            if strata is None:
                idx, batch["w"] = np.sort(rng.choice(n_val, size=min(cfg.val_batch_size, n_val), replace=False)), None
            else:
                idx, w = strata.draw(rng)
                batch["w"] = torch.from_numpy(w).to(dev)
                sn.set_image_weights(batch["w"] if cfg.bn == "batch" else None)
            sel = torch.from_numpy(idx).to(dev)
            batch["x"], batch["y"] = self.val_x[sel].contiguous(memory_format=memory_format), self.val_y[sel]
            if walked:
                advance()
            walked.append(p)

        def value(coalition: np.ndarray) -> float:
            mask = coalition_mask(sn, players, coalition, cfg.game, self.widest)
            sn.set_mask(mask)
            logits = forward(batch["x"])
            if cfg.value == "probability":
                per_image = logits.softmax(1).gather(1, batch["y"][:, None])[:, 0].double()
            else:
                per_image = (logits.argmax(1) == batch["y"]).double()
            w = batch["w"]
            acc = float(per_image.mean()) if w is None else float((per_image * w.double()).sum())
            if self.limits:
                assert self.cost is not None
                acc -= cfg.penalty * _budget_overshoot(sn, self.cost, self.limits, mask)
            return acc

        return new_batch, value, screened

    def _screen(self, players: torch.Tensor) -> tuple[ImageStrata, int]:
        """The strata of ``images: stratified`` (:func:`search.image_strata.stratify`): every validation image's
        margin under the empty coalition, and whether the grand coalition classifies it otherwise; evaluated in
        batches of ``val_batch_size``, whose number (two per batch) is returned as evaluations spent."""
        sn, cfg = self.supernet, self.cfg
        n, size = len(self.game_players), cfg.val_batch_size
        chunks = [(self.val_x[s:s + size], self.val_y[s:s + size]) for s in range(0, len(self.val_y), size)]
        grand = masked_correct(sn, chunks, coalition_mask(sn, players, np.ones(n, dtype=bool), cfg.game, self.widest), cfg.bn)
        with sn.masked(coalition_mask(sn, players, np.zeros(n, dtype=bool), cfg.game, self.widest), cfg.bn):
            logits = torch.cat([sn(x) for x, _ in chunks]).cpu()
        y = self.val_y.cpu()
        own = logits.gather(1, y[:, None])[:, 0]
        margin = own - logits.scatter(1, y[:, None], float("-inf")).max(1).values
        strata = stratify(margin.numpy(), ((logits.argmax(1) == y) != grand).numpy(), min(size, len(self.val_y)))
        return strata, 2 * len(chunks)
