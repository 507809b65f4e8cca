"""The resnet8 with a mixed 1–8-bit policy on the emulated board, measured over the serial protocol.

    .venv/bin/python bench/board_qemu.py [--samples 50] [--seed 0]

Writes a run folder (build/board_qemu/: the integer IR of a randomly initialised, calibrated resnet8
quantized with bench/runtime_host.py's "mixed" policy, its blob and model_data.c), then runs
``smpq-deploy flash`` and ``smpq-deploy measure`` on qemu-mps2-an500 for it and prints board.json's
figures: instructions per inference (QEMU -icount, not cycles), host→board transfer rate, wall time per
image, bit-exactness with the integer reference. Weights are untrained, so accuracy means nothing here.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from runtime_host import DATA, cached_ir  # noqa: E402

from deploy.cli.main import main as cli  # noqa: E402
from deploy.export.smpq import export_c, export_smpq  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run", type=Path, default=ROOT / "build" / "board_qemu")
    args = ap.parse_args()
    g = cached_ir("resnet8", "mixed", seed=args.seed)
    args.run.mkdir(parents=True, exist_ok=True)
    g.save(args.run / "model")
    export_smpq(g, args.run / "model.smpq")
    export_c(g, args.run)
    common = ["--run", str(args.run), "--device", "qemu-mps2-an500", "--model", "resnet8", "--dataset", "cifar10",
              "--data-dir", str(DATA.parent.parent), "--seed", str(args.seed)]
    if cli(["flash", *common]) or cli(["measure", *common, "--samples", str(args.samples), "--no-progress"]):
        return 1
    r = json.loads((args.run / "board.json").read_text())
    lat, t, a = r["latency"], r["transfer"], r["accuracy"]
    print(f"instructions per inference: {lat['per_inference']:,.0f} (median of {len(lat['window_ticks'])} windows of "
          f"infer {lat['iterations']} {lat['warmup']}; SysTick under -icount, {lat['ticks_per_unit']:g} ticks/instruction)")
    print(f"host→board payload: {t['payload_bytes_per_s']:,.0f} B/s; wire (both ways): {t['wire_bytes_per_s']:,.0f} B/s")
    print(f"wall time per image: {t['wall_s_per_image'] * 1e3:.0f} ms (load {t['load_s_per_image'] * 1e3:.0f} ms, "
          f"infer + read back {t['infer_s_per_image'] * 1e3:.0f} ms)")
    print(f"raw outputs = integer reference: {a['samples'] - a['mismatched_images']}/{a['samples']} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
