"""Wall time of one SMPQ Shapley round and one supernet W-training epoch at 1 and 2 processes (torch.distributed).

    .venv/bin/python bench/distributed.py [--dataset cifar10] [--subset 2048] [--repeats 3] [--permutations 10]
        [--fp FP.PT] [--output runs/bench-distributed] [--seed 0]

Runs set-ups under ``torch.distributed.run --standalone`` (gloo on the CPU), by default 1 process × 1
thread, 1 process × all cores, and 2 processes × (cores / 2) threads (``--setups``). In each, the workers build the SMPQ supernet
of ResNet-8 from the FP checkpoint (``--fp``, else a 1-epoch FP training on the subset into
``<output>/fp``), then time ``--repeats`` W-training epochs (DDP) and ``--repeats`` Shapley rounds, each
between two barriers, and print the medians. "comm" is the share of that wall time rank 0 spent inside
collectives (transfer plus waiting for the slower rank); for the epoch it includes DDP's gradient
all-reduce, timed synchronously in a comm hook (so without DDP's overlap with the backward pass).
Writes ``<output>/results.json``. Figures only, never pass/fail; on a shared machine they vary with load.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from search import distributed  # noqa: E402
from search.nn.data import load_dataset  # noqa: E402
from search.nn.models import build_model  # noqa: E402
from search.search_state import STATE_FILE  # noqa: E402
from search.smpq import LOG_FILE, SMPQConfig, SMPQSearch  # noqa: E402
from search.supernet import Supernet  # noqa: E402
from search.nn.train import TrainConfig, deterministic_mode, fit, load_checkpoint  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--subset", type=int, default=2048, help="training images (val capped at the same number)")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs and rounds per set-up (the median is shown)")
    p.add_argument("--permutations", type=int, default=10, help="M of a Shapley round")
    p.add_argument("--val-batch-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--fp", default=None, help="FP checkpoint (default: a short FP training into <output>/fp)")
    p.add_argument("--output", default="runs/bench-distributed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--setups", default="1x1,1xC,2xH",
                   help="processes x threads per set-up; C = all cores, H = cores / 2 (default: 1x1,1xC,2xH)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: the result file of one set-up
    return p.parse_args(argv)


def worker(args: argparse.Namespace) -> None:
    """One set-up (run by every rank under torchrun): time epochs and rounds, rank 0 writes the medians."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    distributed.CommStats.time_gradients = True
    with distributed.session("cpu"):
        model, meta = load_checkpoint(args.fp)
        ds = load_dataset(meta["dataset"], args.data_dir, seed=args.seed)
        cfg = SMPQConfig(warmup_epochs=0, rounds=1, permutations=args.permutations, val_batch_size=args.val_batch_size,
                         batch_size=args.batch_size, subset=args.subset, seed=args.seed, progress=False)
        dev = torch.device("cpu")
        out = Path(args.worker).parent / f"state-{Path(args.worker).stem}"
        with deterministic_mode(dev):
            search = SMPQSearch(Supernet(model, seed=args.seed), ds, cfg, out, dev, None, {}, STATE_FILE, LOG_FILE)
            search._before_unit()
            results: dict[str, list[list[float]]] = {"epoch": [], "round": []}
            for kind, run in (("epoch", lambda: search.trainer.train(search.steps_per_epoch)),
                              ("round", lambda: search._shapley_round(0, lambda *a, **k: None))):
                for _ in range(args.repeats):
                    distributed.barrier()
                    c0, t0 = distributed.CommStats.seconds, time.perf_counter()
                    run()
                    distributed.barrier()
                    wall = time.perf_counter() - t0
                    results[kind].append([wall, distributed.CommStats.seconds - c0])
                    distributed.broadcast_module(search.supernet)
        if distributed.is_main():
            Path(args.worker).write_text(json.dumps({"world": distributed.world_size(),
                                                     "threads": torch.get_num_threads(),
                                                     "steps_per_epoch": search.steps_per_epoch, **results}))


def fp_checkpoint(args: argparse.Namespace, out: Path) -> Path:
    if args.fp:
        return Path(args.fp)
    path = out / "fp" / "fp.pt"
    if not path.is_file():
        torch.manual_seed(args.seed)
        ds = load_dataset(args.dataset, args.data_dir, seed=args.seed)
        fit(build_model("resnet8", ds.input_shape, ds.num_classes), ds,
            TrainConfig(epochs=1, batch_size=args.batch_size, lr=0.1, warmup_epochs=0, subset=args.subset,
                        seed=args.seed, progress=False), path.parent, model_name="resnet8")
    return path


def _setups(text: str, cores: int) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        n, t = item.strip().lower().split("x")
        out.append((int(n), {"c": cores, "h": max(1, cores // 2)}.get(t) or int(t)))
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    fp = fp_checkpoint(args, out)
    cores = os.cpu_count() or 1
    rows = []
    for nproc, threads in _setups(args.setups, cores):
        result = out / f"setup-{nproc}x{threads}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(Path(__file__).resolve()), "--worker", str(result.resolve()), "--fp", str(fp),
               *[f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                 if k not in ("worker", "fp", "output", "setups") and v is not None]]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        if subprocess.run(cmd, env=env).returncode != 0:
            sys.exit(f"error: the {nproc}-process set-up failed (its output is above)")
        r = json.loads(result.read_text())
        row = {"processes": nproc, "threads_per_process": threads, "steps_per_epoch": r["steps_per_epoch"]}
        for kind in ("epoch", "round"):
            walls = [w for w, _ in r[kind]]
            row[f"{kind}_s"] = statistics.median(walls)
            row[f"{kind}_comm_fraction"] = statistics.median(c / w for w, c in r[kind])
            row[f"{kind}_runs_s"] = walls
        rows.append(row)
    (out / "results.json").write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "worker"},
                                                  "cpu_count": cores, "load_average": os.getloadavg(),
                                                  "setups": rows}, indent=2) + "\n")
    print(f"ResNet-8 SMPQ supernet on {args.dataset} (subset {args.subset}, batch {args.batch_size}, "
          f"M={args.permutations}, val batch {args.val_batch_size}); median of {args.repeats}; "
          f"{cores} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'processes × threads':>20} {'W epoch s':>10} {'comm':>6} {'round s':>10} {'comm':>6}")
    for r in rows:
        print(f"{r['processes']:>10} × {r['threads_per_process']:<7} {r['epoch_s']:>10.2f} {r['epoch_comm_fraction']:>6.1%} "
              f"{r['round_s']:>10.2f} {r['round_comm_fraction']:>6.1%}")


if __name__ == "__main__":
    main()
