"""Vela cost model vs Vela's summary of the compiled model, and the Vela facts the Ethos-U path rests on.

    python bench/ethosu_check.py [--models resnet8,mbv2] [--device ethos-u55-128] [--seed 0] [--facts]

For each model: seeded weights with a trained-like (Laplacian) distribution, a fixed mixed policy (first and
last layer 8-bit, the others cycling through 2/3/4/5/8-bit weights, 8-bit activations), lowered to the IR;
the per-layer Vela cost model (deploy/ethosu/cost.py) measured on it predicts encoded weight bytes, bytes in the
weights' memory area and cycles, next to what Vela reports for the compiled mixed model. `--facts` also prints
the INT4 crash and the encoded bytes of a 110,592-weight 3×3 conv stack with uniform codes at 8/4/2/1 bits.
All cycle figures are Vela's estimates (no Ethos-U here).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.devices.profiles import load_device  # noqa: E402
from deploy.errors import DeployError  # noqa: E402
from deploy.ethosu.cost import VelaCostModel, relative_error  # noqa: E402
from deploy.ethosu.stage import policy_layers, vela_target  # noqa: E402
from deploy.ethosu.vela import compile_tflite, vela_version  # noqa: E402
from deploy.export.tflite import to_tflite  # noqa: E402
from deploy.lower.irbuild import synthetic_graph  # noqa: E402
from search.nn.quantizers import weight_range  # noqa: E402
from tests.deploy.ethosu.test_ethosu import conv_stack, lowered  # noqa: E402


def facts(target) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            compile_tflite(to_tflite(synthetic_graph(0)), target, Path(tmp) / "int4", "m")
            print("INT4 filters: compiled (the crash is gone in this Vela version)")
        except DeployError as exc:
            print(f"INT4 filters: {exc}")
        rng = np.random.default_rng(0)
        for bits in (8, 4, 2, 1):
            lo, hi = weight_range(bits)

            def codes(shape, bits=bits, lo=lo, hi=hi):
                w = rng.integers(lo, hi + 1, shape)
                return (np.where(w == 0, 1, w) if bits == 1 else w).astype(np.int8), bits

            res = compile_tflite(to_tflite(conv_stack(codes), int8_weights=True), target, Path(tmp) / str(bits), "m")
            print(f"conv stack, 110592 weights, uniform {bits}-bit codes ({hi - lo + 1 if bits > 1 else 2} levels): "
                  f"{res.encoded_weight_bytes} B encoded")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet8,mbv2")
    ap.add_argument("--device", default="ethos-u55-128")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--facts", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    target = vela_target(load_device(args.device))
    print(f"Vela {vela_version()}, {target.accelerator}, {target.system_config}, {target.memory_mode}")
    if args.facts:
        facts(target)
    print(f"{'model':8} {'figure':22} {'predicted':>12} {'Vela':>12} {'error':>8}")
    for name in args.models.split(","):
        _, _, g = lowered(name, args.seed)
        bits = policy_layers(g)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            model = VelaCostModel.measure(g, list(bits), sorted(set(bits.values())), target, Path(tmp) / "cache")
            t_measure = time.perf_counter() - t0
            res = compile_tflite(to_tflite(g, int8_weights=True), target, Path(tmp) / "mixed", "m")
        p = model.predict(bits)
        for label, pred, got in (("encoded weights (B)", p.encoded_weight_bytes, res.encoded_weight_bytes),
                                 (f"{res.weights_area} (B)", p.flash_bytes, res.weights_area_bytes),
                                 ("cycles_total", p.cycles, res.cycles_total)):
            print(f"{name:8} {label:22} {pred:12.0f} {got:12.0f} {relative_error(pred, got):8.2%}")
        print(f"{name:8} {len(bits)} layers at widths {sorted(set(bits.values()))}; "
              f"{len(set(bits.values()))} Vela compilations in {t_measure:.1f} s; CPU ops: {len(res.cpu_ops())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
