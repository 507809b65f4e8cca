"""One whole mixed-precision search: method dispatch, budget-exact policy choice, QAT, outputs.

    run_search(SearchSettings(method="smpq", fp="runs/x/fp.pt", output="runs/x", budget=Budget(bops=...)))

Steps (each timed; the figures go into policy.json):

1. Load the FP checkpoint and its dataset; extract the execution graph (Ω cost model).
2. Search, by method:
   * ``smpq``: the Shapley search (:mod:`search.smpq`) → per-candidate contribution scores;
   * ``edmips``: the EdMIPS search (:mod:`search.edmips`) → α; with a BOPs budget (else a flash budget,
     then with EdMIPS's model-size complexity) the complexity weight cd is bisected (geometrically) until
     the argmax policy meets it — which cd reached it is reported; each trial is a full, resumable search;
   * ``hawq``: HAWQ-v3 (:mod:`search.hawq`) → per-layer Hessian-trace sensitivities per bit width;
   * ``uniform``: every layer at fixed (w, a) bits; no scores.
3. Budget step (:mod:`search.knapsack`): the argmax policy if it meets every budget, else the exact
   multiple-choice knapsack over the scores (HAWQ: minimise the summed sensitivities instead).
   Uniform is never altered: a violated budget is an error. With ``verify_top`` K (SMPQ) the K next-best
   knapsack policies and the widest uniform policies that fit are valued as whole policies in SMPQ's game
   too, and the best-valued one is kept (:func:`select_verified`). With ``uniform_guard`` z (SMPQ) the
   widest uniform policy that fits replaces the chosen one unless the chosen one is worth at least z
   standard errors more in SMPQ's game (:func:`guard_uniform`).
4. QAT of the final policy from the FP weights (:mod:`search.nn.qat`, the same recipe for every method).
5. ``policy.json`` (schema :class:`search.policy.PolicyFile`, documented in docs/policy-json.md), ``qat.pt``; the
   resumable search state is ``search_state.pt`` (EdMIPS trials: ``search_state_cd<i>.pt`` plus
   finished trials in ``search_state.pt``).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from search import distributed
from search.atomic import atomic_write_text
from search.budget import Budget
from search.cost import CostModel, Omega, check
from search.nn.data import Dataset, load_dataset
from search.errors import SearchError
from search.nn.graph import ExecGraph, extract_graph
from search.knapsack import Option, Selection, layer_scores, next_best, select_policy, softmax_scores, summed_score
from search.methods import METHODS
from search.policy import FORMAT, FORMAT_VERSION, POLICY_FILE, Policy, validate_policy_file  # noqa: F401
from search.nn.qat import QAT_FILE, QATConfig, finetune
from search.search_state import STATE_FILE, args_signature, atomic_save, tensors_digest
from search.nn.train import load_checkpoint, resolve_device

if TYPE_CHECKING:
    from search.supernet import Supernet

BUDGET_KEYS = ("bops", "flash_bytes", "sram_bytes", "latency_s")


@dataclass
class SearchSettings:
    """Everything that determines a search's result (recorded in policy.json under `settings`)."""

    method: str
    fp: str
    output: str
    dataset: str | None = None          # default: the dataset the FP checkpoint was trained on
    data_dir: str | None = None
    model: str | None = None            # optional check against the checkpoint's model
    seed: int = 0
    budget: Budget = field(default_factory=Budget)
    cost_model: CostModel | None = None  # Ω of the deployment (deploy.devices.cost.BlobCostModel); None: BOPs only
    w_bits: tuple[int, ...] = (2, 4, 8)
    a_bits: tuple[int, ...] = (2, 4, 8)
    first_last_8bit: bool = True
    uniform_bits: tuple[int, int] = (4, 4)
    subset: int | None = None           # search/QAT on the first N training images (val/test capped too)
    epochs: int = 2                     # supernet training epochs of smpq / edmips
    warmup_epochs: int = 1              # of which the first ones train weights only
    batch_size: int = 128
    shapley: dict[str, Any] = field(default_factory=dict)   # SMPQConfig fields: permutations, threshold, xi, ...
    hawq: dict[str, Any] = field(default_factory=dict)      # HawqConfig fields: batch_size, min/max_samples, tol
    edmips: dict[str, Any] = field(default_factory=dict)    # further EdMIPSConfig fields
    edmips_cd: float = 1e-3             # the complexity weight (start of the bisection under a BOPs or flash budget)
    edmips_trials: int = 5              # at most this many EdMIPS searches when bisecting cd
    verify_top: int = 0                 # budget step: value the K next-best knapsack policies too (see select_verified)
    uniform_guard: float | None = None  # budget step: keep the widest uniform policy unless beaten by z SE (guard_uniform)
    qat: QATConfig = field(default_factory=QATConfig)
    accelerator: str = "auto"
    progress: bool = True
    what: str = ""                      # filled in: "resnet8 with bits {...}" for error messages

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SearchError(f"unknown search method '{self.method}': use one of {', '.join(METHODS)}")
        if self.subset is not None and self.subset < 1:
            raise SearchError(f"--subset must be >= 1 image, got {self.subset}")
        if self.epochs < 1 or not 0 <= self.warmup_epochs <= self.epochs:
            raise SearchError(f"search epochs must be >= 1 and warmup epochs in [0, epochs] (got {self.epochs}, {self.warmup_epochs})")
        if self.verify_top < 0:
            raise SearchError(f"verify_top must be >= 0 policies, got {self.verify_top}")
        if self.uniform_guard is not None and not (self.uniform_guard >= 0 and math.isfinite(self.uniform_guard)):
            raise SearchError(f"uniform_guard must be a finite z >= 0 standard errors (or null: off), got {self.uniform_guard}")
        if self.edmips_cd <= 0 or self.edmips_trials < 1:
            raise SearchError(f"EdMIPS cd must be > 0 and trials >= 1 (got {self.edmips_cd}, {self.edmips_trials})")
        self.w_bits = tuple(sorted(set(int(b) for b in self.w_bits)))
        self.a_bits = tuple(sorted(set(int(b) for b in self.a_bits)))

    def signature_fields(self) -> dict[str, Any]:
        """The settings a resumable search state must agree on."""
        d = asdict(self)
        for k in ("output", "progress", "what", "accelerator", "qat"):
            d.pop(k, None)
        d["budget"] = asdict(self.budget)
        d.pop("cost_model", None)
        d.update(self.cost_model.describe() if self.cost_model is not None
                 else {"latency_model": None, "packed_activations": False})
        return d


