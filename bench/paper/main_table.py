"""Main table: SMPQ vs EdMIPS vs HAWQ-v3 vs uniform at equal BOPs, several seeds, from one FP checkpoint.

    python bench/paper/main_table.py --fp /work/main/checkpoints/resnet8-cifar10-fp.pt \\
        [--output runs/paper/main-resnet8] [--budgets w3a3,w4a4] [--seeds 0,1,2] [--methods uniform,hawq,smpq,edmips]

A budget ``wXaY`` is the BOPs of the uniform WXAY policy (first and last layers at W8A8, as for every
method); its uniform row is that policy. ``flash-wXaY`` is that policy's flash instead (the bit-packed blob
of the firmware, as the board's and stm32h7's cost model counts it; activations cost no flash, so
``flash-w3a8`` is the natural choice); EdMIPS then penalises the model's size instead of BOPs. Every mixed
method chooses from the same bit widths (``--w-bits``/``--a-bits``, default {2,3,4,8}, which contain the
uniform policies' widths) and every final policy gets the same QAT from the FP weights. One cell =
(budget, method, seed), cached as ``<output>/cells/<budget>-<method>-s<seed>.json``; a rerun skips finished cells and resumes the
running one. SMPQ's and HAWQ's scores do not depend on the budget: a later budget reuses the
finished SMPQ search of the same seed (its ``search_state.pt``; the cell says so and reports the
search time once). One output folder holds one set of settings (``settings.json``; other settings are
refused: use another ``--output``). EdMIPS reaches a budget by bisecting its complexity weight cd, each trial a full
search, and its search time includes every trial. Writes ``<output>/main_table.json`` (cells and
mean ± std per budget and method, and policy stability: the share of layers on which two seeds choose the
same bits) and ``<output>/main_table.png``; prints a markdown table.

``--bn batch``: SMPQ's game and the oracle's measurements normalise BatchNorm by each evaluated batch's
statistics (``SMPQConfig.bn``); an SMPQ label ending in ``-verified`` adds the verified budget step
(``search.runner.select_verified``, ``--verify-top``) to the same search, one ending in ``-guarded`` the
uniform guard (``search.runner.guard_uniform``, ``--guard-z``); both: ``-verified-guarded``.

Reference rows beside the methods: ``oracle`` and ``oracle-local`` run the same budget step over *measured*
per-candidate contributions (``contribution.ground_truth`` around W8A8, or around the budget's uniform
policy; cached in ``<output>/oracle_ground_truth*.json``) — what any method whose scores estimate those
contributions could reach at best.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from bench.paper.common import (cell, open_experiment, fmt_pm, fp_supernet, mean_std, seed_agreement,  # noqa: E402
                                write_json)
from deploy.devices.cost import BlobCostModel  # noqa: E402
from search.budget import Budget  # noqa: E402
from search.nn.data import load_dataset  # noqa: E402
from search.errors import SearchError  # noqa: E402
from search.nn.graph import extract_graph  # noqa: E402
from search.policy import Policy  # noqa: E402
from search.nn.qat import QATConfig, finetune  # noqa: E402
from search.runner import SearchSettings, evaluate_omega, run_search, select  # noqa: E402
from search.nn.train import load_checkpoint  # noqa: E402

UNIFORM = re.compile(r"^(flash-)?w(\d)a(\d)$")
VERIFIED = "-verified"  # label suffix: the SMPQ method with the verified budget step
GUARDED = "-guarded"    # label suffix: the SMPQ method with the uniform guard (after -verified when both)
ADDED_SETTINGS = {"images": "uniform", "value": "accuracy", "layout": "nchw"}  # options added after older output folders were recorded, as they ran then


def search_label(label: str) -> tuple[str, bool, bool]:
    """A method label without its budget-step suffixes: (label, verified, guarded)."""
    guarded = label.endswith(GUARDED)
    label = label.removesuffix(GUARDED)
    verified = label.endswith(VERIFIED)
    return label.removesuffix(VERIFIED), verified, guarded


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser(__doc__.splitlines()[0]).parse_args(argv)


def build_parser(description: str) -> argparse.ArgumentParser:
    """The main table's arguments (also the ablations', which change one SMPQ option at a time from them)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--fp", required=True, help="FP checkpoint (smpq-deploy train)")
    p.add_argument("--output", default="runs/paper/main-resnet8")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--budgets", default="w3a3,w4a4",
                   help="uniform policies whose BOPs (wXaY) or flash (flash-wXaY) are the budgets, tightest first")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default="uniform,hawq,smpq,edmips",
                   help="also: smpq-paper (SMPQ, preset paper), smpq-last / smpq-singleton (SMPQ scoring by last-of-group steps / by each candidate alone), oracle / oracle-local (knapsack over measured contributions around W8A8 / the budget's uniform policy); "
                        "an SMPQ label ending in -verified (smpq-singleton-verified) adds the verified budget step to it (--verify-top), "
                        "one ending in -guarded the uniform guard (--guard-z); both: -verified-guarded")
    p.add_argument("--ceiling", action="store_true", help="also uniform W8A8 per seed (no budget)")
    p.add_argument("--w-bits", default="2,3,4,8")
    p.add_argument("--a-bits", default="2,3,4,8")
    p.add_argument("--subset", type=int, default=5000, help="training (and validation) images of the searches")
    p.add_argument("--warmup-epochs", type=int, default=1, help="SMPQ: supernet epochs before the first round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps-per-round", type=int, default=20)
    p.add_argument("--permutations", type=int, default=5)
    p.add_argument("--val-batch", type=int, default=256)
    p.add_argument("--preset", default="default", choices=("default", "paper"), help="SMPQ preset")
    p.add_argument("--bn", default="running", choices=("running", "batch"),
                   help="BatchNorm in SMPQ's game and the oracle's measurements: running statistics or the batch's own")
    p.add_argument("--images", default="uniform", choices=("uniform", "stratified"),
                   help="SMPQ's batches: uniform, or stratified by the empty coalition's margin (search.image_strata)")
    p.add_argument("--value", default="accuracy", choices=("accuracy", "probability"),
                   help="SMPQ's value of a coalition: top-1, or the mean probability of the true class (SMPQConfig.value)")
    p.add_argument("--layout", default="nchw", choices=("nchw", "channels_last"),
                   help="memory layout of SMPQ's evaluations (SMPQConfig.layout; channels_last: faster, not bit for bit)")
    p.add_argument("--verify-top", type=int, default=5,
                   help="-verified labels: the budget step also values the K next-best knapsack policies and the widest "
                        "uniform ones that fit in SMPQ's game and keeps the best (search.runner.select_verified); "
                        "it reuses the search of the label without -verified (same budget and seed) when that ran first")
    p.add_argument("--guard-z", type=float, default=2.0,
                   help="-guarded labels: keep the widest uniform policy that fits unless the chosen one is worth this many "
                        "standard errors more in SMPQ's game (search.runner.guard_uniform); reuses the unguarded search")
    p.add_argument("--edmips-epochs", type=int, default=2)
    p.add_argument("--edmips-cd", type=float, default=0.01)
    p.add_argument("--edmips-trials", type=int, default=3)
    p.add_argument("--hawq-max-samples", type=int, default=50)
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--qat-subset", type=int, default=10000, help="QAT training images (val/test capped to it: 10000 = full test)")
    p.add_argument("--qat-lr", type=float, default=0.01)
    p.add_argument("--gt-images", type=int, default=2000, help="oracle: validation images of the measured contributions")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--accelerator", default="cpu", choices=("cpu", "cuda", "auto"))
    return p


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def uniform_bits(name: str) -> tuple[int, int]:
    """The uniform policy a budget name refers to: w3a3 or flash-w3a8 → (3, 3) / (3, 8)."""
    m = UNIFORM.match(name)
    if not m:
        raise SystemExit(f"error: budget '{name}' must name a uniform policy: w3a3 (its BOPs) or flash-w3a8 (its flash)")
    return int(m.group(2)), int(m.group(3))


