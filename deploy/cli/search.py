"""`smpq-deploy search`: mixed-precision search (smpq | edmips | hawq | uniform) → budget-exact policy → QAT.

    smpq-deploy search --method smpq --model resnet8 --dataset cifar10 --fp runs/x/fp.pt --output runs/x \
        [--budget-bops 150M] [--subset N] [--epochs E] [--qat-epochs Q] [--accelerator cpu|cuda|auto] [--nproc N]

Writes ``policy.json`` (docs/policy-json.md), ``search_state.pt`` (resume: rerun the same command) and
``qat.pt``. Settings come, in order, from these flags, pipeline.yaml (``search``, ``qat``, ``budgets``,
with ``auto`` budgets from ``--device``) and the defaults of :class:`search.runner.SearchSettings`.
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from search.errors import SearchError
from search.methods import METHODS

HELP = "mixed-precision search (smpq, edmips, hawq or uniform) under hard budgets, then QAT; writes policy.json and qat.pt"

_UNIFORM = re.compile(r"^w([1-8])a([1-8])$", re.IGNORECASE)


def _bits(text: str) -> list[int]:
    try:
        bits = sorted({int(b) for b in str(text).split(",") if b.strip()})
    except ValueError:
        bits = []
    if not bits or not all(1 <= b <= 8 for b in bits):
        raise argparse.ArgumentTypeError(f"bit widths must be a comma list of 1..8 like 2,4,8, got '{text}'")
    return bits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Search options (the common --model/--dataset/--device/--seed/--output come from cli.py)."""
    parser.add_argument("--method", choices=METHODS, default=None,
                        help="search method (default: pipeline.yaml search.method)")
    parser.add_argument("--fp", default=None, metavar="FP.PT",
                        help="FP checkpoint to start from (default: model.checkpoint, else <output>/fp.pt, else the shipped one)")
    parser.add_argument("--budget-bops", default=None, help="BOPs budget, e.g. 150M or 1.5G (overrides budgets.bops)")
    parser.add_argument("--budget-flash", default=None, help="flash budget, e.g. 64KB (overrides budgets.flash_bytes)")
    parser.add_argument("--budget-sram", default=None, help="peak SRAM budget, e.g. 32KB (overrides budgets.sram_bytes)")
    parser.add_argument("--budget-latency-ms", default=None, help="latency budget in ms (needs --device)")
    parser.add_argument("--w-bits", type=_bits, default=None, help="weight bit candidates, e.g. 2,4,8")
    parser.add_argument("--a-bits", type=_bits, default=None, help="activation bit candidates, e.g. 4,8")
    parser.add_argument("--uniform", default=None, metavar="WxAy", help="policy of --method uniform, e.g. w4a4")
    parser.add_argument("--subset", type=int, default=None, help="search and QAT on N training images (evenly spread over the split)")
    parser.add_argument("--epochs", type=int, default=None, help="supernet training epochs (search.epochs)")
    parser.add_argument("--warmup-epochs", type=int, default=None, help="epochs before the first Shapley round / α update")
    parser.add_argument("--qat-epochs", type=int, default=None, help="QAT epochs (qat.epochs; 0: no training, qat.pt holds the calibrated model)")
    parser.add_argument("--cd", type=float, default=None, help="EdMIPS complexity weight (start of the cd bisection)")
    parser.add_argument("--edmips-trials", type=int, default=None,
                        help="at most this many EdMIPS searches while bisecting cd towards the BOPs budget (default 5)")
    parser.add_argument("--accelerator", choices=("cpu", "cuda", "auto"), default=None,
                        help="where to train: CUDA when available ('auto'), or the CPU")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--nproc", type=int, default=None, metavar="N",
                        help="run the search as N local processes under torch.distributed (torchrun; "
                             "gloo on CPU, NCCL on GPU); see docs/distributed.md")


def _count(text: str, what: str) -> float:
    from deploy.pipeline.validation import parse_count

    try:
        return float(parse_count(text))
    except ValueError as exc:
        raise SearchError(f"{what} '{text}' is not a count (e.g. 150M, 1.5G): {exc}") from None


def _ms(text: str, what: str) -> float:
    from deploy.pipeline.validation import parse_duration_ms

    try:
        return float(parse_duration_ms(text))
    except ValueError as exc:
        raise SearchError(f"{what} '{text}' is not a duration (e.g. 50, 50ms, 0.05s): {exc}") from None


