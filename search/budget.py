"""Plain objects the search receives from the outside: budgets Ω₀ and a latency cost model.

`search` never reads device files; `deploy` builds these from a device profile and pipeline.yaml.
"""
from __future__ import annotations

from dataclasses import dataclass, field

QUANTIZABLE = ("conv2d", "depthwise_conv2d", "fully_connected")  # op types of the layers a policy quantizes
OP_TYPES = (*QUANTIZABLE, "add", "pool")  # op types the latency model prices


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
    """Cycles of a layer = overhead + MACs × cycles_per_mac[op_type][w_bits] (8-bit activation containers).

    `cycles_per_mac` maps op type (see OP_TYPES) → weight bits → cycles per MAC; a missing bit width
    uses the nearest listed width at or above it (else the widest). `act_bits_factor` optionally scales
    by activation bits (a_bits → factor, default 1: activations are stored as int8 containers).
    """

    clock_hz: float
    cycles_per_mac: dict[str, dict[int, float]]
    per_layer_overhead_cycles: float = 0.0
    act_bits_factor: dict[int, float] = field(default_factory=dict)

    def mac_cost(self, op_type: str, w_bits: int, a_bits: int = 8) -> float:
        """Cycles per MAC for one op type at the given bit widths."""
        table = self.cycles_per_mac.get(op_type) or self.cycles_per_mac.get("conv2d")
        if not table:
            raise ValueError(f"latency model has no entry for op type '{op_type}'")
        widths = sorted(table)
        above = [b for b in widths if b >= w_bits]
        per_mac = table[above[0] if above else widths[-1]]
        return per_mac * self.act_bits_factor.get(a_bits, 1.0)

    def layer_cycles(self, op_type: str, macs: float, w_bits: int, a_bits: int = 8) -> float:
        """Estimated cycles of one layer."""
        return self.per_layer_overhead_cycles + macs * self.mac_cost(op_type, w_bits, a_bits)