def budget_for(graph: Any, name: str) -> Budget:
    """The Ω₀ of a budget name: the BOPs (``wXaY``) or flash (``flash-wXaY``) of that uniform policy (first and
    last layer at W8A8) under the board's cost model; ``w8a8`` is no budget (the ceiling)."""
    if name == "w8a8":
        return Budget()
    om = BlobCostModel().omega(graph, Policy.uniform(graph.layer_names(), *uniform_bits(name), first_last_8bit=True))
    return Budget(flash_bytes=int(om.flash_bytes)) if name.startswith("flash-") else Budget(bops=om.bops)


def settings_for(args: argparse.Namespace, label: str, budget_name: str, budget: Budget, seed: int,
                 out: Path, shapley: dict[str, Any] | None = None) -> SearchSettings:
    """The search settings of one cell; `label` is a method name or ``smpq-paper`` (SMPQ, preset paper);
    `shapley`: SMPQ options that replace the command's (the ablations)."""
    w, a = uniform_bits(budget_name)
    label, verified, guarded = search_label(label)
    method = "smpq" if label.startswith("smpq") else label
    preset = "paper" if label == "smpq-paper" else args.preset
    score = {"score": label[5:]} if label in ("smpq-last", "smpq-singleton") else {}
    return SearchSettings(
        method=method, fp=args.fp, output=str(out), data_dir=args.data_dir, seed=seed,
        budget=budget, cost_model=BlobCostModel(),
        w_bits=ints(args.w_bits), a_bits=ints(args.a_bits), first_last_8bit=True, uniform_bits=(w, a),
        subset=args.subset, epochs=args.edmips_epochs if method == "edmips" else args.warmup_epochs + 1,
        warmup_epochs=0 if method == "edmips" else args.warmup_epochs,
        shapley={"preset": preset, "permutations": args.permutations, "rounds": args.rounds,
                 "steps_per_round": args.steps_per_round, "val_batch_size": args.val_batch, **score,
                 **({"bn": args.bn} if args.bn != "running" else {}),
                 **({"images": args.images} if args.images != "uniform" else {}),
                 **({"value": args.value} if args.value != "accuracy" else {}),
                 **({"layout": args.layout} if args.layout != "nchw" else {}), **(shapley or {})},
        hawq={"max_samples": args.hawq_max_samples, "min_samples": min(16, args.hawq_max_samples)},
        edmips_cd=args.edmips_cd, edmips_trials=args.edmips_trials, verify_top=args.verify_top if verified else 0,
        uniform_guard=args.guard_z if guarded else None,
        qat=QATConfig(epochs=args.qat_epochs, subset=args.qat_subset, lr=args.qat_lr, seed=seed, progress=False),
        accelerator=args.accelerator, progress=False)


