"""Ω(Q) of a deployment: BOPs, flash, peak SRAM and latency of a policy as the ``.smpq`` runtime runs it.

The one cost model that knows the deployment format. The search receives it as a
:class:`search.cost.CostModel` (:class:`BlobCostModel`); deploy, the CLI's ``cost`` command and the
report call it directly. Works on an :class:`~search.nn.graph.ExecGraph`.

What the device runs is :func:`search.nn.graph.runtime_schedule` of the graph — the same function the
lowering (deploy/lower/lower.py) follows, so the ops priced here are the ops deployed: BN and ReLU/ReLU6
folded, flatten/reshape/identity as views, every node run once, and

* a ``normalise`` op (a 1×1 depthwise convolution, 8-bit, one code per channel) writing the raw
  input into each first layer's input grid;
* a layer or add read by exactly one quantized layer writes directly in that reader's a-bit grid;
  any other value (residual paths, pooling, several reader grids, the model output) is written once
  into an int8 tensor, and each quantized layer reading it gets a ``requantize`` op into its grid
  right before it (one op per element, instead of running the producer once per grid);
* pooling keeps its input's int8 tensor.

Per quantizable layer l with policy (w_l, a_l) — a_l is the bit width of the layer's *input*:

* BOPs_l = MACs_l · w_l · a_l (once per layer: a property of the model, not of the lowering).
* Flash = the packed ``.smpq`` blob the C runtime reads (sizes from firmware_harness/format_spec.py)::

      flash = HEADER_BYTES + TENSOR_BYTES · n_tensors + OP_BYTES · n_ops
            + Σ_weighted ops  align_up(out_channels · CHANNEL_BYTES, DATA_ALIGN)   (channel_param_bytes)
            + Σ_layers        align_up(⌈weights · w / 8⌉, DATA_ALIGN)              (weight_region_bytes)

  ``HEADER_BYTES`` (32): magic, version, counts, total size, CRC32, arena size.
  ``TENSOR_BYTES`` (24): one record per runtime tensor (shape, bits, zero point, clamp, scale,
  arena offset). ``OP_BYTES`` (64): one fixed-size record per runtime op (kind, bits,
  geometry, tensor indices; weighted ops: channel-parameter and weights offsets, scratch;
  add/requantize: multipliers). Channel parameters of a weighted op (every layer, and
  ``normalise``): int32 bias[C] (BN folded — always present), int32 multiplier[C], int8 shift[C]
  (``CHANNEL_BYTES`` = 4 + 4 + 1 = 9), zero padding to ``DATA_ALIGN`` (4) bytes.
  Packed weights, once per layer and once per ``normalise`` op (8 bits):
  the weights packed at w bits (weights = the torch weight's element count), zero padding to
  ``DATA_ALIGN`` bytes.
* Peak SRAM = the arena :func:`search.planner.plan_arena` (the blob exporter's plan) assigns to the runtime tensors (one step
  per runtime op; the model output lives one step past the last op) and per-op scratch buffers —
  by default the C kernels' int16 patches (:func:`kernel_scratch_bytes`, the format spec's
  ``scratch_bytes`` with K = kh·kw·C_in for conv2d, the inputs for fully connected). Activations are int8
  containers (1 byte per element) or, with ``packed_activations``, ⌈n·a/8⌉ bytes for tensors in a
  layer's a-bit grid (8 bits otherwise).
* Latency = Σ cycles / clock_hz over the runtime ops with a :class:`~search.budget.LatencyModel`:
  each layer ``work_cycles(*weighted_work(kind, MACs, output elements, output channels), w, a)`` (MACs,
  outputs and gathered input values; a conv2d with K % 4 != 0 priced as conv2d_unaligned); normalise as
  depthwise_conv2d with one MAC and one output per element at 8 bits; add ``layer_cycles('add', output elements)``;
  requantize ``layer_cycles('requantize', elements)`` (a table look-up per element, its own rate);
  pool ``layer_cycles('pool', input elements)``.

Flash and peak SRAM equal the size and arena of the ``.smpq`` blob that deploy writes for the same
policy; tests/deploy/devices/test_cost.py checks that against the real lowering and exporter, so a change on
either side that breaks the agreement fails there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from firmware_harness.format_spec import CHANNEL_BYTES, DATA_ALIGN, HEADER_BYTES, OP_BYTES, TENSOR_BYTES, scratch_bytes
from search.budget import LatencyModel, weighted_work
from search.cost import (Candidate, LayerCost, LayerOptions, Omega, OptionTable, check_candidates, layer_bops,
                         resolve_policy)
from search.errors import SearchError
from search.nn.graph import ExecGraph, Node, RuntimeOp, RuntimeTensor, Schedule, runtime_schedule  # noqa: F401 (re-exported)
from search import planner
from search.planner import DEFAULT_ALIGNMENT, Buffer, align_up, plan_greedy

ACT_CONTAINER_BITS = 8  # activations are int8 containers unless packed
NORMALISE_BITS = 8      # weight bits of the input normalisation op


def kernel_scratch_bytes(op: RuntimeOp, w_bits: int = 8) -> int:
    """Scratch of the C kernels during `op`: the format spec's :func:`scratch_bytes` with
    K = kh·kw·C_in (conv2d) or the input elements (fully connected); other ops: none."""
    if op.kind == "conv2d":
        kh, kw = op.node.attrs["kernel"]
        return scratch_bytes("conv2d", kh * kw * op.node.attrs["in_channels"], w_bits)
    if op.kind == "fully_connected":
        return scratch_bytes("fully_connected", math.prod(op.in_shape), w_bits)
    return 0


ScratchHook = Callable[[RuntimeOp, int], int]  # (op, its w_bits; 8 for non-layers) -> scratch bytes while it runs


# ---------------------------------------------------------------------------- per-op formulas
def channel_param_bytes(channels: int) -> int:
    """Bytes of one weighted op's channel parameters in the blob (bias, multiplier, shift per channel; padded)."""
    return align_up(channels * CHANNEL_BYTES, DATA_ALIGN)

