"""EdMIPS baseline (Cai & Vasconcelos, CVPR'20) on the same composite supernet as SMPQ.

The mixture coefficients are softmax(α) per layer and kind (the supernet's ``softmax`` mode); α is
trained by gradient together with the weights W on the same training batches, with its own
optimizer (Adam) and no weight decay:

    loss = CE + cd · E[BOPs] / MACs

E[BOPs] is the exact expectation of the discrete BOPs under the mixture (:class:`search.cost.MixtureCost`),
normalised by the layers' total MACs as EdMIPS does (the mean bit product per MAC: 64 at W8A8), so
cd has the same meaning for every model. Under a flash budget the complexity is the model's size instead
(``complexity="flash"``, EdMIPS's model-size variant): E[flash bytes] of the deployment's cost model,
scaled to 64 at W8A8 like the BOPs term so that cd keeps its scale. The first ``warmup_epochs`` train W only
(α frozen).
The policy is the argmax of α per layer and kind. One unit of work = one epoch; the search is
resumable exactly like SMPQ (``search_state.pt`` after every epoch, ``edmips_log.jsonl``,
``supernet.pt``). The orchestration sweeps cd to reach a BOPs (or flash) budget (one output folder or
state name per cd).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from search.cost import CostModel, MixtureCost
from search.nn.data import Dataset
from search.errors import SearchError
from search.nn.graph import extract_graph
from search.search_state import STATE_FILE, SearchResult, SupernetSearch
from search.supernet import Supernet
from search.nn.train import deterministic_mode, resolve_device

LOG_FILE = "edmips_log.jsonl"
COMPLEXITIES = ("bops", "flash")


@dataclass
class EdMIPSConfig:
    """Hyper-parameters of one EdMIPS search."""

    epochs: int = 10                    # total, warm-up included
    warmup_epochs: int = 0              # W only, α frozen
    cd: float = 1e-3                    # complexity weight
    complexity: str = "bops"            # "bops" (E[BOPs]/MACs) or "flash" (E[flash], 64 at W8A8; needs a cost model)
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    arch_lr: float = 0.01               # Adam on α
    arch_betas: tuple[float, float] = (0.9, 0.999)
    alpha_init_std: float = 1e-3        # small random α breaks ties
    subset: int | None = None
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        self.arch_betas = (float(self.arch_betas[0]), float(self.arch_betas[1]))
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1 (got {self.epochs})"),
            (0 <= self.warmup_epochs <= self.epochs, f"warmup epochs must be in [0, epochs] (got {self.warmup_epochs})"),
            (self.cd >= 0, f"the complexity weight cd must be >= 0 (got {self.cd})"),
            (self.complexity in COMPLEXITIES,
             f"complexity must be one of {', '.join(COMPLEXITIES)} (got '{self.complexity}')"),
            (self.batch_size >= 1, f"batch size must be >= 1 (got {self.batch_size})"),
            (self.lr > 0 and self.arch_lr > 0, f"learning rates must be > 0 (got {self.lr}, {self.arch_lr})"),
            (all(0 <= b < 1 for b in self.arch_betas), f"Adam betas must be in [0, 1) (got {self.arch_betas})"),
            (self.alpha_init_std >= 0, f"alpha init std must be >= 0 (got {self.alpha_init_std})"),
            (self.subset is None or self.subset >= 1, f"subset must be >= 1 image (got {self.subset})"),
        ]
        for ok, message in checks:
            if not ok:
                raise SearchError(f"edmips: {message}")


def mixture_cost_for(supernet: Supernet, cost_model: CostModel | None = None) -> MixtureCost:
    """The expected-Ω model of the supernet's mixture (candidates: the union over its layers); BOPs
    only without the deployment's `cost_model`."""
    graph = extract_graph(supernet.model, supernet.input_shape)
    if graph.layer_names() != supernet.layer_names:
        raise SearchError("the supernet's layers and its execution graph disagree: build the supernet from a zoo model")
    w = sorted({p.bits for p in supernet.players if p.kind == "w"})
    a = sorted({p.bits for p in supernet.players if p.kind == "a"})
    return MixtureCost(graph, w, a, cost_model)


