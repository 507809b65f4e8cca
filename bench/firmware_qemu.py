"""The whole firmware image on QEMU mps2-an500: bit-exactness and instructions per inference (figures only).

    .venv/bin/python bench/firmware_qemu.py [--model resnet8] [--policy mixed] [--images 10]
                                            [--kernels reference,cortex_m_dsp] [--icount-shift 3] [--seed 0]

Builds firmware_harness/build.py's image for each kernel set around a randomly initialised, calibrated
QAT model (bench/runtime_host.py's cached_ir: instruction counts do not depend on accuracy) and runs it
under qemu-system-arm -icount shift=N through the protocol client. Prints, per kernel set: the image's
flash and RAM, how many of --images CIFAR-10 test images give the integer reference's raw outputs bit for
bit (deploy.lower.reference), instructions per inference (`infer 10 1`: SysTick ticks·40/2^N / 10) and the
per-op breakdown of the last inference (smpq-time). Instruction counts, not cycles: QEMU does not model
the M7's pipeline.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy.export.smpq import export_c  # noqa: E402
from deploy.lower.reference import run as run_reference  # noqa: E402
from deploy.lower.reference import to_int8_input  # noqa: E402
from firmware_harness.hil.backends.qemu import QemuBoard  # noqa: E402
from firmware_harness.build import build_firmware  # noqa: E402
from firmware_harness.hil.protocol import DutClient  # noqa: E402


def _runtime_host():
    spec = importlib.util.spec_from_file_location("bench_runtime_host", ROOT / "bench" / "runtime_host.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet8")
    ap.add_argument("--policy", default="mixed", help="a policy name of bench/runtime_host.py POLICIES")
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--kernels", default="reference,cortex_m_dsp")
    ap.add_argument("--icount-shift", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="seed of the model's random initialisation")
    args = ap.parse_args(argv)

    rh = _runtime_host()
    g = rh.cached_ir(args.model, args.policy, seed=args.seed)
    x = to_int8_input(rh.cifar_images(args.images))
    ref = run_reference(g, x)
    print(f"{args.model} / {args.policy} (seed {args.seed}), {args.images} images, -icount shift={args.icount_shift}")
    with tempfile.TemporaryDirectory() as tmp:
        export_c(g, tmp)
        for kernels in args.kernels.split(","):
            img = build_firmware(Path(tmp), "qemu-mps2-an500", Path(tmp) / kernels, kernels=kernels)
            with QemuBoard(img.elf, icount_shift=args.icount_shift) as board, DutClient(board.url) as dut:
                info = dut.info()
                num, den = (int(v) for v in info["ticks_per_instr"].split("/"))
                exact = 0
                for k in range(len(x)):
                    dut.load(x[k].tobytes())
                    dut.infer(1, 0)
                    exact += bool(np.array_equal(np.frombuffer(dut.raw_output(), np.int8), ref[k]))
                r = dut.infer(10, 1)
                per_inference = (r.t1 - r.t0) * den / num / 10
                ops = dut.layers()
                times = [t * den / num for t in dut.layer_times()]
            print(f"\n[{kernels}] flash {img.flash_bytes} B, RAM {img.ram_bytes} B, fw {img.fw_hash[:12]}")
            print(f"  bit-exact with deploy.lower.reference: {exact}/{len(x)} images")
            print(f"  instructions per inference: {per_inference:,.0f}")
            print("  per op (instructions, share):")
            for (i, kind, w, a), t in zip(ops, times):
                print(f"    {i:3d} {kind:<17} w{w} a{a}  {t:>13,.0f}  {100 * t / sum(times):5.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
