"""Ω(Q): BOPs, flash, peak SRAM and latency against hand computations; knapsack decomposition; mixtures."""
from __future__ import annotations

import argparse
import itertools
import json
import random

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from deploy.devices import cost
from deploy.devices.cost import BlobCostModel, arena_buffers, layer_options, omega, runtime_schedule
from firmware_harness.format_spec import CHANNEL_BYTES, DATA_ALIGN, HEADER_BYTES, OP_BYTES, TENSOR_BYTES
from search.budget import Budget, LatencyModel
from search.cost import MixtureCost, check, expected_bops, uniform_policy
from search.errors import SearchError
from search.nn.graph import extract_graph
from search.nn.models import build_model
from search.planner import check_plan, naive_sum, peak_live_bytes


class Tiny(nn.Module):
    """conv1 3x3 (2→4, no bias) → BN → ReLU → conv2 1x1 (4→4, bias) ; + residual → avg pool → FC(4→3)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.conv1(x)))
        return self.fc(torch.flatten(self.pool(self.conv2(y) + y), 1))


class Chain(nn.Module):
    """conv1 3x3 (2→4) → ReLU → conv2 3x3 stride 2 (4→8) → flatten → FC(72→5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(72, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.conv2(self.relu(self.conv1(x)))))


@pytest.fixture(scope="module")
def tiny():
    return extract_graph(Tiny(), (2, 6, 6))


# Hand figures of Tiny on 2×6×6: conv1 MACs 4·6·6·(2·9) = 2592, 72 weights; conv2 MACs 144·4 = 576,
# 16 weights (+4 bias); fc MACs 12, 12 weights (+3 bias).
# Runtime ops (8): normalise (input → conv1's grid), conv1 (int8: read by conv2 and the residual add),
# requantize (y → conv2's grid), conv2, add, pool, requantize (pool → fc's grid), fc. Runtime tensors (9):
# input 72, normalised 72, y int8 144, y in conv2's grid 144, conv2 out 144, add out 144, pool 4, pool in
# fc's grid 4, logits 3.
MACS = {"conv1": 2592, "conv2": 576, "fc": 12}
RECORDS = 32 + 9 * 24 + 8 * 64       # header + tensor records + op records
NORMALISE = 20 + 4                    # channel parameters 2 × 9 B → 20, 2 weight bytes → 4


def test_format_constants_are_the_documented_ones() -> None:
    assert (HEADER_BYTES, TENSOR_BYTES, OP_BYTES, CHANNEL_BYTES, DATA_ALIGN) == (32, 24, 64, 9, 4)


def test_runtime_schedule_by_hand(tiny) -> None:
    sched = runtime_schedule(tiny)
    assert [op.kind for op in sched.ops] == ["normalise", "conv2d", "requantize", "conv2d", "add", "pool",
                                             "requantize", "fully_connected"]
    assert [op.name for op in sched.ops[1:3]] == ["conv1", "conv2.requantize"]  # conv1 runs once (issue 12)
    assert [t.numel for t in sched.tensors] == [72, 72, 144, 144, 144, 144, 4, 4, 3]
    assert [t.grid_of for t in sched.tensors] == [None, "conv1", None, "conv2", None, None, None, "fc", None]
    assert [(t.first_use, t.last_use) for t in sched.tensors[2:4]] == [(1, 4), (2, 3)]  # int8 y kept for the add
    assert [m.op_type for m in sched.ops[1].fused] == ["bn", "relu"] and sched.ops[1].act == "relu"
    assert sched.tensors[-1].last_use == len(sched.ops)  # the logits outlive the last op


def test_uniform_8bit_by_hand(tiny) -> None:
    o = omega(tiny, uniform_policy(tiny, 8, 8))
    assert o.bops == (2592 + 576 + 12) * 64 == 203_520
    # + conv1 (channel parameters 4·9 = 36, 72 weight bytes) + conv2 (36 + 16) + fc (27 → 28, + 12)
    assert o.flash_bytes == RECORDS + NORMALISE + (36 + 72) + (36 + 16) + (28 + 12) == 984
    assert (o.macs, o.params) == (3180, 72 + 20 + 15)


def test_mixed_policy_by_hand(tiny) -> None:
    policy = {"conv1": (3, 8), "conv2": (2, 4), "fc": (8, 2)}
    o = omega(tiny, policy)
    assert o.bops == 2592 * 3 * 8 + 576 * 2 * 4 + 12 * 8 * 2 == 67_008
    # conv1: 36 + ⌈72·3/8⌉ = 27 → 28; conv2: 36 + ⌈16·2/8⌉ = 4; fc: 27 → 28, + 12
    assert o.flash_bytes == RECORDS + NORMALISE + (36 + 28) + (36 + 4) + (28 + 12) == 928
    rows = {r.name: r for r in o.layers}
    assert (rows["conv1"].w_bits, rows["conv1"].a_bits, rows["conv1"].flash_bytes) == (3, 8, 36 + 28)
    assert rows["conv2.requantize"].flash_bytes == 0 and rows["conv2.requantize"].macs == 0
    assert rows["add"].w_bits is None and rows["add"].bops == 0


