"""Bit-width interaction (paper Fig. 3): is a layer's contribution independent of the other layers' bits?

    python bench/paper/interaction.py --fp /work/main/checkpoints/resnet8-cifar10-fp.pt \\
        [--output runs/paper/interaction-resnet8] [--bases w8a8,w3a3] [--bits 2]

On the supernet over the FP model, quantizer steps calibrated, no training (the ground truth's setting in
``contribution.py``), with a fixed base policy (uniform, first and last layer at 8 bits): for every group g
(one free layer's weight or input) the accuracy change Δ_g when g alone drops to ``--bits``, for every pair
the change Δ_gh when both drop, and the interaction I_gh = Δ_gh − Δ_g − Δ_h (0 when contributions add
up, negative when two low-bit choices hurt more together than apart). Also per kind (weights, inputs) the
policy with *every* free group of that kind at ``--bits``: measured change against the additive prediction
Σ Δ_g — what a budget step that sums per-layer scores assumes. Accuracy on ``--images`` validation images.
One cached cell per base under ``<output>/cells``; writes ``interaction.json`` and ``interaction.png``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from bench.paper.common import cell, fp_supernet, open_experiment, write_json  # noqa: E402
from bench.paper.main_table import uniform_bits  # noqa: E402
from search.nn.data import BatchLoader  # noqa: E402
from search.policy import Policy  # noqa: E402
from search.supernet import Supernet, masked_accuracy  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fp", required=True)
    p.add_argument("--output", default="runs/paper/interaction-resnet8")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--w-bits", default="2,3,4,8")
    p.add_argument("--a-bits", default="2,3,4,8")
    p.add_argument("--subset", type=int, default=5000, help="calibration images")
    p.add_argument("--images", type=int, default=2000, help="validation images per accuracy")
    p.add_argument("--bases", default="w8a8,w3a3", help="uniform base policies")
    p.add_argument("--bits", type=int, default=2, help="the bit width a group drops to")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def free_groups(sn: Supernet) -> list[tuple[str, str]]:
    """(layer, kind) of every group with a choice, in graph order, weights before inputs."""
    groups = []
    for layer in sn.layer_names:
        w, a = sn.candidates(layer)
        groups += [(layer, kind) for kind, cands in (("w", w), ("a", a)) if len(cands) > 1]
    return groups


def interactions(sn: Supernet, dataset: Any, base: tuple[int, int], bits: int, n_images: int) -> dict[str, Any]:
    """Δ_g, Δ_gh and I_gh around the uniform `base` policy, and the all-of-a-kind policies vs their sum."""
    val = BatchLoader(dataset.val.subset(n_images), dataset, 500)
    base_mask = sn.policy_mask(Policy.uniform(sn.layer_names, *base, first_last_8bit=sn.first_last_8bit))
    groups = free_groups(sn)

    def dropped(gs: list[tuple[str, str]]) -> float:
        m = base_mask.clone()
        for layer, kind in gs:
            m[sn.player_index(layer, kind, base[0] if kind == "w" else base[1])] = 0.0
            m[sn.player_index(layer, kind, bits)] = 1.0
        return masked_accuracy(sn, val, m)

    ref = dropped([])
    delta = [dropped([g]) - ref for g in groups]
    n = len(groups)
    inter = np.zeros((n, n))
    for i, j in itertools.combinations(range(n), 2):
        inter[i, j] = inter[j, i] = (dropped([groups[i], groups[j]]) - ref) - delta[i] - delta[j]
    whole = {}
    for kind in ("w", "a"):
        ix = [i for i, g in enumerate(groups) if g[1] == kind]
        whole[kind] = {"measured": dropped([groups[i] for i in ix]) - ref, "additive": float(sum(delta[i] for i in ix)),
                       "groups": len(ix)}
    return {"base": list(base), "bits": bits, "base_accuracy": ref, "groups": [f"{l}/{k}" for l, k in groups],
            "delta": delta, "interaction": inter.tolist(), "all_of_kind": whole}


def summary(r: dict[str, Any]) -> dict[str, Any]:
    inter = np.array(r["interaction"])
    d = np.abs(np.array(r["delta"]))
    iu = np.triu_indices(len(d), 1)
    pair_scale = d[iu[0]] + d[iu[1]]
    return {"mean_abs_interaction": float(np.abs(inter[iu]).mean()), "min_interaction": float(inter[iu].min()),
            "max_interaction": float(inter[iu].max()),
            "pairs_interaction_over_half_of_their_deltas": float(np.mean(np.abs(inter[iu]) > 0.5 * pair_scale)),
            "all_of_kind": r["all_of_kind"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out, log = open_experiment(args, "interaction", ("bases",))
    sn, dataset, _ = fp_supernet(args, out)
    results = {}
    for name in [b for b in args.bases.split(",") if b]:
        base = uniform_bits(name)
        results[name] = cell(out / "cells" / f"{name}-b{args.bits}.json",
                             lambda: interactions(sn, dataset, base, args.bits, args.images), log)
        results[name]["summary"] = summary(results[name])
        log(f"{name}: {json.dumps(results[name]['summary'])}")
    write_json(out / "interaction.json", {"command": " ".join(sys.argv), "settings": vars(args), "bases": results})
    plot(results, out / "interaction.png")
    print(json.dumps({k: v["summary"] for k, v in results.items()}, indent=2))
    return 0


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.6), squeeze=False)
    lim = max(float(np.abs(np.array(r["interaction"])).max()) for r in results.values()) * 100 or 1.0
    for ax, (name, r) in zip(axes[0], results.items()):
        im = ax.imshow(np.array(r["interaction"]) * 100, cmap="RdBu", vmin=-lim, vmax=lim)
        labels = [g.replace("layers.", "L").replace("shortcut.0", "sc") for g in r["groups"]]
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
        ax.set_title(f"I_gh (pp), both at {r['bits']} bits, base {name.upper()}", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