def weight_region_bytes(weights: int, w_bits: int) -> int:
    """Bytes of one layer's packed weights in the blob (dense at w_bits; padded)."""
    return align_up(math.ceil(weights * w_bits / 8), DATA_ALIGN)

def layer_flash_bytes(node: Node, w_bits: int) -> int:
    """Bytes of one quantizable layer's data in the blob: its channel parameters plus its packed
    weights (its op record is counted in the fixed part). Linear in the w_bits choice."""
    return channel_param_bytes(node.out_channels) + weight_region_bytes(node.weight_params, w_bits)

def op_macs(op: RuntimeOp) -> int:
    """MACs of a runtime op (a normalise op is one MAC per element)."""
    if op.node is not None and op.node.quantizable:
        return op.node.macs
    return math.prod(op.in_shape) if op.kind == "normalise" else 0

def op_cycles(op: RuntimeOp, latency_model: LatencyModel, w_bits: int = 8, a_bits: int = 8) -> float:
    """Cycles of one runtime op (w_bits/a_bits matter for quantizable layers only)."""
    if op.node is not None and op.node.quantizable:
        op_type, work = weighted_work(op.kind, op.node.macs, math.prod(op.node.out_shape), op.node.out_channels)
        return latency_model.work_cycles(op_type, work, w_bits, a_bits)
    if op.kind == "normalise":
        n = math.prod(op.in_shape)
        op_type, work = weighted_work("depthwise_conv2d", n, n, op.in_shape[0])
        return latency_model.work_cycles(op_type, work, NORMALISE_BITS, 8)
    if op.kind == "pool":
        return latency_model.layer_cycles("pool", math.prod(op.in_shape), 8, 8)
    if op.kind == "requantize":
        return latency_model.layer_cycles("requantize", math.prod(op.in_shape), 8, 8)
    out_numel = math.prod(op.node.out_shape) if op.node is not None else math.prod(op.in_shape)
    return latency_model.layer_cycles("add", out_numel, 8, 8)  # add, element-wise