@dataclass
class MethodResult:
    """What a method hands to the budget step."""

    scores: dict[str, dict[str, dict[int, float]]] | None   # layer → "w"/"a" → bits → raw score
    value_evaluations: int
    details: dict[str, Any] = field(default_factory=dict)
    fixed_policy: Policy | None = None                      # uniform
    sensitivity: bool = False                               # scores are costs to minimise (hawq)
    additive: bool = False                                  # scores are additive values to maximise as they are (smpq)
    compute_s: float | None = None                          # the search's units summed, resumed ones included
    correct: Callable[[Policy], torch.Tensor] | None = None  # per image: a whole policy right in the method's game (smpq)


@dataclass
class SearchOutcome:
    """The final policy, its Ω and the paths written."""

    policy: Policy
    omega: Omega
    record: dict[str, Any]
    policy_path: Path
    qat_path: Path | None


# ------------------------------------------------------------------------------------------ helpers
def _log(settings: SearchSettings, msg: str) -> None:
    if settings.progress:
        print(f"search: {msg}", file=sys.stderr, flush=True)


def _held(names: list[str], first_last_8bit: bool) -> set[str]:
    return {names[0], names[-1]} if first_last_8bit and names else set()


def _cost_model(settings: SearchSettings) -> CostModel:
    if settings.cost_model is None:
        raise SearchError("the search needs the deployment's cost model (SearchSettings.cost_model, "
                          "deploy.devices.cost.BlobCostModel) to price flash, SRAM and latency")
    return settings.cost_model


def evaluate_omega(graph: ExecGraph, policy: Policy, settings: SearchSettings) -> Omega:
    """Ω of a discrete policy under the settings' cost model."""
    return _cost_model(settings).omega(graph, policy)


def _bits_label(bits: tuple[int, ...]) -> str:
    return f"{{{bits[0]}..{bits[-1]}}}" if list(bits) == list(range(bits[0], bits[-1] + 1)) else "{" + ",".join(map(str, bits)) + "}"


