"""The cheap Shapley round: IncrementalForward is bit-identical to the plain masked forward, and so is ψ."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from search.nn.data import load_dataset
from search.nn.models import build_model
from search.smpq import LOG_FILE, SMPQConfig, SMPQSearch, run_smpq
from search.supernet import IncrementalForward, Supernet


@pytest.mark.parametrize("model", ["resnet8", "mbv2"])
def test_incremental_forward_is_bit_identical_along_a_removal_walk(model: str) -> None:
    torch.manual_seed(0)
    net = build_model(model, (3, 16, 16), 10)
    sn = Supernet(net, (2, 4, 8), (4, 8), first_last_8bit=True, seed=0)
    sn.set_alpha(torch.randn(sn.num_players, generator=torch.Generator().manual_seed(1)))
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    order = np.random.default_rng(0).permutation(sn.num_players)
    with sn.masked():
        fwd = IncrementalForward(sn)
        assert fwd.cacheable
        if model == "mbv2":  # every ReLU6 reads a BatchNorm output nothing else reads: all run in place
            assert not fwd.out_of_place
        mask = torch.ones(sn.num_players)
        for step, player in enumerate(order[: sn.num_players // 2]):
            if step:
                mask[player] = 0.0
            sn.set_mask(mask)
            assert torch.equal(fwd(x), sn(x)), f"step {step}"
        # a new batch recomputes everything
        x2 = x.flip(0)
        assert torch.equal(fwd(x2), sn(x2))
    assert fwd.recomputed < 0.8 * fwd.total  # the walk actually reused work
    if model == "mbv2":
        assert all(m.inplace for m in sn.modules() if hasattr(m, "inplace") and isinstance(m, torch.nn.ReLU6))


def test_psi_of_a_round_is_bit_identical_with_and_without_reuse(tmp_path: Path) -> None:
    ds = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    net = build_model("resnet8", ds.input_shape, ds.num_classes)
    cfg = SMPQConfig(warmup_epochs=1, rounds=2, steps_per_round=2, permutations=3, val_batch_size=32, batch_size=64,
                     subset=256, seed=3, progress=False)
    logs = []
    for incremental in (True, False):
        SMPQSearch.incremental = incremental
        try:
            run_smpq(Supernet(net, seed=0), ds, cfg, tmp_path / str(incremental), device="cpu")
        finally:
            SMPQSearch.incremental = True
        logs.append([json.loads(line) for line in (tmp_path / str(incremental) / LOG_FILE).read_text().splitlines()])
    rounds = [[r for r in log if r["kind"] == "round"] for log in logs]
    assert len(rounds[0]) == 2
    for a, b in zip(*rounds):
        assert a["psi"] == b["psi"] and a["alpha"] == b["alpha"] and a["n_evaluations"] == b["n_evaluations"]
        assert 0 < a["nodes_recomputed_fraction"] < 1 and "nodes_recomputed_fraction" not in b


class _InPlace(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4 * 6 * 6, 2)
        self.input_shape = (3, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).add_(1.0).flatten(1))


def test_a_graph_with_in_place_methods_is_not_cached_but_still_exact() -> None:
    torch.manual_seed(0)
    sn = Supernet(_InPlace(), (2, 4), (4, 8), seed=0)
    x = torch.randn(2, 3, 8, 8)
    with sn.masked():
        fwd = IncrementalForward(sn)
        assert not fwd.cacheable
        assert torch.equal(fwd(x), sn(x))


class _SharedReads(torch.nn.Module):
    """In-place ReLUs whose input is read again: the model's input, and a BatchNorm output a residual also read
    (before the ReLU, so in place and out of place compute the same)."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = torch.nn.ReLU(inplace=True)
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.relu = torch.nn.ReLU(inplace=True)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = torch.nn.ReLU(inplace=True)
        self.fc = torch.nn.Linear(4 * 8 * 8, 2)
        self.input_shape = (3, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv1(self.pre(x)))
        r = y + 1.0
        z = self.relu2(self.conv2(self.relu(y)))  # conv2's output: one reader, so relu2 may run in place
        return self.fc((z + r).flatten(1))


def test_in_place_modules_run_out_of_place_where_their_input_is_read_again() -> None:
    torch.manual_seed(0)
    sn = Supernet(_SharedReads(), (2, 4), (4, 8), seed=0)
    x = torch.randn(4, 3, 8, 8)
    x0 = x.clone()
    with sn.masked():
        fwd = IncrementalForward(sn)
        assert {str(fwd.nodes[i].target) for i in fwd.out_of_place} == {"pre", "relu"}
        mask = torch.ones(sn.num_players)
        for step, player in enumerate(np.random.default_rng(0).permutation(sn.num_players)[:6]):
            mask[player] = 0.0
            sn.set_mask(mask)
            assert torch.equal(fwd(x), sn(x0.clone())), f"step {step}"  # the plain forward overwrites its input
    assert torch.equal(x, x0)  # IncrementalForward never does: it is the cached batch
    assert all(m.inplace for m in (sn.model.pre, sn.model.relu, sn.model.relu2))
