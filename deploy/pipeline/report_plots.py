"""The report's figures, drawn with matplotlib (Agg) from a report dict (:func:`deploy.pipeline.report.build_report`)
and returned as PNG bytes. Each function draws one figure; a figure whose data is missing says so in it."""
from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

BUDGET_LABELS = {"flash_bytes": ("flash", 1024, "KB"), "sram_bytes": ("peak SRAM", 1024, "KB"),
                 "latency_s": ("latency", 1e-3, "ms"), "bops": ("BOPs", 1e9, "G")}
COLORS = {"w": "#1f77b4", "a": "#ff7f0e", "chosen": "#2ca02c", "argmax": "#d62728", "deployed": "#9467bd"}
DPI = 100


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _short(name: str) -> str:
    return name.replace("layers.", "L").replace(".conv", ".c").replace("shortcut", "sc")


def bits_per_layer(report: dict[str, Any]) -> bytes:
    """Weight and activation bits of each layer, with the argmax policy (before the budget step) as markers."""
    layers = report["layers"]
    argmax = {c["layer"]: c for c in (report.get("budget_step") or {}).get("changed", [])}
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(layers)), 3.4))
    ax.bar(x - 0.2, [L["w_bits"] for L in layers], 0.4, label="weight bits", color=COLORS["w"])
    ax.bar(x + 0.2, [L["a_bits"] for L in layers], 0.4, label="activation bits (input)", color=COLORS["a"])
    for i, L in enumerate(layers):
        c = argmax.get(L["name"])
        if c:
            ax.plot([i - 0.2, i + 0.2], [c["w_bits"][0], c["a_bits"][0]], "v", color=COLORS["argmax"], markersize=8,
                    label="argmax before the budget step" if "argmax before the budget step" not in
                    ax.get_legend_handles_labels()[1] else None)
        if L["held_8bit"]:
            ax.text(i, 8.3, "held", ha="center", fontsize=7, color="grey")
    ax.set_xticks(x, [_short(L["name"]) for L in layers], rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 9.5)
    ax.set_yticks([1, 2, 3, 4, 5, 6, 7, 8])
    ax.set_ylabel("bits")
    ax.set_title("bit widths per layer")
    ax.legend(fontsize=7, loc="lower left", ncols=3, framealpha=0.9)
    return _png(fig)


def shapley_alpha(report: dict[str, Any]) -> bytes:
    """α of every candidate after each Shapley round, one panel per layer that has a choice."""
    hist = report.get("shapley")
    if not hist:
        return _message("no Shapley rounds in this run (method: %s)" % report.get("method"))
    players = [tuple(p) for p in hist["players"]]
    alpha = np.array([r["alpha"] for r in hist["rounds"]])          # rounds × players
    psi = np.array([r["psi"] for r in hist["rounds"]])
    layers = [n for n in dict.fromkeys(p[0] for p in players) if sum(p[0] == n for p in players) > 2]
    cols = min(4, max(1, len(layers)))
    rows = (len(layers) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False, sharex=True)
    rounds = [r["index"] for r in hist["rounds"]]
    for ax, layer in zip(axes.flat, layers):
        for i, (name, kind, bits) in enumerate(players):
            if name != layer:
                continue
            style = "-" if kind == "w" else "--"
            ax.plot(rounds, alpha[:, i], style, marker="o", markersize=3, label=f"{kind}{bits}",
                    color=plt.cm.viridis(bits / 9))
        ax.set_title(_short(layer), fontsize=8)
        ax.set_xticks(rounds)
        ax.tick_params(labelsize=7)
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=6, ncols=2)
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    fig.suptitle(f"α per candidate after each Shapley round (solid: weights, dashed: activations); "
                 f"max |ψ| {np.abs(psi).max():.3g}", fontsize=9)
    fig.supxlabel("round", fontsize=8)
    fig.tight_layout()
    return _png(fig)


#: What a round's ψ is, by SMPQ's score (search.smpq.SCORES).
PSI_TITLES = {"shapley": "Shapley value ψ per candidate (accuracy drop when removed)",
              "last": "ψ per candidate (its walks' last-of-group steps)",
              "singleton": "singleton score per candidate (accuracy alone in its layer, the rest 8-bit, minus W8A8)"}


