"""Shared helpers of the paper experiments (bench/paper/*.py): cached cells, mean ± std, JSON output.

Every experiment is a grid of cells (e.g. method × budget × seed). A cell's result is one JSON file
under ``<output>/cells/``; a rerun with the same arguments loads finished cells instead of
recomputing them, and a killed run resumes inside a cell where the search and QAT themselves resume
(their own state files in the cell's run folder).
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from search.atomic import atomic_write_text  # noqa: E402


def write_json(path: Path, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def check_settings(out: Path, settings: dict[str, Any], ignore: Sequence[str] = ("threads",),
                   added: Mapping[str, Any] | None = None) -> None:
    """One output folder holds one experiment's settings: the first run records them in
    ``<out>/settings.json``; a later run with other result-relevant settings exits with a one-line error.
    `added`: settings introduced after older folders were recorded, with the value they had before."""
    mine = {k: v for k, v in settings.items() if k not in ignore}
    path = out / "settings.json"
    if path.is_file():
        old = {k: v for k, v in {**(added or {}), **json.loads(path.read_text())}.items() if k not in ignore}
        diff = sorted(k for k in set(old) | set(mine) if old.get(k) != mine.get(k))
        if diff:
            raise SystemExit(f"error: '{out}' holds results of other settings ({', '.join(diff)} differ): "
                             f"use another --output or the same settings to resume")
        return
    write_json(path, mine)


def open_experiment(args: Any, name: str, ignore: Sequence[str] = (), added: Mapping[str, Any] | None = None
                    ) -> tuple[Path, Callable[[str], None]]:
    """Start an experiment: ``args.threads`` torch threads, its folder ``args.output``, a log ``<name>.log``
    there and the settings check (:func:`check_settings`; ``threads`` and `ignore` may differ between runs,
    `added` as there)."""
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.output)
    check_settings(out, vars(args), ("threads", *ignore), added)
    return out, logger(out / f"{name}.log")


def cell(path: Path, compute: Callable[[], dict[str, Any]], log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The cached result at `path`, or `compute()` written there (with its wall time) when there is none."""
    if path.is_file():
        return json.loads(path.read_text())
    if log:
        log(f"cell {path.stem}: computing")
    t0 = time.perf_counter()
    result = {**compute(), "cell_wall_s": time.perf_counter() - t0}
    write_json(path, result)
    if log:
        log(f"cell {path.stem}: done in {result['cell_wall_s']:.0f} s")
    return result


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample std (ddof 1; 0 for one value) and n of the non-missing values."""
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if len(v) == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def seed_agreement(policies: Sequence[dict[str, Sequence[int]]], skip: Sequence[str] = ()) -> dict[str, Any]:
    """How often seeds choose the same bits: over every pair of policies (layer → [w_bits, a_bits]) and the
    layers both hold (less `skip`: layers no method chooses), the share with the same weight bits, the same
    activation bits, and both; None below 2."""
    pairs = [(p, q) for i, p in enumerate(policies) for q in policies[i + 1:]]
    same = {"w": [], "a": [], "both": []}
    for p, q in pairs:
        for name in (p.keys() & q.keys()) - set(skip):
            w, a = p[name][0] == q[name][0], p[name][1] == q[name][1]
            same["w"].append(w)
            same["a"].append(a)
            same["both"].append(w and a)
    if not same["both"]:
        return {"w": None, "a": None, "both": None, "pairs": len(pairs)}
    return {**{k: float(np.mean(v)) for k, v in same.items()}, "pairs": len(pairs)}


def fmt_pm(stat: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    """'m ± s (n)' for a :func:`mean_std` result."""
    if not stat["n"]:
        return "—"
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f} (n={stat['n']})"


def logger(path: Path) -> Callable[[str], None]:
    """Print a timestamped line to stderr and append it to `path`."""
    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, file=sys.stderr, flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(line + "\n")
    return log


def fp_supernet(args: Any, out: Path) -> tuple[Any, Any, dict[str, Any]]:
    """The experiment's SMPQ supernet built from ``args.fp`` (bits ``args.w_bits``/``args.a_bits`` as "2,4,8",
    ``args.subset``, seed 0): (supernet, dataset, its initial state to restore between walks)."""
    from search.nn.data import load_dataset
    from search.nn.train import load_checkpoint
    from search.runner import SearchSettings, build_supernet

    fp_model, meta = load_checkpoint(args.fp)
    dataset = load_dataset(meta.get("dataset", "cifar10"), args.data_dir, seed=0)
    bits = lambda t: tuple(int(x) for x in t.split(","))  # noqa: E731
    settings = SearchSettings(method="smpq", fp=args.fp, output=str(out), w_bits=bits(args.w_bits),
                              a_bits=bits(args.a_bits), subset=args.subset, seed=0, progress=False)
    sn = build_supernet(fp_model, dataset, settings)
    return sn, dataset, {k: v.clone() for k, v in sn.state_dict().items()}