def budget_fields(budget: Budget) -> dict[str, float | None]:
    """A row's budget columns (None where not budgeted)."""
    return {"budget_bops": budget.bops, "budget_flash_bytes": budget.flash_bytes}


def run_cell(args: argparse.Namespace, method: str, budget_name: str, budget: Budget, seed: int, out: Path,
             fp: tuple[torch.nn.Module, dict], dataset: Any, reuse: Path | None, log,
             shapley: dict[str, Any] | None = None, name: str | None = None) -> dict[str, Any]:
    """One (budget, method, seed): search + budget step + QAT; returns the row. `shapley` replaces SMPQ
    options (:func:`settings_for`); `name` (default: the method) names the run folder."""
    folder = out / "runs" / budget_name / f"{name or method}-s{seed}"
    reused = None
    if reuse is not None and not (folder / "search_state.pt").is_file() and (reuse / "search_state.pt").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for file in ("search_state.pt", "smpq_log.jsonl"):
            if (reuse / file).is_file():
                shutil.copy2(reuse / file, folder / file)
        reused = str(reuse)
    rec = run_search(settings_for(args, method, budget_name, budget, seed, folder, shapley), fp[0], fp[1], dataset).record
    assert rec["method"] == method.split("-")[0]
    d = rec["method_details"]
    return {"budget": budget_name, **budget_fields(budget), "method": method, "seed": seed,
            "top1": rec["accuracy"]["qat_test"], "val": rec["accuracy"]["qat_val"], "fp_test": rec["accuracy"]["fp_test"],
            "bops": rec["omega"]["bops"], "flash_bytes": rec["omega"]["flash_bytes"], "sram_bytes": rec["omega"]["sram_bytes"],
            "search_s": rec["timings_s"]["search"], "search_compute_s": rec["timings_s"].get("search_compute"),
            "qat_s": rec["timings_s"].get("qat"),
            "value_evaluations": rec["value_evaluations"], "hessian_vector_products": d.get("hessian_vector_products"),
            "selection": rec["selection"]["how"], "verified": rec["selection"].get("verified"),
            "guard": rec["selection"].get("guard"), "cd": d.get("cd"), "edmips_trials": d.get("trials"),
            "search_reused_from": reused,
            "policy": {L["name"]: [L["w_bits"], L["a_bits"]] for L in rec["layers"]}, "folder": str(folder)}


