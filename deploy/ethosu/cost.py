"""The Ethos-U cost model: per layer and weight bit width, Vela's encoded weight bytes and cycles.

On an Ethos-U the MACs stay int8 whatever a layer's bit width; what the width changes is the number of
distinct weight values, which Vela's lossless weight compression turns into fewer flash bytes (and, on
a flash-bound layer, fewer cycles). So both come from Vela itself:

* For every candidate width b, the whole network is compiled once with *every* layer's weights
  quantized to b bits (int8 values restricted to the 2^b levels): the debug database gives each
  operation's encoded weight bytes and the per-layer CSV its cycles, attributed to the IR op (and so
  the layer) it came from. Measuring inside the network keeps Vela's choices (block configs, weight
  buffering, cascading) those of the real compilation; single-layer models measured 5-10 % off.
* A policy's prediction is additive: Σ_layers table[layer][w] + the policy-independent part (inputs
  normalisation, adds, pools, ...; taken from the 8-bit compilation). Flash in the weights' memory
  area = encoded weights + Vela's fixed overhead there (per-channel scales and biases).
* Compression depends on the weight *values*, not only the shape: the codes at width b are the
  layer's weights quantized per output channel at b bits with the project's own step initialisation
  (:func:`search.nn.quantizers.init_step`, MSE); a layer already at b bits in the given IR keeps its
  codes exactly (the check against a compiled model uses the same codes that are compiled).
* Every compilation is cached on disk under ``<cache>/<sha256>.json``; the key hashes the TFLite bytes
  (layer shapes, bits and the weight values), the Vela version and the target configuration.

Activations are 8-bit only on this target (no int16 path). Vela's cycles are estimates, and so is
everything derived from them.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from deploy.devices.cost import omega as blob_omega
from deploy.ethosu.vela import VelaResult, VelaTarget, compile_tflite, vela_version
from deploy.export.tflite import to_tflite
from deploy.lower.ir import Graph
from search.atomic import atomic_write_text
from search.cost import Candidate, LayerOptions, Omega, OptionTable, check_candidates, layer_bops
from search.errors import SearchError
from search.nn.graph import ExecGraph
from search.nn.quantizers import init_step, quantize_codes, weight_range

WEIGHTED = ("conv2d", "depthwise_conv2d", "fully_connected")
ACT_BITS = (8,)
_INSTANCE = re.compile(r"#\d+$")


def layer_of(ir_op: str) -> str:
    """The policy layer an IR op computes (instances ``name#k`` of one layer share it)."""
    return _INSTANCE.sub("", ir_op)


@dataclass(frozen=True)
class LayerCost:
    """One layer at one width: encoded weight bytes (once per layer) and cycles (all its instances)."""

    weight_bytes: int
    cycles: float


@dataclass(frozen=True)
class Prediction:
    """What the cost model predicts for a policy (cycles are Vela's estimates)."""

    encoded_weight_bytes: int
    flash_bytes: int          # bytes in the weights' memory area: encoded weights + scales/biases overhead
    cycles: float
    latency_s: float


# ------------------------------------------------------------------------------------ codes at b bits
def _channels_first(codes: np.ndarray, kind: str) -> np.ndarray:
    """IR weight array → (out channels, weights per channel)."""
    if kind == "depthwise_conv2d":  # 1HWC
        return codes.reshape(-1, codes.shape[-1]).T
    return codes.reshape(codes.shape[0], -1)  # OHWI / OI


def _from_channels_first(rows: np.ndarray, like: np.ndarray, kind: str) -> np.ndarray:
    if kind == "depthwise_conv2d":
        return rows.T.reshape(like.shape)
    return rows.reshape(like.shape)


def requantize_codes(real: np.ndarray, kind: str, bits: int) -> np.ndarray:
    """Real weights (IR layout) → int8 codes at `bits`, per output channel, with the project's MSE step init."""
    v = torch.from_numpy(_channels_first(np.asarray(real, np.float64), kind).astype(np.float32))
    qmin, qmax = weight_range(bits)
    step = init_step(v, qmin, qmax, bits == 1).reshape(-1, 1)
    codes = quantize_codes(v, step, qmin, qmax, bits == 1).numpy().astype(np.int8)
    return _from_channels_first(codes, np.asarray(real), kind)


def real_weights(g: Graph, op) -> np.ndarray:
    """codes · per-channel scale of a weighted IR op (its real, BN-folded weights)."""
    codes = g.const(op, "weights").astype(np.float64)
    scale = g.const(op, "w_scale").astype(np.float64)
    return codes * (scale if op.kind == "depthwise_conv2d" else scale.reshape(-1, *([1] * (codes.ndim - 1))))


def at_width(g: Graph, layers: Sequence[str], bits: int | Mapping[str, int]) -> Graph:
    """A copy of `g` whose policy layers have their weights at `bits` (one width, or per layer).

    A layer whose IR codes are already at that width keeps them; the others are requantized from the
    IR's real weights, which have at most 2^w levels for a w-bit layer: measure on an IR lowered at
    8 bits (as the search does) to get every width's own codes. Scales and biases are left as they
    are: Vela's weight encoding and cycles depend on the codes, and this model is only compiled, never run.
    """
    want = {n: (bits if isinstance(bits, int) else bits[n]) for n in layers}
    consts = dict(g.consts)
    replaced: set[str] = set()  # a layer's instances share one weights array: requantize it once
    ops = []
    for op in g.ops:
        name = layer_of(op.name)
        if op.kind in WEIGHTED and name in want and op.attrs["w_bits"] != want[name]:
            key = op.arrays["weights"]
            if key not in replaced:
                consts[key] = requantize_codes(real_weights(g, op), op.kind, want[name])
                replaced.add(key)
            op = replace(op, attrs={**op.attrs, "w_bits": want[name]})
        ops.append(op)
    return Graph(g.tensors, ops, g.inputs, g.outputs, consts, dict(g.meta))


# ------------------------------------------------------------------------------------ measurement
def compile_cached(g: Graph, target: VelaTarget, cache_dir: str | Path | None) -> tuple[dict, list[str]]:
    """Vela's figures for `g` compiled as int8-valued TFLite: ``{"summary": {...}, "ops": [...]}``, from the
    cache when this exact model (TFLite bytes) was compiled before for the same Vela version and target."""
    origin: list[str] = []
    tflite = to_tflite(g, int8_weights=True, op_origin=origin)
    key = hashlib.sha256(tflite + target.key().encode()).hexdigest()
    path = Path(cache_dir) / f"{key}.json" if cache_dir else None
    if path is not None and path.is_file():
        try:
            return json.loads(path.read_text()), origin
        except ValueError:
            pass  # a torn cache entry: compile again
    with tempfile.TemporaryDirectory(prefix="vela-") as tmp:
        res = compile_tflite(tflite, target, tmp, "m", origin)
    data = {"vela": vela_version(), "target": target.key(), "summary": res.summary,
            "ops": [op.__dict__ for op in res.ops]}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data))
    return data, origin