def select(graph: ExecGraph, scores: dict[str, dict[str, dict[int, float]]], settings: SearchSettings,
           what: str, sensitivity: bool = False, additive: bool = False,
           alternatives: int = 0) -> tuple[Policy, Selection, dict[str, dict[str, dict[int, float]]]]:
    """Budget step: the argmax policy if it fits, else the exact knapsack over normalised scores.
    With `alternatives` the next-best knapsack policies (:func:`search.knapsack.next_best`) go into the
    selection's details as ``alternatives``: (policy, summed score) pairs.

    With `sensitivity` the scores are additive costs (HAWQ's Ω): a candidate scores −(Ω_w + Ω_a), all
    divided by the largest Ω (one positive factor: the optimum is unchanged), and nothing is normalised.
    With `additive` (SMPQ's mean-ψ scores, in accuracy units) a candidate scores (s_w + s_a) / max|s|.
    """
    names = graph.layer_names()
    held = _held(names, settings.first_last_8bit)
    cost_model = _cost_model(settings)
    table = cost_model.layer_options(graph, settings.w_bits, settings.a_bits)
    held_table = cost_model.layer_options(graph, (8,), (8,))
    options: list[list[Option]] = []
    normalized: dict[str, dict[str, dict[int, float]]] = {}
    scale = max([abs(v) for n, s in scores.items() if n not in held for k in s.values() for v in k.values()] + [0.0])
    for lo, held_lo in zip(table, held_table):
        if lo.name in held:
            c = held_lo.options[0]
            options.append([Option(8, 8, 0.0, c.costs, c.sram_bytes)])
            continue
        s = scores[lo.name]
        if sensitivity or additive:
            sign = -1.0 if sensitivity else 1.0
            cand = {(w, a): sign * (s["w"][w] + s["a"][a]) / (scale or 1.0) for w in s["w"] for a in s["a"]}
            if additive:
                normalized[lo.name] = {k: {b: v / (scale or 1.0) for b, v in s[k].items()} for k in ("w", "a")}
        else:
            cand = layer_scores(s["w"], s["a"])
            normalized[lo.name] = {"w": softmax_scores(s["w"]), "a": softmax_scores(s["a"])}
        options.append([Option(c.w_bits, c.a_bits, cand[(c.w_bits, c.a_bits)], c.costs, c.sram_bytes) for c in lo.options])

    def policy_of(choice: list[int]) -> Policy:
        return Policy([(n, (options[l][i].w_bits, options[l][i].a_bits)) for l, (n, i) in enumerate(zip(names, choice))])

    def ev(choice: list[int]) -> dict[str, float]:
        o = evaluate_omega(graph, policy_of(choice), settings)
        return {"bops": o.bops, "flash_bytes": o.flash_bytes, "sram_bytes": o.sram_bytes,
                "latency_s": o.latency_s if o.latency_s is not None else 0.0}

    limits = settings.budget.items()
    if "latency_s" in limits and "latency_s" not in table.fixed:
        raise SearchError("a latency budget needs a latency model: pass --device (its cost model) or drop the latency budget")
    sel = select_policy(options, limits, ev, table.fixed, what)
    if alternatives:
        sel.details["alternatives"] = [(policy_of(c), summed_score(options, c))
                                       for c in next_best(options, limits, ev, sel, alternatives, table.fixed)]
    return policy_of(sel.choice), sel, normalized


def widest_uniform(graph: ExecGraph, settings: SearchSettings) -> dict[tuple[int, int], Policy]:
    """The uniform policies over the candidate widths that meet the budget and cannot widen their weights or
    activations without exceeding it (the Pareto front of uniform W·A·), by (w_bits, a_bits)."""
    uniform = {(w, a): Policy.uniform(graph.layer_names(), w, a, settings.first_last_8bit)
               for w in settings.w_bits for a in settings.a_bits}
    fits = [wa for wa, p in uniform.items() if not check(evaluate_omega(graph, p, settings), settings.budget)]
    return {(w, a): uniform[(w, a)] for w, a in fits
            if not any(w2 >= w and a2 >= a and (w2, a2) != (w, a) for w2, a2 in fits)}


def select_verified(graph: ExecGraph, first: Policy, sel: Selection, settings: SearchSettings,
                    correct: Callable[[Policy], torch.Tensor]) -> tuple[Policy, list[dict[str, Any]]]:
    """Verified budget step: the knapsack's policy, its next-best alternatives and the widest uniform
    policies that fit (:func:`widest_uniform`) are each valued as a whole in the method's own game — the
    coalition of exactly their candidates, which the additive knapsack only approximates by summing
    per-candidate scores — and the best is kept (ties: the earlier candidate, knapsack first)."""
    from search.supernet import hit_rate

    candidates = [("knapsack", first, sel.score)]
    candidates += [(f"knapsack #{i + 2}", p, sc) for i, (p, sc) in enumerate(sel.details.get("alternatives", []))]
    seen = {tuple(p.items()) for _, p, _ in candidates}
    for (w, a), p in widest_uniform(graph, settings).items():
        if tuple(p.items()) not in seen:
            candidates.append((f"uniform w{w}a{a}", p, None))
    rows = []
    for source, p, score in candidates:
        om = evaluate_omega(graph, p, settings)
        rows.append({"source": source, "value": hit_rate(correct(p)), "score": score, "bops": om.bops,
                     "flash_bytes": float(om.flash_bytes), "policy": {n: [b.w_bits, b.a_bits] for n, b in p.items()}})
    best = max(range(len(rows)), key=lambda i: (rows[i]["value"], -i))
    rows[best]["chosen"] = True
    return candidates[best][1], rows


