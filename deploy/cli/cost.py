"""`smpq-deploy cost`: Ω(Q) of a model — MACs, parameters, BOPs, flash, peak SRAM (and latency on a device).

    smpq-deploy cost --model resnet8 [--policy w8a8|w4a4|policy.json] [--device stm32h7]
    smpq-deploy cost --all [--device stm32h7]

Prints the per-layer table of the chosen policy (default w8a8) and a summary with W8A8 and W4A4
columns; ``--all`` prints the summary for every model in SUMMARY_MODELS. Model (and its kwargs), dataset
and device default to the pipeline config (--config / --set / pipeline.yaml). Everything is computed by
:mod:`deploy.devices.cost` (the one cost model) on the graph that :mod:`search.nn.graph` extracts.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from rich.console import Console
from rich.table import Table

from deploy.devices.cost import omega, runtime_schedule
from search.budget import LatencyModel
from search.cost import Omega, check, uniform_policy
from search.errors import SearchError
from search.nn.graph import ExecGraph, extract_graph
from search.nn.models import build_model
from search.planner import DEFAULT_ALIGNMENT
from search.policy import Policy

HELP = "print the cost Ω (MACs, params, BOPs, flash, peak SRAM, latency) of a model and policy"
SUMMARY_MODELS = ("resnet8", "resnet20", "mbv2")
_UNIFORM = re.compile(r"^w([1-8])a([1-8])$", re.IGNORECASE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Cost options (the common --model/--device/--dataset come from cli.py)."""
    parser.add_argument("--policy", default=None,
                        help="'wXaY' (uniform: weights X in 1..8, activations Y in 2..8, e.g. w4a4) or a policy.json "
                             "(default: the summary's w8a8 and w4a4)")
    parser.add_argument("--all", action="store_true", dest="all_models",
                        help=f"summary table for {', '.join(SUMMARY_MODELS)}")
    parser.add_argument("--input-shape", default=None, metavar="C,H,W",
                        help="input shape instead of the dataset's (e.g. 3,32,32); no data is read then")
    parser.add_argument("--num-classes", type=int, default=10, help="classes with --input-shape (default 10)")
    parser.add_argument("--packed-activations", action="store_true",
                        help="store activations packed at their bit width instead of int8 containers")
    parser.add_argument("--alignment", type=int, default=DEFAULT_ALIGNMENT,
                        help=f"arena alignment in bytes (default {DEFAULT_ALIGNMENT})")


def _input_spec(args: argparse.Namespace, dataset: str, data_dir: str | None, seed: int) -> tuple[tuple[int, int, int], int]:
    if getattr(args, "input_shape", None):
        try:
            c, h, w = (int(v) for v in str(args.input_shape).replace("x", ",").split(","))
        except ValueError:
            raise SearchError(f"--input-shape must be C,H,W (e.g. 3,32,32), got '{args.input_shape}'") from None
        if min(c, h, w) < 1:
            raise SearchError(f"--input-shape must be three positive sizes C,H,W (e.g. 3,32,32), got '{args.input_shape}'")
        if int(args.num_classes) < 1:
            raise SearchError(f"--num-classes must be at least 1, got {args.num_classes}")
        return (c, h, w), int(args.num_classes)
    from search.nn.data import load_dataset

    ds = load_dataset(dataset, data_dir, seed=seed)
    return ds.input_shape, ds.num_classes


def parse_policy(spec: str | None, graph: ExecGraph) -> tuple[str, Policy]:
    """('w8a8', policy) from a uniform spec or a policy.json path."""
    spec = spec or "w8a8"
    m = _UNIFORM.match(spec)
    if m:
        return spec.lower(), uniform_policy(graph, int(m.group(1)), int(m.group(2)))
    if Path(spec).suffix.lower() == ".json" or Path(spec).exists():
        policy = Policy.load(spec)
        try:
            policy = policy.resolve(graph.layer_names())
        except SearchError as exc:
            raise SearchError(f"policy file '{spec}': {exc}") from None
        return Path(spec).name, policy
    raise SearchError(f"--policy must be 'wXaY' (weights X in 1..8, activations Y in 2..8, e.g. w4a4) "
                      f"or a policy.json file, got '{spec}'")


def _kb(n: float) -> str:
    return f"{n / 1024:,.1f} KiB"


def _ms(s: float | None) -> str:
    return "—" if s is None else f"{s * 1e3:,.3f} ms"