def _per_layer(data: dict, layers: Sequence[str]) -> tuple[dict[str, LayerCost], LayerCost]:
    """Split one compilation's operations into per-layer costs and the rest (non-layer ops: their
    weight bytes, e.g. the input normalisation, and cycles). Cycles add up over a layer's instances
    (``name#k``); its weight bytes are those of its first instance (the instances share one tensor,
    which Vela stores and counts once)."""
    weight: dict[str, int] = {n: 0 for n in layers}
    cycles: dict[str, float] = {n: 0.0 for n in layers}
    rest_w, rest_c = 0, 0.0
    for op in data["ops"]:
        ir = op.get("ir_op")
        name = layer_of(ir) if ir else None
        if name in weight:
            cycles[name] += op["op_cycles"]
            if ir == name:
                weight[name] += op["weight_bytes"]
        else:
            rest_w += op["weight_bytes"]
            rest_c += op["op_cycles"]
    return {n: LayerCost(weight[n], cycles[n]) for n in layers}, LayerCost(rest_w, rest_c)


class VelaCostModel:
    """Per-layer × weight-width costs measured through Vela, and what they predict for a policy.

    A :class:`search.cost.CostModel` (what deploy hands the search for an Ethos-U device instead of
    the ``.smpq`` blob's model): flash_bytes = Vela's bytes in the weights' memory area, latency_s =
    Vela's cycles / its clock, sram_bytes = Vela's SRAM use of the 8-bit compilation (the largest:
    weight buffers shrink with fewer levels), BOPs as everywhere. In Ω's per-op rows a layer's first
    instance carries the layer's encoded weight bytes and all its cycles.
    """

    def __init__(self, target: VelaTarget, clock_hz: float, table: dict[str, dict[int, LayerCost]],
                 fixed: LayerCost, flash_overhead: int, sram_bytes: int) -> None:
        self.target, self.clock_hz, self.table, self.fixed = target, float(clock_hz), table, fixed
        self.flash_overhead, self.sram_bytes = int(flash_overhead), int(sram_bytes)

    # -- building
    @classmethod
    def measure(cls, g: Graph, layers: Sequence[str], w_bits: Sequence[int], target: VelaTarget,
                cache_dir: str | Path | None = None) -> "VelaCostModel":
        """Compile `g` once per width in `w_bits` (plus 8) and tabulate every layer's costs."""
        missing = [n for n in layers if not any(layer_of(op.name) == n and op.kind in WEIGHTED for op in g.ops)]
        if missing:
            raise SearchError(f"the integer model has no weighted op for layer(s) {', '.join(missing[:3])}")
        table: dict[str, dict[int, LayerCost]] = {n: {} for n in layers}
        for b in sorted(set(int(x) for x in w_bits) | {8}):
            data, _ = compile_cached(at_width(g, layers, b), target, cache_dir)
            per, rest = _per_layer(data, layers)
            for n in layers:
                table[n][b] = per[n]
            if b == 8:
                s, fixed = VelaResult(data["summary"], []), rest
        return cls(target, s.clock_hz, table, fixed, s.weights_area_bytes - s.encoded_weight_bytes, s.sram_bytes)

    # -- predictions
    def _entry(self, layer: str, w_bits: int) -> LayerCost:
        row = self.table.get(layer)
        if row is None:
            raise SearchError(f"the Vela cost model has no layer '{layer}'")
        if w_bits not in row:
            raise SearchError(f"the Vela cost model of layer '{layer}' has no {w_bits}-bit entry "
                              f"(measured: {', '.join(map(str, sorted(row)))})")
        return row[w_bits]

    def predict(self, policy: Mapping[str, Sequence[int] | int]) -> Prediction:
        """Encoded weight bytes, weights-area bytes and cycles of `policy` (layer → w_bits or (w, a))."""
        weights, cycles = self.fixed.weight_bytes, self.fixed.cycles
        for layer in self.table:
            spec = policy[layer]
            w = spec if isinstance(spec, int) else int(spec[0])
            e = self._entry(layer, w)
            weights += e.weight_bytes
            cycles += e.cycles
        return Prediction(weights, weights + self.flash_overhead, cycles, cycles / self.clock_hz)

    # -- the search's interface
    def omega(self, graph: ExecGraph, policy: Mapping[str, Sequence[int]]) -> Omega:
        """Ω of a policy: BOPs from the graph, flash / latency / SRAM from Vela."""
        base = blob_omega(graph, policy, None, scratch=None)
        p = self.predict(policy)
        rows = []
        for r in base.layers:
            if r.w_bits is None:
                rows.append(replace(r, flash_bytes=0, scratch_bytes=0))
                continue
            e = self._entry(r.name, r.w_bits) if r.name in self.table else LayerCost(0, 0.0)  # instance k > 0: none
            rows.append(replace(r, flash_bytes=e.weight_bytes, cycles=e.cycles, latency_s=e.cycles / self.clock_hz))
        return replace(base, flash_bytes=p.flash_bytes, latency_s=p.latency_s, sram_bytes=self.sram_bytes,
                       layers=tuple(rows))

    def layer_options(self, graph: ExecGraph, w_candidates: Sequence[int], a_candidates: Sequence[int], *,
                      sram_budget: int | None = None) -> OptionTable:
        """Per-layer candidates with additive BOPs / flash / latency (``fixed`` + Σ chosen = :meth:`omega`)."""
        check_candidates(w_candidates, a_candidates)
        bad = [a for a in a_candidates if a not in ACT_BITS]
        if bad:
            raise SearchError(f"the Ethos-U cost model has 8-bit activations only, got a{bad[0]}")
        rows = []
        for node in graph.layers():
            opts = []
            for w in w_candidates:
                e = self._entry(node.name, int(w))
                for a in a_candidates:
                    costs = {"bops": float(layer_bops(node, w, a)), "flash_bytes": float(e.weight_bytes),
                             "latency_s": e.cycles / self.clock_hz}
                    opts.append(Candidate(int(w), int(a), costs, 0, sram_budget is None or self.sram_bytes <= sram_budget))
            rows.append(LayerOptions(node.name, tuple(opts)))
        fixed = {"bops": 0.0, "flash_bytes": float(self.fixed.weight_bytes + self.flash_overhead),
                 "latency_s": self.fixed.cycles / self.clock_hz}
        return OptionTable(tuple(rows), fixed)

    def describe(self) -> dict:
        """The settings that determine the figures (a search resumes only under the same ones)."""
        digest = hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]
        return {"cost_model": "vela", "vela_target": self.target.key(), "vela_table_sha256": digest}

    # -- persistence (policy.json / report)
    def as_dict(self) -> dict:
        return {"estimated_by": f"Vela {vela_version()}", "target": self.target.key(), "clock_hz": self.clock_hz,
                "fixed": {"weight_bytes": self.fixed.weight_bytes, "cycles": self.fixed.cycles},
                "flash_overhead_bytes": self.flash_overhead,
                "sram_bytes": self.sram_bytes,
                "layers": {n: {str(b): [e.weight_bytes, e.cycles] for b, e in sorted(row.items())}
                           for n, row in self.table.items()}}


def relative_error(predicted: float, actual: float) -> float:
    """|predicted − actual| / actual (0 when both are 0)."""
    return 0.0 if actual == predicted else abs(predicted - actual) / max(abs(actual), math.ulp(1.0))
