"""`smpq-deploy measure`: accuracy, latency and per-layer time of a run's model on the board → ``board.json``.

    smpq-deploy measure --run runs/<name> --device qemu-mps2-an500 [--samples N] [--port P]
                        [--iterations 3] [--warmup 1] [--windows 5]

MLPerf Tiny accuracy mode: N test images of the run's dataset (int8 codes, as the integer reference
gets them) are each loaded over the wire, run with ``infer 1 0`` and read back raw; the raw outputs are
compared with the integer reference (count of mismatches) and scored against the labels. Performance
mode: ``--windows`` runs of ``infer I W`` on one image, median per inference. Then the per-layer
ticks of the last inference, the host↔board transfer rate and the wall time per image.

On a QEMU device (``flash.backend: qemu``) without --port the board is started here on the run's
firmware (built if needed); its latency is an **instruction count** (SysTick under -icount), never ms.
Other devices need --port to a board flashed with ``smpq-deploy flash``.

``--mlperf`` (a run made by ``smpq-deploy import`` of an MLPerf Tiny model) runs the MLCommons runner's
flow instead (deploy/export/mlperf_tiny.py): accuracy mode on the benchmark's inputs (default 200), each loaded
and run once with ``infer 1 0``, scored as the runner does (top-1, simplified ROC AUC) and compared with
TFLite Micro running the run's ``model.tflite``; performance mode with the runner's ``infer I W`` (IC 20 5,
KWS 70 10, VWW 20 5) in 5 windows, each on a new input, median per inference.
"""
from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

from deploy.errors import DeployError

