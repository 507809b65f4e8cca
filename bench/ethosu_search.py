"""A search under an Ethos-U flash budget that uniform int8 cannot meet, next to uniform int8 and uniform 4-bit.

    python bench/ethosu_search.py --fp runs/ethosu-show/fp.pt --out runs/ethosu-show --budget-flash 48KB \
        [--device ethos-u55-128] [--subset 1000] [--qat-epochs 1] [--search-epochs 1] [--permutations 3] [--seed 0]

Runs the pipeline (`smpq-deploy run`) three times from the same FP checkpoint, into <out>/smpq, <out>/w8a8
and <out>/w4a8: SMPQ under the flash budget, and the two uniform policies without it (uniform int8 under
the budget is refused by the search: its Vela flash exceeds it). Then prints, per run: top-1 of the QAT model
(PyTorch, test split capped at --subset) and of the integer reference, Vela's bytes in the weights' memory
area, its encoded weight bytes and cycles (Vela's estimates), the search-time prediction of the flash, the
policy's weight widths, and the operations Vela left on the CPU.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def pipeline(args: argparse.Namespace, name: str, method_sets: list[str], budget: str | None) -> Path:
    out = Path(args.out) / name
    cmd = [str(Path(sys.executable).parent / "smpq-deploy"), "--device", args.device, "--model", "resnet8",
           "--output", str(out), "--seed", str(args.seed), "--subset", str(args.subset), "--no-progress",
           "--set", f"model.checkpoint={args.fp}", "--set", f"qat.epochs={args.qat_epochs}",
           "--set", f"search.epochs={args.search_epochs}", "--set", "search.warmup_epochs=0",
           "--set", f"search.shapley.permutations={args.permutations}", "--set", f"harness.samples={args.samples}",
           "--set", f"budgets.flash_bytes={budget or 'auto'}", *[x for s in method_sets for x in ("--set", s)]]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out


def row(name: str, out: Path) -> dict:
    policy = json.loads((out / "policy.json").read_text())
    report = json.loads((out / "report.json").read_text())
    vela = json.loads((out / "vela.json").read_text())
    c = vela["compiled"]
    widths = [L["w_bits"] for L in policy["layers"]]
    return {"run": name, "qat_top1": (policy.get("accuracy") or {}).get("qat_test"),
            "int_ref_top1": report["host_verification"].get("reference_accuracy"),
            "vela_flash_B": c["weights_area_bytes"], "encoded_weights_B": c["encoded_weight_bytes"],
            "cycles": c["cycles_total"], "ms_at_clock": 1e3 * c["inference_time_s"],
            "search_flash_B": (policy.get("omega") or {}).get("flash_bytes"), "widths": widths,
            "cpu_ops": len(vela["cpu_ops"]), "estimated_by": vela["board"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-flash", required=True)
    ap.add_argument("--device", default="ethos-u55-128")
    ap.add_argument("--subset", type=int, default=1000)
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--search-epochs", type=int, default=1)
    ap.add_argument("--permutations", type=int, default=3)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="smpq,w8a8,w4a8", help="runs: smpq and any of w1a8 ... w8a8")
    args = ap.parse_args(argv)
    uniform = {f"w{b}a8": (["search.method=uniform", f"search.uniform.w_bits={b}", "search.uniform.a_bits=8"], None)
               for b in range(1, 9)}  # uniform b-bit-valued weights, first/last layer 8-bit, no budget
    runs = {"smpq": (["search.method=smpq"], args.budget_flash), **uniform}
    rows = []
    for name in args.only.split(","):
        if name not in runs:
            ap.error(f"--only: unknown run '{name}' (smpq or w1a8 ... w8a8)")
        sets, budget = runs[name]
        out = Path(args.out) / name
        if not (out / "vela.json").is_file() or not (out / "report.json").is_file():
            pipeline(args, name, sets, budget)
        rows.append(row(name, out))
    print(f"\nflash budget {args.budget_flash} on {args.device}; cycles and flash estimated by Vela")
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
