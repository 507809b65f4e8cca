"""Headroom at a budget: top-1 after the main table's QAT over random policies that fit, the methods' policies
QAT'd again beside them, and whether a value measured before QAT ranks the policies the way QAT does.

    python bench/paper/headroom.py --fp /work/main/checkpoints/resnet8-cifar10-fp.pt \\
        --output runs/paper/headroom-resnet8-w2a4 --budgets w2a4 --policies 24 --seeds 0,1,2 \\
        [--compare docs/results/main-resnet8-r1prob/main_table.json,…] [--bn batch]

Random policy k draws, for every layer and kind, one uniform number per bit width (generator seeded 1000 + k)
and sorts them so a wider candidate is worth more; the main table's budget step (the exact knapsack maximising
the summed numbers) then picks the policy: a random policy that fills the budget as the methods' do. Every
policy gets the main table's QAT once per ``--seeds`` seed (the QAT seed is the cell's seed). ``--compare``:
the policies of main-table JSONs (their cells at the same budget and one of ``--seeds``) get the same QAT
again with their own seed, so the methods' rows and the random ones come from one machine and one run (their
recorded top-1 is kept beside, to see drift between machines). The pre-QAT value of each policy is its top-1 in SMPQ's game — the
calibrated supernet restricted to the policy's candidates, on the search's images, BatchNorm as ``--bn``
(``search.runner.policy_correct``, what the verified budget step and the uniform guard measure); Kendall τ
between it and the QAT top-1 (mean over seeds) across the random policies says whether such a value can rank
policies within one budget. One cell per (policy, seed), cached and resumable like the main table's (two
processes may share the folder with different ``--seeds``). Writes ``<output>/headroom.json`` and
``<output>/headroom.png``; prints a summary.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from bench.paper.common import cell, fp_supernet, mean_std, open_experiment, write_json  # noqa: E402
from bench.paper.main_table import ADDED_SETTINGS, budget_for, build_parser, ints, qat, settings_for  # noqa: E402
from search.nn.data import load_dataset  # noqa: E402
from search.nn.graph import extract_graph  # noqa: E402
from search.nn.train import load_checkpoint  # noqa: E402
from search.policy import Policy  # noqa: E402
from search.runner import evaluate_omega, policy_correct, select  # noqa: E402
from search.supernet import hit_rate  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser(__doc__.splitlines()[0])
    p.set_defaults(output="runs/paper/headroom-resnet8-w2a4", budgets="w2a4", seeds="0,1,2", bn="batch")
    p.add_argument("--policies", type=int, default=24, help="random policies that fit the budget")
    p.add_argument("--compare", default="", help="','-separated main_table.json files whose policies at the budget "
                                                 "are QAT'd again here")
    return p.parse_args(argv)


def random_policy(graph: Any, args: argparse.Namespace, budget_name: str, k: int) -> dict[str, list[int]]:
    """Random policy `k`: sorted uniform scores per layer and kind, the knapsack over the budget."""
    rng = np.random.default_rng(1000 + k)
    scores = {n: {kind: dict(zip(bits, np.sort(rng.random(len(bits))).tolist()))
                  for kind, bits in (("w", ints(args.w_bits)), ("a", ints(args.a_bits)))}
              for n in graph.layer_names()}
    settings = settings_for(args, "smpq", budget_name, budget_for(graph, budget_name), 0, Path(args.output))
    policy, _, _ = select(graph, scores, settings, f"random policy {k}", additive=True)
    return {n: [policy[n].w_bits, policy[n].a_bits] for n in graph.layer_names()}


def compared_policies(files: str, budget_name: str) -> dict[str, dict[str, Any]]:
    """'<folder>.<method>.s<seed>' → {policy, seed, recorded top-1} from main-table JSONs (``<folder>/main_table.json``)
    at `budget_name`; a policy already listed with the same seed (a guard that kept the search) is listed once,
    its other names as ``aliases``."""
    out: dict[str, dict[str, Any]] = {}
    for f in (x.strip() for x in files.split(",") if x.strip()):
        path = Path(f)
        if not path.is_file():
            raise SystemExit(f"error: --compare '{path}' does not exist: give main_table.json files of bench/paper/main_table.py")
        for c in json.loads(path.read_text())["cells"]:
            if c["budget"] != budget_name:
                continue
            name = f"{path.parent.name}.{c['method']}.s{c['seed']}"
            same = next((k for k, v in out.items() if v["policy"] == c["policy"] and v["seeds"] == [c["seed"]]), None)
            if same:
                out[same]["aliases"].append(name)
                continue
            out[name] = {"kind": "method", "policy": c["policy"], "seeds": [c["seed"]], "recorded_top1": c["top1"],
                         "aliases": []}
    return out


def method_of(name: str) -> str:
    """A compared policy's method: '<folder>.<method>.s<seed>' → '<folder>.<method>'."""
    return name.rsplit(".s", 1)[0]