HELP = "measure a run's model on the board (accuracy, latency, per-layer time, transfer rate) into board.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=int, default=None, help="test images sent to the board (default: harness.samples)")
    parser.add_argument("--port", default=None, help="the board's serial port or URL; QEMU: started here when omitted")
    parser.add_argument("--iterations", type=int, default=3, help="inferences per performance window (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up inferences per window (default 1)")
    parser.add_argument("--windows", type=int, default=5, help="performance windows; the median is reported (default 5)")
    parser.add_argument("--icount-shift", type=int, default=3, help="QEMU -icount shift (default 3)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--mlperf", action="store_true",
                        help="the MLPerf Tiny runner's flow for an imported MLPerf Tiny model (see deploy/export/mlperf_tiny.py)")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to `path` atomically (search.atomic: temporary file, fsync, rename)."""
    from search.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1))


def _test_images(cfg: Any, samples: int | None) -> tuple[Any, Any]:
    """(int8 input codes, labels) of the first `samples` test images of the run's dataset."""
    from deploy.lower.reference import to_int8_input
    from search.nn.data import load_dataset

    test = load_dataset(cfg.dataset.name, cfg.dataset.data_dir and str(cfg.dataset.data_dir), seed=cfg.seed).test
    test = test.subset(samples)
    return to_int8_input(test.x), test.y


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from deploy.lower import reference
    from deploy.cli.flash import check_board, device_of, firmware_image, run_dir_of
    from deploy.pipeline.config import config_from_args
    from deploy.lower.ir import Graph
    from firmware_harness.hil import measure as hil
    from firmware_harness.hil.backends.qemu import QemuBoard
    from firmware_harness.errors import HarnessError
    from firmware_harness.hil.protocol import DutClient

    for name in ("samples", "iterations", "windows"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise DeployError(f"--{name} must be at least 1")
    if args.warmup < 0:
        raise DeployError("--warmup must be at least 0")
    cfg = config_from_args(args)
    run_dir = run_dir_of(args)
    profile = device_of(args)
    samples = args.samples or cfg.harness.samples
    port = args.port or cfg.harness.port
    graph = Graph.load(run_dir / "model")
    bench = None
    if args.mlperf:
        from deploy.export import mlperf_tiny
        from search.nn.data import default_data_root

        bench = mlperf_tiny.benchmark_of(graph)
        if not (run_dir / "model.tflite").is_file():
            raise DeployError(f"'{run_dir / 'model.tflite'}' is missing (TFLite Micro runs it): re-run 'smpq-deploy import' "
                              f"into this run folder")
        samples = args.samples or 200
        args.iterations, args.warmup, args.windows = bench.iterations, bench.warmup, mlperf_tiny.PERFORMANCE_WINDOWS
        x, labels = mlperf_tiny.inputs(bench, graph, samples, Path(cfg.dataset.data_dir or default_data_root()), cfg.seed)
    else:
        x, labels = _test_images(cfg, samples)
    ref = reference.run(graph, x)
    console = Console(stderr=True)

    with contextlib.ExitStack() as stack:
        qemu: QemuBoard | None = None
        if port is None:
            if profile.flash.backend != "qemu":
                raise DeployError(f"measure on '{profile.name}' needs --port: the serial port of a board flashed with "
                                  f"'smpq-deploy flash --run {run_dir} --device {profile.name}'")
            image = firmware_image(run_dir, profile)
            qemu = stack.enter_context(QemuBoard(image.elf, icount_shift=args.icount_shift,
                                                 machine=profile.flash.machine or "mps2-an500"))
            port = qemu.url
        try:
            client = stack.enter_context(DutClient(port, baud=profile.flash.baud))
            info = check_board(client, profile, run_dir)
            unit = hil.TimerUnit.from_info(info)
            with Progress(console=console, disable=args.no_progress, transient=True) as bar:
                task = bar.add_task(f"accuracy mode, {len(x)} images", total=len(x))
                acc = hil.accuracy_mode(client, x, lambda k: bar.advance(task, k))
                task = bar.add_task(f"performance mode, {args.windows} windows", total=args.windows)
                if bench is not None:
                    perf = hil.mlperf_performance_mode(client, [x[k % len(x)] for k in range(args.windows)],
                                                       iterations=args.iterations, warmup=args.warmup,
                                                       progress=lambda k: bar.advance(task, k))
                else:
                    perf = hil.performance_mode(client, x[0], iterations=args.iterations, warmup=args.warmup,
                                                windows=args.windows, progress=lambda k: bar.advance(task, k))
            layers = hil.layer_breakdown(client, unit)
        except HarnessError as exc:
            raise (qemu.explain(exc) if qemu else exc) from None
        stats = client.stats

    comparison = hil.compare(acc.raw, ref, labels)
    per_inference = unit.convert(perf.per_inference_ticks)
    report = {
        "device": profile.name, "run": str(run_dir), "seed": cfg.seed, "dataset": cfg.dataset.name,
        "command": f"smpq-deploy measure --run {run_dir} --device {profile.name} --samples {len(x)} "
                   f"--iterations {args.iterations} --warmup {args.warmup} --windows {args.windows}"
                   + (f" --icount-shift {args.icount_shift}" if qemu else "") + (f" --port {args.port}" if args.port else ""),
        "status": f"measured on {profile.name} ({info.get('board')}, fw {info.get('fw', '?')[:12]})",
        "samples": comparison["samples"], "bit_exact": comparison["bit_exact"], "layer_time_unit": unit.unit,
        "board": info,
        "accuracy": comparison,
        "latency": {"unit": unit.unit, "per_inference": per_inference, "per_inference_ticks": perf.per_inference_ticks,
                    "ticks_per_unit": float(1 / unit.per_tick), "iterations": perf.iterations, "warmup": perf.warmup,
                    "window_ticks": perf.window_ticks, "lap_crc_checked": perf.lap_checked,
                    "note": ("QEMU -icount instruction count, not cycles or time" if unit.unit == "instructions" else
                             f"{unit.unit} of the board's timer" + (f" at {unit.hz} Hz" if unit.hz else ""))},
        "layers": layers,
        "transfer": {"payload_bytes_per_s": acc.payload_bytes / acc.load_s if acc.load_s else None,
                     "wire_bytes_per_s": acc.wire_bytes / acc.wall_s if acc.wall_s else None,
                     "wall_s_per_image": acc.wall_s / len(x), "load_s_per_image": acc.load_s / len(x),
                     "infer_s_per_image": acc.infer_s / len(x)},
        "link": {"frames": stats.frames, "retries": stats.retries, "resyncs": stats.resyncs, "reasons": stats.reasons},
    }
    if unit.unit == "cycles" and unit.hz:
        report["latency"]["ms"] = per_inference / unit.hz * 1e3
    if bench is not None:
        report["command"] = report["command"].replace(" --iterations", " --mlperf --iterations")
        report["mlperf"] = _mlperf_summary(bench, run_dir, x, labels, acc, report["latency"])
    write_json_atomic(run_dir / "board.json", report)
    _print(report)
    return 0


def _mlperf_summary(bench: Any, run_dir: Path, x: Any, labels: Any, acc: Any, latency: dict[str, Any]) -> dict[str, Any]:
    """The MLPerf Tiny part of board.json: runner settings and scores, board vs TFLite Micro, the published figure."""
    import numpy as np

    from deploy.export import mlperf_tiny
    from deploy.export.tflm import run_tflm

    tflm = run_tflm((run_dir / "model.tflite").read_bytes(), x).reshape(len(x), -1)
    out: dict[str, Any] = {"benchmark": bench.name, "infer": [bench.iterations, bench.warmup],
                           "windows": mlperf_tiny.PERFORMANCE_WINDOWS,
                           "inputs": bench.inputs,
                           "tflm_mismatched_values": int((acc.raw.reshape(len(x), -1) != tflm).sum()),
                           "bit_exact_tflm": bool(np.array_equal(acc.raw.reshape(len(x), -1), tflm)),
                           "published_ms": bench.published_ms, "published_source": mlperf_tiny.PUBLISHED_SOURCE}
    if labels is not None:
        out["runner"] = mlperf_tiny.runner_scores(acc.results, labels)
    if latency["unit"] == "instructions":
        out["note"] = "QEMU counts instructions, not time: the published milliseconds are for orientation only"
    return out


def _print(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    a, lat, t = r["accuracy"], r["latency"], r["transfer"]
    table = Table(title=f"{r['device']}: board measurement")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("images", str(a["samples"]))
    table.add_row("raw outputs = integer reference", f"{a['samples'] - a['mismatched_images']}/{a['samples']} images "
                  f"({a['mismatched_values']} values differ)")
    if "top1" in a:
        table.add_row("top-1 board / reference", f"{a['top1']:.4f} / {a['reference_top1']:.4f}")
    table.add_row(f"latency ({lat['unit']} per inference, median of {len(lat['window_ticks'])})",
                  f"{lat['per_inference']:,.0f}")
    if "ms" in lat:
        table.add_row("latency (ms)", f"{lat['ms']:.3f}")
    if "mlperf" in r:
        m = r["mlperf"]
        table.add_row(f"MLPerf Tiny {m['benchmark']}: board = TFLite Micro",
                      f"{'yes' if m['bit_exact_tflm'] else 'no'} ({m['tflm_mismatched_values']} values differ)")
        if "runner" in m:
            table.add_row("runner top-1 / AUC", f"{m['runner']['top1']:.4f} / {m['runner']['auc']:.4f}")
        table.add_row("published board latency (orientation)", f"{m['published_ms']} ms (STM32H7A3, X-CUBE-AI)")
    table.add_row("host→board payload rate", f"{t['payload_bytes_per_s']:,.0f} B/s")
    table.add_row("wall time per image (load + infer + read back)", f"{t['wall_s_per_image'] * 1e3:.1f} ms")
    slowest = sorted(r["layers"], key=lambda x: -x["share"])[:3]
    table.add_row("slowest ops", ", ".join(f"#{s['op']} {s['kind']} w{s['w_bits']}a{s['a_bits']} {100 * s['share']:.0f}%"
                                           for s in slowest))
    Console().print(table)
    print(f"board.json: {Path(r['run']) / 'board.json'}")
