"""`smpq-deploy export`: QAT model of a run → integer IR → ONNX / TFLite (and the formats others add).

    smpq-deploy export --run runs/<name> [--formats onnx,onnx-int,tflite] [--opset 21] [--calib-batches 4]

Reads ``runs/<name>/qat.pt`` (search.nn.qat.load_qat) and ``policy.json`` (must match the QAT model),
lowers it (deploy.lower.lower; a few training batches calibrate the tensors QAT leaves in float), writes
``model.ir.json`` + ``model.ir.npz`` and one file per format (onnx: QDQ ``model.onnx``; onnx-int: the
bit-exact integer ``model.int.onnx``; tflite; smpq; c; ethos-u: int8-valued TFLite compiled by Arm's Vela for
the --device's Ethos-U, docs/ethos-u.md). Extend :data:`FORMATS` to add a format.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from deploy.errors import DeployError
from deploy.lower.ir import Graph

HELP = "lower a run's QAT model to the integer IR and export it (ONNX, TFLite, ...)"


def _onnx(style: str) -> Callable[[Graph, Path, argparse.Namespace], Path]:
    def write(g: Graph, out: Path, args: argparse.Namespace) -> Path:
        from deploy.export.onnx import DEFAULT_OPSET, FILE_NAMES, export_onnx

        return export_onnx(g, out / FILE_NAMES[style], getattr(args, "opset", None) or DEFAULT_OPSET, style)

    return write


def _tflite(g: Graph, out: Path, args: argparse.Namespace) -> Path:
    from deploy.export.tflite import export_tflite

    return export_tflite(g, out / "model.tflite")


def _smpq(g: Graph, out: Path, args: argparse.Namespace) -> Path:
    from deploy.export.smpq import export_smpq

    return export_smpq(g, out / "model.smpq")


def _c(g: Graph, out: Path, args: argparse.Namespace) -> Path:
    from deploy.export.smpq import export_c

    return export_c(g, out)[0]


def _ethosu(g: Graph, out: Path, args: argparse.Namespace) -> Path:
    """int8-valued TFLite compiled by Vela for the --device's Ethos-U (deploy/ethosu/stage.py)."""
    from deploy.pipeline.config import config_from_args
    from deploy.ethosu.stage import REPORT, STEM, export_ethosu

    report = export_ethosu(g, out, config_from_args(args).profile())
    c, e = report["compiled"], report["relative_error"]
    print(f"export: Vela {report['vela_version']} ({report['board']}): {c['cycles_total']:.0f} cycles, "
          f"{c['encoded_weight_bytes']} B encoded weights, {len(c['cpu_ops'])} op(s) on the CPU; "
          f"cost model within {max(e.values()):.2%}")
    return out / f"{STEM}_vela.tflite" if (out / f"{STEM}_vela.tflite").is_file() else out / REPORT


#: format name → exporter(graph, run folder, args) returning the written path.
FORMATS: dict[str, Callable[[Graph, Path, argparse.Namespace], Path]] = {
    "onnx": _onnx("qdq"), "onnx-int": _onnx("integer"), "tflite": _tflite, "smpq": _smpq, "c": _c, "ethos-u": _ethosu}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--formats", default="onnx,onnx-int,tflite", help=f"comma-separated formats ({', '.join(FORMATS)})")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 21; 25 stores 2-bit filters as INT2)")
    parser.add_argument("--calib-batches", type=int, default=4, help="training batches that calibrate float tensors (default 4)")


def parse_formats(text: str) -> list[str]:
    names = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        raise DeployError(f"unknown export format '{unknown[0] if unknown else text}': choose from {', '.join(FORMATS)}")
    return names