def _layer_table(title: str, result: Omega) -> Table:
    t = Table(title=title, caption=f"{len(result.schedule.ops)} runtime ops, {len(result.schedule.tensors)} tensors; "
                                   f"flash = records + layer data = {result.flash_bytes:,} B; "
                                   f"arena {result.sram_bytes:,} B")
    for col in ("op", "kind", "out shape", "MACs", "params", "w/a", "BOPs", "data B", "scratch B", "latency"):
        t.add_column(col, justify="left" if col in ("op", "kind", "out shape") else "right")
    sched = result.schedule
    for r, op in zip(result.layers, sched.ops):
        bits = f"{r.w_bits}/{r.a_bits}" if r.w_bits is not None else "—"
        t.add_row(r.name, r.op_type, "×".join(map(str, sched.tensors[op.output].shape)), f"{r.macs:,}", f"{r.params:,}",
                  bits, f"{r.bops:,.0f}", f"{r.flash_bytes:,}", f"{r.scratch_bytes:,}", _ms(r.latency_s))
    return t


def _summary(rows: list[tuple[str, Omega, Omega, Omega | None, str | None]], lm: LatencyModel | None,
             extra: str | None, packed: bool) -> Table:
    t = Table(title="Ω summary" + (" (activations packed)" if packed else " (int8 activations)"))
    cols = ["model", "MACs", "params", "BOPs W8A8", "BOPs W4A4", "flash W8A8", "flash W4A4", "peak SRAM W8A8"]
    if lm:
        cols += ["latency W8A8", "latency W4A4"]
    if extra:
        cols += [f"BOPs {extra}", f"flash {extra}", f"peak SRAM {extra}"] + ([f"latency {extra}"] if lm else [])
    for c in cols:
        t.add_column(c, justify="left" if c == "model" else "right")
    for name, o8, o4, ox, _ in rows:
        row = [name, f"{o8.macs / 1e6:,.2f} M", f"{o8.params / 1e3:,.1f} k", f"{o8.bops / 1e6:,.1f} M",
               f"{o4.bops / 1e6:,.1f} M", _kb(o8.flash_bytes), _kb(o4.flash_bytes), _kb(o8.sram_bytes)]
        if lm:
            row += [_ms(o8.latency_s), _ms(o4.latency_s)]
        if extra and ox is not None:
            row += [f"{ox.bops / 1e6:,.1f} M", _kb(ox.flash_bytes), _kb(ox.sram_bytes)] + ([_ms(ox.latency_s)] if lm else [])
        t.add_row(*row)
    return t


def run(args: argparse.Namespace) -> int:
    """Print the tables; 0 on success (bad input raises SearchError / DeployError)."""
    from deploy.pipeline.config import config_from_args
    from deploy.devices.profiles import latency_model

    console = Console()
    if not console.is_terminal:  # pipes and files: wide enough for the summary's columns
        console = Console(width=max(console.width, 160))
    cfg = config_from_args(args)  # --flags over --set over --config / pipeline.yaml
    shape, classes = _input_spec(args, cfg.dataset.name, cfg.dataset.data_dir, cfg.seed)
    profile = cfg.profile() if cfg.device else None
    lm = latency_model(profile) if profile is not None else None
    packed, align = bool(getattr(args, "packed_activations", False)), int(getattr(args, "alignment", DEFAULT_ALIGNMENT))
    names = SUMMARY_MODELS if getattr(args, "all_models", False) else (cfg.model.name,)
    spec = getattr(args, "policy", None)
    rows = []
    for name in names:
        model = build_model(name, shape, classes, **cfg.model.kwargs.get(name, {}))
        graph = extract_graph(model, shape)
        sched = runtime_schedule(graph)
        o8, o4 = (omega(graph, uniform_policy(graph, b, b), lm, packed_activations=packed, alignment=align,
                        schedule=sched) for b in (8, 4))
        label, ox = None, None
        if spec:
            label, pol = parse_policy(spec, graph)
            ox = omega(graph, pol, lm, packed_activations=packed, alignment=align, schedule=sched)
        rows.append((name, o8, o4, ox, label))
        if len(names) == 1:
            console.print(_layer_table(f"{name} {tuple(shape)} — {label or 'w8a8'}", ox or o8))
    extra = rows[0][4] if spec and rows[0][4] not in ("w8a8", "w4a4") else None
    console.print(_summary(rows, lm, extra, packed))
    if profile is not None:
        budget = cfg.budget()
        console.print(f"device {profile.name}: SRAM {_kb(profile.sram_bytes)}, model flash {_kb(profile.model_flash_bytes)}, "
                      f"clock {profile.clock_hz / 1e6:g} MHz (latency in {profile.cost_model.latency_unit})")
        for name, o8, _, ox, label in rows:
            bad = check(ox or o8, budget)
            verdict = "fits the budgets" if not bad else "; ".join(str(v) for v in bad)
            console.print(f"{name} {label or 'w8a8'}: {verdict}")
    return 0
