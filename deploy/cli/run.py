"""`smpq-deploy run` (also `smpq-deploy [options]` without a command): the whole pipeline.

    smpq-deploy --device stm32h7 --model mbv2 [--output runs/x] [--set key=value ...]

Stages: FP training (``fp.pt``) → search + QAT (``policy.json``, ``qat.pt``) → export (IR + the
configured formats; an Ethos-U device adds Vela) → firmware (``firmware.elf``, for a device with board
support) → board (QEMU devices: started here; a real board with --port: flashed, then measured →
``board.json``; otherwise the report says the board was not connected) → host verification (integer
reference vs the C runtime, ONNX Runtime and TFLite Micro) → ``report.json``/``report.html``.
Before any stage, every setting is checked (deploy.pipeline.preflight). Each stage is keyed by its settings
and inputs (deploy.pipeline.stages, ``stages.json``): an unchanged stage is skipped, a changed one reruns and so
does everything after it; a killed run continues (``--resume``) from the stages' own state files.
Each stage is the subcommand of the same name: one implementation of each step.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from deploy.pipeline.config import config_from_args
from deploy.errors import DeployError
from deploy.pipeline.stages import STAGES

STAGE_ORDER = {name: i for i, name in enumerate(STAGES)}

HELP = ("run the whole pipeline: FP training -> search + QAT -> export -> firmware -> board -> host verification -> "
        "report (the default command)")

FORMAT_FILES = {"onnx": ["model.onnx"], "onnx-int": ["model.int.onnx"], "tflite": ["model.tflite"],
                "smpq": ["model.smpq"], "c": ["model_data.c", "model_data.h"],
                "ethos-u": ["model_ethosu.tflite", "model_ethosu_vela.tflite", "vela.json"]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Pipeline options; everything else comes from the config file and the common options."""
    parser.add_argument("--subset", type=int, default=None,
                        help="train and search on N training images (evenly spread over the split; quick runs)")
    parser.add_argument("--force", action="store_true", help="rerun every stage even if its artifacts exist")
    parser.add_argument("--from", dest="from_stage", default=None, metavar="STAGE",
                        help=f"first stage to run ({', '.join(STAGES)}); earlier ones are used as they are")
    parser.add_argument("--to", dest="to_stage", default=None, metavar="STAGE",
                        help="last stage to run; host verification and the report follow it")
    parser.add_argument("--resume", action="store_true",
                        help="continue a killed run in this --output folder (an error when none was started there)")
    parser.add_argument("--port", default=None,
                        help="serial port of a real board: flash and measure it (QEMU devices need none)")
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
    from deploy.cli.main import main

    console.rule(f"[bold]{name}")
    t0 = time.perf_counter()
    rc = main(argv)
    if rc == 2:  # a user error: the stage printed its one line; finished stages are kept (stages.json)
        raise SystemExit(rc)
    if rc != 0:
        raise DeployError(f"pipeline stopped: stage '{name}' failed (exit {rc}); fix the error above and rerun the same "
                          "command — finished stages are kept")
    return time.perf_counter() - t0