def test_peak_sram_residual_by_hand(tiny) -> None:
    o = omega(tiny, uniform_policy(tiny, 8, 8), alignment=1)
    # at conv2 (step 3): y int8 (kept for the residual add), y in conv2's grid and conv2's output, 144 each,
    # and conv2's CONV_TILE = 4 int16 patches of K = 1·1·4: 2·4·4 = 32 B (conv1's step: 72 + 144 + 144)
    assert o.sram_bytes == 3 * 144 + 32 == 464
    check_plan(o.plan)
    assert o.sram_bytes <= naive_sum(arena_buffers(runtime_schedule(tiny), uniform_policy(tiny, 8, 8)), 1)
    # below 8 bits a conv2d also decodes one int16 weight row: conv2 at w4 needs 2·4·5 = 40 B
    assert omega(tiny, {"conv1": (8, 8), "conv2": (4, 8), "fc": (8, 8)}, alignment=1).sram_bytes == 3 * 144 + 40
    # without scratch the peak is at conv2 / the add: three 144 B tensors
    assert omega(tiny, uniform_policy(tiny, 8, 8), alignment=1, scratch=None).sram_bytes == 3 * 144
    assert omega(tiny, uniform_policy(tiny, 8, 8)).sram_bytes % 16 == 0


def test_peak_sram_chain_int8_and_packed() -> None:
    g = extract_graph(Chain(), (2, 6, 6))
    policy = {"conv1": (8, 4), "conv2": (8, 2), "fc": (8, 8)}
    # ops: normalise, conv1, conv2, fc (every layer output feeds only the next layer: no requantize)
    # int8: at conv2 its input 144 + output 72 + 4 int16 patches of K = 3·3·4: 2·36·4 = 288 → 504
    assert omega(g, policy, alignment=1).sram_bytes == 504
    # packed: at conv2 its input at 2 bits 36 + output 72 (read by fc at 8 bits) + 288 → 396
    packed = omega(g, policy, packed_activations=True, alignment=1)
    assert packed.sram_bytes == 396
    assert cost.tensor_bits(runtime_schedule(g), policy) == [8, 4, 2, 8, 8]


def test_scratch_hook_replaces_kernel_scratch(tiny) -> None:
    more = omega(tiny, uniform_policy(tiny, 8, 8), alignment=1,
                 scratch=lambda op, w_bits: 1000 if op.name == "conv2" else 0).sram_bytes
    assert more == 3 * 144 + 1000


LM = LatencyModel(clock_hz=100e6, per_layer_overhead_cycles=50.0,
                  cycles_per_mac={"conv2d": {4: 0.5, 8: 1.0}, "fully_connected": {8: 2.0}, "add": {8: 3.0},
                                  "pool": {8: 0.25}})


def test_latency_by_hand(tiny) -> None:
    o = omega(tiny, {"conv1": (4, 8), "conv2": (8, 8), "fc": (2, 8)}, LM)
    cycles = ((50 + 72 * 1.0)                            # normalise: depthwise (→ conv2d table), 1 MAC/element
              + (50 + 2592 * 0.5) + (50 + 144 * 3.0)     # conv1 at 4 bits, once; y → conv2's grid (priced like add)
              + (50 + 576 * 1.0) + (50 + 144 * 3.0)      # conv2; add of 144 elements
              + (50 + 144 * 0.25) + (50 + 4 * 3.0)       # pool over 144 inputs; requantize (priced like add)
              + (50 + 12 * 2.0))                         # fc (2 bits → the 8-bit entry)
    assert o.latency_s == pytest.approx(cycles / 100e6, rel=1e-12)
    assert omega(tiny, uniform_policy(tiny, 8, 8)).latency_s is None


def test_check_reports_violations(tiny) -> None:
    o = omega(tiny, uniform_policy(tiny, 8, 8), LM)
    assert check(o, Budget(flash_bytes=o.flash_bytes, sram_bytes=o.sram_bytes, bops=203_520)) == []
    names = [v.name for v in check(o, Budget(flash_bytes=o.flash_bytes - 1, sram_bytes=o.sram_bytes - 1,
                                             latency_s=o.latency_s))]
    assert names == ["flash_bytes", "sram_bytes"]
    assert "exceeds the budget" in str(check(o, Budget(bops=1))[0])
    with pytest.raises(SearchError, match="latency model"):
        check(omega(tiny, uniform_policy(tiny, 8, 8)), Budget(latency_s=1.0))


