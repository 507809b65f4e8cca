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
                "smpq": ["model.smpq"], "c": ["model_data.c", "model_data.h"],
                "ethos-u": ["model_ethosu.tflite", "model_ethosu_vela.tflite", "vela.json"]}


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

        from firmware_harness.errors import HarnessError

        try:
            runtime = HostRuntime((out / "model.smpq").read_bytes())
        except HarnessError as exc:  # name the file: a blob damaged after export
            raise HarnessError(f"'{out / 'model.smpq'}': {exc}") from None
        got = runtime.run(x)
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
    if (out / "model_ethosu.tflite").is_file():  # what Vela compiled: int8-valued weights, same integer model
        from deploy.ethosu.stage import check_tflite_bit_exact

        n = min(len(x), 100)
        result["ethosu_tflite_tflm_bit_exact"] = check_tflite_bit_exact(g, out, x[:n])
    return result


def run(args: argparse.Namespace) -> int:
    """Run every stage that has not run yet, then write and print report.json."""
    from deploy import run_identity
    from deploy.validation import prepare_output

    cfg = config_from_args(args)
    out = prepare_output(Path(cfg.output))
    if not args.force:
        run_identity.check_folder(out, cfg)  # the report must describe exactly the artifacts beside it
    run_identity.record(out, cfg)
    console = Console()
    common = _common(args)
    extra = (["--subset", str(args.subset)] if args.subset else []) + (["--no-progress"] if args.no_progress else [])
    timings: dict[str, float] = {}
    from deploy.pretrained import fp_checkpoint

    fp = fp_checkpoint(cfg, out)
    if not fp.is_file() or (args.force and fp == out / "fp.pt"):  # a given or shipped checkpoint is not retrained
        timings["train"] = _stage(console, "FP training", ["train", *common, *extra])
    if args.force or not _fresh(out, ["policy.json", "qat.pt"], fp):
        timings["search"] = _stage(console, "search + QAT", ["search", *common, "--fp", str(fp), *extra])
    from deploy.ethosu.stage import is_ethos_u

    formats = list(cfg.deploy.formats) + (["ethos-u"] if is_ethos_u(cfg.profile()) and "ethos-u" not in cfg.deploy.formats
                                          else [])  # an Ethos-U device adds the Vela stage
    files = ["model.ir.json", "model.ir.npz"] + [f for fmt in formats for f in FORMAT_FILES.get(fmt, [])]
    if args.force or not _fresh(out, files, out / "qat.pt") or not _written_by_this_version(out):
        timings["export"] = _stage(console, "export", ["export", *common, "--formats", ",".join(formats),
                                                       "--opset", str(cfg.deploy.onnx_opset)])
    console.rule("[bold]host verification")
    t0 = time.perf_counter()
    verification = verify_on_host(out, cfg.dataset.name, cfg.dataset.data_dir and str(cfg.dataset.data_dir),
                                  cfg.harness.samples, cfg.seed)
    timings["verify"] = time.perf_counter() - t0
    from deploy.report import build_report, run_command, write_report

    report = build_report(out, cfg.device, verification, timings,
                          run_command(["run", *common, *extra, *(["--force"] if args.force else [])]))
    json_path, html_path = write_report(out, report, console)
    console.print(f"artifacts: {out}/  report: {json_path} and {html_path}")
    return 0