def guard_uniform(graph: ExecGraph, chosen: Policy, settings: SearchSettings,
                  correct: Callable[[Policy], torch.Tensor]) -> tuple[Policy, dict[str, Any]]:
    """Uniform guard: the widest uniform policy that fits (:func:`widest_uniform`; the best-valued one when
    several do) is kept instead of the chosen policy unless the chosen one is worth more in the game by at
    least z = ``settings.uniform_guard`` standard errors of the paired per-image difference (both evaluated
    on the same images). The game's values are measured before QAT and differ between near-equal policies
    by noise; the guard turns "not measurably better than uniform" into uniform (docs/results.md)."""
    from search.supernet import hit_rate

    z = float(settings.uniform_guard or 0.0)
    searched = {n: [b.w_bits, b.a_bits] for n, b in chosen.items()}
    uniforms = widest_uniform(graph, settings)
    if not uniforms:
        return chosen, {"z": z, "uniform": None, "kept": "search", "searched_policy": searched}
    hits = {wa: correct(u) for wa, u in uniforms.items()}
    (w, a), base = max(hits.items(), key=lambda kv: hit_rate(kv[1]))
    mine = correct(chosen)
    d = mine.double() - base.double()
    se = float(d.std() / math.sqrt(len(d))) if len(d) > 1 else 0.0
    diff = float(d.mean()) if len(d) else 0.0
    keep = uniforms[(w, a)] == chosen or diff > z * se
    return (chosen if keep else uniforms[(w, a)]), {
        "z": z, "uniform": f"w{w}a{a}", "value_uniform": hit_rate(base), "value_chosen": hit_rate(mine),
        "difference": diff, "standard_error": se, "images": int(len(d)), "kept": "search" if keep else "uniform",
        "searched_policy": searched}


def budget_report(om: Omega, budget: Budget) -> dict[str, dict[str, Any]]:
    """Per budget key: Ω value, limit (None: unconstrained), ok."""
    limits = budget.items()
    out = {}
    for k in BUDGET_KEYS:
        v = getattr(om, k)
        lim = limits.get(k)
        out[k] = {"value": None if v is None else float(v), "limit": None if lim is None else float(lim),
                  "ok": lim is None or (v is not None and float(v) <= float(lim))}
    return out


# ------------------------------------------------------------------------------------------ methods
def _uniform(names: list[str], settings: SearchSettings) -> MethodResult:
    w, a = settings.uniform_bits
    return MethodResult(None, 0, {"w_bits": w, "a_bits": a},
                        fixed_policy=Policy.uniform(names, w, a, settings.first_last_8bit))


def build_supernet(fp_model: torch.nn.Module, dataset: Dataset, settings: SearchSettings) -> "Supernet":
    """The composite supernet over the FP model (stale BatchNorm statistics re-estimated first), its steps
    calibrated on training batches (deterministic)."""
    from search.nn.data import BatchLoader
    from search.nn.qmodel import calibrate
    from search.supernet import Supernet

    from search.nn.train import refresh_stale_bn

    loader = BatchLoader(dataset.train.subset(settings.subset), dataset, settings.batch_size, shuffle=True, seed=settings.seed)
    fp_model, note = refresh_stale_bn(fp_model, loader, 8)
    if note and distributed.is_main():
        print(f"search: {note}", file=sys.stderr, flush=True)
    sn = Supernet(fp_model, settings.w_bits, settings.a_bits, settings.first_last_8bit, seed=settings.seed)
    calibrate(sn, loader, n_batches=8, seed=settings.seed)
    return sn


def units_s(history: list[dict[str, Any]]) -> float:
    """Compute time of a supernet search: its units' wall times summed (``SearchResult.history``), which
    unlike this process's wall time also counts the units an earlier, killed process finished."""
    return float(sum(h.get("wall_s", 0.0) for h in history))