def measured_contributions(args: argparse.Namespace, out: Path, log, base: tuple[int, int] = (8, 8)) -> dict[str, Any]:
    """Every candidate's measured contribution (``contribution.ground_truth``: that one layer's weight or input at
    b bits, the rest at the `base` policy, accuracy minus the base policy's) as 'layer/kind+bits' → value, cached
    as ``<out>/oracle_ground_truth.json`` (other bases: ``oracle_ground_truth_w<X>a<Y>.json``)."""
    from bench.paper.contribution import ground_truth

    name = "oracle_ground_truth.json" if base == (8, 8) else f"oracle_ground_truth_w{base[0]}a{base[1]}.json"
    return cell(out / name, lambda: ground_truth(*fp_supernet(args, out / "oracle")[:2], args.gt_images, base, args.bn),
                log)


def oracle_scores(args: argparse.Namespace, out: Path, log, base: tuple[int, int] = (8, 8)
                  ) -> dict[str, dict[str, dict[int, float]]]:
    """The oracle's scores: :func:`measured_contributions` as layer → kind → bits → score."""
    scores: dict[str, dict[str, dict[int, float]]] = {}
    for candidate, value in measured_contributions(args, out, log, base).items():
        if "/" not in candidate:  # the base policy's accuracy, the cell's wall time
            continue
        layer, cand = candidate.rsplit("/", 1)
        scores.setdefault(layer, {"w": {}, "a": {}})[cand[0]][int(cand[1:])] = float(value)
    return scores


def qat(fp: tuple[torch.nn.Module, dict], policy: Policy, dataset: Any, settings: SearchSettings, folder: Path) -> Any:
    """The table's QAT of `policy` from the FP checkpoint (`fp`: model, its metadata) with a cell's settings,
    on the CPU, in `folder` (resumable); finetune's result (``meta``: test/val accuracy)."""
    return finetune(fp[0], policy, dataset, settings.qat, folder, fp[1].get("model", "model"), "cpu",
                    settings.first_last_8bit, model_kwargs=fp[1].get("model_kwargs"))


def run_oracle_cell(args: argparse.Namespace, method: str, budget_name: str, budget: Budget, seed: int, out: Path,
                    fp: tuple[torch.nn.Module, dict], dataset: Any, log) -> dict[str, Any]:
    """The oracle rows: the same budget step (knapsack maximising the summed scores) over *measured* per-layer
    contributions instead of a method's estimates, then the same QAT. ``oracle``: contributions around W8A8
    (what SMPQ's default game estimates); ``oracle-local``: around the budget's uniform policy. Both ignore
    interactions between layers (one layer changes at a time) and are measured before QAT."""
    folder = out / "runs" / budget_name / f"{method}-s{seed}"
    settings = settings_for(args, "uniform", budget_name, budget, seed, folder)
    graph = extract_graph(fp[0])
    t0 = time.perf_counter()
    base = uniform_bits(budget_name) if method == "oracle-local" else (8, 8)
    policy, sel, _ = select(graph, oracle_scores(args, out, log, base), settings, method, additive=True)
    om = evaluate_omega(graph, policy, settings)
    search_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = qat(fp, policy, dataset, settings, folder)
    return {"budget": budget_name, **budget_fields(budget), "method": method, "seed": seed,
            "top1": res.meta.get("test_accuracy"), "val": res.meta.get("val_accuracy"), "fp_test": fp[1].get("test_accuracy"),
            "bops": om.bops, "flash_bytes": float(om.flash_bytes), "sram_bytes": float(om.sram_bytes),
            "search_s": search_s, "qat_s": time.perf_counter() - t0, "value_evaluations": None,
            "hessian_vector_products": None, "selection": sel.how, "cd": None, "edmips_trials": None,
            "search_reused_from": None, "policy": {n: [policy[n].w_bits, policy[n].a_bits] for n in graph.layer_names()},
            "folder": str(folder)}


