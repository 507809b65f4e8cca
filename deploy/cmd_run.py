"""`smpq-deploy run` (also `smpq-deploy [options]` without a command): the whole pipeline.

    smpq-deploy --device stm32h7 --model mbv2 [--output runs/x] [--set key=value ...]

Stages, each writing to the run folder and each skipped when its artifacts are already there (so
a killed pipeline resumes where it stopped; the training and search stages also resume inside
themselves): FP training (``fp.pt``) → search + QAT (``policy.json``, ``qat.pt``) → export
(IR + the configured formats) → host verification (integer reference vs the C runtime on the test
split, and vs ONNX Runtime and TFLite Micro for the files that exist; the blob's flash and arena against
the budget) → ``report.json``. An export written by an older format version is redone. Each stage is the
subcommand of the same name, called with the same common options: one implementation of each step.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from deploy.config import config_from_args
from deploy.errors import DeployError

HELP = "run the whole pipeline: FP training -> search + QAT -> export -> host verification -> report (the default command)"

FORMAT_FILES = {"onnx": ["model.onnx"], "onnx-int": ["model.int.onnx"], "tflite": ["model.tflite"],
                "smpq": ["model.smpq"], "c": ["model_data.c", "model_data.h"]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Pipeline options; everything else comes from the config file and the common options."""
    parser.add_argument("--subset", type=int, default=None,
                        help="train and search on N training images (evenly spread over the split; quick runs)")
    parser.add_argument("--force", action="store_true", help="rerun every stage even if its artifacts exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _common(args: argparse.Namespace) -> list[str]:
    """The common options of this invocation, to pass on to each stage's subcommand."""
    argv: list[str] = []
    for flag, key in (("--config", "config"), ("--device", "device"), ("--model", "model"),
                      ("--dataset", "dataset"), ("--data-dir", "data_dir"), ("--seed", "seed"),
                      ("--output", "output")):
        value = getattr(args, key, None)
        if value is not None:
            argv += [flag, str(value)]
    for item in getattr(args, "set", None) or []:
        argv += ["--set", item]
    return argv


def _stage(console: Console, name: str, argv: list[str]) -> float:
    """Run one subcommand in-process; a failing stage stops the pipeline with its own message."""
    from deploy.cli import main

    console.rule(f"[bold]{name}")
    t0 = time.perf_counter()
    rc = main(argv)
    if rc != 0:
        raise DeployError(f"pipeline stopped: stage '{name}' failed (exit {rc}); fix the error above and rerun the same "
                          "command — finished stages are kept")
    return time.perf_counter() - t0


def _fresh(out: Path, files: list[str], newer_than: Path | None = None) -> bool:
    """Whether every file exists (and is newer than `newer_than`, when given)."""
    paths = [out / f for f in files]
    if not all(p.is_file() for p in paths):
        return False
    return newer_than is None or not newer_than.exists() or all(p.stat().st_mtime >= newer_than.stat().st_mtime for p in paths)


def _written_by_this_version(out: Path) -> bool:
    """Whether the exported IR and blob are in the formats this version writes (an upgrade re-exports)."""
    import struct

    from deploy.ir import IR_VERSION
    from firmware_harness.smpq_format import HEADER, VERSION

    try:
        if json.loads((out / "model.ir.json").read_text()).get("ir_version") != IR_VERSION:
            return False
        blob = out / "model.smpq"
        return not blob.is_file() or HEADER.unpack_from(blob.read_bytes())[1] == VERSION
    except (OSError, ValueError, struct.error):
        return False


def verify_on_host(out: Path, dataset: str, data_dir: str | None, samples: int | None, seed: int) -> dict[str, Any]:
    """Integer reference vs the C runtime, ONNX Runtime (both styles) and TFLite Micro on test images."""
    import numpy as np

    from deploy import reference
    from deploy.ir import Graph
    from search.data import load_dataset

    g = Graph.load(out / "model")
    ds = load_dataset(dataset, data_dir, seed=seed)
    test = ds.test.subset(samples)
    x = reference.to_int8_input(test.x)
    ref = reference.run(g, x)
    ref_top1 = ref.reshape(len(x), -1).argmax(1)
    result: dict[str, Any] = {"samples": len(x), "reference_accuracy": float((ref_top1 == test.y).mean())}
    if (out / "model.smpq").is_file():
        from firmware_harness.host import HostRuntime

        got = HostRuntime((out / "model.smpq").read_bytes()).run(x)
        result["c_runtime_bit_exact"] = bool(np.array_equal(got.reshape(ref.shape), ref))
        result["c_runtime_accuracy"] = float((got.reshape(len(x), -1).argmax(1) == test.y).mean())
    from deploy.export_onnx import run_onnxruntime

    if (out / "model.int.onnx").is_file():
        got = run_onnxruntime(out / "model.int.onnx", x)
        result["onnx_int_bit_exact"] = bool(np.array_equal(got, ref))
    if (out / "model.onnx").is_file():  # QDQ: float rounding, so agreement figures rather than bit-exactness
        got = run_onnxruntime(out / "model.onnx", x).astype(np.int64)
        result["onnx_qdq_top1_agreement"] = float((got.reshape(len(x), -1).argmax(1) == ref_top1).mean())
        result["onnx_qdq_within_1lsb"] = float((np.abs(got - ref) <= 1).mean())
    if (out / "model.tflite").is_file():
        from deploy.tflm import run_tflm, tflm_arena_bytes

        blob = (out / "model.tflite").read_bytes()
        n = min(len(x), 100)  # TFLM's Python interpreter runs one image at a time
        got = run_tflm(blob, x[:n])
        result["tflm_samples"] = n
        result["tflm_bit_exact"] = bool(np.array_equal(got.reshape(ref[:n].shape), ref[:n]))
        result["tflm_arena_bytes"] = tflm_arena_bytes(blob, x[0])
    return result


def run(args: argparse.Namespace) -> int:
    """Run every stage that has not run yet, then write and print report.json."""
    cfg = config_from_args(args)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    common = _common(args)
    extra = (["--subset", str(args.subset)] if args.subset else []) + (["--no-progress"] if args.no_progress else [])
    timings: dict[str, float] = {}
    fp = Path(cfg.model.checkpoint) if cfg.model.checkpoint else out / "fp.pt"
    if args.force or not fp.is_file():
        timings["train"] = _stage(console, "FP training", ["train", *common, *extra])
    if args.force or not _fresh(out, ["policy.json", "qat.pt"], fp):
        timings["search"] = _stage(console, "search + QAT", ["search", *common, "--fp", str(fp), *extra])
    files = ["model.ir.json", "model.ir.npz"] + [f for fmt in cfg.deploy.formats for f in FORMAT_FILES.get(fmt, [])]
    if args.force or not _fresh(out, files, out / "qat.pt") or not _written_by_this_version(out):
        timings["export"] = _stage(console, "export", ["export", *common, "--formats", ",".join(cfg.deploy.formats),
                                                       "--opset", str(cfg.deploy.onnx_opset)])
    console.rule("[bold]host verification")
    t0 = time.perf_counter()
    verification = verify_on_host(out, cfg.dataset.name, cfg.dataset.data_dir and str(cfg.dataset.data_dir),
                                  cfg.harness.samples, cfg.seed)
    timings["verify"] = time.perf_counter() - t0
    report = _report(out, cfg, verification, timings)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    _print_report(console, report)
    console.print(f"report: {out / 'report.json'}")
    return 0


def _report(out: Path, cfg: Any, verification: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    policy = json.loads((out / "policy.json").read_text())
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())
             if p.suffix in (".onnx", ".tflite", ".smpq", ".c", ".h", ".pt")}
    return {
        "device": cfg.device, "model": cfg.model.name, "dataset": cfg.dataset.name, "seed": cfg.seed,
        "method": policy.get("method"), "budget": policy.get("budget"), "omega": policy.get("omega"),
        "deployed": _deployed(out, policy.get("budget") or {}), "accuracy": policy.get("accuracy"),
        "host_verification": verification, "artifact_bytes": sizes, "stage_seconds": timings,
        "board_run": "not run: the firmware build and the board (QEMU) stage are not part of this version",
    }


