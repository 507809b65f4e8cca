"""Cost of one SMPQ Shapley round, before (plain masked forwards) and after (IncrementalForward).

    python bench/shapley_speed.py --models resnet8 --walks 2 --permutations 10 [--fp-resnet8 FP.PT]
    python bench/shapley_speed.py --models resnet8,mbv2 --steps 40      # partial walks, extrapolated
    python bench/shapley_speed.py --models mbv2 --score singleton --walks 1 --paths after   # the default score

Per model: one round (``search.smpq.run_smpq`` with no warm-up and one round, CIFAR-10 validation
batches of 256, the pipeline's candidate bits w{2,3,4,5,6,8} a{4,6,8}, first/last held at 8 bits) run
with ``--walks`` permutations, once per path, with the same seed; ψ of the two must be bit-identical
(checked). Reported: value evaluations per second, the measured round time, and the time of an M =
``--permutations`` round extrapolated from the walks timed (per-walk time × M), plus the worst case
without truncation (M × (players + 1) evaluations at the measured rate). Without ``--fp-<model>`` the
model is randomly initialised: evaluations per second do not depend on the weights, the number of
evaluations truncation leaves does (say which one you ran). ``--steps S`` times the first S removals
of one walk on each path instead (logits compared bit for bit at every step) and extrapolates the rate
to an untruncated M-permutation round: for models whose whole round is too long to time twice.

``--allocators default,keep --repeats R`` runs the measurement above in fresh processes, once per glibc
allocator setting (``search.allocator``: glibc's default, or freed memory kept in the process), alternating,
R times each; it reports the median evaluations per second of each and their ratio, and checks that ψ
is bit-identical between them.

``--layouts nchw,channels_last`` times each path once per memory layout of the evaluations
(``SMPQConfig.layout``) and reports, against NCHW, the speed-up, the largest difference in ψ (float rounding
in the convolutions, which can move activations across a quantization step; with the accuracy value one
image's flip moves a batch's value by 1/256) and whether
ψ's per-layer argmax (the policy before the budget step) is the same.

    python bench/shapley_speed.py --models mbv2 --score singleton --walks 1 --paths after \
        --allocators default,keep --repeats 3
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from search.nn.data import load_dataset  # noqa: E402
from search.nn.models import build_model  # noqa: E402
from search.smpq import LOG_FILE, SMPQConfig, SMPQSearch, run_smpq  # noqa: E402
from search.supernet import Supernet  # noqa: E402
from search.nn.train import load_checkpoint  # noqa: E402

W_BITS, A_BITS = (2, 3, 4, 5, 6, 8), (4, 6, 8)


def one_round(model: torch.nn.Module, ds, walks: int, seed: int, incremental: bool, score: str = "shapley",
              layout: str = "nchw") -> dict:
    sn = Supernet(model, W_BITS, A_BITS, first_last_8bit=True, seed=seed)
    game = {"score": "singleton", "bn": "batch", "steps_per_round": 0} if score == "singleton" else {}
    cfg = SMPQConfig(warmup_epochs=0, rounds=1, permutations=walks, seed=seed, progress=False, layout=layout, **game)
    SMPQSearch.incremental = incremental
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            run_smpq(sn, ds, cfg, tmp, device="cpu")
            total = time.perf_counter() - t0
            rec = [json.loads(x) for x in (Path(tmp) / LOG_FILE).read_text().splitlines() if '"round"' in x][-1]
    finally:
        SMPQSearch.incremental = True
    players = int(sum(1 for p in sn.players if len(sn.candidates(p.layer)[0 if p.kind == "w" else 1]) > 1))
    return {"wall_s": rec["wall_s"], "run_s": total, "evaluations": rec["n_evaluations"],
            "psi_sha256": hashlib.sha256(json.dumps(rec["psi"]).encode()).hexdigest(),
            "policy": sn.derive_policy(torch.tensor(rec["psi"], dtype=torch.float64)).to_dict(),
            "evals_per_s": rec["n_evaluations"] / rec["wall_s"], "psi": rec["psi"], "players": players,
            "nodes_recomputed_fraction": rec.get("nodes_recomputed_fraction")}


def partial_walk(model: torch.nn.Module, ds, steps: int, seed: int) -> dict:
    """The first `steps` removals of one walk (as a round makes them), timed on both paths; the logits of
    every step must be bit-identical. Per-evaluation cost is stationary along a walk (the layer a step
    changes is uniformly random), so the rate extrapolates to whole rounds."""
    import numpy as np

    from search.nn.data import BatchLoader
    from search.nn.qmodel import calibrate
    from search.supernet import IncrementalForward

    sn = Supernet(model, W_BITS, A_BITS, first_last_8bit=True, seed=seed)
    calibrate(sn, BatchLoader(ds.train, ds, 128, shuffle=True, seed=seed), n_batches=2, seed=seed)
    val = BatchLoader(ds.val, ds, 256)
    x = val.normalize(val.x[:256])
    group = sn.group.numpy()
    players = np.flatnonzero(np.bincount(group, minlength=sn.num_groups)[group] > 1)
    order = np.random.default_rng([seed, 12, 0, 0]).permutation(players)[:steps]
    out: dict = {"players": int(len(players))}
    logits = {}
    with sn.masked():
        for path in ("before", "after"):
            fwd = IncrementalForward(sn) if path == "after" else sn
            mask = torch.ones(sn.num_players)
            sn.set_mask(mask)
            fwd(x)  # v(full): the first evaluation of a walk is a full pass on both paths
            got, t0 = [], time.perf_counter()
            for p in order:
                mask[p] = 0.0
                sn.set_mask(mask)
                got.append(fwd(x))
            dt = time.perf_counter() - t0
            logits[path] = got
            out[path] = {"evaluations": steps, "wall_s": dt, "evals_per_s": steps / dt,
                         "nodes_recomputed_fraction": fwd.recomputed / fwd.total if path == "after" else None}
    out["bit_identical"] = all(torch.equal(a, b) for a, b in zip(logits["before"], logits["after"]))
    return out


def compare_allocators(argv: list[str], allocators: list[str], repeats: int, out: str | None) -> None:
    """Run this script (without --allocators) in fresh processes under each allocator setting, alternating,
    `repeats` times; print and store the median evaluations per second per model, path and allocator."""
    from search.allocator import CHOICES, ENV

    bad = [a for a in allocators if a not in CHOICES]
    if bad:
        raise SystemExit(f"error: unknown allocator setting {bad[0]!r}: use {', '.join(CHOICES)}")
    runs: dict[str, list[dict]] = {a: [] for a in allocators}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            for a in allocators:
                js = Path(tmp) / f"{a}-{rep}.json"
                subprocess.run([sys.executable, __file__, *argv, "--json", str(js)], check=True,
                               env={**os.environ, ENV: a})
                runs[a].append(json.loads(js.read_text()))
    summary: dict = {"repeats": repeats, "allocators": allocators, "runs": runs, "median_evals_per_s": {}}
    first = runs[allocators[0]][0]["models"]
    for name, rows in first.items():
        for path in (p for p in ("before", "after") if p in rows):
            med = {a: statistics.median(r["models"][name][path]["evals_per_s"] for r in runs[a]) for a in allocators}
            summary["median_evals_per_s"][f"{name}/{path}"] = med
            hashes = {r["models"][name][path].get("psi_sha256") for a in allocators for r in runs[a]}
            print(f"{name:8s} {path:6s} median evaluations/s: "
                  + "  ".join(f"{a} {v:6.2f}" for a, v in med.items())
                  + f"  ratio {med[allocators[-1]] / med[allocators[0]]:.2f}x"
                  + (f"  psi bit-identical across runs: {len(hashes) == 1}" if None not in hashes else ""), flush=True)
            if None not in hashes and len(hashes) != 1:
                raise SystemExit(f"{name}: psi differs between allocator settings")
    if out:
        Path(out).write_text(json.dumps(summary, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet8,mbv2")
    ap.add_argument("--walks", type=int, default=2, help="permutations actually timed per path")
    ap.add_argument("--permutations", type=int, default=10, help="M of the round to extrapolate to")
    ap.add_argument("--paths", default="before,after")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--fp-resnet8", default=None)
    ap.add_argument("--fp-mbv2", default=None)
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--score", default="shapley", choices=("shapley", "singleton"),
                    help="singleton: the round of pipeline.yaml's default score (a walk = one batch's singleton "
                         "evaluations, batch BatchNorm; never truncated)")
    ap.add_argument("--steps", type=int, default=None,
                    help="time only the first STEPS removals of one walk per path instead of whole rounds")
    ap.add_argument("--layouts", default="nchw", help="comma list of memory layouts (nchw, channels_last) to time")
    ap.add_argument("--allocators", default=None,
                    help="comma list of glibc allocator settings (default, keep) to compare in fresh processes")
    ap.add_argument("--repeats", type=int, default=3, help="with --allocators: runs per setting (median)")
    args = ap.parse_args()
    if args.allocators:
        argv, skip = [], False
        for a in sys.argv[1:]:
            if skip:
                skip = False
            elif a in ("--allocators", "--repeats", "--json"):
                skip = True
            elif not a.startswith(("--allocators=", "--repeats=", "--json=")):
                argv.append(a)
        compare_allocators(argv, args.allocators.split(","), args.repeats, args.json)
        return
    ds = load_dataset("cifar10", args.data_dir, seed=args.seed)
    results = {"threads": torch.get_num_threads(), "walks": args.walks, "permutations": args.permutations, "score": args.score,
               "seed": args.seed, "models": {}}
    for name in args.models.split(","):
        fp = getattr(args, f"fp_{name}", None)
        if fp:
            model, _ = load_checkpoint(fp)
        else:
            torch.manual_seed(args.seed)
            model = build_model(name, ds.input_shape, ds.num_classes)
        if args.steps:
            r = partial_walk(model, ds, args.steps, args.seed)
            for path in ("before", "after"):
                q = r[path]
                q["round_s_at_M_untruncated"] = args.permutations * (r["players"] + 1) / q["evals_per_s"]
                print(f"{name:8s} {path:6s} players {r['players']:4d}  {args.steps} walk steps in {q['wall_s']:7.1f} s "
                      f"= {q['evals_per_s']:6.2f}/s  M={args.permutations} untruncated round: "
                      f"{q['round_s_at_M_untruncated'] / 60:6.1f} min", flush=True)
            print(f"{name:8s} logits bit-identical at every step: {r['bit_identical']}; speed-up "
                  f"{r['after']['evals_per_s'] / r['before']['evals_per_s']:.2f}x", flush=True)
            if not r["bit_identical"]:
                raise SystemExit(f"{name}: the two paths differ")
            results["models"][name] = {"fp": fp or "random init", "mode": f"first {args.steps} steps of one walk", **r}
            continue
        rows = {}
        layouts = args.layouts.split(",")
        for key in (p if lay == "nchw" else f"{p}/{lay}" for lay in layouts for p in args.paths.split(",")):
            path, _, layout = key.partition("/")
            r = one_round(model, ds, args.walks, args.seed, incremental=(path == "after"), score=args.score,
                          layout=layout or "nchw")
            r["round_s_at_M"] = r["wall_s"] / args.walks * args.permutations
            r["round_s_at_M_untruncated"] = (r["round_s_at_M"] if args.score == "singleton"
                                             else args.permutations * (r["players"] + 1) / r["evals_per_s"])
            rows[key] = r
            print(f"{name:8s} {key:6s} players {r['players']:4d}  {r['evaluations']:5d} evals in {r['wall_s']:7.1f} s "
                  f"= {r['evals_per_s']:6.2f}/s  M={args.permutations}: {r['round_s_at_M'] / 60:6.1f} min "
                  f"(untruncated {r['round_s_at_M_untruncated'] / 60:6.1f} min)"
                  + (f"  nodes recomputed {r['nodes_recomputed_fraction']:.2f}" if r["nodes_recomputed_fraction"] else ""),
                  flush=True)
        if "before" in rows and "after" in rows:
            same = rows["before"]["psi"] == rows["after"]["psi"]
            print(f"{name:8s} psi bit-identical before/after: {same}; speed-up "
                  f"{rows['after']['evals_per_s'] / rows['before']['evals_per_s']:.2f}x", flush=True)
            if not same:
                raise SystemExit(f"{name}: psi differs between the two paths")
        for key in [k for k in rows if "/" in k and k.split("/")[0] in rows]:
            a, b = rows[key.split("/")[0]], rows[key]
            b["max_abs_psi_difference_vs_nchw"] = max(abs(x - y) for x, y in zip(a["psi"], b["psi"]))
            b["same_argmax_policy_as_nchw"] = a["policy"] == b["policy"]
            print(f"{name:8s} {key}: speed-up {b['evals_per_s'] / a['evals_per_s']:.2f}x vs nchw, max |dpsi| "
                  f"{b['max_abs_psi_difference_vs_nchw']:.2e}, same argmax policy: {b['same_argmax_policy_as_nchw']}",
                  flush=True)
        for r in rows.values():
            r.pop("psi")  # psi_sha256 stays: runs under other settings are compared by it
        results["models"][name] = {"fp": fp or "random init", **rows}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
