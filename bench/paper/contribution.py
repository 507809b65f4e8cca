"""Contribution quality (paper Fig. 5): Kendall τ between each method's per-candidate scores and a
measured ground truth, and how well SMPQ's ψ separates in the paper's game vs the fallback game.

    python bench/paper/contribution.py --fp /work/main/checkpoints/resnet8-cifar10-fp.pt \\
        [--output runs/paper/contribution-resnet8] [--runs runs/paper/main-resnet8/runs/w3a3] [--permutations 10]

Ground truth (what a candidate contributes, measured): the supernet over the FP model, its quantizer
steps calibrated (``search.runner.build_supernet``, no training), evaluated on ``--gt-images``
validation images with every layer at W8A8 except ONE layer's weight (or input activation) at b bits:
GT(l, kind, b) = accuracy of that policy − accuracy of W8A8 (≤ 0 when fewer bits hurt). With one
candidate per group the supernet computes exactly the fixed policy's model (``Supernet.policy_mask``).

ψ: one Shapley round of SMPQ (``SMPQSearch._shapley_round``: M permutations, truncation threshold
``--threshold``, 256-image batches) on the same calibrated supernet, for the paper's game (an emptied
group zeroes its layer) and the fallback game (it falls back to 8 bits), each with two seeds
(independent permutations and batches); and, from the fallback game's walks, the score ``last``
(``SMPQConfig.score``: each candidate's mean contribution over the walks where it is the last of its group). Reported per game: τ(ψ, GT) over all candidates, the mean
within-group τ, τ(ψ seed a, ψ seed b) (do the scores reproduce, i.e. separate from noise) and the
value evaluations. With ``--runs`` (a folder of main-table runs ``<method>-s<seed>/policy.json``):
τ(scores, GT) of every method's final scores (HAWQ: −sensitivity; EdMIPS: α; SMPQ: α).
Cells cached under ``<output>/cells`` (one folder per settings: ``settings.json``); writes ``contribution.json`` and ``contribution.png``.
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
from search.nn.data import mixed_batches  # noqa: E402
from search.policy import Policy  # noqa: E402
from search.search_state import STATE_FILE  # noqa: E402
from search.smpq import LOG_FILE, SMPQConfig, SMPQSearch, smpq_options  # noqa: E402
from search.supernet import Supernet, masked_accuracy  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fp", required=True)
    p.add_argument("--output", default="runs/paper/contribution-resnet8")
    p.add_argument("--runs", default=None, help="main-table runs folder of one budget (policy.json per method-seed)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--w-bits", default="2,3,4,8")
    p.add_argument("--a-bits", default="2,3,4,8")
    p.add_argument("--subset", type=int, default=5000, help="calibration/validation images")
    p.add_argument("--gt-images", type=int, default=2000)
    p.add_argument("--permutations", type=int, default=10)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--seeds", default="0,1", help="two seeds: ψ of each, and τ between them")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def key(p: Any) -> str:
    return f"{p.layer}/{p.kind}{p.bits}"


def ground_truth(sn: Supernet, dataset: Any, n_images: int, base: tuple[int, int] = (8, 8),
                 bn: str = "running") -> dict[str, float]:
    """GT per free candidate: accuracy with that one group at its bits and every other group at the `base`
    policy's (uniform W8A8 by default; the first and last layer stay at 8 bits), minus the base policy's;
    `bn` as in :func:`masked_accuracy`."""
    val = mixed_batches(dataset.val.subset(n_images), dataset, 500)
    ref_policy = Policy.uniform(sn.layer_names, *base, first_last_8bit=sn.first_last_8bit)
    acc = lambda mask: masked_accuracy(sn, val, mask, bn)  # noqa: E731
    ref_mask = sn.policy_mask(ref_policy)
    ref = acc(ref_mask)
    out = {f"__w{base[0]}a{base[1]}__": ref}
    for i, p in enumerate(sn.players):
        if len(sn.candidates(p.layer)[0 if p.kind == "w" else 1]) < 2:
            continue
        base_bits = base[0] if p.kind == "w" else base[1]
        if p.bits == base_bits:
            out[key(p)] = 0.0
            continue
        m = ref_mask.clone()
        m[sn.player_index(p.layer, p.kind, base_bits)] = 0.0
        m[i] = 1.0
        out[key(p)] = acc(m) - ref
    return out


def shapley_psi(sn: Supernet, dataset: Any, args: argparse.Namespace, preset: str, seed: int, folder: Path,
                score: str = "shapley") -> dict[str, Any]:
    """One SMPQ round's scores per candidate: ψ, or with ``score="last"`` the last-of-group scores (α − α₀)."""
    cfg = SMPQConfig(**smpq_options({"preset": preset}), permutations=args.permutations, threshold=args.threshold,
                     warmup_epochs=0, rounds=1, subset=args.subset, seed=seed, progress=False, score=score)
    search = SMPQSearch(sn, dataset, cfg, folder, torch.device("cpu"), None, {}, STATE_FILE, LOG_FILE)
    search._before_unit()
    rec = search._shapley_round(0, lambda *a, **k: None)
    values = rec["psi"] if score == "shapley" else (search.alpha - search.alpha0).tolist()
    return {"psi": {key(sn.players[i]): values[i] for i in search.game_players.tolist()},
            "n_evaluations": rec["n_evaluations"], "n_saved_by_truncation": rec["n_saved_by_truncation"],
            "wall_s": rec["wall_s"], "full_value_mean": rec["full_value_mean"]}