def act_bytes(numel: int, bits: int = ACT_CONTAINER_BITS) -> int:
    """Bytes of an activation tensor stored at `bits` per element (8: int8 containers)."""
    return math.ceil(numel * bits / 8)

def record_bytes(schedule: Schedule) -> int:
    """Blob bytes of the header, the tensor records and the op records (independent of bit widths)."""
    return HEADER_BYTES + TENSOR_BYTES * len(schedule.tensors) + OP_BYTES * len(schedule.ops)

def op_data_bytes(op: RuntimeOp, w_bits: int | None = None) -> int:
    """Data-section bytes of a runtime op in the blob: a layer's channel parameters and packed weights,
    normalise's (8-bit, one code per channel); other ops: none."""
    if op.node is not None and op.node.quantizable:
        return layer_flash_bytes(op.node, w_bits)
    if op.kind == "normalise":
        return channel_param_bytes(op.in_shape[0]) + weight_region_bytes(op.in_shape[0], NORMALISE_BITS)
    return 0


# ---------------------------------------------------------------------------- Ω and the knapsack table
def tensor_bits(schedule: Schedule, policy: Mapping[str, Sequence[int]] | None) -> list[int]:
    """Storage bits of every runtime tensor when packed: its grid's a_bits, else 8."""
    return [policy[t.grid_of][1] if policy is not None and t.grid_of else ACT_CONTAINER_BITS for t in schedule.tensors]

def _w_bits(op: RuntimeOp, policy: Mapping[str, Sequence[int]] | None) -> int:
    """The weight bits `op` runs at (8 for non-layer ops or without a policy)."""
    return policy[op.node.name][0] if policy is not None and op.node is not None and op.node.quantizable else 8

def arena_buffers(schedule: Schedule, policy: Mapping[str, Sequence[int]] | None = None, *,
                  packed_activations: bool = False,
                  scratch: ScratchHook | None = kernel_scratch_bytes) -> list[Buffer]:
    """The planner's buffers (:func:`search.planner.arena_buffers`): one per runtime tensor (``t<id>``),
    then each op's scratch (``scratch:<op>``)."""
    if packed_activations and policy is None:
        raise SearchError("packed activations need a policy (their storage bits come from a_bits)")
    bits = tensor_bits(schedule, policy) if packed_activations else [ACT_CONTAINER_BITS] * len(schedule.tensors)
    return planner.arena_buffers([act_bytes(t.numel, b) for t, b in zip(schedule.tensors, bits)],
                                 [(t.first_use, t.last_use) for t in schedule.tensors],
                                 [int(scratch(op, _w_bits(op, policy))) if scratch else 0 for op in schedule.ops],
                                 [op.name for op in schedule.ops])

def omega(graph: ExecGraph, policy: Mapping[str, Sequence[int]], latency_model: LatencyModel | None = None, *,
          packed_activations: bool = False, scratch: ScratchHook | None = kernel_scratch_bytes,
          alignment: int = DEFAULT_ALIGNMENT, schedule: Schedule | None = None) -> Omega:
    """Ω of a discrete policy on `graph` (latency only when `latency_model` is given).

    `scratch` gives each op's scratch bytes (default: the C kernels'; None: no scratch); pass a
    precomputed `schedule` (:func:`runtime_schedule`) to evaluate many policies quickly.
    """
    pol = resolve_policy(graph, policy)
    sched = schedule or runtime_schedule(graph)
    rows: list[LayerCost] = []
    for op in sched.ops:
        layer = op.node is not None and op.node.quantizable
        w, a = pol[op.node.name] if layer else (None, None)
        cycles = op_cycles(op, latency_model, w or 8, a or 8) if latency_model else None
        rows.append(LayerCost(
            op.name, op.kind, op_macs(op), op.node.params if layer else (op.in_shape[0] if op.kind == "normalise" else 0),
            w, a, float(layer_bops(op.node, w, a)) if layer else 0.0,
            op_data_bytes(op, w), int(scratch(op, w or 8)) if scratch else 0,
            cycles, cycles / latency_model.clock_hz if latency_model else None))
    plan = plan_greedy(arena_buffers(sched, pol, packed_activations=packed_activations, scratch=scratch), alignment)
    latency = sum(r.cycles for r in rows) / latency_model.clock_hz if latency_model else None
    return Omega(bops=float(sum(r.bops for r in rows)), flash_bytes=record_bytes(sched) + sum(r.flash_bytes for r in rows),
                 sram_bytes=plan.arena_bytes, latency_s=latency, macs=graph.macs, params=graph.params,
                 layers=tuple(rows), plan=plan, schedule=sched)

