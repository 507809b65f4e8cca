"""Plain objects the search receives from the outside: budgets Ω₀ and a latency cost model.

`search` never reads device files; `deploy` builds these from a device profile and pipeline.yaml.
"""
from __future__ import annotations

from dataclasses import dataclass, field

QUANTIZABLE = ("conv2d", "depthwise_conv2d", "fully_connected")  # op types of the layers a policy quantizes
OP_TYPES = (*QUANTIZABLE, "add", "requantize", "pool")  # op types the latency model prices


@dataclass(frozen=True)
class Budget:
    """Hard limits Ω₀ on a discrete policy; None means unconstrained."""

    flash_bytes: int | None = None
    sram_bytes: int | None = None
    latency_s: float | None = None
    bops: float | None = None

    def items(self) -> dict[str, float]:
        """The constrained budgets only, by name."""
        return {k: v for k, v in (("flash_bytes", self.flash_bytes), ("sram_bytes", self.sram_bytes),
                                  ("latency_s", self.latency_s), ("bops", self.bops)) if v is not None}


@dataclass(frozen=True)
class LatencyModel:
    """Cycles of an op = overhead + MACs × cycles_per_mac[op][w_bits] + outputs × cycles_per_output[op][w_bits].

    `cycles_per_mac` maps op type (see OP_TYPES) → weight bits → cycles per MAC (per element for add,
    requantize and pool); a missing bit width uses the nearest listed width at or above it (else the widest),
    a missing op type its fallback (requantize → add, others → conv2d). `cycles_per_output` (optional, same
    lookup, no fallback) prices each output element of a weighted op: accumulator set-up, requantization and
    the store, which one rate per MAC cannot capture across layers of different MACs per output.
    `act_bits_factor` optionally scales by activation bits (a_bits → factor, default 1: int8 containers).
    """

    clock_hz: float
    cycles_per_mac: dict[str, dict[int, float]]
    per_layer_overhead_cycles: float = 0.0
    act_bits_factor: dict[int, float] = field(default_factory=dict)
    cycles_per_output: dict[str, dict[int, float]] = field(default_factory=dict)

    @staticmethod
    def _lookup(table: dict[int, float], w_bits: int) -> float:
        widths = sorted(table)
        above = [b for b in widths if b >= w_bits]
        return table[above[0] if above else widths[-1]]

    def mac_cost(self, op_type: str, w_bits: int, a_bits: int = 8) -> float:
        """Cycles per MAC for one op type at the given bit widths."""
        table = (self.cycles_per_mac.get(op_type) or (op_type == "requantize" and self.cycles_per_mac.get("add"))
                 or self.cycles_per_mac.get("conv2d"))
        if not table:
            raise ValueError(f"latency model has no entry for op type '{op_type}'")
        return self._lookup(table, w_bits) * self.act_bits_factor.get(a_bits, 1.0)

    def output_cost(self, op_type: str, w_bits: int) -> float:
        """Cycles per output element for one op type (0 when the model has no such term)."""
        table = self.cycles_per_output.get(op_type)
        return self._lookup(table, w_bits) if table else 0.0

    def layer_cycles(self, op_type: str, macs: float, w_bits: int, a_bits: int = 8, outputs: float = 0.0) -> float:
        """Estimated cycles of one op with `macs` MACs (elements) and `outputs` output elements."""
        return (self.per_layer_overhead_cycles + macs * self.mac_cost(op_type, w_bits, a_bits)
                + outputs * self.output_cost(op_type, w_bits))