def _smpq(settings: SearchSettings, fp_model: torch.nn.Module, dataset: Dataset, out: Path,
          device: torch.device) -> MethodResult:
    from search.edmips import mixture_cost_for
    from search.smpq import SMPQConfig, run_smpq, smpq_options

    opts = smpq_options(settings.shapley)
    if "lambda_" in opts:
        opts["lam"] = opts.pop("lambda_")
    if "lambda" in opts:
        opts["lam"] = opts.pop("lambda")
    opts.setdefault("rounds", settings.epochs - settings.warmup_epochs + 1)
    cfg = SMPQConfig(warmup_epochs=settings.warmup_epochs, batch_size=settings.batch_size, subset=settings.subset,
                     seed=settings.seed, progress=settings.progress, **opts)
    sn = build_supernet(fp_model, dataset, settings)
    cost = mixture_cost_for(sn, settings.cost_model) if cfg.value == "tradeoff" else None
    res = run_smpq(sn, dataset, cfg, out, device, budget=settings.budget, cost=cost)
    return MethodResult(res.scores, res.value_evaluations,
                        {"argmax_policy": {n: list(b) for n, b in res.policy.items()},
                         "saved_by_truncation": res.saved_by_truncation, "rounds": cfg.rounds,
                         "permutations": cfg.permutations, "supernet_file": "supernet.pt",
                         "game": cfg.game, "update": cfg.update, "score": cfg.score, "bn": cfg.bn,
                         "images": cfg.images},
                        additive=bool(res.details.get("additive_scores")), compute_s=units_s(res.history),
                        correct=policy_correct(res.supernet or sn, dataset, settings.subset, cfg.bn))


def policy_correct(sn: "Supernet", dataset: Dataset, subset: int | None, bn: str) -> Callable[[Policy], torch.Tensor]:
    """A whole policy in SMPQ's game, per image: is the supernet with exactly the policy's candidates right, on
    the search's validation split in a fixed order (BatchNorm as the game: `bn`); its mean is the policy's value.
    Each policy is evaluated once (the verified step and the uniform guard value the same policies)."""
    from search.nn.data import mixed_batches
    from search.supernet import masked_correct

    val = mixed_batches(dataset.val.subset(subset), dataset, 500)
    seen: dict[tuple, torch.Tensor] = {}

    def correct(policy: Policy) -> torch.Tensor:
        key = tuple(policy.items())
        if key not in seen:
            seen[key] = masked_correct(sn, val, sn.policy_mask(policy), bn)
        return seen[key]

    return correct


def _hawq(settings: SearchSettings, fp_model: torch.nn.Module, dataset: Dataset, names: list[str], out: Path,
          device: torch.device) -> MethodResult:
    """HAWQ-v3 on the FP model; the traces' convergence goes into the method details and ``hawq_log.jsonl``."""
    from search.hawq import LOG_FILE, HawqConfig, run_hawq

    cfg = HawqConfig(seed=settings.seed, **settings.hawq)
    res = run_hawq(fp_model, dataset, settings.w_bits, settings.a_bits, cfg, settings.subset, device,
                   _held(names, settings.first_last_8bit))
    details = res.details()
    t = res.traces
    _log(settings, f"HAWQ: Hutchinson traces from {t.n_samples} samples "
                   f"({'converged' if t.converged else 'max samples reached'}, relative change {t.rel_change:.2g})")
    if distributed.is_main():
        atomic_write_text(out / LOG_FILE, "".join(json.dumps({"n": h["n"], "layers": res.layer_names,
                                                              "mean": h["mean"], "stderr": h["stderr"]}) + "\n"
                                                  for h in t.history))
    return MethodResult(res.scores, 0, {**details, "log_file": LOG_FILE,
                                        "batch_size": cfg.batch_size, "tol": cfg.tol}, sensitivity=True)


def _edmips_resource(budget: Budget) -> str | None:
    """The Ω item EdMIPS's cd bisection aims at: BOPs when budgeted, else flash (model-size complexity)."""
    return "bops" if budget.bops is not None else "flash_bytes" if budget.flash_bytes is not None else None


def _edmips_complexity(settings: SearchSettings) -> str:
    """EdMIPS's complexity term: as given in ``settings.edmips``, else the model's size under a flash-only
    budget and BOPs otherwise."""
    default = "flash" if _edmips_resource(settings.budget) == "flash_bytes" else "bops"
    return settings.edmips.get("complexity", default)