def _bytes(text: str, what: str) -> int:
    from deploy.pipeline.validation import parse_bytes

    try:
        return int(parse_bytes(text))
    except ValueError as exc:
        raise SearchError(f"{what} '{text}' is not a byte size (e.g. 64KB): {exc}") from None


def device_cost_model(profile: Any, fp: str, w_bits: list[int], output: Path, seed: int) -> Any:
    """The cost model the search gets for `profile`: Vela's measured per-layer costs for an Ethos-U NPU
    (deploy/ethosu, compilations cached in <output>/vela_cache), else the ``.smpq`` blob's."""
    from deploy.devices.cost import BlobCostModel
    from deploy.devices.profiles import latency_model
    from deploy.ethosu.stage import CACHE, is_ethos_u, search_cost_model

    if not is_ethos_u(profile):
        return BlobCostModel(latency_model(profile))
    from search.nn.train import load_checkpoint

    fp_model, _ = load_checkpoint(fp)
    return search_cost_model(fp_model, profile, w_bits, output / CACHE, seed)


def build_settings(args: argparse.Namespace) -> Any:
    """SearchSettings from the flags over pipeline.yaml (through deploy.pipeline.config)."""
    from deploy.pipeline.config import candidate_bits, check_device_limit, config_from_args, resolve_budget
    from search.budget import Budget
    from search.nn.qat import QATConfig
    from search.runner import SearchSettings

    cfg = config_from_args(args)
    profile = cfg.profile()
    sc = cfg.search
    method = args.method or sc.method
    output = Path(args.output or cfg.output)
    from deploy.pipeline.pretrained import fp_checkpoint

    fp = args.fp or str(fp_checkpoint(cfg, output))
    budget = resolve_budget(cfg.budgets, profile)  # a device's flash/SRAM limits always apply (issue 18)
    over = {}
    if args.budget_bops is not None:
        over["bops"] = _count(args.budget_bops, "--budget-bops")
    for key, flag, value in (("flash_bytes", "--budget-flash", args.budget_flash),
                             ("sram_bytes", "--budget-sram", args.budget_sram)):
        if value is not None:
            over[key] = _bytes(value, flag)
            check_device_limit(key, over[key], profile, f"{flag} {value}")
    if args.budget_latency_ms is not None:
        over["latency_s"] = _ms(args.budget_latency_ms, "--budget-latency-ms") / 1e3
    budget = Budget(**{**{k: getattr(budget, k) for k in ("flash_bytes", "sram_bytes", "latency_s", "bops")}, **over})
    uniform_flag = None
    if args.uniform:
        m = _UNIFORM.match(args.uniform)
        if not m:
            raise SearchError(f"--uniform must look like w4a4, got '{args.uniform}'")
        uniform_flag = (int(m.group(1)), int(m.group(2)))
    w_bits, a_bits, _ = candidate_bits(cfg, profile, args.w_bits, args.a_bits, method, uniform_flag)
    uniform = uniform_flag or (sc.uniform.w_bits, sc.uniform.a_bits)
    sh = sc.shapley
    shapley = {"preset": sh.preset, "permutations": sh.permutations, "threshold": sh.threshold, "xi": sh.xi, "beta": sh.beta,
               "lam": sh.lambda_, "value": sh.value, "robust": sh.estimator == "mean-std",
               **({"score": sh.score} if sh.score != "shapley" else {}),  # SMPQConfig's defaults stay out of the signature
               **({"bn": sh.bn} if sh.bn != "running" else {}),
               **({"layout": sh.layout} if sh.layout != "nchw" else {}),
               **{k: getattr(sh, k) for k in ("rounds", "steps_per_round") if getattr(sh, k) is not None}}
    epochs = args.epochs if args.epochs is not None else sc.epochs
    warmup = args.warmup_epochs if args.warmup_epochs is not None else min(sc.warmup_epochs, max(epochs - 1, 0))
    qat_epochs = args.qat_epochs if args.qat_epochs is not None else cfg.qat.epochs
    if qat_epochs < 0:
        raise SearchError(f"--qat-epochs must be >= 0, got {qat_epochs}")
    progress = not args.no_progress
    return SearchSettings(
        method=method, fp=fp, output=str(output), dataset=args.dataset, data_dir=cfg.dataset.data_dir and str(cfg.dataset.data_dir),
        model=args.model, seed=cfg.seed, budget=budget,
        cost_model=device_cost_model(profile, fp, sorted({*w_bits, uniform[0]}), output, cfg.seed),
        w_bits=tuple(w_bits), a_bits=tuple(a_bits), first_last_8bit=sc.first_last_8bit, uniform_bits=uniform,
        subset=args.subset, epochs=epochs, warmup_epochs=warmup, shapley=shapley, hawq=sc.hawq.model_dump(),
        edmips_cd=args.cd if args.cd is not None else sc.edmips.cd, verify_top=sc.verify_top, uniform_guard=sc.uniform_guard,
        **({"edmips_trials": args.edmips_trials} if args.edmips_trials is not None else {}),
        qat=QATConfig(epochs=qat_epochs, lr=cfg.qat.lr, subset=args.subset, seed=cfg.seed, progress=progress),
        accelerator=args.accelerator or cfg.accelerator, progress=progress)