def _written_by_this_version(out: Path) -> bool:
    """Whether the exported IR and blob are in the formats this version writes (an upgrade re-exports)."""
    import struct

    from deploy.lower.ir import IR_VERSION
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

    from deploy.lower import reference
    from deploy.lower.ir import Graph
    from search.nn.data import load_dataset

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
    from deploy.export.onnx import run_onnxruntime

    if (out / "model.int.onnx").is_file():
        got = run_onnxruntime(out / "model.int.onnx", x)
        result["onnx_int_bit_exact"] = bool(np.array_equal(got, ref))
    if (out / "model.onnx").is_file():  # QDQ: float rounding, so agreement figures rather than bit-exactness
        got = run_onnxruntime(out / "model.onnx", x).astype(np.int64)
        result["onnx_qdq_top1_agreement"] = float((got.reshape(len(x), -1).argmax(1) == ref_top1).mean())
        result["onnx_qdq_within_1lsb"] = float((np.abs(got - ref) <= 1).mean())
    if (out / "model.tflite").is_file():
        from deploy.export.tflm import run_tflm, tflm_arena_bytes

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
    """Check every setting, run each stage whose key changed (deploy.pipeline.stages), then verify and write the report."""
    from deploy.pipeline import preflight, stages
    from deploy.ethosu.stage import is_ethos_u
    from deploy.lower.ir import IR_VERSION
    from deploy.pipeline.pretrained import fp_checkpoint
    from deploy.pipeline.validation import prepare_output
    from firmware_harness.build import boards
    from firmware_harness.smpq_format import VERSION

    cfg = config_from_args(args)
    selected = stages.stage_range(args.from_stage, args.to_stage)
    preflight.check_run(cfg, args.subset)  # bad settings stop here, before hours of training
    out = prepare_output(Path(cfg.output))
    book = stages.StageBook(out)
    if args.resume and not book.doc:
        raise DeployError(f"--resume: '{out}' holds no started run ('{stages.STAGES_FILE}' is missing); run without --resume")
    stages.record(out, cfg)
    console = Console()
    if book.unfinished():
        console.print(f"resuming: stage(s) {', '.join(book.unfinished())} did not finish; they continue from their state")
    profile = cfg.profile()
    ethos_u = is_ethos_u(profile)
    port = args.port or cfg.harness.port
    common = _common(args)
    extra = (["--subset", str(args.subset)] if args.subset else []) + (["--no-progress"] if args.no_progress else [])
    timings: dict[str, float] = {}
    fp = fp_checkpoint(cfg, out)
    base = {"model": cfg.model.name, "model_kwargs": cfg.model.model_kwargs, "dataset": cfg.dataset.name,
            "seed": cfg.seed, "subset": args.subset, "accelerator": cfg.accelerator}

    def step(name: str, title: str, settings: dict[str, Any], inputs: list[Path], outputs: list[str],
             commands: list[list[str]], applies: bool = True, stale: bool = False) -> None:
        """Run stage `name` unless its key is recorded as finished with its outputs present."""
        key = stages.stage_key(settings, inputs)
        if not applies or (name not in selected and STAGE_ORDER[name] > STAGE_ORDER[selected[-1]]
                           and (book.doc.get(name) or {}).get("key") != key):
            book.drop(name)  # outputs made for other settings (or a stage that does not apply) are removed
            return
        if name not in selected:
            return
        if not args.force and not stale and book.fresh(name, key, outputs):
            console.print(f"[dim]{title}: up to date (stage key {key[:12]})")
            return
        book.start(name, key, restart=args.force)
        t0 = time.perf_counter()
        for argv in commands:
            _stage(console, title, argv)
        timings[name] = time.perf_counter() - t0
        book.finish(name, key, outputs)

    if fp == out / "fp.pt":  # a given or shipped checkpoint is not retrained
        step("train", "FP training", {**base, "train": cfg.train.model_dump()}, [], ["fp.pt"], [["train", *common, *extra]])
    step("search", "search + QAT", {**base, "device": cfg.device, "budget": asdict(cfg.budget()),
                                    "search": cfg.search.model_dump(), "qat": cfg.qat.model_dump()},
         [fp], ["policy.json", "qat.pt"], [["search", *common, "--fp", str(fp), *extra]])
    formats = list(cfg.deploy.formats) + (["ethos-u"] if ethos_u and "ethos-u" not in cfg.deploy.formats
                                          else [])  # an Ethos-U device adds the Vela stage
    files = ["model.ir.json", "model.ir.npz"] + [f for fmt in formats for f in FORMAT_FILES.get(fmt, [])]
    step("export", "export", {"dataset": cfg.dataset.name, "seed": cfg.seed, "formats": formats,
                              "opset": cfg.deploy.onnx_opset, "device": cfg.device if ethos_u else None,
                              "ir_version": IR_VERSION, "smpq_version": VERSION},
         [out / "policy.json", out / "qat.pt"], files,
         [["export", *common, "--formats", ",".join(formats), "--opset", str(cfg.deploy.onnx_opset)]],
         stale=(out / "model.ir.json").is_file() and not _written_by_this_version(out))
    has_board = not ethos_u and profile.name in boards()
    step("firmware", "firmware", {"device": profile.name, "kernels": "reference"},
         [out / "model.ir.json", out / "model.ir.npz"], ["firmware.elf", "firmware.bin", "firmware.hex"],
         [["firmware", *common]], applies=has_board)
    connected = profile.flash.backend == "qemu" or port is not None
    flash = [["flash", *common, "--port", port]] if port is not None and profile.flash.backend != "qemu" else []
    measure = ["measure", *common, *(["--port", port] if port is not None else []),
               *(["--no-progress"] if args.no_progress else [])]
    step("board", "flash + measure" if flash else "measure on the board",
         {"device": profile.name, "samples": cfg.harness.samples, "port": port, "dataset": cfg.dataset.name,
          "seed": cfg.seed}, [out / "firmware.elf", out / "model.ir.json", out / "model.ir.npz"], ["board.json"],
         [*flash, measure], applies=has_board and connected)
    previous: dict[str, Any] = {}
    if not ethos_u and not (out / "board.json").is_file():
        previous["board_run"] = (f"not connected: the firmware for {profile.name} is built ({out / 'firmware.elf'}); "
                                 f"give --port to flash and measure it" if has_board and not connected and
                                 (out / "firmware.elf").is_file() else
                                 f"not run: no board support for {profile.name}" if not has_board else
                                 f"not run: the pipeline stopped at --to {selected[-1]}")
    if not (out / "model.ir.json").is_file():  # --to train / --to search: nothing to verify or report yet
        console.print(f"stopped after stage '{selected[-1]}': artifacts in {out}/ (no export yet, so no report)")
        return 0
    console.rule("[bold]host verification")
    t0 = time.perf_counter()
    verification = verify_on_host(out, cfg.dataset.name, cfg.dataset.data_dir and str(cfg.dataset.data_dir),
                                  cfg.harness.samples, cfg.seed)
    timings["verify"] = time.perf_counter() - t0
    from deploy.pipeline.report import build_report, run_command, write_report

    report = build_report(out, cfg.device, verification, timings,
                          run_command(["run", *common, *extra, *(["--force"] if args.force else [])]), previous)
    json_path, html_path = write_report(out, report, console)
    console.print(f"artifacts: {out}/  report: {json_path} and {html_path}")
    return 0