def test_policy_errors_are_one_line(tiny) -> None:
    with pytest.raises(SearchError, match="'conv2' .* missing"):
        omega(tiny, {"conv1": (8, 8), "fc": (8, 8)})
    with pytest.raises(SearchError, match="w_bits must be"):
        omega(tiny, {"conv1": (9, 8), "conv2": (8, 8), "fc": (8, 8)})
    with pytest.raises(SearchError, match="out of range"):
        layer_options(tiny, [16], [8])


def test_blob_cost_model_is_the_protocol_the_search_receives(tiny) -> None:
    """What deploy hands the search (search.cost.CostModel) is this module's Ω and table, with its settings."""
    model = BlobCostModel(LM, packed_activations=True)
    policy = {"conv1": (4, 8), "conv2": (2, 4), "fc": (8, 4)}
    assert model.omega(tiny, policy).as_dict() == omega(tiny, policy, LM, packed_activations=True).as_dict()
    table = model.layer_options(tiny, [2, 8], [4, 8], sram_budget=200)
    assert table == layer_options(tiny, [2, 8], [4, 8], LM, sram_budget=200, packed_activations=True)
    assert model.describe() == {"latency_model": repr(LM), "packed_activations": True}
    bops_only = MixtureCost(tiny, [2, 8], [4, 8])  # without a cost model the search still knows BOPs
    assert bops_only.keys == ("bops",)
    assert MixtureCost(tiny, [2, 8], [4, 8], model).keys == ("bops", "flash_bytes", "latency_s")


def test_layer_options_are_additive_and_flag_sram(tiny) -> None:
    ws, as_ = [2, 4, 8], [4, 8]
    table = layer_options(tiny, ws, as_, LM, sram_budget=200)
    assert [lo.name for lo in table] == ["conv1", "conv2", "fc"] and len(table) == 3
    rng = random.Random(0)
    for _ in range(10):
        choice = [rng.randrange(len(lo.options)) for lo in table]
        policy = {lo.name: (lo.options[i].w_bits, lo.options[i].a_bits) for lo, i in zip(table, choice)}
        o = omega(tiny, policy, LM)
        for key in ("bops", "flash_bytes", "latency_s"):
            total = table.fixed[key] + sum(lo.options[i].costs[key] for lo, i in zip(table, choice))
            assert total == pytest.approx(getattr(o, key), rel=1e-12)
    conv1 = table[0].options[0]
    assert (conv1.w_bits, conv1.sram_bytes) == (2, 72 + 144 + 2 * 18 * 5) and not conv1.feasible  # > 200 B
    assert all(o.sram_bytes == 4 + 3 + 8 and o.feasible for o in table[2].options)


def test_expected_bops_one_hot_equals_discrete_and_has_gradient(tiny) -> None:
    ws, as_ = [2, 4, 8], [4, 8]
    policy = {"conv1": (4, 8), "conv2": (2, 4), "fc": (8, 4)}
    w_onehot = torch.tensor([[float(b == policy[n][0]) for b in ws] for n in ("conv1", "conv2", "fc")])
    a_onehot = torch.tensor([[float(b == policy[n][1]) for b in as_] for n in ("conv1", "conv2", "fc")])
    assert expected_bops(tiny, w_onehot, a_onehot, ws, as_).item() == omega(tiny, policy).bops

    alpha = torch.zeros(3, len(ws), requires_grad=True)
    beta = torch.zeros(3, len(as_), requires_grad=True)
    mix = MixtureCost(tiny, ws, as_, BlobCostModel(LM))
    e = mix.bops(alpha.softmax(-1), {"conv1": beta[0].softmax(-1), "conv2": beta[1].softmax(-1), "fc": beta[2].softmax(-1)})
    assert e.item() == pytest.approx(sum(MACS.values()) * (14 / 3) * 6)  # uniform mixture: E[w]·E[a]
    e.backward()
    assert alpha.grad is not None and beta.grad is not None
    assert torch.all(alpha.grad[:, 2] > alpha.grad[:, 0])  # more weight on 8 bits raises BOPs
    norm = mix.bops(torch.eye(3)[[2, 2, 2]], torch.eye(2)[[1, 1, 1]], normalized=True)
    assert norm.item() == pytest.approx(64.0)  # uniform W8A8: 64 bit-products per MAC
    # the full expectation (flash, latency) also collapses to the discrete Ω on one-hot inputs
    full = mix(w_onehot, a_onehot)
    o = omega(tiny, policy, LM)
    assert full["flash_bytes"].item() == o.flash_bytes
    assert full["latency_s"].item() == pytest.approx(o.latency_s, rel=1e-12)
    with pytest.raises(SearchError, match="shape"):
        mix.bops(torch.ones(2, 3), a_onehot)