def _fmt(key: str, v: float | None) -> str:
    if v is None:
        return "—"
    if key in ("flash_bytes", "sram_bytes"):
        return f"{v / 1024:.1f} KB"
    if key == "latency_s":
        return f"{v * 1e3:.3f} ms"
    return f"{v / 1e6:.2f} M"


def print_summary(record: dict[str, Any], console: Console | None = None) -> None:
    """The per-layer policy table and Ω vs budget, as rich tables."""
    console = console or Console()
    t = Table(title=f"{record['method']} policy for {record['model']} on {record['dataset']}")
    for col in ("layer", "type", "MACs", "params", "w", "a", "BOPs", "score w", "score a"):
        t.add_column(col, justify="left" if col in ("layer", "type") else "right")
    for L in record["layers"]:
        nw = (L.get("normalized_scores") or {}).get("w", {}).get(str(L["w_bits"]))
        na = (L.get("normalized_scores") or {}).get("a", {}).get(str(L["a_bits"]))
        t.add_row(L["name"], L["type"], f"{L['macs']:,}", f"{L['params']:,}", str(L["w_bits"]), str(L["a_bits"]),
                  f"{L['bops'] / 1e6:.2f} M", "held" if L["held_8bit"] else ("—" if nw is None else f"{nw:.3f}"),
                  "held" if L["held_8bit"] else ("—" if na is None else f"{na:.3f}"))
    console.print(t)
    b = Table(title="Ω of the policy vs budget")
    for col in ("", "value", "budget", "ok"):
        b.add_column(col)
    for k, e in record["budget"].items():
        b.add_row(k, _fmt(k, e["value"]), _fmt(k, e["limit"]) if e["limit"] is not None else "none",
                  "[green]yes[/green]" if e["ok"] else "[red]NO[/red]")
    console.print(b)
    acc = record["accuracy"]
    tm = record["timings_s"]
    console.print(f"selection: {record['selection']['how']}; value evaluations: {record['value_evaluations']}; "
                  f"search {tm.get('search', 0):.1f} s, QAT {tm.get('qat', 0):.1f} s; "
                  f"FP test {acc.get('fp_test') if acc.get('fp_test') is None else round(acc['fp_test'], 4)}, "
                  f"QAT test {acc.get('qat_test') if acc.get('qat_test') is None else round(acc['qat_test'], 4)}")
    extra = record.get("method_details", {})
    if record["method"] == "edmips" and "cd" in extra:
        console.print(f"EdMIPS: cd {extra['cd']:.3g} reached the budget ({len(extra.get('trials', []))} trial(s))")


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line minus ``--nproc N`` / ``--nproc=N`` (what each worker runs)."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == "--nproc":
            skip = True
        elif not token.startswith("--nproc="):
            out.append(token)
    return out


def run(args: argparse.Namespace) -> int:
    """Run the search; print the summary and where the files went."""
    from search.runner import run_search

    settings = build_settings(args)  # flags are checked once, before any worker starts
    from deploy.pipeline.validation import prepare_output

    prepare_output(Path(settings.output))
    if args.nproc is not None and args.nproc != 1:
        from search.distributed import launch

        return launch(args.nproc, "deploy.cli.main", _without_nproc(args.argv))
    outcome = run_search(settings)
    if os.environ.get("RANK", "0") != "0":  # a torchrun worker other than rank 0: rank 0 reports
        return 0
    print_summary(outcome.record)
    print(f"wrote {outcome.policy_path}" + (f" and {outcome.qat_path}" if outcome.qat_path else ""))
    return 0
