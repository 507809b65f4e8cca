"""The search's latency cost model against the board: predicted vs measured instructions per inference.

    .venv/bin/python bench/cost_accuracy.py [--device qemu-mps2-an500] [--models resnet8,mbv2] [--seed 0]
                                            [--kernels cortex_m_dsp] [--json out.json] [--per-op]

For each model and three mixed policies (randomly initialised weights, calibrated on CIFAR-10 test images:
deploy/cli/calibrate.py's micro-benchmark models), the prediction is what the search prices: Ω's latency
(deploy.devices.cost.omega with the device's cost model, the calibrated one when devices/calibrated/ has it)
times the clock; the measurement is one inference of the firmware on the board (QEMU: instructions under
-icount), all ops. Prints predicted, measured and the error per model and policy; with --per-op also each op's
(Ω's row for the op against the board's time for it, with its op type and work quantities).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: name → (weight bits by layer, activation bits by layer), cycled over the quantizable layers in order
POLICIES = {
    "w1..8 a8..2": ([1, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2]),
    "w2/4/8 a8": ([2, 4, 8], [8]),
    "w8/4 a8/4": ([8, 4], [8, 4]),
}


def print_per_op(om, ops, clock_hz: float) -> None:
    """Ω's row of each op against the board's time for it (the priced ops of both, in order)."""
    from deploy.cli.calibrate import OP_WORK, features

    measured = [r for r in ops if r[0] in OP_WORK]
    if len(measured) != len(om.layers):
        print(f"    (per op: Ω has {len(om.layers)} ops, the board ran {len(measured)} priced ones; not paired)")
        return
    for row, r in zip(om.layers, measured):
        op_type, bits, work = features(r)
        predicted, got = row.latency_s * clock_hz, r[-1]
        terms = " ".join(f"{t}={v:,.0f}" for t, v in work.items() if v)
        print(f"    {row.name[:28]:28} {op_type:18} w{bits} predicted {predicted:>11,.0f} measured {got:>11,.0f} "
              f"({predicted / got - 1:+6.1%})  {terms}")


def measure_policies(device: str, models: list[str], kernels: str, seed: int, icount_shift: int = 5,
                     per_op: bool = False) -> list[dict]:
    """One row per model and policy: predicted and measured instructions (or cycles) per inference."""
    from deploy.cli.calibrate import OP_WORK, _images, measure, random_ir
    from deploy.devices.cost import omega
    from deploy.devices.profiles import latency_model, load_device
    from deploy.lower.reference import to_int8_input
    from search.nn.graph import extract_graph
    from search.nn.models import build_model, quantizable_layers

    profile = load_device(device)
    lm = latency_model(profile)
    images = _images(8, seed)
    x = to_int8_input(images[:1])[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="smpq-cost-accuracy-") as tmp:
        for model in models:
            net = build_model(model, (3, *images.shape[1:3]), 10)
            names = [n for n, _ in quantizable_layers(net)]
            graph = extract_graph(net, (3, *images.shape[1:3]))
            for label, (w, a) in POLICIES.items():
                policy = {n: (w[i % len(w)], a[i % len(a)]) for i, n in enumerate(names)}
                om = omega(graph, policy, lm)
                predicted = om.latency_s * lm.clock_hz
                ops, _, unit = measure(random_ir(model, w, a, images, seed), Path(tmp) / model, profile.name, kernels,
                                       icount_shift, x)
                measured = sum(r[-1] for r in ops if r[0] in OP_WORK)
                rows.append({"model": model, "policy": label, "predicted": predicted, "measured": measured,
                             "error": predicted / measured - 1, "unit": unit})
                print(f"  {model:8} {label:12} predicted {predicted:>13,.0f}  measured {measured:>13,.0f} {unit}  "
                      f"({predicted / measured - 1:+.1%})", flush=True)
                if per_op:
                    print_per_op(om, ops, lm.clock_hz)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="qemu-mps2-an500")
    ap.add_argument("--models", default="resnet8,mbv2")
    ap.add_argument("--kernels", default="cortex_m_dsp")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--per-op", action="store_true", help="also print predicted vs measured per op")
    args = ap.parse_args(argv)
    print(f"predicted (the search's cost model for {args.device}) vs measured (the firmware on the board), "
          "one inference, all ops")
    rows = measure_policies(args.device, args.models.split(","), args.kernels, args.seed, per_op=args.per_op)
    worst = max(abs(r["error"]) for r in rows)
    print(f"largest error {worst:.1%} ({sum(abs(r['error']) <= 0.10 for r in rows)} of {len(rows)} within 10%)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
