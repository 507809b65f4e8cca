"""Our kernels (reference and Cortex-M DSP) side by side with Arm's CMSIS-NN on QEMU mps2-an500 (figures only).

    .venv/bin/python bench/kernels_qemu.py [--models resnet8,mbv2] [--icount-shift 5] [--no-cmsis] [--json out.json]
                                           [--whole resnet8:w8a8,resnet8:mixed] [--seed 0]

Every distinct conv2d, depthwise and fully connected layer shape of the models (their graphs as the
project's lowering sees them: search.nn.graph.extract_graph on 3x32x32 inputs, 10 classes, default model
arguments) runs in ONE QEMU run of one firmware image (firmware_harness/bench/kernels_bench.c): our reference
kernels and our DSP kernels at 8/4/2/1-bit weights, CMSIS-NN's arm_convolve_wrapper_s8 / _s4,
arm_depthwise_conv_wrapper_s8 and arm_fully_connected_s8 (compiled from ../shared/anchors/cmsis-nn or
$SMPQ_CMSIS_NN, never copied into the project). Instructions are counted with SysTick under -icount shift=N
(ticks·40/2^N). Prints instructions per MAC per shape and width, the ratio of our DSP kernels to CMSIS-NN,
whether the reference and DSP outputs are bit-identical on the board, and per-model totals of the weighted
layers (each layer at its shape's figure; adds, pooling and requantize ops are not included).
--whole then runs whole models (random calibrated weights from bench/runtime_host.py, one CIFAR-10 test image)
through the real firmware (firmware_harness.build, reference and cortex_m_dsp kernel sets) over the serial
protocol: instructions per inference, per MAC and per op kind, and bit-exactness with deploy/lower/reference.py.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware_harness.bench.kernel_bench import WIDTHS, Case, build, cmsis_dir, run  # noqa: E402
from search.nn.graph import extract_graph  # noqa: E402
from search.nn.models import build_model  # noqa: E402


def model_cases(name: str) -> list[Case]:
    """One Case per weighted layer of `name` (in order; shapes repeat)."""
    graph = extract_graph(build_model(name, (3, 32, 32), 10), (3, 32, 32))
    cases = []
    for n in graph.nodes:
        if not n.quantizable:
            continue
        if n.op_type == "fully_connected":
            cases.append(Case("fully_connected", 1, 1, int(n.attrs["in_features"]), int(graph.tensors[n.output].shape[0])))
            continue
        c, h, w = n.in_shapes[0]
        (kh, kw), (sh, sw), (ph, pw) = n.attrs["kernel"], n.attrs["stride"], n.attrs["padding"]
        cases.append(Case(n.op_type, h, w, c, int(graph.tensors[n.output].shape[0]), kh, kw, sh, sw, ph, pw))
    return cases


def _runtime_host_bench():
    """bench/runtime_host.py (random calibrated QAT models lowered to the IR, named policies), imported once."""
    name = "smpq_runtime_host_bench"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / "runtime_host.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return sys.modules[name]


def whole_model(model: str, policy: str, work: Path, *, kernels: tuple[str, ...] = ("reference", "cortex_m_dsp"),
                icount_shift: int = 5, seed: int = 0) -> dict[str, object]:
    """One inference of the whole firmware (the MLPerf Tiny application + runtime) on QEMU for each kernel set:
    instructions per inference and per model MAC, per op kind, and whether the outputs equal the integer reference."""
    from deploy.lower import reference
    from deploy.export.smpq import export_c
    from firmware_harness.hil.backends.qemu import QemuBoard
    from firmware_harness.build import build_firmware
    from firmware_harness.hil.measure import TimerUnit, layer_breakdown
    from firmware_harness.hil.protocol import DutClient

    rh = _runtime_host_bench()
    g = rh.cached_ir(model, policy, seed=seed)
    run_dir = work / f"{model}-{policy}"
    run_dir.mkdir(parents=True, exist_ok=True)
    export_c(g, run_dir)
    x = reference.to_int8_input(rh.cifar_images(1))
    want = np.asarray(reference.run(g, x), np.int8).reshape(-1)
    macs = sum(c.macs for c in model_cases(model))
    out: dict[str, object] = {"model": model, "policy": policy, "macs": macs, "kernels": {}}
    for k in kernels:
        image = build_firmware(run_dir, "qemu-mps2-an500", run_dir / k, kernels=k)
        with QemuBoard(image.elf, icount_shift=icount_shift) as board, DutClient(board.url) as client:
            unit = TimerUnit.from_info(client.info())
            client.load(np.ascontiguousarray(x[0], np.int8).tobytes())
            result = client.infer(1, 0)
            raw = np.frombuffer(client.raw_output(), np.int8)
            layers = layer_breakdown(client, unit)
        by_kind: Counter[str] = Counter()
        for layer in layers:
            by_kind[str(layer["kind"])] += float(layer[unit.unit])  # type: ignore[arg-type]
        instr = unit.convert(result.ticks)
        out["kernels"][k] = {"instructions": instr, "per_mac": instr / macs, "by_kind": dict(by_kind),
                             "bit_exact": bool(np.array_equal(raw, want)), "fw_hash": image.fw_hash}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet8,mbv2")
    ap.add_argument("--icount-shift", type=int, default=5)
    ap.add_argument("--no-cmsis", action="store_true", help="leave CMSIS-NN out (no anchor sources)")
    ap.add_argument("--build-dir", type=Path, default=None, help="keep the firmware build here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write every measurement as JSON")
    ap.add_argument("--whole", default="resnet8:w8a8,resnet8:mixed",
                    help="also run whole models (model:policy of bench/runtime_host.py's POLICIES) through the "
                         "firmware with each kernel set; '' to skip")
    ap.add_argument("--seed", type=int, default=0, help="seed of the whole models' random weights (the kernel "
                                                        "firmware's data come from a fixed seed)")
    args = ap.parse_args(argv)

    per_model = {m: model_cases(m) for m in args.models.split(",")}
    shapes = sorted({c for cs in per_model.values() for c in cs}, key=lambda c: (c.kind, c.label()))
    index = {c: i for i, c in enumerate(shapes)}
    if not args.no_cmsis and not (cmsis_dir() / "Source").is_dir():
        print(f"(CMSIS-NN sources not found at {cmsis_dir()}: measuring without them; set SMPQ_CMSIS_NN)")
        args.no_cmsis = True
    with tempfile.TemporaryDirectory() as tmp:
        elf = build(shapes, args.build_dir or Path(tmp), with_cmsis=not args.no_cmsis)
        results = run(elf, icount_shift=args.icount_shift)
    ipm: dict[tuple[int, str, int], float] = {}
    sums: dict[tuple[int, str, int], int] = {}
    for m in results:
        ipm[(m.case, m.impl, m.w_bits)] = m.instructions / shapes[m.case].macs
        sums[(m.case, m.impl, m.w_bits)] = m.checksum

    print(f"instructions per MAC on QEMU mps2-an500 (Cortex-M7), -icount shift={args.icount_shift}, one run")
    head = (f"{'shape':34} {'MACs':>9} | " + " ".join(f"ref{b:<3}" for b in WIDTHS) + " | "
            + " ".join(f"dsp{b:<3}" for b in WIDTHS) + " | cmsis8 cmsis4 | dsp8/c8 dsp4/c4 | exact")
    print(head)
    print("-" * len(head))
    for i, c in enumerate(shapes):
        ref = " ".join(f"{ipm[(i, 'ref', b)]:6.2f}" for b in WIDTHS)
        dsp = " ".join(f"{ipm[(i, 'dsp', b)]:6.2f}" for b in WIDTHS)
        c8, c4 = ipm.get((i, "cmsis", 8)), ipm.get((i, "cmsis", 4))
        fmt = lambda v: f"{v:6.2f}" if v is not None else "     -"  # noqa: E731
        r8 = ipm[(i, "dsp", 8)] / c8 if c8 else None
        r4 = ipm[(i, "dsp", 4)] / c4 if c4 else None
        exact = all(sums[(i, "ref", b)] == sums[(i, "dsp", b)] for b in WIDTHS)
        print(f"{c.label():34} {c.macs:9,} | {ref} | {dsp} | {fmt(c8)} {fmt(c4)} | {fmt(r8)}  {fmt(r4)} | "
              f"{'yes' if exact else 'NO'}")

    print("\nper model, weighted layers only (sum over layers of their shape's instructions; W = all layers at W bits)")
    for name, cs in per_model.items():
        macs = sum(c.macs for c in cs)
        count = Counter(index[c] for c in cs)

        def total(impl: str, b: int) -> float | None:
            keys = [(i, impl, b if (impl != "cmsis" or shapes[i].kind == "conv2d") else 8) for i in count]
            if any(k not in ipm for k in keys):
                return None
            return sum(ipm[k] * shapes[k[0]].macs * count[k[0]] for k in keys)

        parts = []
        for impl, b in (("ref", 8), ("dsp", 8), ("cmsis", 8), ("dsp", 4), ("cmsis", 4), ("dsp", 2), ("dsp", 1)):
            t = total(impl, b)
            if t is not None:
                parts.append(f"{impl}{b} {t / macs:.2f}")
        print(f"  {name}: {len(cs)} layers, {macs:,} MACs; instructions/MAC: " + ", ".join(parts))
        if not args.no_cmsis:
            print("    (cmsis4: conv layers at s4, depthwise and fully connected at s8: CMSIS-NN has no s4 path used here)")
    wholes = []
    if args.whole:
        print("\nwhole models, one inference through the firmware on QEMU (weighted layers' MACs; all ops counted)")
        with tempfile.TemporaryDirectory() as tmp:
            for spec in args.whole.split(","):
                model, _, policy = spec.partition(":")
                w = whole_model(model, policy or "w8a8", Path(tmp), icount_shift=args.icount_shift, seed=args.seed)
                wholes.append(w)
                for k, r in w["kernels"].items():  # type: ignore[union-attr]
                    kinds = ", ".join(f"{kind} {v / w['macs']:.2f}" for kind, v in
                                      sorted(r["by_kind"].items(), key=lambda kv: -kv[1]) if v / w["macs"] >= 0.005)
                    print(f"  {model} {policy} {k:13} {r['instructions']:>12,.0f} instructions = {r['per_mac']:.2f} per MAC "
                          f"({w['macs']:,} MACs); bit-exact with the integer reference: {'yes' if r['bit_exact'] else 'NO'}")
                    print(f"      per MAC by op kind: {kinds}")
    if args.json:
        args.json.write_text(json.dumps({"icount_shift": args.icount_shift,
                                         "shapes": [c.__dict__ | {"label": c.label(), "macs": c.macs} for c in shapes],
                                         "measurements": [m.__dict__ for m in results], "whole": wholes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