def layer_options(graph: ExecGraph, w_candidates: Sequence[int], a_candidates: Sequence[int],
                  latency_model: LatencyModel | None = None, *, sram_budget: int | None = None,
                  packed_activations: bool = False, scratch: ScratchHook | None = kernel_scratch_bytes) -> OptionTable:
    """Every quantizable layer's candidates with their additive BOPs/flash/latency contributions.

    For any policy, ``omega(...).X == fixed[X] + Σ_l candidate_l.costs[X]`` for X in bops,
    flash_bytes, latency_s. ``sram_bytes`` of a candidate is its own working set: its input (int8,
    or packed at a_bits) + its output (int8, or packed at the smallest a candidate: a lower bound)
    + its scratch; the candidate is infeasible when that exceeds `sram_budget`.
    """
    ws, as_ = check_candidates(w_candidates, a_candidates)
    sched = runtime_schedule(graph)
    clock = latency_model.clock_hz if latency_model else None
    fixed_cycles, fixed_flash = 0.0, record_bytes(sched)
    op_of: dict[str, RuntimeOp] = {}
    for op in sched.ops:
        if op.node is not None and op.node.quantizable:
            op_of[op.node.name] = op
        else:
            fixed_cycles += op_cycles(op, latency_model) if latency_model else 0.0
            fixed_flash += op_data_bytes(op)
    layers = []
    for n in graph.layers():
        op = op_of[n.name]
        opts = []
        for w in ws:
            for a in as_:
                costs: dict[str, float] = {"bops": float(layer_bops(n, w, a)),
                                           "flash_bytes": float(layer_flash_bytes(n, w))}
                if latency_model:
                    costs["latency_s"] = op_cycles(op, latency_model, w, a) / clock
                sram = (act_bytes(math.prod(op.in_shape), a if packed_activations else ACT_CONTAINER_BITS)
                        + act_bytes(math.prod(n.out_shape), min(as_) if packed_activations else ACT_CONTAINER_BITS)
                        + (int(scratch(op, w)) if scratch else 0))
                opts.append(Candidate(w, a, costs, sram, sram_budget is None or sram <= sram_budget))
        layers.append(LayerOptions(n.name, tuple(opts)))
    fixed: dict[str, float] = {"bops": 0.0, "flash_bytes": float(fixed_flash)}
    if latency_model:
        fixed["latency_s"] = fixed_cycles / clock
    return OptionTable(tuple(layers), fixed)


@dataclass(frozen=True)
class BlobCostModel:
    """The :class:`search.cost.CostModel` of the ``.smpq`` runtime: what the search receives from deploy.

    `latency_model` (from the device profile) adds latency; `packed_activations` stores activations
    at their a-bit grid; `alignment` is the arena planner's.
    """

    latency_model: LatencyModel | None = None
    packed_activations: bool = False
    alignment: int = DEFAULT_ALIGNMENT

    def omega(self, graph: ExecGraph, policy: Mapping[str, Sequence[int]]) -> Omega:
        return omega(graph, policy, self.latency_model, packed_activations=self.packed_activations, alignment=self.alignment)

    def layer_options(self, graph: ExecGraph, w_candidates: Sequence[int], a_candidates: Sequence[int], *,
                      sram_budget: int | None = None) -> OptionTable:
        return layer_options(graph, w_candidates, a_candidates, self.latency_model, sram_budget=sram_budget,
                             packed_activations=self.packed_activations)

    def describe(self) -> dict[str, object]:
        return {"latency_model": None if self.latency_model is None else repr(self.latency_model),
                "packed_activations": self.packed_activations}
