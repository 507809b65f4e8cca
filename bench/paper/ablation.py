"""Ablations (paper Table 5): one SMPQ option changed at a time from the main table's settings, and its effect
on τ of the final scores against the measured contribution, on the chosen policy's accuracy after QAT, on
the cost (value evaluations, search time) and, with several seeds, on policy stability.

    python bench/paper/ablation.py --fp /work/main/checkpoints/resnet8-cifar10-fp.pt \\
        [--output runs/paper/ablation-resnet8] [--budgets w2a4] [--seeds 0] \\
        [--variants "base;permutations=1;permutations=3;threshold=0;rounds=6;update=paper,xi=0.3"]

A variant is ``key=value[,key=value…]`` over SMPQ's options (``search.smpq.SMPQConfig`` fields:
permutations, threshold, rounds, update, xi, beta, score, …); ``base`` is the command's settings unchanged,
i.e. the main table's SMPQ cell of that budget and seed (same defaults; its run folder may be copied in as
``runs/<budget>/base-s<seed>`` to skip the search). β and ξ act only in the paper's update rule (Eq. 8–9),
so their variants also set ``update=paper``, whose own row is their reference. Every other argument is
main_table.py's. τ: Kendall τ of the final α against ``contribution.ground_truth`` around W8A8
(``main_table.measured_contributions``, cached as ``<output>/oracle_ground_truth.json`` like the main table's).
Cells are cached like the main table's; writes ``<output>/ablation.json`` and ``<output>/ablation.png``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from bench.paper.common import cell, fmt_pm, mean_std, open_experiment, write_json  # noqa: E402
from bench.paper.contribution import run_scores, taus  # noqa: E402
from bench.paper.main_table import (ADDED_SETTINGS, aggregate, budget_for, build_parser, ints, measured_contributions,  # noqa: E402
                                    run_cell)
from search.errors import SearchError  # noqa: E402
from search.nn.data import load_dataset  # noqa: E402
from search.nn.graph import extract_graph  # noqa: E402
from search.nn.train import load_checkpoint  # noqa: E402

DEFAULT_VARIANTS = ("base;permutations=1;permutations=3;permutations=10;permutations=20;threshold=0;threshold=0.3;"
                    "threshold=0.7;rounds=1;rounds=6;update=paper;update=paper,xi=0.05;update=paper,xi=0.3;"
                    "update=paper,beta=0.5;update=paper,beta=0.95")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser(__doc__.splitlines()[0])
    p.set_defaults(output="runs/paper/ablation-resnet8", budgets="w2a4", seeds="0", methods="smpq")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="';'-separated variants, each 'base' or key=value[,key=value]")
    return p.parse_args(argv)


def parse_variant(text: str) -> dict[str, Any]:
    """'permutations=3,threshold=0' → {'permutations': 3, 'threshold': 0.0}; 'base' → {}."""
    text = text.strip()
    if text == "base":
        return {}
    out: dict[str, Any] = {}
    for item in text.split(","):
        k, sep, v = item.partition("=")
        if not sep or not k.strip() or not v.strip():
            raise SystemExit(f"error: variant '{text}': '{item}' is not key=value (e.g. permutations=10)")
        v = v.strip()
        out[k.strip()] = int(v) if re.fullmatch(r"-?\d+", v) else float(v) if re.fullmatch(r"-?[\d.]+(e-?\d+)?", v) else v
    return out


def folder_name(text: str) -> str:
    """A variant's run-folder / cell name: 'update=paper,xi=0.3' → 'update-paper_xi-0.3'."""
    return text.strip().replace("=", "-").replace(",", "_")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out, log = open_experiment(args, "ablation", ("variants", "seeds", "budgets", "methods", "ceiling"), ADDED_SETTINGS)
    fp_model, fp_meta = load_checkpoint(args.fp)
    dataset = load_dataset(fp_meta.get("dataset", "cifar10"), args.data_dir, seed=0)
    graph = extract_graph(fp_model)
    gt = measured_contributions(args, out, log)
    variants = [v.strip() for v in args.variants.split(";") if v.strip()]
    options = {v: parse_variant(v) for v in variants}
    budgets = {b: budget_for(graph, b) for b in args.budgets.split(",")}
    first = next(iter(budgets))
    for seed in ints(args.seeds):
        for variant in variants:
            name = folder_name(variant)
            for budget_name, budget in budgets.items():
                reuse = out / "runs" / first / f"{name}-s{seed}" if budget_name != first else None

                def compute() -> dict[str, Any]:
                    row = run_cell(args, "smpq", budget_name, budget, seed, out, (fp_model, fp_meta), dataset, reuse, log,
                                   shapley=options[variant], name=name)
                    return {**row, "variant": variant, "options": options[variant],
                            "tau": taus(run_scores(Path(row["folder"]) / "policy.json"), gt)}
                try:
                    cell(out / "cells" / f"{budget_name}-{name}-s{seed}.json", compute, log)
                except SearchError as exc:
                    log(f"variant {variant} ({budget_name}, seed {seed}): error: {exc}")
        report(out, fp_meta)
    print(markdown(report(out, fp_meta)))
    return 0