def aggregate(rows: list[dict[str, Any]], by: str = "method") -> list[dict[str, Any]]:
    """mean ± std over seeds per budget and `by` (the method; the ablations: the variant)."""
    out = []
    for key in dict.fromkeys((r["budget"], r[by]) for r in rows):
        rs = [r for r in rows if (r["budget"], r[by]) == key]
        searched = [r for r in rs if not r.get("search_reused_from")]
        out.append({"budget": key[0], by: key[1], "seeds": [r["seed"] for r in rs],
                    "top1": mean_std([r["top1"] for r in rs]), "bops": mean_std([r["bops"] for r in rs]),
                    "flash_bytes": mean_std([r["flash_bytes"] for r in rs]),
                    "search_s": mean_std([r["search_s"] for r in searched]),
                    # a resumed search's compute, all processes (this process's wall time where not recorded)
                    "search_compute_s": mean_std([r.get("search_compute_s") or r["search_s"] for r in searched]),
                    "value_evaluations": mean_std([r["value_evaluations"] for r in searched]),
                    # first and last layer: W8A8 for every method (policies list layers in graph order)
                    "seed_agreement": seed_agreement([r["policy"] for r in rs],
                                                     skip=[*list(rs[0]["policy"])[:1], *list(rs[0]["policy"])[-1:]]),
                    "budget_bops": rs[0]["budget_bops"], "budget_flash_bytes": rs[0].get("budget_flash_bytes")})
    return out


def markdown(agg: list[dict[str, Any]], fp_test: float | None) -> str:
    lines = [f"FP top-1: {fp_test * 100:.2f}%" if fp_test else "",
             "| budget | method | top-1 (%) | BOPs (M) | flash (KB) | search compute (s) | value evaluations "
             "| same bits across seeds (w / a / both) |",
             "|---|---|---|---|---|---|---|---|"]
    for a in agg:
        limit = (f"{a['budget_bops'] / 1e6:.1f} M BOPs" if a["budget_bops"] else
                 f"{a['budget_flash_bytes'] / 1024:.1f} KB flash" if a.get("budget_flash_bytes") else "no budget")
        lines.append(f"| {a['budget']} ({limit}) | {a['method']} | {fmt_pm(a['top1'], 100)} | "
                     f"{fmt_pm(a['bops'], 1e-6, 1)} | {fmt_pm(a['flash_bytes'], 1 / 1024, 1)} | "
                     f"{fmt_pm(a['search_compute_s'], 1, 0)} | {fmt_pm(a['value_evaluations'], 1, 0)} | {fmt_agreement(a)} |")
    return "\n".join(lines)


def fmt_agreement(a: dict[str, Any]) -> str:
    """'w / a / both' shares of layers two seeds agree on, '—' below two seeds."""
    s = a.get("seed_agreement") or {}
    if s.get("both") is None:
        return "—"
    return f"{s['w']:.0%} / {s['a']:.0%} / {s['both']:.0%}"


