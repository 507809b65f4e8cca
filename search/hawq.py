"""HAWQ-v3 baseline: Hessian-trace sensitivities per layer and bit width, minimised by the shared knapsack.

Steps (on the FP model, BN in eval mode, one seeded calibration batch of the training split):

1. **Hessian traces** by Hutchinson's estimator: Tr(H) = E[vᵀHv] for Rademacher v. One Hessian-vector
   product (double backward, ``torch.autograd``) per sample serves every block at once — a block's
   estimate vₗᵀ(Hv)ₗ has the block's trace as its mean because the cross terms have mean zero. The blocks
   are each layer's weight W and each layer's input activation x (a zero tensor added to the input by a
   forward pre-hook, so the derivatives w.r.t. it are those w.r.t. x). Stopping rule (HAWQ/PyHessian's):
   after ``min_samples``, stop once the running mean of every block changes by less than ``tol`` relative
   to its previous value, at most ``max_samples``. Reported per block: mean, standard error
   (std/√n) and their history at n = 1, 2, 4, … and the final n.
2. **Sensitivity** of layer l at b bits, a second-order estimate of the loss increase:
   Ω_w(l, b) = Tr(H_W)/n_W · ‖Q_b(W) − W‖² and Ω_a(l, b) = Tr(H_x)/n_x · ‖Q_b(x) − x‖², with the
   project's own quantizers (:class:`search.nn.quantizers.WeightQuantizer` / ``ActQuantizer``, MSE-initialised
   steps as in calibration) and x the layer's input on the calibration batch. A negative trace (the loss is
   not convex) is clamped to 0: that block then has no preference.
3. The budget step (:func:`search.runner.select` with ``sensitivity=True``) minimises
   Σ_l Ω_w(l, w_l) + Ω_a(l, a_l) exactly (MCKP), as HAWQ-v3's ILP does.

Activations — what we chose and why: HAWQ-v3 searches weight bits only (activations follow the weight's
width). Here activation widths are searched too, with the same second-order criterion applied to the
layer's input: it is the activation counterpart of the weight term, both are estimates of the same loss
increase (so their sum is what the knapsack may trade across layers and kinds), and it costs nothing
extra: the activation blocks ride in the same Hessian-vector products.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from search.errors import SearchError
from search.nn.quantizers import ActObserver, ActQuantizer, WeightQuantizer

HVP = Callable[[list[Tensor]], list[Tensor]]
LOG_FILE = "hawq_log.jsonl"


@dataclass
class HawqConfig:
    """Hutchinson estimator and calibration batch of one HAWQ search."""

    batch_size: int = 256        # calibration images for the Hessian and the activation errors
    min_samples: int = 16
    max_samples: int = 200
    tol: float = 1e-3            # relative change of every block's running mean that stops the estimator
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise SearchError(f"hawq: batch size must be >= 1 (got {self.batch_size})")
        if not 1 <= self.min_samples <= self.max_samples:
            raise SearchError(f"hawq: need 1 <= min_samples <= max_samples (got {self.min_samples}, {self.max_samples})")
        if self.tol <= 0:
            raise SearchError(f"hawq: tol must be > 0 (got {self.tol})")


@dataclass
class TraceEstimate:
    """Hutchinson estimates of the trace of every block of a Hessian."""

    mean: np.ndarray              # (blocks,)
    stderr: np.ndarray            # (blocks,) std / sqrt(n); 0 when n = 1
    n_samples: int
    converged: bool               # the stopping rule fired before max_samples
    rel_change: float             # the largest relative change of a running mean at the last sample
    history: list[dict[str, Any]] = field(default_factory=list)  # {"n", "mean", "stderr"} at n = 1, 2, 4, …, final


def rademacher(shapes: Sequence[torch.Size], gen: torch.Generator, like: Sequence[Tensor]) -> list[Tensor]:
    """±1 tensors of the given shapes, drawn on the CPU from `gen` (same draws on any device)."""
    return [(torch.randint(0, 2, tuple(s), generator=gen) * 2 - 1).to(t.device, t.dtype) for s, t in zip(shapes, like)]


def hutchinson(hvp: HVP, blocks: Sequence[Tensor], seed: int = 0, min_samples: int = 16, max_samples: int = 200,
               tol: float = 1e-3) -> TraceEstimate:
    """Trace of every diagonal block of H by Hutchinson's estimator, given ``hvp(v) = Hv`` (per block).

    `blocks` are tensors shaped like the blocks (their values are not used). Sample s draws one Rademacher
    vector over all blocks from a generator seeded by `seed`; the estimate of block k is vₖ·(Hv)ₖ.
    """
    gen = torch.Generator().manual_seed(int(seed))
    shapes = [b.shape for b in blocks]
    samples: list[np.ndarray] = []
    history: list[dict[str, Any]] = []
    prev: np.ndarray | None = None
    rel = math.inf
    converged = False

    def stats() -> tuple[np.ndarray, np.ndarray]:
        a = np.stack(samples)
        se = a.std(axis=0, ddof=1) / math.sqrt(len(a)) if len(a) > 1 else np.zeros(a.shape[1])
        return a.mean(axis=0), se

    for s in range(1, max_samples + 1):
        v = rademacher(shapes, gen, blocks)
        hv = hvp(v)
        samples.append(np.array([float((a * b).sum()) for a, b in zip(v, hv)], dtype=np.float64))
        mean, se = stats()
        if s & (s - 1) == 0:
            history.append({"n": s, "mean": mean.tolist(), "stderr": se.tolist()})
        if prev is not None:
            rel = float(np.max(np.abs(mean - prev) / np.maximum(np.abs(prev), 1e-12)))
            if s >= min_samples and rel < tol:
                converged = True
                break
        prev = mean
    mean, se = stats()
    if history[-1]["n"] != len(samples):
        history.append({"n": len(samples), "mean": mean.tolist(), "stderr": se.tolist()})
    return TraceEstimate(mean, se, len(samples), converged, rel, history)


def _layer_inputs(model: nn.Module, layers: Sequence[tuple[str, nn.Module]], x: Tensor) -> list[Tensor]:
    """Each layer's input on batch `x` (no gradient)."""
    seen: dict[str, Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: seen.setdefault(n, inp[0].detach()))
             for n, m in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n, _ in layers if n not in seen]
    if missing:
        raise SearchError(f"hawq: layers {missing} did not run in the forward pass")
    return [seen[n] for n, _ in layers]