def _edmips_trial(settings: SearchSettings, fp_model: torch.nn.Module, dataset: Dataset, out: Path,
                  device: torch.device, cd: float, index: int
                  ) -> tuple[Policy, dict[str, dict[str, dict[int, float]]], float]:
    """One complete (resumable) EdMIPS search at complexity weight `cd`: its argmax policy, α and compute time."""
    from search.edmips import EdMIPSConfig, mixture_cost_for, run_edmips

    opts = {**settings.edmips, "complexity": _edmips_complexity(settings)}
    cfg = EdMIPSConfig(cd=cd, epochs=settings.epochs, warmup_epochs=settings.warmup_epochs, batch_size=settings.batch_size,
                       subset=settings.subset, seed=settings.seed, progress=settings.progress, **opts)
    sn = build_supernet(fp_model, dataset, settings)
    cost = mixture_cost_for(sn, settings.cost_model) if cfg.complexity == "flash" else None
    res = run_edmips(sn, dataset, cfg, out, device, cost, state_name=f"search_state_cd{index}.pt",
                     log_name=f"edmips_log_cd{index}.jsonl")
    return res.policy, res.scores, units_s(res.history)


def _edmips(settings: SearchSettings, fp_model: torch.nn.Module, dataset: Dataset, graph: ExecGraph, out: Path,
            device: torch.device) -> MethodResult:
    """EdMIPS; under a BOPs (else flash) budget cd is searched: ×/÷10 until the budget is bracketed, then
    geometric bisection.

    The trial whose argmax policy meets that budget with the most of it (the smallest sufficient cd) is
    used; when none does, the trial with the least goes to the knapsack. Finished trials are kept
    in ``search_state.pt`` (so a restart skips them); the trial in progress resumes from its own
    ``search_state_cd<i>.pt``.
    """
    resource = _edmips_resource(settings.budget)
    limit = settings.budget.items()[resource] if resource else None
    widest = Policy.uniform(graph.layer_names(), max(settings.w_bits), max(settings.a_bits), settings.first_last_8bit)
    if limit is not None and getattr(evaluate_omega(graph, widest, settings), resource) <= limit:
        limit = None  # the budget does not bind: one search at the given cd, nothing to bisect
    state_path = out / STATE_FILE
    fields = {k: v for k, v in settings.signature_fields().items() if k != "edmips_trials"}  # more trials may follow
    signature = args_signature({"method": "edmips", **_jsonable(fields), "fp_digest": tensors_digest(fp_model.state_dict())})
    trials: list[dict[str, Any]] = []
    saved = distributed.on_main(lambda: torch.load(state_path, map_location="cpu", weights_only=True)
                                if state_path.is_file() else None)
    if saved is not None:
        if saved.get("signature") != signature:
            raise SearchError(f"'{state_path}' was written by a search with other settings: rerun with the same "
                              f"arguments to resume, or use a new --output folder / delete it to start afresh")
        trials = list(saved["trials"])
    lo = hi = None  # largest cd that missed the budget, smallest cd that met it

    def next_cd() -> float | None:
        if not trials:
            return settings.edmips_cd
        if limit is None:
            return None
        if hi is None:
            return lo * 10.0
        if lo is None:
            return hi / 10.0
        return math.sqrt(lo * hi)

    for i in range(settings.edmips_trials):
        if i < len(trials):
            t = trials[i]
        else:
            cd = next_cd()
            if cd is None:
                break
            _log(settings, f"EdMIPS trial {i + 1}/{settings.edmips_trials}: cd = {cd:.4g}")
            policy, scores, compute_s = _edmips_trial(settings, fp_model, dataset, out, device, cd, i)
            om = evaluate_omega(graph, policy, settings)
            used = float(getattr(om, resource or "bops"))
            t = {"cd": cd, "bops": float(om.bops), "flash_bytes": float(om.flash_bytes), "fits": limit is None or used <= limit,
                 "policy": {n: list(b) for n, b in policy.items()}, "scores": scores, "compute_s": compute_s}
            trials.append(t)
            atomic_save({"signature": signature, "trials": trials}, state_path)
        if t["fits"]:
            hi = t["cd"] if hi is None else min(hi, t["cd"])
        else:
            lo = t["cd"] if lo is None else max(lo, t["cd"])
        if limit is None or (lo is not None and hi is not None and hi / lo < 1.5):
            break
    fitting = [t for t in trials if t["fits"]]
    used = lambda t: t[resource or "bops"]  # noqa: E731
    best = max(fitting, key=used) if fitting else min(trials, key=used)
    details = {"cd": best["cd"], "reached_budget": bool(best["fits"]), "complexity": _edmips_complexity(settings),
               "trials": [{k: t[k] for k in ("cd", "bops", "flash_bytes", "fits") if k in t} for t in trials],
               "argmax_policy": best["policy"]}
    return MethodResult(best["scores"], 0, details, compute_s=sum(t.get("compute_s", 0.0) for t in trials))