def method_rows(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The finished method rows per method; methods whose rows are the same policies (aliases, e.g. a guarded
    label that kept every searched policy) share one entry labelled 'a = b'."""
    per: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["kind"] == "method" and r["top1"]["n"]:
            for m in sorted({method_of(n) for n in [r["policy"], *r["aliases"]]}):
                per.setdefault(m, []).append(r)
    merged: dict[str, list[dict[str, Any]]] = {}
    for m, mine in per.items():
        same = [k for k in merged if [r["policy"] for r in merged[k]] == [r["policy"] for r in mine]]
        if same:
            merged[f"{same[0]} = {m}"] = merged.pop(same[0])
        else:
            merged[m] = mine
    return merged


def qat_cell(args: argparse.Namespace, fp: tuple[Any, dict], dataset: Any, graph: Any, budget_name: str,
             policy: dict[str, list[int]], seed: int, folder: Path) -> dict[str, Any]:
    """The main table's QAT of `policy` with `seed`: its test/val top-1 and Ω."""
    settings = settings_for(args, "uniform", budget_name, budget_for(graph, budget_name), seed, folder)
    p = Policy(policy)
    res = qat(fp, p, dataset, settings, folder)
    om = evaluate_omega(graph, p, settings)
    return {"top1": res.meta.get("test_accuracy"), "val": res.meta.get("val_accuracy"), "bops": om.bops,
            "flash_bytes": float(om.flash_bytes), "policy": policy, "seed": seed}


def game_values(args: argparse.Namespace, out: Path, policies: dict[str, dict[str, list[int]]], log) -> dict[str, float]:
    """Each policy's top-1 in SMPQ's game before QAT (cached in ``<out>/game_values.json``, extended as needed)."""
    path = out / "game_values.json"
    known = json.loads(path.read_text()) if path.is_file() else {}
    todo = [k for k in policies if k not in known]
    if todo:
        log(f"game values of {len(todo)} policies")
        sn, dataset, _ = fp_supernet(args, out / "game")
        correct = policy_correct(sn, dataset, args.subset, args.bn)
        for k in todo:
            known[k] = hit_rate(correct(Policy(policies[k])))
        write_json(path, known)
    return {k: known[k] for k in policies}


def summarize(out: Path, budget_name: str, budget_bops: float | None, policies: dict[str, dict[str, Any]], game: dict[str, float],
              args: argparse.Namespace) -> dict[str, Any]:
    """Per policy: mean ± std of QAT top-1 over the finished seeds; the random policies' spread, the methods'
    means, τ(game value, QAT top-1)."""
    from scipy.stats import kendalltau

    cells = {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    rows = []
    for name, info in policies.items():
        seeds = info["seeds"]
        got = [cells[f"{name}-s{s}"] for s in seeds if f"{name}-s{s}" in cells]
        rows.append({"policy": name, "kind": info["kind"], "seeds": [c["seed"] for c in got],
                     "top1": mean_std([c["top1"] for c in got]), "bops": got[0]["bops"] if got else None,
                     "game_top1": game.get(name), "recorded_top1": info.get("recorded_top1"),
                     "aliases": info.get("aliases", []),
                     "bits": info["policy"]})
    rand = [r for r in rows if r["kind"] == "random" and r["top1"]["n"] == len(ints(args.seeds))]
    means = [r["top1"]["mean"] for r in rand]
    tau = kendalltau([r["game_top1"] for r in rand], means).statistic if len(rand) > 2 else None
    groups = method_rows(rows)
    summary = {"budget": budget_name, "budget_bops": budget_bops,
               "random": {"policies": len(rand), "top1": mean_std(means),
                          "best": max(means, default=None), "quartiles": np.percentile(means, [25, 50, 75]).tolist() if means else None,
                          "tau_game_vs_qat": None if tau is None or np.isnan(tau) else float(tau)},
               "methods": {m: mean_std([r["top1"]["mean"] for r in mine]) for m, mine in groups.items()}}
    write_json(out / "headroom.json", {"command": " ".join(sys.argv), "settings": vars(args), "summary": summary,
                                       "rows": rows})
    plot(rows, groups, summary, out / "headroom.png")
    return summary


def plot(rows: list[dict[str, Any]], groups: dict[str, list[dict[str, Any]]], summary: dict[str, Any], path: Path) -> None:
    """Left: QAT top-1 of every random policy (sorted, ± std over seeds), then each method's policies (one dot per
    seed, a bar at their mean, a line across at it); right: game top-1 before QAT against QAT top-1 (`groups`:
    :func:`method_rows`, the summary's methods in its order)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rand = sorted((r for r in rows if r["kind"] == "random" and r["top1"]["n"]), key=lambda r: r["top1"]["mean"])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 5.4))
    if rand:
        ax.errorbar(range(len(rand)), [r["top1"]["mean"] * 100 for r in rand], [r["top1"]["std"] * 100 for r in rand],
                    fmt="o", ms=3, color="0.4", label="random policies (mean ± std over seeds)")
    for i, ((m, s), mine) in enumerate(zip(summary["methods"].items(), groups.values())):
        x = len(rand) + 1 + i
        ax.axhline(s["mean"] * 100, color=f"C{i}", lw=0.8, alpha=0.6, label=f"{m} ({s['n']} policies)")
        ax.scatter([x] * len(mine), [r["top1"]["mean"] * 100 for r in mine], s=12, color=f"C{i}")
        ax.hlines(s["mean"] * 100, x - 0.35, x + 0.35, color=f"C{i}", lw=2.5)
    ax.set_xticks([])
    ax.set_xlabel("random policies, sorted; then each method's policies (a dot per seed)" if rand
                  else "each method's policies (a dot per seed, a bar at the mean)")
    ax.set_ylabel("top-1 after QAT (%)")
    ax.set_title(f"≤ {summary['budget'].upper()} BOPs")
    pts = [r for r in rand if r["game_top1"] is not None]
    bx.scatter([r["game_top1"] * 100 for r in pts], [r["top1"]["mean"] * 100 for r in pts], s=10, color="0.4")
    for i, mine in enumerate(groups.values()):
        bx.scatter([r["game_top1"] * 100 for r in mine], [r["top1"]["mean"] * 100 for r in mine], s=14, color=f"C{i}")
    tau = summary["random"]["tau_game_vs_qat"]
    bx.set_title(f"τ(game, QAT) over random policies: {tau:.2f}" if tau is not None else "game value against QAT top-1")
    bx.set_xlabel("top-1 in SMPQ's game before QAT (%)")
    bx.set_ylabel("top-1 after QAT (%)")
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=1, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.policies < 0:
        raise SystemExit(f"error: --policies must be >= 0, got {args.policies}")
    if "," in args.budgets:
        raise SystemExit(f"error: --budgets takes one budget here, got '{args.budgets}': run once per budget")
    out, log = open_experiment(args, "headroom", ("seeds", "compare", "policies"), ADDED_SETTINGS)
    budget_name = args.budgets.strip()
    fp_model, fp_meta = load_checkpoint(args.fp)
    dataset = load_dataset(fp_meta.get("dataset", "cifar10"), args.data_dir, seed=0)
    graph = extract_graph(fp_model)
    bops = budget_for(graph, budget_name).bops
    policies: dict[str, dict[str, Any]] = {}
    for k in range(args.policies):
        policies[f"random{k:02d}"] = {"kind": "random", "policy": random_policy(graph, args, budget_name, k),
                                      "seeds": list(ints(args.seeds))}
    policies.update(compared_policies(args.compare, budget_name))
    game = game_values(args, out, {k: v["policy"] for k, v in policies.items()}, log)
    grid = [(name, s) for s in ints(args.seeds) for name, info in policies.items() if info["kind"] == "random"]
    grid += [(name, info["seeds"][0]) for name, info in policies.items()
             if info["kind"] == "method" and info["seeds"][0] in ints(args.seeds)]
    for name, seed in grid:
        folder = out / "runs" / f"{name}-s{seed}"
        cell(out / "cells" / f"{name}-s{seed}.json",
             lambda: qat_cell(args, (fp_model, fp_meta), dataset, graph, budget_name, policies[name]["policy"], seed,
                              folder), log)
        summarize(out, budget_name, bops, policies, game, args)  # the figures so far, after every cell
    summary = summarize(out, budget_name, bops, policies, game, args)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
