"""Estimator efficiency: value evaluations until ψ reaches Kendall τ ≥ 0.9 against a long-run reference,
for plain permutation sampling, truncated walks, antithetic permutations, walks stratified by each group's
last member, and batches of images stratified by their margin (``search.image_strata``).

    python bench/paper/estimator.py --fp /work/main/checkpoints/resnet8-cifar10-fp.pt \\
        [--output runs/paper/estimator-resnet8] [--game fallback] [--bn batch] [--score singleton] \\
        [--reference 60] [--walks 30] [--estimators plain,images] [--value probability] \\
        [--against runs/paper/estimator-resnet8-bn-singleton/estimator.json]

The game is SMPQ's round on the supernet over the FP model, quantizer steps calibrated, no training
(``search.runner.build_supernet``), each walk on its own 256-image validation batch
(``SMPQSearch.estimate_round``; ``--bn batch``: BatchNorm by each batch's statistics; ``--score singleton``:
v({i}) − v(∅) of every player on each batch instead of a walk, ``SMPQSearch.estimate_singletons``).
Reference: ``--reference`` plain walks (batches) without truncation (its own seed). Each estimator runs
``--walks`` walks (seed 1); after every walk k, ψ_k = the mean of the first k walks' contributions and the
evaluations spent so far. Reported per estimator: the τ(ψ_k, reference) curve against evaluations and the
first evaluation count with τ ≥ ``--target``, and the efficiency against plain sampling: the evaluations
plain walks need for the same mean squared error of ψ, per evaluation of the estimator (:func:`efficiency`;
a variance ratio, which does not depend on the reference's own noise; the images' screen counts as
evaluations). ``--value probability`` plays the game with a smooth value (``SMPQConfig.value``), a different
estimand: the scale-free ``noise_to_signal`` (:func:`noise_to_signal`) compares its noise with top-1's, and
``--against`` another run's estimator.json (same players) adds τ of every ψ_k against *that* run's reference —
how fast one game's estimate ranks like the other game's long-run one. Every run is a cached cell under
``<output>/cells``; writes ``estimator.json`` and ``estimator.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from bench.paper.common import fp_supernet, cell, open_experiment, write_json  # noqa: E402
from bench.paper.contribution import key  # noqa: E402
from search.search_state import STATE_FILE  # noqa: E402
from search.smpq import LOG_FILE, SMPQConfig, SMPQSearch, game_players, smpq_options  # noqa: E402

ESTIMATORS = {"plain": {"threshold": 0.0}, "truncated": {"threshold": 0.5},
              "antithetic": {"threshold": 0.0, "antithetic": True},
              "stratified": {"threshold": 0.0, "stratified": True},  # search.shapley.last_stratified_order
              "images": {"threshold": 0.0, "images": "stratified"}}  # search.image_strata
SINGLETON_ESTIMATORS = ("plain", "images")  # --score singleton: batches of v({i}) − v(∅), no walks to reorder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fp", required=True)
    p.add_argument("--output", default="runs/paper/estimator-resnet8")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--game", default="fallback", choices=("fallback", "zero"))
    p.add_argument("--bn", default="running", choices=("running", "batch"), help="BatchNorm statistics in the game")
    p.add_argument("--score", default="shapley", choices=("shapley", "singleton"),
                   help="what is estimated: Shapley values by walks, or singleton contributions v({i}) − v(∅) by batches")
    p.add_argument("--value", default="accuracy", choices=("accuracy", "probability"),
                   help="the game's value of a coalition: top-1, or the mean probability of the true class (SMPQConfig.value)")
    p.add_argument("--against", default=None,
                   help="another run's estimator.json over the same players: also τ of every running ψ against its reference")
    p.add_argument("--w-bits", default="2,3,4,8")
    p.add_argument("--a-bits", default="2,3,4,8")
    p.add_argument("--subset", type=int, default=5000)
    p.add_argument("--reference", type=int, default=60, help="walks of the reference estimate")
    p.add_argument("--walks", type=int, default=30, help="walks of each estimator")
    p.add_argument("--estimators", default=None, help="comma-separated; default: all that apply to --score")
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--ground-truth", default=None,
                   help="contribution.py's cells/ground_truth.json: also τ of every running ψ against the measured contributions")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def walks(sn: Any, state: dict, dataset: Any, args: argparse.Namespace, walks_n: int, seed: int, folder: Path,
          **opts: Any) -> dict[str, Any]:
    """Per-walk contributions (over the game players) and evaluations of one estimator run."""
    sn.load_state_dict(state)
    preset = "paper" if args.game == "zero" else "default"
    cfg = SMPQConfig(**{**smpq_options({"preset": preset}), "permutations": walks_n, "warmup_epochs": 0, "rounds": 1,
                        "subset": args.subset, "seed": seed, "progress": False, "bn": args.bn, "score": args.score,
                        "value": args.value, **opts})
    search = SMPQSearch(sn, dataset, cfg, folder, torch.device("cpu"), None, {}, STATE_FILE, LOG_FILE)
    search._before_unit()
    res, _ = (search.estimate_singletons if args.score == "singleton" else search.estimate_round)(0)
    per_walk = (res.walk_evaluations.tolist() if res.walk_evaluations is not None
                else [res.n_evaluations / len(res.contributions)] * len(res.contributions))
    return {"contributions": res.contributions.tolist(), "evaluations_per_walk": per_walk,
            "n_evaluations": res.n_evaluations, "n_saved_by_truncation": res.n_saved_by_truncation}


def variance_per_evaluation(run: dict[str, Any], unit: np.ndarray) -> float:
    """Mean over players of Var(ψ) × evaluations spent, per walk-equivalent: walks are independent only in
    units (1 walk for plain and truncated, an antithetic pair, a stratified block of |g| walks for a player
    of group g), so player i's variance of one walk's worth is ``unit[i] × Var(means over its units)``; times
    the evaluations per walk (all of the run's, screening included) it is the variance of ψ from one
    evaluation's worth of walks."""
    c = np.array(run["contributions"])
    var = []
    for i in range(c.shape[1]):
        u = int(unit[i])
        means = c[: len(c) // u * u, i].reshape(-1, u).mean(1)
        var.append(u * means.var(ddof=1))
    return float(np.mean(var) * run["n_evaluations"] / len(c))


def efficiency(runs: dict[str, dict[str, Any]], units: dict[str, np.ndarray]) -> dict[str, float]:
    """Per estimator: plain's variance per evaluation over its own — how many times fewer evaluations it needs
    than plain walks for the same mean squared error of ψ (and so, asymptotically, for the same τ)."""
    plain = variance_per_evaluation(runs["plain"], units["plain"])
    return {name: plain / variance_per_evaluation(run, units[name]) for name, run in runs.items()}


def noise_to_signal(run: dict[str, Any], unit: np.ndarray, ref: np.ndarray) -> float:
    """:func:`variance_per_evaluation` over the variance of the reference ψ across players: the noise of one
    evaluation's worth of walks in units of the spread τ has to resolve — comparable between games whose
    values have different scales (``--value``), where the variance ratio of :func:`efficiency` is not."""
    return variance_per_evaluation(run, unit) / float(np.var(ref, ddof=1))


def curve(run: dict[str, Any], ref: np.ndarray, gt: np.ndarray | None = None, against: np.ndarray | None = None
          ) -> dict[str, Any]:
    """τ of the running mean ψ_k (first k walks) against `ref` (and against `gt`, `against`) after every walk."""
    c = np.array(run["contributions"])
    running = np.cumsum(c, axis=0) / np.arange(1, len(c) + 1)[:, None]
    out = {"evaluations": np.cumsum(run["evaluations_per_walk"]).tolist(),
           "tau": [float(kendalltau(psi, ref).statistic) for psi in running]}
    if gt is not None:
        out["tau_ground_truth"] = [float(kendalltau(psi, gt).statistic) for psi in running]
    if against is not None:
        out["tau_against"] = [float(kendalltau(psi, against).statistic) for psi in running]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    applicable = list(SINGLETON_ESTIMATORS if args.score == "singleton" else ESTIMATORS)
    names = [e for e in args.estimators.split(",") if e] if args.estimators is not None else applicable
    unknown = [e for e in names if e not in applicable]
    if unknown:
        raise SystemExit(f"error: estimator(s) {', '.join(unknown)} do not apply to --score {args.score}: "
                         f"choose from {', '.join(applicable)}")
    out, log = open_experiment(args, "estimator", ("target", "ground_truth", "against", "reference", "walks", "estimators"),  # cells are named by their walks
                               added={"score": "shapley", "value": "accuracy"})
    sn, dataset, state = fp_supernet(args, out)
    game = args.game + ("-batchbn" if args.bn == "batch" else "") + ("-singleton" if args.score == "singleton" else "") \
        + ("-probability" if args.value == "probability" else "")
    ref_run = cell(out / "cells" / f"reference-{game}-m{args.reference}.json",
                   lambda: walks(sn, state, dataset, args, args.reference, 100, out / "tmp" / "ref", threshold=0.0), log)
    ref = np.array(ref_run["contributions"]).mean(0)
    gt = None
    if args.ground_truth:
        measured = json.loads(Path(args.ground_truth).read_text())
        gt = np.array([measured[key(sn.players[i])] for i in game_players(sn)])
    against = None if args.against is None else np.array(json.loads(Path(args.against).read_text())["reference_psi"])
    if against is not None and len(against) != len(ref):
        raise SystemExit(f"error: --against {args.against} has {len(against)} players, this game {len(ref)}: "
                         "give a run with the same --w-bits/--a-bits and model")
    half = np.array(ref_run["contributions"])
    split_tau = float(kendalltau(half[: len(half) // 2].mean(0), half[len(half) // 2:].mean(0)).statistic)
    results: dict[str, Any] = {}
    runs: dict[str, dict[str, Any]] = {}
    group = sn.group.numpy()[game_players(sn)]
    sizes = np.bincount(group)[group]
    units: dict[str, np.ndarray] = {}
    for name in names:
        opts = ESTIMATORS[name]
        units[name] = sizes if opts.get("stratified") else np.full_like(sizes, 2 if opts.get("antithetic") else 1)
        runs[name] = run = cell(out / "cells" / f"{name}-{game}-m{args.walks}.json",
                   lambda: walks(sn, state, dataset, args, args.walks, 1, out / "tmp" / name, **opts), log)
        cv = curve(run, ref, gt, against)
        hit = next((e for e, t in zip(cv["evaluations"], cv["tau"]) if t >= args.target), None)
        results[name] = {**cv, "evaluations_to_target": hit, "n_evaluations": run["n_evaluations"],
                         "n_saved_by_truncation": run["n_saved_by_truncation"],
                         "noise_to_signal": noise_to_signal(run, units[name], ref)}
        log(f"{name}: τ after {cv['evaluations'][-1]} evaluations = {cv['tau'][-1]:.3f}; to τ ≥ {args.target}: {hit}")
    if "plain" in runs:
        for name, e in efficiency(runs, units).items():
            results[name]["efficiency_vs_plain"] = e
            log(f"{name}: {e:.2f}× plain sampling's efficiency (evaluations for the same mean squared error of ψ)")
    report = {"command": " ".join(sys.argv), "settings": vars(args), "reference_walks": args.reference,
              "reference_split_half_tau": split_tau, "reference_psi": ref.tolist(), "estimators": results,
              "reference_vs_against": None if against is None else float(kendalltau(ref, against).statistic),
              "reference_vs_ground_truth": None if gt is None else curve(ref_run, ref, gt)["tau_ground_truth"]}
    write_json(out / "estimator.json", report)
    plot(report, args.target, out / "estimator.png")
    print(json.dumps({k: {"evaluations_to_target": v["evaluations_to_target"], "final_tau": v["tau"][-1],
                          "efficiency_vs_plain": v.get("efficiency_vs_plain"), "noise_to_signal": v["noise_to_signal"],
                          "final_tau_against": (v.get("tau_against") or [None])[-1],
                          "final_tau_ground_truth": (v.get("tau_ground_truth") or [None])[-1]}
                      for k, v in results.items()} | {"reference_split_half_tau": split_tau}, indent=2))
    return 0


def plot(report: dict[str, Any], target: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_gt = report.get("reference_vs_ground_truth") is not None
    fig, axes = plt.subplots(1, 2 if with_gt else 1, figsize=(10 if with_gt else 5, 3.2), squeeze=False)
    ax = axes[0][0]
    for name, r in report["estimators"].items():
        line, = ax.plot(r["evaluations"], r["tau"], label=name)
        if r.get("tau_against"):
            ax.plot(r["evaluations"], r["tau_against"], color=line.get_color(), ls=":", label=f"{name} vs --against's reference")
    ax.axhline(target, color="k", lw=0.6, ls="--")
    ax.set_xlabel("value evaluations")
    ax.set_ylabel("Kendall τ vs reference ψ")
    ax.legend(fontsize=8)
    if with_gt:
        ax = axes[0][1]
        for name, r in report["estimators"].items():
            ax.plot(range(1, len(r["tau_ground_truth"]) + 1), r["tau_ground_truth"], label=name)
        ref = report["reference_vs_ground_truth"]
        ax.plot(range(1, len(ref) + 1), ref, color="k", lw=1.2, label="reference walks")
        ax.set_xlabel("walks")
        ax.set_ylabel("Kendall τ vs measured contribution")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
