"""`smpq-deploy report --run DIR`: rebuild ``report.json`` and ``report.html`` of a run folder.

The figures come from the folder's artifacts (:func:`deploy.pipeline.report.build_report`); the host verification,
stage timings and command of the previous ``report.json`` are kept unless ``--verify`` reruns the
verification (or there is none yet).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from deploy.errors import DeployError

HELP = "rebuild report.json and report.html of a run folder (--run DIR) from its artifacts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verify", action="store_true",
                        help="rerun the host verification (integer reference vs the C runtime, ONNX Runtime, TFLite Micro)")


def run(args: argparse.Namespace) -> int:
    from deploy.cli.run import verify_on_host
    from deploy.pipeline.config import config_from_args
    from deploy.pipeline.report import REPORT_FILE, build_report, write_report

    if not args.output:
        raise DeployError("which run folder? pass --run DIR (the --output of the run)")
    out = Path(args.output)
    if not (out / "policy.json").is_file():
        raise DeployError(f"'{out}' holds no policy.json: run `smpq-deploy run --output {out}` (or its search stage) first")
    try:
        previous = json.loads((out / REPORT_FILE).read_text())
    except (OSError, ValueError):
        previous = {}
    cfg = config_from_args(args)
    device = args.device or previous.get("device") or cfg.device
    verification = previous.get("host_verification")
    if args.verify or not verification:
        if not (out / "model.ir.json").is_file():
            raise DeployError(f"'{out}' holds no exported model (model.ir.json): run `smpq-deploy export --output {out}` first")
        verification = verify_on_host(out, cfg.dataset.name, cfg.dataset.data_dir and str(cfg.dataset.data_dir),
                                      cfg.harness.samples, cfg.seed)
    report = build_report(out, device, verification, previous.get("stage_seconds") or {}, previous.get("command"), previous)
    console = Console()
    json_path, html_path = write_report(out, report, console)
    console.print(f"report: {json_path} and {html_path}")
    return 0
