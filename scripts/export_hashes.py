"""sha256 of every export of a fixed model: the check that a refactoring changed no exported byte.

    python scripts/export_hashes.py [--seed 0] [--models resnet8,mbv2] > hashes.txt

For each model: seeded untrained weights with non-trivial BatchNorm statistics and a fixed mixed policy
(first/last layer w8a8, the others cycling through 2/3/4/5/8 bits: tests/deploy/lower/test_lower.py's
``random_bn_qat``), seeded calibration pixels; the
model is lowered and exported as model.smpq, model.tflite, model.onnx, model.int.onnx and
model_data.c, and one line ``<model> <file> <sha256> <bytes>`` is printed per file. Two runs of the
same code print the same lines; compare the output before and after a change with ``diff``.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.export.onnx import export_onnx  # noqa: E402
from deploy.export.smpq import export_c, export_smpq  # noqa: E402
from deploy.export.tflite import export_tflite  # noqa: E402
from deploy.lower.lower import lower  # noqa: E402
from tests.deploy.lower.test_lower import random_bn_qat  # noqa: E402  (the seeded mixed-policy QAT model of the lowering tests)

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def export_all(name: str, seed: int, out: Path) -> list[Path]:
    """Lower the fixed model of `name` and write the five exports into `out`."""
    q = random_bn_qat(name, seed)
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 32, 32, 3)).astype(np.float32) / 255
    calib = (torch.from_numpy(pixels.transpose(0, 3, 1, 2)) - torch.tensor(MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(STD).view(1, 3, 1, 1)
    g = lower(q, MEAN, STD, calib, name=name)
    return [export_smpq(g, out / "model.smpq"), export_tflite(g, out / "model.tflite"),
            export_onnx(g, out / "model.onnx", style="qdq"), export_onnx(g, out / "model.int.onnx", style="integer"),
            export_c(g, out)[0]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="resnet8,mbv2")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            for path in export_all(name, args.seed, Path(tmp)):
                data = path.read_bytes()
                print(f"{name} {path.name} {hashlib.sha256(data).hexdigest()} {len(data)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
