"""Plain objects the search receives from the outside: budgets Ω₀ and a latency cost model.

`search` never reads device files; `deploy` builds these from a device profile and pipeline.yaml.
"""
from __future__ import annotations

from dataclasses import dataclass, field

QUANTIZABLE = ("conv2d", "depthwise_conv2d", "fully_connected")  # op types of the layers a policy quantizes
#: op types the latency model prices: the quantizable layers, element-wise ops, and conv2d_unaligned (a conv2d whose
#: K = kh·kw·C_in is not a multiple of 4, e.g. a 3-channel stem: its patches are gathered one value at a time)
OP_TYPES = (*QUANTIZABLE, "add", "requantize", "pool", "conv2d_unaligned")
#: work quantity of a weighted op (see :func:`weighted_work`) → the LatencyModel table (and device-profile key) that
#: prices it
TERM_TABLES = {"macs": "cycles_per_mac", "outputs": "cycles_per_output", "gathered": "cycles_per_gathered"}
WORK_TERMS = tuple(TERM_TABLES)  # the work quantities, MACs first


def weighted_work(kind: str, macs: float, outputs: float, out_channels: int) -> tuple[str, dict[str, float]]:
    """The op type and work quantities the latency model prices for one weighted op (conv2d, depthwise_conv2d,
    fully_connected) with `macs` MACs and `outputs` output elements over `out_channels` channels (any width: the
    kernels read 1/2/4-bit rows packed, whole words plus a 2-/1-byte tail, so no row is padded).

    With K = macs / outputs (MACs per output element):

    * ``macs`` and ``outputs`` (accumulator set-up, requantization and the store of each output);
    * ``gathered``: input values gathered into patches, output pixels × K (conv2d, fully connected; a depthwise
      op's are its MACs, so it has none of its own).

    A conv2d with K % 4 != 0 is priced as ``conv2d_unaligned``. This one function gives the work to Ω (through
    deploy.devices.cost) and to the calibration's fit (deploy/cli/calibrate.py), so both use the same features.
    """
    if kind not in QUANTIZABLE:
        raise ValueError(f"weighted_work: '{kind}' is not a weighted op type ({', '.join(QUANTIZABLE)})")
    k = round(macs / outputs) if outputs else 0
    pixels = outputs / out_channels if out_channels else 0.0
    op_type = "conv2d_unaligned" if kind == "conv2d" and k % 4 else kind
    work = {"macs": float(macs), "outputs": float(outputs),
            "gathered": 0.0 if kind == "depthwise_conv2d" else float(pixels * k)}
    return op_type, work


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
    """Cycles of an op = overhead + Σ_term work[term] × table[term][op][w_bits] over the work quantities of
    :func:`weighted_work` (element-wise ops: their elements as ``macs``).

    `cycles_per_mac` maps op type (see OP_TYPES) → weight bits → cycles per MAC (per element for add,
    requantize and pool); a missing bit width uses the nearest listed width at or above it (else the widest),
    a missing op type its fallback (requantize → add, conv2d_unaligned and others → conv2d). The optional
    tables of the other terms — `cycles_per_output` (accumulator set-up, requantization and the store of each
    output element), and `cycles_per_gathered` (each input value gathered into a
    patch) — are read at the op type and width the MAC table resolved to: a width
    they do not list has no such term (a width's terms were fitted together, so they are never mixed).
    `act_bits_factor` optionally scales the MAC term by activation bits (a_bits → factor, default 1: int8 containers).
    """

    clock_hz: float
    cycles_per_mac: dict[str, dict[int, float]]
    per_layer_overhead_cycles: float = 0.0
    act_bits_factor: dict[int, float] = field(default_factory=dict)
    cycles_per_output: dict[str, dict[int, float]] = field(default_factory=dict)
    cycles_per_gathered: dict[str, dict[int, float]] = field(default_factory=dict)

    @staticmethod
    def _width(table: dict[int, float], w_bits: int) -> int:
        widths = sorted(table)
        above = [b for b in widths if b >= w_bits]
        return above[0] if above else widths[-1]

    def _resolve(self, op_type: str, w_bits: int) -> tuple[str, int]:
        """(op type, width) of the MAC table entry that prices `op_type` at `w_bits`."""
        op = next((o for o in (op_type, "add" if op_type == "requantize" else None, "conv2d")
                   if o and self.cycles_per_mac.get(o)), None)
        if op is None:
            raise ValueError(f"latency model has no entry for op type '{op_type}'")
        return op, self._width(self.cycles_per_mac[op], w_bits)

    def mac_cost(self, op_type: str, w_bits: int, a_bits: int = 8) -> float:
        """Cycles per MAC for one op type at the given bit widths."""
        op, width = self._resolve(op_type, w_bits)
        return self.cycles_per_mac[op][width] * self.act_bits_factor.get(a_bits, 1.0)

    def term_cost(self, term: str, op_type: str, w_bits: int) -> float:
        """Cycles per unit of `term` (one of WORK_TERMS but macs) for one op type (0 when the model has no such term)."""
        tables = getattr(self, TERM_TABLES[term])
        op, width = self._resolve(op_type, w_bits)
        return (tables.get(op) or {}).get(width, 0.0)

    def work_cycles(self, op_type: str, work: dict[str, float], w_bits: int, a_bits: int = 8) -> float:
        """Estimated cycles of one op with the work quantities `work` (:func:`weighted_work`; element-wise ops:
        ``{"macs": elements}``)."""
        return self.per_layer_overhead_cycles + sum(
            n * (self.mac_cost(op_type, w_bits, a_bits) if term == "macs" else self.term_cost(term, op_type, w_bits))
            for term, n in work.items() if n)

    def layer_cycles(self, op_type: str, macs: float, w_bits: int, a_bits: int = 8, outputs: float = 0.0) -> float:
        """Estimated cycles of one op with `macs` MACs (elements) and `outputs` output elements only."""
        return self.work_cycles(op_type, {"macs": macs, "outputs": outputs}, w_bits, a_bits)