def taus(scores: dict[str, float], gt: dict[str, float]) -> dict[str, Any]:
    """Kendall τ over all candidates and the mean within-group τ (groups: layer and kind)."""
    keys = [k for k in scores if k in gt and not k.startswith("__")]
    s = np.array([scores[k] for k in keys])
    g = np.array([gt[k] for k in keys])
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k.rstrip("0123456789"), []).append(i)
    within = [kendalltau(s[ix], g[ix]).statistic for ix in groups.values() if len(ix) > 2]
    within = [w for w in within if np.isfinite(w)]
    return {"tau_all": float(kendalltau(s, g).statistic), "tau_within_group_mean": float(np.mean(within)) if within else None,
            "n_candidates": len(keys)}


def run_scores(policy_json: Path) -> dict[str, float]:
    """One search's final per-candidate scores from its policy.json, higher = better (HAWQ: −sensitivity)."""
    rec = json.loads(policy_json.read_text())
    sign = -1.0 if rec["method"] == "hawq" else 1.0
    return {f"{L['name']}/{kind}{b}": sign * float(v) for L in rec["layers"] for kind in ("w", "a")
            for b, v in ((L.get("scores") or {}).get(kind) or {}).items()}


def method_scores(runs: Path) -> dict[str, dict[str, float]]:
    """Per main-table run folder: its final per-candidate scores (higher = better)."""
    scores = {pj.parent.name: run_scores(pj) for pj in sorted(runs.glob("*-s*/policy.json"))}
    return {name: sc for name, sc in scores.items() if sc}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out, log = open_experiment(args, "contribution", ("runs",))
    sn, dataset, state = fp_supernet(args, out)
    gt = cell(out / "cells" / "ground_truth.json", lambda: ground_truth(sn, dataset, args.gt_images), log)
    seeds = tuple(int(x) for x in args.seeds.split(","))
    games: dict[str, Any] = {}
    for preset, game, score in (("paper", "zero", "shapley"), ("default", "fallback", "shapley"),
                                ("default", "fallback", "last")):
        name = game if score == "shapley" else f"{game}-{score}"
        runs = []
        for seed in seeds:
            sn.load_state_dict(state)
            runs.append(cell(out / "cells" / f"psi-{name}-s{seed}.json",
                             lambda: shapley_psi(sn, dataset, args, preset, seed, out / "tmp" / f"{name}-s{seed}", score), log))
        psi_mean = {k: float(np.mean([r["psi"][k] for r in runs])) for k in runs[0]["psi"]}
        games[name] = {"per_seed": [taus(r["psi"], gt) for r in runs], "mean_of_seeds": taus(psi_mean, gt),
                       "tau_between_seeds": taus(runs[0]["psi"], runs[1]["psi"])["tau_all"] if len(runs) > 1 else None,
                       "n_evaluations": [r["n_evaluations"] for r in runs], "wall_s": [r["wall_s"] for r in runs]}
        log(f"{name}: {json.dumps(games[name])}")
    scores = method_scores(Path(args.runs)) if args.runs else {}
    methods = {name: taus(sc, gt) for name, sc in scores.items()}
    report = {"command": " ".join(sys.argv), "settings": vars(args), "ground_truth": gt, "games": games, "methods": methods,
              "method_scores": scores}
    write_json(out / "contribution.json", report)
    plot(report, out / "contribution.png")
    if scores:
        scatter(scores, gt, out / "contribution-scatter.png")
    print(json.dumps({"games": games, "methods": methods}, indent=2))
    return 0


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = [], []
    for game, g in report["games"].items():
        labels.append(f"SMPQ ψ\n{game} game" if not game.endswith("-last") else f"SMPQ last-of-group\n{game[:-5]} game")
        values.append(g["mean_of_seeds"]["tau_all"])
    for name, t in sorted(report["methods"].items()):
        labels.append(name)
        values.append(t["tau_all"])
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(labels), 3.2))
    n_games = len(report["games"])
    ax.bar(range(len(labels)), values, color=["C2"] * n_games + ["C0"] * (len(labels) - n_games))
    ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=30, ha="right")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel("Kendall τ vs measured contribution")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def scatter(scores: dict[str, dict[str, float]], gt: dict[str, float], path: Path) -> None:
    """The α pitfall (paper Fig. 2): each method's final score of every candidate against its measured
    contribution, one panel per method (its first run, e.g. seed 0); weights and inputs marked apart."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first: dict[str, str] = {}
    for name in sorted(scores):
        first.setdefault(name.rsplit("-s", 1)[0], name)
    scores = {name: scores[name] for name in first.values()}

    fig, axes = plt.subplots(1, len(scores), figsize=(3.2 * len(scores), 3.0), squeeze=False)
    for ax, (name, sc) in zip(axes[0], sorted(scores.items())):
        for kind, marker in (("w", "o"), ("a", "^")):
            keys = [k for k in sc if k in gt and k.split("/")[-1].startswith(kind)]
            ax.scatter([gt[k] * 100 for k in keys], [sc[k] for k in keys], s=12, marker=marker,
                       label="weights" if kind == "w" else "inputs")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_title(f"{name}: τ = {taus(sc, gt)['tau_all']:.2f}", fontsize=8)
        ax.set_xlabel("measured contribution (pp)", fontsize=7)
        ax.set_ylabel("final score", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