def plot(agg: list[dict[str, Any]], fp_test: float | None, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = list(dict.fromkeys(a["budget"] for a in agg))
    methods = list(dict.fromkeys(a["method"] for a in agg))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(budgets), 3.6))
    width = 0.8 / max(len(methods), 1)
    for j, m in enumerate(methods):
        xs, ys, es = [], [], []
        for i, b in enumerate(budgets):
            a = next((a for a in agg if a["budget"] == b and a["method"] == m), None)
            if a and a["top1"]["n"]:
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                ys.append(a["top1"]["mean"] * 100)
                es.append(a["top1"]["std"] * 100)
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=m)
    if fp_test:
        ax.axhline(fp_test * 100, color="k", lw=0.8, ls="--", label="FP")
    done = [a["top1"] for a in agg if a["top1"]["n"]]
    lows = [(t["mean"] - t["std"]) * 100 for t in done]
    highs = [(t["mean"] + t["std"]) * 100 for t in done] + ([fp_test * 100] if fp_test else [])
    ax.set_ylim(max(0.0, min(lows, default=0.0) - 2), min(100.0, max(highs, default=100.0) + 3))
    ax.set_xticks(range(len(budgets)), [f"≤ {b[6:].upper()} flash" if b.startswith("flash-") else
                                        "no budget" if b == "w8a8" else f"≤ {b.upper()} BOPs" for b in budgets])
    ax.set_ylabel("top-1 after QAT (%), mean ± std over seeds")
    ax.legend(fontsize=7, ncol=len(methods) + 1, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out, log = open_experiment(args, "main_table", ("methods", "seeds", "budgets", "ceiling"), ADDED_SETTINGS)
    fp_model, fp_meta = load_checkpoint(args.fp)
    dataset = load_dataset(fp_meta.get("dataset", "cifar10"), args.data_dir, seed=0)
    graph = extract_graph(fp_model)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    grid = [(b, m, s) for b in args.budgets.split(",") for s in ints(args.seeds) for m in methods]
    if args.ceiling:
        grid += [("w8a8", "uniform", s) for s in ints(args.seeds)]
    first_budget = args.budgets.split(",")[0]
    for budget_name, method, seed in grid:
        budget = budget_for(graph, budget_name)
        reuse = (out / "runs" / first_budget / f"{method}-s{seed}"
                 if method.startswith("smpq") and budget_name != first_budget else None)
        plain = out / "runs" / budget_name / f"{search_label(method)[0]}-s{seed}"
        if plain.name != f"{method}-s{seed}" and (plain / "search_state.pt").is_file():
            reuse = plain  # the same search, only the budget step differs
        path = out / "cells" / f"{budget_name}-{method}-s{seed}.json"
        if method.startswith("oracle"):
            compute = lambda: run_oracle_cell(args, method, budget_name, budget, seed, out, (fp_model, fp_meta), dataset, log)  # noqa: E731
        else:
            compute = lambda: run_cell(args, method, budget_name, budget, seed, out, (fp_model, fp_meta),  # noqa: E731
                                       dataset, reuse, log)
        try:
            cell(path, compute, log)
        except SearchError as exc:
            log(f"cell {path.stem}: error: {exc}")
            continue
        report(out, args, fp_meta)
    print(markdown(report(out, args, fp_meta), fp_meta.get("test_accuracy")))
    return 0


ORDER = ("uniform", "hawq", "edmips", "smpq-paper", "smpq", "smpq-verified", "smpq-last", "smpq-singleton",
         "smpq-singleton-verified", "smpq-singleton-guarded", "smpq-singleton-verified-guarded", "oracle", "oracle-local")


def report(out: Path, args: argparse.Namespace, fp_meta: dict) -> list[dict[str, Any]]:
    """Aggregate every finished cell of the folder (all runs, any --methods/--seeds), write JSON and plot."""
    rows = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    rows.sort(key=lambda r: (r["budget"] == "w8a8", r["budget"].startswith("flash-"),
                             r["budget_bops"] or r.get("budget_flash_bytes") or 0,
                             ORDER.index(r["method"]) if r["method"] in ORDER else len(ORDER), r["method"], r["seed"]))
    agg = aggregate(rows)
    write_json(out / "main_table.json", {"command": " ".join(sys.argv), "settings": vars(args),
                                         "fp_test": fp_meta.get("test_accuracy"), "cells": rows, "aggregate": agg})
    plot(agg, fp_meta.get("test_accuracy"), out / "main_table.png")
    return agg


if __name__ == "__main__":
    raise SystemExit(main())
