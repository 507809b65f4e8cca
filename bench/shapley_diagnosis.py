"""Diagnosis (small scale): what a removal walk's marginal contribution measures on the supernet.

    python bench/shapley_diagnosis.py [--permutations 20] [--seed 0]

ResNet-8 trained 2 epochs on scikit-learn's digits (CPU-sized), its supernet (w{2,3,4,5,6,8} a{4,6,8},
first/last at 8 bits, calibrated), one round of SMPQ's estimator (no truncation, 256-image batches).
For every contribution it records whether the removed candidate was the LAST one left of its
layer-and-kind group (its removal zeroes the layer's weight or input). Reported: the share of the total
|contribution| that last-survivor removals carry, the mean contribution of the two kinds of removal,
the per-layer spread of ψ between bit widths against its standard error, and Spearman's ρ between a
weight candidate's ψ and its bit width.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from search.nn.data import BatchLoader, load_dataset  # noqa: E402
from search.nn.models import build_model  # noqa: E402
from search.nn.qmodel import calibrate  # noqa: E402
from search.shapley import estimate_shapley  # noqa: E402
from search.supernet import IncrementalForward, Supernet  # noqa: E402
from search.nn.train import TrainConfig, fit, load_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--permutations", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    ds = load_dataset("digits", seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        fit(build_model("resnet8", ds.input_shape, ds.num_classes), ds,
            TrainConfig(epochs=2, batch_size=64, lr=0.05, progress=False, seed=args.seed), tmp, device="cpu",
            model_name="resnet8")
        model, meta = load_checkpoint(Path(tmp) / "fp.pt")
    sn = Supernet(model, (2, 3, 4, 5, 6, 8), (4, 6, 8), first_last_8bit=True, seed=args.seed)
    calibrate(sn, BatchLoader(ds.train, ds, 64, shuffle=True, seed=args.seed), n_batches=4, seed=args.seed)
    val = BatchLoader(ds.val, ds, len(ds.val))
    vx, vy = val.normalize(val.x), val.y
    group = sn.group.numpy()
    players = np.flatnonzero(np.bincount(group, minlength=sn.num_groups)[group] > 1)
    pgroup = group[players]
    batch: dict = {}

    def new_batch(p: int) -> None:
        idx = np.sort(np.random.default_rng([args.seed, 13, 0, p]).choice(len(vy), size=min(256, len(vy)), replace=False))
        batch["x"], batch["y"] = vx[idx], vy[idx]

    with sn.masked():
        fwd = IncrementalForward(sn)

        def value(coalition: np.ndarray) -> float:
            mask = torch.ones(sn.num_players)
            mask[players] = torch.from_numpy(coalition.astype(np.float32))
            sn.set_mask(mask)
            return float((fwd(batch["x"]).argmax(1) == batch["y"]).float().mean())

        res = estimate_shapley(value, len(players), args.permutations, threshold=0.0, on_permutation=new_batch,
                               permutation_rng=lambda p: np.random.default_rng([args.seed, 12, 0, p]))
    last = np.zeros_like(res.contributions, dtype=bool)
    for p, perm in enumerate(res.permutations):
        left = np.bincount(pgroup, minlength=sn.num_groups)
        for j in perm:
            left[pgroup[j]] -= 1
            last[p, j] = left[pgroup[j]] == 0
    c = res.contributions
    share = float(np.abs(c[last]).sum() / max(np.abs(c).sum(), 1e-12))
    se = c.std(axis=0, ddof=1) / np.sqrt(len(c))
    spreads, ses, rhos = [], [], []
    for g in np.unique(pgroup):
        idx = np.flatnonzero(pgroup == g)
        spreads.append(float(np.ptp(res.psi[idx])))
        ses.append(float(se[idx].mean()))
        if sn.players[players[idx[0]]].kind == "w":
            bits = np.array([sn.players[players[i]].bits for i in idx])
            r = np.argsort(np.argsort(res.psi[idx])), np.argsort(np.argsort(bits))
            rhos.append(float(np.corrcoef(*r)[0, 1]))
    out = {"fp_test_accuracy": meta.get("test_accuracy"), "permutations": args.permutations, "players": int(len(players)),
           "v_full_mean": float(res.full_values.mean()),
           "share_of_abs_contribution_from_last_survivor_removals": share,
           "mean_contribution_last_survivor": float(c[last].mean()),
           "mean_contribution_other": float(c[~last].mean()),
           "psi_spread_within_group_mean": float(np.mean(spreads)), "psi_stderr_mean": float(np.mean(ses)),
           "spearman_psi_vs_weight_bits_mean": float(np.mean(rhos)),
           "fraction_removals_last_survivor": float(last.mean())}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