def hessian_traces(model: nn.Module, layers: Sequence[tuple[str, nn.Module]], x: Tensor, y: Tensor,
                   cfg: HawqConfig) -> tuple[TraceEstimate, list[Tensor]]:
    """Hutchinson traces of the cross-entropy Hessian w.r.t. every layer's weight, then every layer's input.

    Returns the estimate (blocks: weights of `layers` in order, then their inputs) and the inputs.
    The model is put in eval mode for the duration.
    """
    was_training = model.training
    model.eval()
    try:
        inputs = _layer_inputs(model, layers, x)
        deltas = [torch.zeros_like(t, requires_grad=True) for t in inputs]

        def add_delta(i: int) -> Callable[..., Any]:
            return lambda mod, inp: (inp[0] + deltas[i], *inp[1:])

        hooks = [m.register_forward_pre_hook(add_delta(i)) for i, (_, m) in enumerate(layers)]
        try:
            weights = [m.weight for _, m in layers]
            blocks = [*weights, *deltas]
            loss = nn.functional.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, blocks, create_graph=True)
        finally:
            for h in hooks:
                h.remove()

        def hvp(v: list[Tensor]) -> list[Tensor]:
            out = torch.autograd.grad(grads, blocks, grad_outputs=v, retain_graph=True, allow_unused=True)
            return [torch.zeros_like(b) if o is None else o for o, b in zip(out, blocks)]

        est = hutchinson(hvp, [b.detach() for b in blocks], cfg.seed, cfg.min_samples, cfg.max_samples, cfg.tol)
    finally:
        model.train(was_training)
    return est, inputs


