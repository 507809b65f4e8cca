"""Artifact sizes of every export format vs the packed lower bound, and arenas (figures only).

    .venv/bin/python bench/export_sizes.py [--models resnet8,resnet20,mbv2] [--policies mixed,w8a8]

For each zoo model and policy (randomly initialised, calibrated QAT models as in bench/runtime_host.py;
sizes do not depend on training), prints the packed lower bound Σ params·bits/8 (+ int32 biases), the
bytes of model.onnx (QDQ), model.int.onnx (integer), model.tflite and model.smpq, TFLite Micro's arena
after one invoke, and our arena (the .smpq blob's, equal to the cost model's peak SRAM).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime_host import POLICIES, cached_ir, cifar_images  # noqa: E402

from deploy.cli.export import packed_weight_bytes  # noqa: E402
from deploy.export.onnx import to_onnx  # noqa: E402
from deploy.export.smpq import build_smpq  # noqa: E402
from deploy.export.tflite import to_tflite  # noqa: E402
from deploy.lower.reference import to_int8_input  # noqa: E402
from deploy.export.tflm import tflm_arena_bytes  # noqa: E402
from firmware_harness import smpq_format as fmt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet8,resnet20,mbv2")
    ap.add_argument("--policies", default="mixed,w8a8", help=f"from {', '.join(POLICIES)} (mixed: weights 1..8, acts 2..8)")
    ap.add_argument("--opset", type=int, default=21)
    args = ap.parse_args()
    x = to_int8_input(cifar_images(1)[0])
    cols = ("model", "policy", "packed", "onnx", "int.onnx", "tflite", "smpq", "TFLM arena", "our arena")
    print(" ".join(f"{c:>10s}" for c in cols))
    for model in args.models.split(","):
        for policy in args.policies.split(","):
            g = cached_ir(model, policy)
            tflite, blob = to_tflite(g), build_smpq(g)
            sizes = [packed_weight_bytes(g), len(to_onnx(g, args.opset, "qdq").SerializeToString()),
                     len(to_onnx(g, args.opset, "integer").SerializeToString()), len(tflite), len(blob),
                     tflm_arena_bytes(tflite, x), fmt.parse(blob).arena_size]
            print(f"{model:>10s} {policy:>10s} " + " ".join(f"{s:10,d}" for s in sizes))


if __name__ == "__main__":
    main()