def lower_run(run_dir: Path, data_dir: str | None = None, calib_batches: int = 4, batch_size: int = 64) -> Graph:
    """Load ``qat.pt`` (+ check ``policy.json``) of a run and lower it to the IR."""
    import torch

    from deploy.lower.lower import lower
    from search.nn.data import BatchLoader, load_dataset
    from search.errors import SearchError
    from search.policy import Policy
    from search.nn.qat import QAT_FILE, load_qat
    from search.nn.qmodel import policy_of

    if not run_dir.is_dir():
        what = "is a file, not a run folder" if run_dir.exists() else "does not exist"
        raise DeployError(f"run folder '{run_dir}' {what}: pass the --run folder that `smpq-deploy search` wrote")
    model, meta = load_qat(run_dir / QAT_FILE)
    pfile = run_dir / "policy.json"
    if not pfile.exists():
        raise DeployError(f"'{pfile}' is missing: export checks '{run_dir / QAT_FILE}' against the policy the search "
                          f"wrote; rerun `smpq-deploy search --output {run_dir}`")
    policy = Policy.load(pfile)
    mine = policy_of(model)
    extra = [name for name in policy if name not in mine]
    if extra:
        raise SearchError(f"'{pfile}' names layer '{extra[0]}', which the QAT model '{run_dir / QAT_FILE}' lacks "
                          f"({len(extra)} unknown): rerun `smpq-deploy search --output {run_dir}`")
    for name, bits in mine.items():
        if name not in policy or tuple(policy[name]) != tuple(bits):
            got = tuple(policy[name]) if name in policy else "missing"
            raise SearchError(f"'{pfile}' does not match '{run_dir / QAT_FILE}': layer '{name}' is w{bits[0]}a{bits[1]} "
                              f"in the QAT model but {got} in the policy; rerun QAT for this policy")
    if "mean" not in meta or "std" not in meta or "dataset" not in meta:
        raise DeployError(f"'{run_dir / QAT_FILE}' lacks the dataset normalisation (meta mean/std/dataset): rerun QAT")
    if calib_batches < 1:
        raise DeployError(f"--calib-batches must be ≥ 1, got {calib_batches}")
    ds = load_dataset(meta["dataset"], data_dir, seed=int(meta.get("seed", 0)))
    loader = BatchLoader(ds.train.subset(calib_batches * batch_size), ds, batch_size)  # the train split is shuffled
    batches: list[torch.Tensor] = []
    for x, _ in loader:
        batches.append(x)
        if len(batches) >= calib_batches:
            break
    return lower(model, meta["mean"], meta["std"], batches, name=str(meta.get("model", "model")))


def packed_weight_bytes(g: Graph) -> int:
    """Σ params·bits/8 over the weighted layers (weights at w_bits, int32 biases): the packed lower bound.
    Arrays that several ops name (the instances of one layer) count once."""
    total, seen = 0.0, set()
    for op in g.ops:
        if "weights" in op.arrays:
            for key, bits in (("weights", op.attrs["w_bits"]), ("bias", 32)):
                if op.arrays[key] not in seen:
                    seen.add(op.arrays[key])
                    total += g.const(op, key).size * bits / 8
    return int(round(total))


def run(args: argparse.Namespace) -> int:
    if not getattr(args, "output", None):
        raise DeployError("export needs the run folder: --run runs/<name>")
    run_dir = Path(args.output)
    formats = parse_formats(args.formats)
    if getattr(args, "opset", None) is not None and any(f.startswith("onnx") for f in formats):
        from deploy.export.onnx import check_opset

        check_opset(args.opset)  # before the lowering, so a bad opset fails at once
    if "ethos-u" in formats:
        from deploy.pipeline.config import config_from_args
        from deploy.ethosu.stage import vela_target

        vela_target(config_from_args(args).profile())  # before the lowering: a device without an Ethos-U fails at once
    from deploy.cli.run import FORMAT_FILES

    for name in ["model.ir.json", "model.ir.npz"] + [n for f in formats for n in FORMAT_FILES.get(f, [])]:
        if (run_dir / name).is_dir():  # before anything is written: a half-updated export is worse than none
            raise DeployError(f"'{run_dir / name}' is a folder, so export cannot write that file there: move it away")
    g = lower_run(run_dir, getattr(args, "data_dir", None), args.calib_batches)
    jpath, _ = g.save(run_dir / "model")
    print(f"export: IR → {jpath} ({len(g.ops)} ops, packed weights {packed_weight_bytes(g)} B)")
    for f in formats:
        path = FORMATS[f](g, run_dir, args)
        print(f"export: {f} → {path} ({path.stat().st_size} B)")
    return 0
