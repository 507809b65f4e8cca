"""`smpq-deploy import`: an int8 TFLite model → a run folder that `firmware`, `flash` and `measure` take.

    smpq-deploy import model.tflite --output runs/<name> [--check N] [--seed S]

Writes ``model.ir.json/.npz`` (deploy/export/import_tflite.py), ``model.smpq``, ``model_data.c/.h``, a copy of
the source as ``model.tflite`` and
``import.json`` (source file and SHA-256, ops, blob and arena bytes, the check below). ``--check N``
(default 8, 0 = off) runs N seeded random int8 inputs through the integer reference, the host C runtime
and TFLite Micro and fails unless all three agree bit for bit.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from pathlib import Path

from deploy.errors import DeployError

HELP = "import an int8 .tflite model (e.g. MLPerf Tiny's) into a run folder: IR, .smpq, model_data.c"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tflite", help="the int8 .tflite file")
    parser.add_argument("--check", type=int, default=8,
                        help="random inputs checked bit-exact: reference vs C runtime vs TFLite Micro (default 8, 0 = off)")


def check_bit_exact(g, tflite: bytes, blob: bytes, n: int, seed: int) -> dict[str, int]:
    """Run n seeded random int8 inputs through the reference, the host C runtime and TFLM; counts of differing values."""
    import numpy as np

    from deploy.lower import reference
    from deploy.export.tflm import run_tflm
    from firmware_harness.host import HostRuntime

    shape = g.tensors[g.inputs[0]].shape
    x = np.random.default_rng(seed).integers(-128, 128, (n, *shape[1:])).astype(np.int8)
    ref = reference.run(g, x)
    c = HostRuntime(blob).run(x)
    m = run_tflm(tflite, x).reshape(ref.shape)
    return {"inputs": n, "seed": seed, "c_vs_reference": int((c != ref).sum()), "tflm_vs_reference": int((m != ref).sum())}


def run(args: argparse.Namespace) -> int:
    from deploy.export.smpq import build_smpq, export_c
    from deploy.export.import_tflite import import_tflite
    from firmware_harness import smpq_format as fmt
    from search.atomic import atomic_write_bytes, atomic_write_text

    if not getattr(args, "output", None):
        raise DeployError("import needs an output folder: --output runs/<name>")
    if args.check < 0:
        raise DeployError("--check must be 0 or more")
    src = Path(args.tflite)
    g = import_tflite(src)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise DeployError(f"--output '{out}' is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    blob = build_smpq(g)
    seed = int(getattr(args, "seed", None) or 0)
    check = check_bit_exact(g, data, blob, args.check, seed) if args.check else None
    if check and (check["c_vs_reference"] or check["tflm_vs_reference"]):
        raise DeployError(f"'{src}': the imported model is not bit-exact on {args.check} random inputs "
                          f"(C runtime: {check['c_vs_reference']} values differ, TFLite Micro: {check['tflm_vs_reference']})")
    g.save(out / "model")
    atomic_write_bytes(out / "model.smpq", blob)
    atomic_write_bytes(out / "model.tflite", data)  # the source model: TFLite Micro's input in measure --mlperf
    export_c(g, out)
    parsed = fmt.parse(blob)
    info = {"source": str(src), "sha256": hashlib.sha256(data).hexdigest(), "ops": dict(Counter(o.kind for o in g.ops)),
            "input": {"shape": g.tensors[g.inputs[0]].shape, "scale": g.tensors[g.inputs[0]].scale,
                      "zero_point": g.tensors[g.inputs[0]].zero_point},
            "blob_bytes": len(blob), "arena_bytes": parsed.arena_size, "check": check,
            "command": f"smpq-deploy import {src} --output {out} --check {args.check}" + (f" --seed {seed}" if seed else "")}
    atomic_write_text(out / "import.json", json.dumps(info, indent=1))
    ops = ", ".join(f"{k} {v}" for k, v in info["ops"].items())
    print(f"import: {src} → {out}: {len(g.ops)} ops ({ops}); .smpq {len(blob)} B, arena {parsed.arena_size} B")
    if check:
        print(f"import: bit-exact on {check['inputs']} random inputs (seed {seed}): integer reference = C runtime = TFLite Micro")
    return 0