def shapley_psi(report: dict[str, Any]) -> bytes:
    """ψ (the round's Shapley estimate) of every candidate × round, as a heat map."""
    hist = report.get("shapley")
    if not hist:
        return _message("no Shapley rounds in this run (method: %s)" % report.get("method"))
    players = [tuple(p) for p in hist["players"]]
    keep = [i for i, p in enumerate(players) if sum(q[0] == p[0] for q in players) > 2]
    psi = np.array([r["psi"] for r in hist["rounds"]])[:, keep].T
    fig, ax = plt.subplots(figsize=(max(4, 1.0 * psi.shape[1] + 3), 0.18 * len(keep) + 1.2))
    lim = float(np.abs(psi).max()) or 1.0
    im = ax.imshow(psi, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_yticks(range(len(keep)), [f"{_short(players[i][0])} {players[i][1]}{players[i][2]}" for i in keep], fontsize=6)
    ax.set_xticks(range(psi.shape[1]), [str(r["index"]) for r in hist["rounds"]], fontsize=7)
    ax.set_xlabel("round")
    ax.set_title(PSI_TITLES.get(hist.get("score", "shapley"), PSI_TITLES["shapley"]), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    return _png(fig)


def budget_use(report: dict[str, Any]) -> bytes:
    """Per budget: the chosen policy's Ω, the argmax policy's Ω and the exported blob, against the limit."""
    budget = report.get("budget") or {}
    argmax = (report.get("budget_step") or {}).get("argmax_omega") or {}
    deployed = report.get("deployed") or {}
    fig, axes = plt.subplots(1, 4, figsize=(12, 2.8))
    for ax, (key, (label, scale, unit)) in zip(axes, BUDGET_LABELS.items()):
        e = budget.get(key) or {}
        bars = [("chosen", e.get("value"), COLORS["chosen"]), ("argmax", argmax.get(key), COLORS["argmax"]),
                ("model.smpq", (deployed.get(key) or {}).get("value"), COLORS["deployed"])]
        bars = [(n, v / scale, c) for n, v, c in bars if v is not None]
        if not bars:
            ax.text(0.5, 0.5, "no figure\n(no cost model)", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        else:
            ax.bar([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
        limit = e.get("limit")
        if limit is not None:
            ax.axhline(limit / scale, color="black", ls="--", lw=1.2)
            ax.set_title(f"{label} (limit {limit / scale:.4g} {unit})", fontsize=9)
        else:
            ax.set_title(f"{label} (no limit)", fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("budget use: dashed line = the device/pipeline limit", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def accuracy(report: dict[str, Any]) -> bytes:
    """Top-1: FP, QAT, integer reference and on-board ('not measured' where a figure is missing)."""
    acc = report["accuracies"]
    names = list(acc)
    values = [acc[n]["value"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 3))
    x = np.arange(len(names))
    ax.bar(x, [100 * v if v is not None else 0 for v in values], color=["#7f7f7f", COLORS["w"], COLORS["chosen"], COLORS["deployed"]])
    for i, v in enumerate(values):
        ax.text(i, (100 * v if v is not None else 0) + 2, f"{100 * v:.1f}%" if v is not None else "not measured",
                ha="center", fontsize=8)
    ax.set_xticks(x, [n.replace("_", " ") for n in names], fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_ylabel("top-1 (%)")
    ax.set_title("accuracy: FP → QAT → integer reference → on board", fontsize=9)
    return _png(fig)


def latency_per_op(report: dict[str, Any]) -> bytes:
    """Per runtime op: the cost model's prediction and, when the board measured it, the measurement."""
    lat = report.get("latency")
    if not lat:
        return _message("no latency figures (no device cost model or no FP checkpoint)")
    ops = lat["ops"]
    x = np.arange(len(ops))
    measured = [o["measured"] for o in ops]
    has_measured = any(m is not None for m in measured)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(ops)), 3.4))
    width = 0.4 if has_measured else 0.8
    sub_byte = [o["w_bits"] is not None and o["w_bits"] < 8 for o in ops]
    ax.bar(x - (width / 2 if has_measured else 0), [o["predicted"] for o in ops], width,
           label=f"predicted ({lat['unit']}, cost model)", color=[COLORS["a"] if s else COLORS["w"] for s in sub_byte])
    if any(sub_byte):
        ax.bar([0], [0], color=COLORS["a"], label="predicted, sub-byte weights")
    if has_measured:
        ax.bar(x + width / 2, [m or 0 for m in measured], width, label=f"measured ({lat.get('measured_unit')}, board)",
               color=COLORS["deployed"])
    ax.set_xticks(x, [f"{_short(o['op'])}" + (f" w{o['w_bits']}" if o["w_bits"] else "") for o in ops],
                  rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(lat["unit"])
    ax.set_title("latency per op" + ("" if has_measured else " (predicted; the board's per-op times: not measured)"),
                 fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def artifact_sizes(report: dict[str, Any]) -> bytes:
    """Bytes of every artifact in the run folder."""
    sizes = report.get("artifact_bytes") or {}
    if not sizes:
        return _message("no artifacts")
    names = list(sizes)
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(names) + 1))
    ax.barh(names, [sizes[n] / 1024 for n in names], color=COLORS["w"])
    ax.set_xscale("log")
    ax.set_xlabel("KB (log scale)")
    ax.tick_params(labelsize=7)
    ax.invert_yaxis()
    ax.set_title("artifact sizes", fontsize=9)
    return _png(fig)


def _message(text: str) -> bytes:
    fig, ax = plt.subplots(figsize=(5, 0.8))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9)
    ax.set_axis_off()
    fig.patch.set_edgecolor("grey")
    fig.patch.set_linewidth(1)
    return _png(fig)


#: Section id → (title, figure function), in page order.
FIGURES = {
    "bits": ("Bit widths per layer", bits_per_layer),
    "budget": ("Budget use", budget_use),
    "accuracy": ("Accuracy", accuracy),
    "shapley-alpha": ("Shapley contribution α over the rounds", shapley_alpha),
    "shapley-psi": ("Shapley values ψ per round", shapley_psi),
    "latency": ("Latency per op", latency_per_op),
    "artifacts": ("Artifact sizes", artifact_sizes),
}