def mixture_probs(supernet: Supernet, cost: MixtureCost, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer coefficients (differentiable in α) laid out over the cost model's candidates: (L, |W|), (L, |A|).

    On the CPU, where the cost model's tables live (gradients flow back to α on any device).
    """
    if cost.names != supernet.layer_names:
        raise SearchError("the mixture cost model was built for other layers than the supernet's: use mixture_cost_for(supernet)")
    c = supernet.coefficients(mask).cpu()
    w_pos = torch.tensor([cost.w_candidates.index(p.bits) if p.kind == "w" else -1 for p in supernet.players])
    a_pos = torch.tensor([cost.a_candidates.index(p.bits) if p.kind == "a" else -1 for p in supernet.players])
    rows = []
    for kind, pos, width in (("w", w_pos, len(cost.w_candidates)), ("a", a_pos, len(cost.a_candidates))):
        out = []
        for _, (ws, as_) in supernet.layer_slices().items():
            sl = ws if kind == "w" else as_
            row = torch.zeros(width, dtype=c.dtype, device=c.device)
            out.append(row.index_add(0, pos[sl].to(c.device), c[sl]))
        rows.append(torch.stack(out))
    return rows[0], rows[1]


def complexity_loss(supernet: Supernet, cost: MixtureCost, complexity: str = "bops") -> torch.Tensor:
    """The mixture's expected complexity, differentiable in α (float32 scalar): E[BOPs]/MACs, or with
    ``complexity="flash"`` 64 · E[flash bytes] / flash bytes at the widest candidates (both 64 at W8A8)."""
    w, a = mixture_probs(supernet, cost)
    if complexity == "flash":
        if "flash_bytes" not in cost.keys:
            raise SearchError("EdMIPS's flash complexity needs the deployment's cost model: "
                              "mixture_cost_for(supernet, cost_model)")
        iw, ia = cost.w_candidates.index(max(cost.w_candidates)), cost.a_candidates.index(max(cost.a_candidates))
        widest = cost.fixed["flash_bytes"] + cost.tables["flash_bytes"][:, iw, ia].sum()  # every layer at its widest
        e = 64.0 * cost(w, a)["flash_bytes"] / widest
    else:
        e = cost.bops(w, a, normalized=True)
    return e.to(device=supernet.alpha.device, dtype=supernet.alpha.dtype)


def run_edmips(supernet: Supernet, dataset: Dataset, cfg: EdMIPSConfig, out_dir: str | Path,
               device: str | torch.device = "auto", cost: MixtureCost | None = None,
               state_name: str = STATE_FILE, log_name: str = LOG_FILE) -> SearchResult:
    """Run (or resume, or just reload) an EdMIPS search in `out_dir`; `cost` defaults to :func:`mixture_cost_for`."""
    if supernet.coefficient_mode != "softmax":
        raise SearchError(f"EdMIPS needs a supernet in 'softmax' coefficient mode, got '{supernet.coefficient_mode}'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    cost = cost if cost is not None else mixture_cost_for(supernet)
    with deterministic_mode(dev):
        return EdMIPSSearch(supernet, dataset, cfg, out, dev, cost, state_name, log_name).run()


class EdMIPSSearch(SupernetSearch):
    """Joint gradient training of W (SGD) and α (Adam) with the complexity loss, one unit per epoch."""

    method = "edmips"

    def __init__(self, supernet: Supernet, dataset: Dataset, cfg: EdMIPSConfig, out: Path, dev: torch.device,
                 cost: MixtureCost, state_name: str, log_name: str) -> None:
        self.cost = cost
        super().__init__(supernet, dataset, cfg, out, dev, state_name, log_name,
                         {"cost": [cost.names, cost.w_candidates, cost.a_candidates, list(cost.keys)]})
        supernet.set_alpha(torch.from_numpy(self.alpha).float())
        supernet.alpha.requires_grad_(True)
        self.arch_optimizer = torch.optim.Adam([supernet.alpha], lr=cfg.arch_lr, betas=cfg.arch_betas, weight_decay=0.0)

    def _plan(self) -> tuple[list[tuple[str, int]], dict[str, int]]:
        cfg = self.cfg
        units = [("warmup", e) for e in range(cfg.warmup_epochs)] + [("train", e) for e in range(cfg.warmup_epochs, cfg.epochs)]
        return units, {"warmup": self.steps_per_epoch, "train": self.steps_per_epoch}

    def _extra_state(self) -> dict[str, Any]:
        return {"arch_optimizer": self.arch_optimizer.state_dict()}

    def _restore_extra(self, s: dict[str, Any]) -> None:
        self.arch_optimizer.load_state_dict(s["arch_optimizer"])
        self.supernet.set_alpha(torch.from_numpy(self.alpha).float())

    def _details(self) -> dict[str, Any]:
        with torch.no_grad():
            c = float(complexity_loss(self.supernet, self.cost))
        return {"cd": self.cfg.cd, "complexity": self.cfg.complexity, "expected_bops_per_mac": c,
                "expected_bops": c * self.cost.total_macs}

    def _unit(self, kind: str, index: int, advance: Callable[..., None]) -> dict[str, Any]:
        sn = self.supernet
        if kind == "warmup":
            sn.alpha.requires_grad_(False)
            record = self._train(kind, index, advance)
            sn.alpha.requires_grad_(True)
        else:
            record = self._train(kind, index, advance,
                                 extra_loss=lambda: self.cfg.cd * complexity_loss(sn, self.cost, self.cfg.complexity),
                                 extra_optimizers=[self.arch_optimizer])
        self.alpha = sn.alpha.detach().double().cpu().numpy().copy()
        record["complexity_loss"] = record.pop("extra_loss")
        with torch.no_grad():
            record["expected_bops_per_mac"] = float(complexity_loss(sn, self.cost))
        record["alpha"] = self.alpha.tolist()
        return record
