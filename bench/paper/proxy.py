"""Does a policy's accuracy before (or early in) QAT predict its top-1 after QAT? The proxies a value game or
a verification step could use, measured on the policies of a finished main table.

    python bench/paper/proxy.py --table docs/results/main-resnet8/main_table.json \\
        --fp /work/main/checkpoints/resnet8-cifar10-fp.pt [--output runs/paper/proxy-resnet8] [--qat-steps 0,20]

For every cell (budget, method, seed → policy, top-1 after the table's QAT) of ``--table``, each proxy is
measured on ``--val-images`` validation images (never the test images that top-1 is measured on):

* ``game``: the calibrated supernet (``bench.paper.common.fp_supernet``: FP weights, quantizer steps
  calibrated, no training) with one candidate per group — the value SMPQ's fallback game gives a whole
  policy (its coalition of all chosen candidates); BatchNorm normalises by its running statistics (the FP
  model's);
* ``game-bn``: the same with BatchNorm normalising by each evaluated batch's own statistics (SMPQ's
  ``bn: batch``), i.e. statistics that match the policy's quantized activations;
* ``qat-N``: the same QAT recipe as the table (learning rate, cosine schedule, seed of the cell) cut to N
  steps of 128 images (``qat-0``: the calibrated post-training-quantized model).

Reported per budget and proxy: Kendall τ between the proxy and top-1 over the budget's cells, and the
*selection* it would make: per (budget, seed), the policy with the highest proxy among every method's
policies, its top-1 (mean over seeds) against the uniform policy's and the best policy's. Cells cached
under ``<output>/cells`` (one per policy (``search.nn.qat.policy_hash``), proxy and seed); writes
``proxy.json`` and ``proxy.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from bench.paper.common import cell, fp_supernet, open_experiment, write_json  # noqa: E402
from search.supernet import masked_accuracy  # noqa: E402
from search.nn.data import BatchLoader, mixed_batches  # noqa: E402
from search.nn.qat import QATConfig, finetune, policy_hash  # noqa: E402
from search.nn.train import evaluate, load_checkpoint  # noqa: E402
from search.policy import Policy  # noqa: E402

BATCH = 128


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", required=True, help="a main_table.json (bench/paper/main_table.py)")
    p.add_argument("--fp", required=True, help="the FP checkpoint the table started from")
    p.add_argument("--output", default="runs/paper/proxy-resnet8")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--qat-steps", default="0,20", help="short-QAT proxies: steps of 128 images (0: calibrated only)")
    p.add_argument("--val-images", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def short_qat(fp: tuple[Any, dict], dataset: Any, policy: Policy, steps: int, lr: float, seed: int,
              val: BatchLoader) -> float:
    """Validation accuracy of `policy` after `steps` QAT steps (the table's recipe cut short) from the FP weights."""
    cfg = QATConfig(epochs=1 if steps else 0, subset=max(steps, 1) * BATCH, batch_size=BATCH, lr=lr, seed=seed,
                    progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        res = finetune(fp[0], policy, dataset, cfg, tmp, fp[1].get("model", "model"), "cpu", True,
                       model_kwargs=fp[1].get("model_kwargs"))
    return evaluate(res.model, val).accuracy


def tau(x: list[float], y: list[float]) -> float | None:
    """Kendall τ-b, None below 3 distinct pairs."""
    if len(x) < 3:
        return None
    t = kendalltau(x, y).statistic
    return None if t is None or np.isnan(t) else float(t)


def summarize(rows: list[dict[str, Any]], proxies: list[str]) -> list[dict[str, Any]]:
    """Per budget and proxy: τ(proxy, top-1) and the proxy's selection among the methods' policies per seed."""
    out = []
    for budget in dict.fromkeys(r["budget"] for r in rows):
        rs = [r for r in rows if r["budget"] == budget]
        seeds = sorted({r["seed"] for r in rs})
        best = [max(r["top1"] for r in rs if r["seed"] == s) for s in seeds]
        uni = [r["top1"] for r in rs if r["method"] == "uniform"]
        for proxy in proxies:
            picks = [max((r for r in rs if r["seed"] == s), key=lambda r: r[proxy]) for s in seeds]
            out.append({"budget": budget, "proxy": proxy, "cells": len(rs),
                        "tau": tau([r[proxy] for r in rs], [r["top1"] for r in rs]),
                        "selected_top1": float(np.mean([p["top1"] for p in picks])),
                        "selected_methods": [p["method"] for p in picks],
                        "uniform_top1": float(np.mean(uni)) if uni else None,
                        "best_top1": float(np.mean(best))})
    return out


def plot(rows: list[dict[str, Any]], proxies: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = list(dict.fromkeys(r["budget"] for r in rows))
    fig, axes = plt.subplots(len(proxies), len(budgets), figsize=(3.2 * len(budgets), 3 * len(proxies)), squeeze=False)
    for i, proxy in enumerate(proxies):
        for j, b in enumerate(budgets):
            ax = axes[i][j]
            rs = [r for r in rows if r["budget"] == b]
            for m in dict.fromkeys(r["method"] for r in rs):
                pts = [r for r in rs if r["method"] == m]
                ax.scatter([100 * r[proxy] for r in pts], [100 * r["top1"] for r in pts], s=14, label=m,
                           marker="*" if m == "uniform" else "o")
            t = tau([r[proxy] for r in rs], [r["top1"] for r in rs])
            ax.set_title(f"{b}, {proxy}: τ={t:.2f}" if t is not None else f"{b}, {proxy}", fontsize=8)
            ax.set_xlabel(f"{proxy} accuracy (%)", fontsize=7)
            ax.set_ylabel("top-1 after QAT (%)", fontsize=7)
            ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=5)  # the first budget holds every method
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out, log = open_experiment(args, "proxy")
    table = json.loads(Path(args.table).read_text())
    lr = float(table["settings"]["qat_lr"])
    steps = [int(s) for s in args.qat_steps.split(",") if s.strip()]
    proxies = ["game", "game-bn", *[f"qat-{s}" for s in steps]]
    fp = load_checkpoint(args.fp)
    sn, dataset, _ = fp_supernet(args_for_supernet(args, table), out / "supernet")
    val = mixed_batches(dataset.val.subset(args.val_images), dataset, 500)
    rows = []
    for c in table["cells"]:
        if c["budget"] == "w8a8" or c.get("top1") is None:
            continue
        policy = Policy(c["policy"])
        key = policy_hash(policy)
        row = {k: c[k] for k in ("budget", "method", "seed", "top1")}
        for proxy, bn in (("game", "running"), ("game-bn", "batch")):
            row[proxy] = cell(out / "cells" / f"{key}-{proxy}.json",
                              lambda: {"accuracy": masked_accuracy(sn, val, sn.policy_mask(policy), bn)}, log)["accuracy"]
        for s in steps:
            row[f"qat-{s}"] = cell(out / "cells" / f"{key}-qat{s}-s{c['seed']}.json",
                                   lambda: {"accuracy": short_qat(fp, dataset, policy, s, lr, c["seed"], val)},
                                   log)["accuracy"]
        rows.append(row)
    summary = summarize(rows, proxies)
    write_json(out / "proxy.json", {"command": " ".join(sys.argv), "settings": vars(args), "rows": rows,
                                    "summary": summary})
    plot(rows, proxies, out / "proxy.png")
    print("| budget | proxy | cells | τ(proxy, top-1) | selected by proxy | uniform | best |")
    print("|---|---|---|---|---|---|---|")
    for s in summary:
        t = "—" if s["tau"] is None else f"{s['tau']:.2f}"
        u = "—" if s["uniform_top1"] is None else f"{100 * s['uniform_top1']:.2f}"
        print(f"| {s['budget']} | {s['proxy']} | {s['cells']} | {t} | {100 * s['selected_top1']:.2f} "
              f"({', '.join(s['selected_methods'])}) | {u} | {100 * s['best_top1']:.2f} |")
    return 0


def args_for_supernet(args: argparse.Namespace, table: dict[str, Any]) -> argparse.Namespace:
    """The table's supernet settings (bits, calibration subset) with this command's FP checkpoint and data."""
    st = table["settings"]
    return argparse.Namespace(fp=args.fp, data_dir=args.data_dir, w_bits=st["w_bits"], a_bits=st["a_bits"],
                              subset=st["subset"])


if __name__ == "__main__":
    raise SystemExit(main())