def _deployed(out: Path, budget: dict[str, Any]) -> dict[str, Any] | None:
    """Flash and SRAM of the exported blob itself, checked against the budget's limits (the search's Ω
    predicts them; this is what the board gets)."""
    from firmware_harness.smpq_format import parse

    if not (out / "model.smpq").is_file():
        return None
    blob = (out / "model.smpq").read_bytes()
    figures = {"flash_bytes": len(blob), "sram_bytes": parse(blob).arena_size}
    result: dict[str, Any] = {}
    for key, value in figures.items():
        limit = (budget.get(key) or {}).get("limit")
        result[key] = {"value": value, "limit": limit, "ok": limit is None or value <= limit}
    return result


def _print_report(console: Console, report: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"{report['model']} on {report['device']} ({report['method']})")
    t.add_column("figure")
    t.add_column("value", justify="right")
    for key, value in report["host_verification"].items():
        t.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    for what, section in (("Ω", report.get("budget")), ("model.smpq", report.get("deployed"))):
        for name, entry in (section or {}).items():
            limit = "none" if entry.get("limit") is None else f"{entry['limit']:.4g}"
            t.add_row(f"{what} {name} (limit)", f"{entry['value']:.4g} ({limit}) {'ok' if entry.get('ok') else 'OVER'}")
    for key, value in (report.get("accuracy") or {}).items():
        t.add_row(f"PyTorch {key}", f"{value:.4f}")
    console.print(t)