@pytest.mark.parametrize("name", ["resnet8"])
def test_zoo_omega_consistency(name: str) -> None:
    g = extract_graph(build_model(name, (3, 32, 32), 10))
    o8, o4 = omega(g, uniform_policy(g, 8, 8)), omega(g, uniform_policy(g, 4, 4))
    assert o8.bops == 64 * g.macs and o4.bops == 16 * g.macs
    sched = runtime_schedule(g)
    layer_ops = [op for op in sched.ops if op.node is not None and op.node.quantizable]
    assert [op.node for op in layer_ops] == g.layers()  # every layer runs once (issue 12: no work done twice)
    weights = sum(n.weight_params for n in g.layers())
    assert o8.flash_bytes - o4.flash_bytes == pytest.approx(weights / 2, abs=4 * len(g.layers()))
    bufs = cost.arena_buffers(sched)
    assert peak_live_bytes(bufs) <= o8.sram_bytes <= sum(b.size_bytes for b in bufs)
    # the add's output (read by layers.1.conv1 and layers.1.shortcut.0) is requantised right before each
    assert [op.name for op in sched.ops[5:7]] == ["add", "layers.1.conv1.requantize"]
    # peak at layers.0.conv1: conv1's int8 output (kept for the add), its copy in layers.0.conv1's grid and
    # the output, 16×32×32 bytes each, + 4 int16 patches of K = 3·3·16: 1,152 B
    assert o8.sram_bytes == 3 * 16 * 32 * 32 + 1152


def _args(**kw) -> argparse.Namespace:
    base = dict(model="resnet8", device=None, dataset=None, data_dir=None, seed=0, policy=None, all_models=False,
                input_shape="3,32,32", num_classes=10, packed_activations=False, alignment=16)
    base.update(kw)
    return argparse.Namespace(**base)


def test_cli_cost_prints_table(tmp_path, capsys) -> None:
    from deploy.cli import cost as cmd_cost

    parser = argparse.ArgumentParser()
    cmd_cost.add_arguments(parser)
    assert parser.parse_args(["--all", "--policy", "w4a8"]).all_models
    g = extract_graph(build_model("resnet8", (3, 32, 32), 10))
    policy = {n: (4 if i % 2 else 8, 8) for i, n in enumerate(g.layer_names())}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"layers": [{"name": n, "w_bits": w, "a_bits": a} for n, (w, a) in policy.items()]}))
    assert cmd_cost.run(_args(policy=str(path))) == 0
    out = capsys.readouterr().out
    expected = omega(g, policy)
    assert "layers.2.conv2" in out and "12.50 M" in out and f"{expected.bops / 1e6:,.1f} M" in out
    with pytest.raises(SearchError, match="--policy must be"):
        cmd_cost.run(_args(policy="w9a9"))


class DWBlock(nn.Module):
    """stem conv → [1×1 expand → ReLU6 → depthwise 3×3 → ReLU6 → 1×1 project] + residual → pool → FC."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _blob_figures(model: nn.Module, shape: tuple[int, int, int], policy: dict) -> tuple[int, int]:
    """(blob bytes, arena bytes) of `model` quantized by `policy`, lowered and packed by deploy."""
    from deploy.export.smpq import build_smpq
    from deploy.lower.lower import lower
    from firmware_harness import smpq_format as fmt
    from search.policy import Policy
    from search.nn.qmodel import quantize_model

    model.input_shape = shape
    q = quantize_model(model.eval(), Policy(policy)).eval()
    ir = lower(q, [0.5] * shape[0], [0.25] * shape[0], torch.randn(2, *shape, generator=torch.Generator().manual_seed(0)))
    blob = build_smpq(ir)
    return len(blob), fmt.HEADER.unpack(blob[:fmt.HEADER_BYTES])[9]


@pytest.mark.parametrize("make, shape", [(Tiny, (2, 6, 6)), (DWBlock, (3, 8, 8))])
def test_omega_equals_the_exported_blob(make, shape) -> None:
    """Ω's flash and SRAM are the size and arena of the .smpq blob that deploy writes for the policy."""
    torch.manual_seed(0)
    model = make()
    g = extract_graph(model, shape)
    bits = itertools.cycle([(2, 4), (8, 8), (3, 6), (5, 2)])
    policy = {n: next(bits) for n in g.layer_names()}
    o = omega(g, policy)
    assert _blob_figures(model, shape, policy) == (o.flash_bytes, o.sram_bytes)


@pytest.mark.parametrize("name", ["resnet8", "mbv2"])
def test_omega_equals_the_exported_blob_zoo(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, (3, 32, 32), 10)
    g = extract_graph(model)
    policy = {n: ((2, 4, 8)[i % 3], (4, 8)[i % 2]) for i, n in enumerate(g.layer_names())}
    o = omega(g, policy)
    assert _blob_figures(model, (3, 32, 32), policy) == (o.flash_bytes, o.sram_bytes)