def _run_method(settings: SearchSettings, fp_model: torch.nn.Module, dataset: Dataset, graph: ExecGraph,
                out: Path, device: torch.device) -> MethodResult:
    if settings.method == "uniform":
        return _uniform(graph.layer_names(), settings)
    if settings.method == "smpq":
        return _smpq(settings, fp_model, dataset, out, device)
    if settings.method == "hawq":
        return _hawq(settings, fp_model, dataset, graph.layer_names(), out, device)
    return _edmips(settings, fp_model, dataset, graph, out, device)


# ------------------------------------------------------------------------------------------ main
def run_search(settings: SearchSettings, fp_model: torch.nn.Module | None = None, fp_meta: dict | None = None,
               dataset: Dataset | None = None) -> SearchOutcome:
    """Run one whole search (see the module docstring); returns the final policy and writes the outputs.

    Under a torchrun launch every rank calls this: it joins the process group (:mod:`search.distributed`),
    every rank computes the same policy, rank 0 alone writes files and shows progress.
    """
    with distributed.session(settings.accelerator):
        if not distributed.is_main():
            settings = replace(settings, progress=False, qat=replace(settings.qat, progress=False))
        return _run_search(settings, fp_model, fp_meta, dataset)


def _run_search(settings: SearchSettings, fp_model: torch.nn.Module | None, fp_meta: dict | None,
                dataset: Dataset | None) -> SearchOutcome:
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    out = Path(settings.output)
    out.mkdir(parents=True, exist_ok=True)
    if fp_model is None:
        fp_model, fp_meta = load_checkpoint(settings.fp)
    meta = fp_meta or {}
    model_name = meta.get("model") or settings.model
    if settings.model and meta.get("model") and settings.model != meta["model"]:
        raise SearchError(f"--model {settings.model} but the FP checkpoint '{settings.fp}' holds {meta['model']}: "
                          f"pass the matching --model or checkpoint")
    ds_name = settings.dataset or meta.get("dataset")
    if ds_name is None:
        raise SearchError("no dataset: pass --dataset (the FP checkpoint does not name one)")
    if dataset is None:
        dataset = load_dataset(ds_name, settings.data_dir, seed=settings.seed)
    if meta.get("input_shape") and tuple(meta["input_shape"]) != tuple(dataset.input_shape):
        raise SearchError(f"the FP checkpoint expects inputs {tuple(meta['input_shape'])} but dataset '{ds_name}' "
                          f"gives {dataset.input_shape}: pass the dataset the checkpoint was trained on")
    device = resolve_device(settings.accelerator)
    torch.manual_seed(settings.seed)
    graph = extract_graph(fp_model)
    names = graph.layer_names()
    what = f"{model_name} with bits w{_bits_label(settings.w_bits)} a{_bits_label(settings.a_bits)}"
    settings.what = what

    t = time.perf_counter()
    if settings.method != "uniform" and settings.budget.items():
        # fail fast: an impossible budget is reported before hours of search, not after
        flat = {n: {"w": {b: 0.0 for b in settings.w_bits}, "a": {b: 0.0 for b in settings.a_bits}} for n in names}
        select(graph, flat, settings, what)
    result = _run_method(settings, fp_model, dataset, graph, out, device)
    timings["search"] = time.perf_counter() - t
    if result.compute_s is not None:
        timings["search_compute"] = result.compute_s

    t = time.perf_counter()
    normalized: dict = {}
    if result.fixed_policy is not None:
        policy = result.fixed_policy
        om = evaluate_omega(graph, policy, settings)
        bad = check(om, settings.budget)
        if bad:
            raise SearchError(f"uniform W{settings.uniform_bits[0]}A{settings.uniform_bits[1]} violates the budget "
                              f"({'; '.join(str(v) for v in bad)}): use fewer uniform bits or --method smpq")
        selection = {"how": "fixed", "score": None, "rounds": 0}
    else:
        verify = settings.verify_top if result.correct is not None else 0
        policy, sel, normalized = select(graph, result.scores or {}, settings, what, result.sensitivity,
                                         result.additive, alternatives=verify)
        selection = {"how": sel.how, "score": sel.score, "rounds": sel.rounds,
                     "normalization": "minus summed sensitivity / max sensitivity" if result.sensitivity
                     else "summed score / max |score|" if result.additive else "softmax within layer and kind"}
        if verify:
            assert result.correct is not None
            _log(settings, f"verifying the knapsack's {1 + len(sel.details['alternatives'])} best policies and the "
                           f"widest uniform ones in the game")
            policy, selection["verified"] = select_verified(graph, policy, sel, settings, result.correct)
            selection["how"] = f"{sel.how}, verified"
        if settings.uniform_guard is not None and result.correct is not None:
            policy, selection["guard"] = guard_uniform(graph, policy, settings, result.correct)
            g = selection["guard"]
            selection["how"] += f", uniform guard (z {g['z']:g}: kept {g['kept']})"
            if g["uniform"] is not None:
                _log(settings, f"uniform guard: chosen {g['value_chosen']:.4f} vs uniform {g['uniform']} "
                               f"{g['value_uniform']:.4f} (± {g['standard_error']:.4f}): kept the {g['kept']} policy")
        om = evaluate_omega(graph, policy, settings)
    timings["select"] = time.perf_counter() - t
    held = _held(names, settings.first_last_8bit)

    rows = {r.name: r for r in om.layers}
    layers = []
    for n in names:
        r = rows[n]
        flash = sum(x.flash_bytes for x in om.layers if x.name.split("#")[0] == n)  # every instance of the layer
        raw = (result.scores or {}).get(n)
        layers.append({"name": n, "type": r.op_type, "w_bits": policy[n].w_bits, "a_bits": policy[n].a_bits,
                       "macs": int(r.macs), "params": int(r.params), "bops": float(r.bops), "flash_bytes": int(flash),
                       "held_8bit": n in held,
                       "scores": None if raw is None or n in held else {k: {str(b): float(v) for b, v in raw[k].items()} for k in ("w", "a")},
                       "normalized_scores": None if n not in normalized else
                       {k: {str(b): float(v) for b, v in normalized[n][k].items()} for k in ("w", "a")}})
    settings_dict = settings.signature_fields()
    settings_dict["qat"] = asdict(settings.qat)
    settings_dict["accelerator"] = settings.accelerator
    record: dict[str, Any] = {
        "format": FORMAT, "version": FORMAT_VERSION, "method": settings.method, "model": model_name, "dataset": ds_name,
        "input_shape": list(dataset.input_shape), "num_classes": dataset.num_classes, "seed": settings.seed,
        "fp_checkpoint": str(settings.fp),
        "candidate_bits": {"w": list(settings.w_bits), "a": list(settings.a_bits)},
        "first_last_8bit": settings.first_last_8bit, "layers": layers,
        "omega": {"bops": om.bops, "flash_bytes": float(om.flash_bytes), "sram_bytes": float(om.sram_bytes),
                  "latency_s": om.latency_s, "macs": float(om.macs), "params": float(om.params)},
        "budget": budget_report(om, settings.budget), "selection": selection, "method_details": result.details,
        "value_evaluations": int(result.value_evaluations), "settings": _jsonable(settings_dict),
        "timings_s": {}, "accuracy": {"fp_test": meta.get("test_accuracy"), "qat_val": None, "qat_test": None},
        "files": {"policy": POLICY_FILE, "qat": None, "search_state": STATE_FILE if settings.method in ("smpq", "edmips") else None},
    }
    policy_path = out / POLICY_FILE
    record["timings_s"] = {**timings, "total": time.perf_counter() - t_all}
    _write_policy(policy_path, record)

    t = time.perf_counter()
    _log(settings, f"QAT of the final policy: {settings.qat.epochs} epoch(s) from the FP weights")
    res = finetune(fp_model, policy, dataset, settings.qat, out, model_name, str(device), settings.first_last_8bit,
                   extra_meta={"method": settings.method}, policy_file=POLICY_FILE,
                   model_kwargs=meta.get("model_kwargs"))
    timings["qat"] = time.perf_counter() - t
    record["accuracy"].update({"qat_val": res.meta.get("val_accuracy"), "qat_test": res.meta.get("test_accuracy")})
    record["files"]["qat"] = QAT_FILE
    qat_path = out / QAT_FILE
    record["timings_s"] = {**timings, "total": time.perf_counter() - t_all}
    _write_policy(policy_path, record)
    return SearchOutcome(policy, om, record, policy_path, qat_path)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, (tuple, set)) else str(o)))


def _write_policy(path: Path, record: dict[str, Any]) -> None:
    """Validate against the schema, then write atomically (rank 0 only in a distributed run)."""
    validate_policy_file(_jsonable(record))
    if distributed.is_main():
        atomic_write_text(path, json.dumps(_jsonable(record), indent=2) + "\n")

