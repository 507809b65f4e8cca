"""The three MLPerf Tiny reference models, imported: our runtime vs TFLite Micro, and on QEMU (figures only).

    .venv/bin/python bench/mlperf_tiny.py [--models ic,kws,vww] [--host-runs 50] [--windows 5] [--seed 0]
                                          [--no-qemu] [--json out.json]

Per model (deploy/export/mlperf_tiny.BENCHMARKS, imported with deploy/export/import_tflite.py), one table:
* host: median wall time per inference of our C runtime (``libsmpq.so`` through ctypes, reference kernels,
  gcc -O3) and of TFLite Micro's host interpreter (PyPI tflite-micro), each over --host-runs inferences on
  the benchmark's inputs after one warm-up, and their ratio; both outputs checked equal on those inputs;
* memory: our arena (the .smpq header's, activations + kernel scratch) vs TFLM's arena total
  (print_allocations), the .smpq blob vs the .tflite file, the firmware image's flash bytes;
* QEMU mps2-an500 (Cortex-M7, -icount shift 3), the firmware with the reference and with the Cortex-M DSP
  kernel set: the MLCommons runner's performance mode (``infer I W`` with its I/W, --windows windows on
  different inputs, median), as instructions per inference and per MAC, and whether the board's outputs on
  those inputs equal the integer reference (= TFLM); next to the kernel benchmark's sums for the same layers
  (ours and CMSIS-NN). QEMU counts instructions, not cycles or time.
* IC top-1 of the integer reference (bit-exact with TFLM) on the whole CIFAR-10 test split here (JPEG copy);
* published board latency (MLPerf Tiny v1.1, STM32H7A3 @ 280 MHz, X-CUBE-AI) for orientation only: it is
  a different board and toolchain, and QEMU gives no milliseconds to compare it with.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy.export.smpq import build_smpq, export_c  # noqa: E402
from deploy.export.import_tflite import import_tflite_bytes  # noqa: E402
from deploy.lower.ir import Graph  # noqa: E402
from deploy.lower.reference import run as run_reference  # noqa: E402
from deploy.export.mlperf_tiny import BENCHMARKS, MODELS_DIR, PERFORMANCE_WINDOWS, PUBLISHED_SOURCE, inputs  # noqa: E402
from deploy.export.tflm import _tflm_interpreter, tflm_arena_bytes  # noqa: E402
from firmware_harness.host import HostRuntime  # noqa: E402
from search.nn.data import default_data_root  # noqa: E402


def graph_macs(g: Graph) -> int:
    """Multiply-accumulates of the weighted ops (conv: OH·OW·Cout·KH·KW·Cin; depthwise: OH·OW·C·KH·KW; FC: K·N)."""
    total = 0
    for op in g.ops:
        if op.kind in ("conv2d", "depthwise_conv2d", "fully_connected"):
            w = g.const(op, "weights")
            out = g.tensors[op.outputs[0]].shape
            spatial = int(np.prod(out[1:-1])) if len(out) > 2 else 1
            total += spatial * int(w.size)  # weights per output pixel: Cout·KH·KW·Cin, KH·KW·C or N·K
    return total


def layer_cases(g: Graph) -> list:
    """The kernel benchmark's Case of each weighted op (firmware_harness/bench/kernel_bench.py). Its cases pad
    symmetrically: SAME's larger side is used, which gives the op's output size (checked)."""
    from firmware_harness.bench.kernel_bench import Case

    cases = []
    for op in g.ops:
        if op.kind not in ("conv2d", "depthwise_conv2d", "fully_connected"):
            continue
        w, xs, ys = g.const(op, "weights"), g.tensors[op.inputs[0]].shape, g.tensors[op.outputs[0]].shape
        if op.kind == "fully_connected":
            cases.append(Case("fully_connected", 1, 1, int(w.shape[1]), int(w.shape[0])))
            continue
        t, l, b, r = op.attrs["padding"]
        c = Case(op.kind, xs[1], xs[2], xs[3], ys[3], int(w.shape[1]), int(w.shape[2]), *op.attrs["stride"], max(t, b), max(l, r))
        assert (c.out_h, c.out_w) == (ys[1], ys[2]), (op.name, c, ys)
        cases.append(c)
    return cases


def cmsis_figures(graphs: dict[str, Graph], icount_shift: int = 5) -> dict[str, dict[str, float]]:
    """Per model: the sum over its weighted layers of the kernel benchmark's instructions (8-bit weights) for our
    reference kernels, our Cortex-M DSP kernels and CMSIS-NN, each layer measured alone on QEMU."""
    from firmware_harness.bench.kernel_bench import build, cmsis_dir, run

    if not (cmsis_dir() / "Source").is_dir():
        print(f"(CMSIS-NN sources not found at {cmsis_dir()}: no CMSIS-NN column)", file=sys.stderr)
        return {}
    per_model = {name: layer_cases(g) for name, g in graphs.items()}
    shapes = sorted({c for cs in per_model.values() for c in cs}, key=lambda c: (c.kind, c.label()))
    index = {c: i for i, c in enumerate(shapes)}
    with tempfile.TemporaryDirectory() as tmp:
        results = run(build(shapes, Path(tmp), with_cmsis=True, widths=(8,)), icount_shift=icount_shift)
    instr = {(m.case, m.impl): m.instructions for m in results if m.w_bits == 8}
    return {name: {impl: float(sum(instr[(index[c], impl)] for c in cs)) for impl in ("ref", "dsp", "cmsis")}
            for name, cs in per_model.items()}


def _median_time(step, runs: int) -> float:
    step(0)
    times = []
    for k in range(runs):
        t0 = time.perf_counter()
        step(k)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def host_figures(data: bytes, g: Graph, x: np.ndarray, runs: int) -> dict[str, float | int | bool]:
    blob = build_smpq(g)
    rt = HostRuntime(blob)
    interp = _tflm_interpreter(data, 1 << 22)
    ours, theirs = [], []

    def ours_step(k: int) -> None:
        rt.set_input(x[k % len(x)])
        rt.invoke()

    def tflm_step(k: int) -> None:
        interp.set_input(x[k % len(x)][None], 0)
        interp.invoke()

    t_ours, t_tflm = _median_time(ours_step, runs), _median_time(tflm_step, runs)
    for k in range(min(runs, len(x))):
        ours.append(rt.run(x[k:k + 1]).reshape(-1))
        interp.set_input(x[k][None], 0)
        interp.invoke()
        theirs.append(np.array(interp.get_output(0)).reshape(-1))
    return {"ours_ms": t_ours * 1e3, "tflm_ms": t_tflm * 1e3, "ratio": t_tflm / t_ours,
            "outputs_equal": bool(np.array_equal(np.stack(ours), np.stack(theirs))),
            "arena_ours": rt.arena_size, "arena_tflm": tflm_arena_bytes(data, x[0]),
            "blob_bytes": len(blob), "tflite_bytes": len(data)}


def qemu_figures(g: Graph, x: np.ndarray, bench, windows: int, kernels: str) -> dict[str, float | int | bool]:
    from firmware_harness.hil import measure as hil
    from firmware_harness.hil.backends.qemu import QemuBoard
    from firmware_harness.build import build_firmware
    from firmware_harness.hil.protocol import DutClient

    with tempfile.TemporaryDirectory() as tmp:
        export_c(g, tmp)
        img = build_firmware(Path(tmp), "qemu-mps2-an500", Path(tmp) / "fw", kernels=kernels)
        with QemuBoard(img.elf, icount_shift=3) as board, DutClient(board.url) as dut:
            unit = hil.TimerUnit.from_info(dut.info())
            acc = hil.accuracy_mode(dut, x[:windows])  # the board's outputs on the windows' inputs
            perf = hil.mlperf_performance_mode(dut, [x[k % len(x)] for k in range(windows)],
                                               iterations=bench.iterations, warmup=bench.warmup)
    instr = unit.convert(perf.per_inference_ticks)
    exact = bool(np.array_equal(acc.raw.reshape(windows, -1), run_reference(g, x[:windows]).reshape(windows, -1)))
    return {"unit": unit.unit, "per_inference": instr, "per_mac": instr / graph_macs(g), "flash_bytes": img.flash_bytes,
            "windows": windows, "infer": f"{bench.iterations} {bench.warmup}", "bit_exact": exact}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ic,kws,vww")
    ap.add_argument("--host-runs", type=int, default=50)
    ap.add_argument("--windows", type=int, default=PERFORMANCE_WINDOWS, help="QEMU performance windows (runner: 5)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic KWS inputs")
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--json", default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)

    rows, graphs = {}, {}
    for name in args.models.split(","):
        bench = BENCHMARKS[name]
        data = (MODELS_DIR / bench.tflite).read_bytes()
        g = graphs[name] = import_tflite_bytes(data, bench.tflite)
        x, _ = inputs(bench, g, max(args.host_runs, args.windows), default_data_root(), args.seed)
        row: dict = {"macs": graph_macs(g), "host": host_figures(data, g, x, args.host_runs), "published_ms": bench.published_ms}
        if name == "ic":  # top-1 of the integer reference (= TFLM, tests/deploy/export/test_import_tflite.py) on the whole test split
            xa, ya = inputs(bench, g, 10_000, default_data_root())
            row["reference_top1"] = {"images": len(ya), "top1": float((run_reference(g, xa).argmax(1) == ya).mean())}
        if not args.no_qemu:
            row["qemu"] = qemu_figures(g, x, bench, args.windows, "reference")
            row["qemu_dsp"] = qemu_figures(g, x, bench, args.windows, "cortex_m_dsp")
        rows[name] = row
        print(f"[{name}] done", file=sys.stderr)
    if not args.no_qemu:
        for name, sums in cmsis_figures(graphs).items():
            rows[name]["layers_8bit"] = sums

    print(f"MLPerf Tiny reference models (../shared/models/mlperf-tiny), imported; command: "
          f"bench/mlperf_tiny.py --models {args.models} --host-runs {args.host_runs} --windows {args.windows} --seed {args.seed}"
          + (" --no-qemu" if args.no_qemu else ""))
    head = (f"{'model':<5} {'MACs':>10} {'ours ms':>8} {'TFLM ms':>8} {'TFLM/ours':>9} {'equal':>5} {'arena ours':>10} "
            f"{'arena TFLM':>10} {'.smpq B':>8} {'.tflite B':>9} {'fw flash B':>10} {'QEMU instr/inf':>14} {'instr/MAC':>9} "
            f"{'exact':>5} "
            f"{'published ms':>12}")
    print(head)
    for name, r in rows.items():
        h, q = r["host"], r.get("qemu", {})
        print(f"{name:<5} {r['macs']:>10,} {h['ours_ms']:>8.3f} {h['tflm_ms']:>8.3f} {h['ratio']:>9.2f} "
              f"{'yes' if h['outputs_equal'] else 'NO':>5} {h['arena_ours']:>10,} {h['arena_tflm']:>10,} {h['blob_bytes']:>8,} "
              f"{h['tflite_bytes']:>9,} {q.get('flash_bytes', 0):>10,} {q.get('per_inference', float('nan')):>14,.0f} "
              f"{q.get('per_mac', float('nan')):>9.2f} {'yes' if q.get('bit_exact') else 'NO':>5} {r['published_ms']:>12}")
    if "ic" in rows:
        t = rows["ic"]["reference_top1"]
        print(f"IC top-1 (integer reference = TFLM) on {t['images']:,} CIFAR-10 test images of ../shared/data (JPEG copy): "
              f"{t['top1']:.4f}")
    if any("layers_8bit" in r for r in rows.values()):
        print("\nweighted layers only, each measured alone on QEMU (firmware_harness/bench/kernel_bench.py, 8-bit "
              "weights, -icount shift 5), summed over the model's layers; instructions per inference:")
        print(f"{'model':<5} {'ours (reference)':>16} {'ours (DSP)':>12} {'CMSIS-NN':>12} {'DSP/CMSIS':>9} "
              f"{'whole ref':>12} {'whole DSP':>12} {'DSP/MAC':>7} {'DSP exact':>9}")
        for name, r in rows.items():
            lz, q, qd = r.get("layers_8bit"), r.get("qemu", {}), r.get("qemu_dsp", {})
            if lz:
                print(f"{name:<5} {lz['ref']:>16,.0f} {lz['dsp']:>12,.0f} {lz['cmsis']:>12,.0f} {lz['dsp'] / lz['cmsis']:>9.2f} "
                      f"{q.get('per_inference', float('nan')):>12,.0f} {qd.get('per_inference', float('nan')):>12,.0f} "
                      f"{qd.get('per_mac', float('nan')):>7.2f} {'yes' if qd.get('bit_exact') else 'NO':>9}")
        print("(whole ref / whole DSP: the firmware with the reference / Cortex-M DSP kernel set, all ops including adds, "
              "pooling and softmax, runner's infer I W; DSP exact: its outputs on the windows' inputs = the integer reference)")
    print("host: median wall time per inference on this machine (x86, one thread). QEMU: instructions (-icount), not "
          "cycles or ms; runner's infer I/W per model, median of the windows.")
    print(f"published ms: {PUBLISHED_SOURCE}; for orientation only, not comparable with QEMU instruction counts.")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