@torch.no_grad()
def weight_error(w: Tensor, bits: int) -> float:
    """‖Q_b(W) − W‖² with the project's per-channel weight quantizer (MSE-initialised step)."""
    q = WeightQuantizer(bits, w.shape[0]).to(w.device)
    q.init_from(w)
    return float(((q(w) - w) ** 2).sum())


@torch.no_grad()
def act_error(x: Tensor, bits: int, seed: int = 0) -> float:
    """‖Q_b(x) − x‖² with the project's activation quantizer, step and signedness calibrated as in calibrate()."""
    obs = ActObserver(seed=seed)
    obs.update(x)
    q = ActQuantizer(bits).to(x.device)
    q.init_from(obs.samples().to(x.device), signed=obs.signed)
    return float(((q(x) - x) ** 2).sum())


def sensitivities(layers: Sequence[tuple[str, nn.Module]], inputs: Sequence[Tensor], traces: TraceEstimate,
                  w_bits: Sequence[int], a_bits: Sequence[int], seed: int = 0) -> dict[str, dict[str, dict[int, float]]]:
    """Ω per layer → "w"/"a" → bits: max(Tr, 0)/n · ‖Q_b(·) − ·‖² (module docstring)."""
    n = len(layers)
    out: dict[str, dict[str, dict[int, float]]] = {}
    for i, ((name, m), x) in enumerate(zip(layers, inputs)):
        tw = max(float(traces.mean[i]), 0.0) / m.weight.numel()
        ta = max(float(traces.mean[n + i]), 0.0) / x.numel()
        out[name] = {"w": {b: tw * weight_error(m.weight.detach(), b) for b in w_bits},
                     "a": {b: ta * act_error(x, b, seed + i) for b in a_bits}}
    return out


def calibration_batch(dataset: Any, subset: int | None, batch_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """The seeded calibration batch: the first shuffled batch of the (subset of the) training split."""
    from search.nn.data import BatchLoader

    loader = BatchLoader(dataset.train.subset(subset), dataset, batch_size, shuffle=True, seed=seed)
    return next(iter(loader))


@dataclass
class HawqResult:
    scores: dict[str, dict[str, dict[int, float]]]   # sensitivities Ω (lower is better)
    traces: TraceEstimate
    layer_names: list[str]
    n_hvp: int

    def details(self) -> dict[str, Any]:
        """Per layer: weight/input trace mean ± stderr and its history; the estimator's convergence."""
        n = len(self.layer_names)
        t = self.traces

        def block(k: int) -> dict[str, Any]:
            return {"trace": float(t.mean[k]), "stderr": float(t.stderr[k]),
                    "history": [{"n": h["n"], "mean": h["mean"][k], "stderr": h["stderr"][k]} for h in t.history]}

        return {"estimator": "hutchinson (rademacher)", "samples": t.n_samples, "converged": t.converged,
                "final_relative_change": t.rel_change, "hessian_vector_products": self.n_hvp,
                "traces": {name: {"w": block(i), "a": block(n + i)} for i, name in enumerate(self.layer_names)}}


def run_hawq(model: nn.Module, dataset: Any, w_bits: Sequence[int], a_bits: Sequence[int], cfg: HawqConfig,
             subset: int | None = None, device: torch.device | str = "cpu",
             held: set[str] | None = None) -> HawqResult:
    """Traces and sensitivities of every quantizable layer of the FP `model` (held layers are skipped)."""
    from search.nn.models import quantizable_layers

    dev = torch.device(device)
    model = model.to(dev)
    layers = [(n, m) for n, m in quantizable_layers(model) if n not in (held or set())]
    if not layers:
        raise SearchError("hawq: no layer has a bit-width choice (all are held at 8 bits)")
    x, y = calibration_batch(dataset, subset, cfg.batch_size, cfg.seed)
    dtype = next(model.parameters()).dtype
    x, y = x.to(dev, dtype), y.to(dev)
    est, inputs = hessian_traces(model, layers, x, y, cfg)
    scores = sensitivities(layers, inputs, est, w_bits, a_bits, cfg.seed)
    return HawqResult(scores, est, [n for n, _ in layers], est.n_samples)