def report(out: Path, fp_meta: dict) -> list[dict[str, Any]]:
    """Aggregate every finished cell (mean ± std over seeds per budget and variant); write JSON and plot."""
    rows = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    agg = sorted(aggregate(rows, by="variant"), key=lambda a: (a["budget"], a["variant"] != "base", [
        (k, float(v) if isinstance(v, (int, float)) else 0.0, str(v)) for k, v in parse_variant(a["variant"]).items()]))
    for a in agg:
        rs = [r for r in rows if (r["budget"], r["variant"]) == (a["budget"], a["variant"])]
        a["tau"] = mean_std([r["tau"]["tau_all"] for r in rs])
        a["two_bit_inputs"] = mean_std([sum(bits[1] == 2 for bits in r["policy"].values()) for r in rs])
    write_json(out / "ablation.json", {"command": " ".join(sys.argv), "fp_test": fp_meta.get("test_accuracy"),
                                       "cells": rows, "aggregate": agg})
    if agg:
        plot(agg, out / "ablation.png")
    return agg


def markdown(agg: list[dict[str, Any]]) -> str:
    lines = ["| budget | variant | top-1 (%) | τ vs measured contribution | value evaluations | search compute (s) "
             "| 2-bit input layers | same bits across seeds (both) |", "|---|---|---|---|---|---|---|---|"]
    for a in agg:
        same = a["seed_agreement"].get("both")
        lines.append(f"| {a['budget']} | {a['variant']} | {fmt_pm(a['top1'], 100)} | {fmt_pm(a['tau'])} | "
                     f"{fmt_pm(a['value_evaluations'], 1, 0)} | {fmt_pm(a['search_compute_s'], 1, 0)} | "
                     f"{fmt_pm(a['two_bit_inputs'], 1, 1)} | {'—' if same is None else f'{same:.0%}'} |")
    return "\n".join(lines)


def plot(agg: list[dict[str, Any]], path: Path) -> None:
    """Two panels per budget row: top-1 and τ per variant (mean ± std over seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = list(dict.fromkeys(a["budget"] for a in agg))
    fig, axes = plt.subplots(len(budgets), 2, figsize=(10, 0.5 + 0.32 * len(agg)), squeeze=False)
    for row, b in zip(axes, budgets):
        sub = [a for a in agg if a["budget"] == b]
        ys = range(len(sub))
        for ax, what, scale, label in ((row[0], "top1", 100, f"top-1 after QAT (%), ≤ {b.upper()} BOPs"),
                                       (row[1], "tau", 1, "Kendall τ of α vs measured contribution")):
            ax.barh(list(ys), [a[what]["mean"] * scale for a in sub], xerr=[a[what]["std"] * scale for a in sub],
                    color=["tab:gray" if a["variant"] == "base" else "tab:blue" for a in sub], capsize=2)
            ax.set_yticks(list(ys), [a["variant"] for a in sub], fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel(label)
        lo = min(a["top1"]["mean"] for a in sub) * 100
        row[0].set_xlim(max(0.0, lo - 3), max(a["top1"]["mean"] for a in sub) * 100 + 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
