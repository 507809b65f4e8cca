"""SMPQ vs EdMIPS vs uniform W4A4 at equal BOPs (≤ W4A4's), ResNet-8 on CIFAR-10, same QAT recipe.

    .venv/bin/python bench/search_compare.py [--fp runs/resnet8-fp/fp.pt] [--output runs/bench-search]
        [--subset 2000] [--qat-subset 5000] [--search-epochs 1] [--qat-epochs 1] [--permutations 10] ...

Starts from an FP checkpoint: ``--fp``, else ``runs/resnet8-fp/fp.pt`` when it exists, else a short
FP training (``--fp-epochs`` on ``--fp-subset`` images) into ``<output>/fp``. The BOPs budget is the
BOPs of uniform W4A4 (first and last layers at W8A8, as for every method). Every method's final policy
gets the same QAT (from the FP weights). Prints a table: top-1 after QAT, BOPs, flash, peak SRAM,
search wall time and value evaluations per method; writes ``<output>/results.json``. Figures only,
never pass/fail. Every stage resumes when rerun with the same arguments.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from search.budget import Budget  # noqa: E402
from deploy.devices.cost import BlobCostModel, omega  # noqa: E402
from search.nn.data import load_dataset  # noqa: E402
from search.errors import SearchError  # noqa: E402
from search.nn.graph import extract_graph  # noqa: E402
from search.nn.models import build_model  # noqa: E402
from search.policy import Policy  # noqa: E402
from search.nn.qat import QATConfig  # noqa: E402
from search.runner import SearchSettings, run_search  # noqa: E402
from search.nn.train import TrainConfig, fit, load_checkpoint  # noqa: E402

DEFAULT_FP = Path("runs/resnet8-fp/fp.pt")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fp", default=None, help=f"FP checkpoint (default: {DEFAULT_FP} if it exists, else train one)")
    p.add_argument("--output", default="runs/bench-search")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--methods", default="smpq,edmips,uniform")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fp-epochs", type=int, default=4, help="short FP training when no checkpoint exists")
    p.add_argument("--fp-subset", type=int, default=8000)
    p.add_argument("--subset", type=int, default=2000, help="training (and val) images of the supernet searches")
    p.add_argument("--search-epochs", type=int, default=1)
    p.add_argument("--warmup-epochs", type=int, default=1, help="of the search epochs, before Shapley rounds / α updates")
    p.add_argument("--rounds", type=int, default=2, help="Shapley rounds")
    p.add_argument("--steps-per-round", type=int, default=8, help="supernet SGD steps between Shapley rounds")
    p.add_argument("--permutations", type=int, default=10, help="Shapley permutations per round (M; the paper's 10)")
    p.add_argument("--val-batch", type=int, default=128, help="validation images per value evaluation")
    p.add_argument("--edmips-cd", type=float, default=0.01, help="first cd of the EdMIPS bisection")
    p.add_argument("--edmips-trials", type=int, default=3)
    p.add_argument("--w-bits", default="2,4,8")
    p.add_argument("--a-bits", default="2,4,8")
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--qat-subset", type=int, default=5000, help="QAT training images; val/test are capped to it too")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: shared machines)")
    p.add_argument("--accelerator", default="auto", choices=("cpu", "cuda", "auto"))
    return p.parse_args(argv)


def fp_checkpoint(args: argparse.Namespace, out: Path) -> tuple[Path, str]:
    """The FP checkpoint to start from, training a short one if none is given or found."""
    if args.fp:
        return Path(args.fp), "given"
    if DEFAULT_FP.is_file():
        return DEFAULT_FP, "runs/resnet8-fp"
    ds = load_dataset("cifar10", args.data_dir, seed=args.seed)
    model = build_model("resnet8", ds.input_shape, ds.num_classes)
    cfg = TrainConfig(epochs=args.fp_epochs, subset=args.fp_subset, seed=args.seed, progress=True)
    fit(model, ds, cfg, out / "fp", device=args.accelerator, model_name="resnet8")
    return out / "fp" / "fp.pt", f"short FP training: {args.fp_epochs} epochs on {args.fp_subset} images"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fp_path, fp_source = fp_checkpoint(args, out)
    fp_model, fp_meta = load_checkpoint(fp_path)
    dataset = load_dataset(fp_meta.get("dataset", "cifar10"), args.data_dir, seed=args.seed)
    graph = extract_graph(fp_model)
    w4a4 = omega(graph, Policy.uniform(graph.layer_names(), 4, 4, first_last_8bit=True))
    budget = Budget(bops=w4a4.bops)
    w_bits = tuple(int(b) for b in args.w_bits.split(","))
    a_bits = tuple(int(b) for b in args.a_bits.split(","))
    qat = QATConfig(epochs=args.qat_epochs, subset=args.qat_subset, seed=args.seed, progress=True)
    rows = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        settings = SearchSettings(
            method=method, fp=str(fp_path), output=str(out / method), seed=args.seed, budget=budget,
            cost_model=BlobCostModel(),
            w_bits=w_bits, a_bits=a_bits, uniform_bits=(4, 4), subset=args.subset, epochs=args.search_epochs,
            warmup_epochs=min(args.warmup_epochs, args.search_epochs) if method == "smpq" else 0,
            shapley={"permutations": args.permutations, "rounds": args.rounds, "steps_per_round": args.steps_per_round,
                     "val_batch_size": args.val_batch},
            edmips_cd=args.edmips_cd, edmips_trials=args.edmips_trials, qat=qat, accelerator=args.accelerator)
        print(f"== {method}", file=sys.stderr, flush=True)
        try:
            rec = run_search(settings, fp_model, fp_meta, dataset).record
        except SearchError as exc:
            print(f"{method}: error: {exc}", file=sys.stderr)
            continue
        extra = rec["method_details"]
        rows.append({"method": method, "top1": rec["accuracy"]["qat_test"], "bops": rec["omega"]["bops"],
                     "flash_bytes": rec["omega"]["flash_bytes"], "sram_bytes": rec["omega"]["sram_bytes"],
                     "search_s": rec["timings_s"]["search"], "qat_s": rec["timings_s"].get("qat"),
                     "value_evaluations": rec["value_evaluations"], "selection": rec["selection"]["how"],
                     "cd": extra.get("cd"), "policy": {L["name"]: f"w{L['w_bits']}a{L['a_bits']}" for L in rec["layers"]}})
    report = {"fp": str(fp_path), "fp_source": fp_source, "fp_test": fp_meta.get("test_accuracy"),
              "budget_bops": budget.bops, "settings": vars(args), "rows": rows, "wall_s": time.perf_counter() - t0}
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    return 0


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"ResNet-8 / CIFAR-10 at ≤ W4A4 BOPs ({report['budget_bops'] / 1e6:.2f} M); "
                    f"FP top-1 {report['fp_test']:.4f} ({report['fp_source']})")
    for col in ("method", "top-1", "BOPs (M)", "flash (KB)", "peak SRAM (KB)", "search (s)", "QAT (s)", "value evals", "chosen by"):
        t.add_column(col, justify="left" if col in ("method", "chosen by") else "right")
    for r in report["rows"]:
        how = r["selection"] + (f", cd {r['cd']:.3g}" if r["cd"] is not None else "")
        t.add_row(r["method"], f"{r['top1']:.4f}", f"{r['bops'] / 1e6:.2f}", f"{r['flash_bytes'] / 1024:.1f}",
                  f"{r['sram_bytes'] / 1024:.1f}", f"{r['search_s']:.0f}", f"{r['qat_s'] or 0:.0f}",
                  str(r["value_evaluations"]), how)
    Console(width=160).print(t)
    for r in report["rows"]:
        print(f"{r['method']:7s} " + " ".join(r["policy"].values()))
    print(f"total wall time {report['wall_s']:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
