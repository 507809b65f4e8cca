"""Hardware-in-the-loop measurement over the serial protocol, in the two MLPerf Tiny modes.

- Accuracy mode: every input is loaded (``db load`` + ``db`` lines, CRC-confirmed), run once
  (``infer 1 0``) and its raw int8 outputs read back (``smpq-raw``, CRC-checked).
- Performance mode: one input, ``windows`` runs of ``infer I W``; the latency is the median over the
  windows of (T1 − T0) / I, in the unit the board declares (``smpq-info``'s ``timer``): instructions on
  QEMU under ``-icount``, cycles on a board with a cycle counter. Never milliseconds for instructions.
- Per-layer ticks of the last inference (``smpq-time``), with each op's kind and bit widths.

The caller compares the raw outputs with its integer reference (:func:`compare`).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np

from firmware_harness.errors import HarnessError
from firmware_harness.hil.protocol import DutClient

Progress = Callable[[int], None]


@dataclass(frozen=True)
class TimerUnit:
    """What one board tick is: `per_tick` units of `unit` (instructions, cycles or ticks of `hz`)."""

    unit: str
    per_tick: Fraction
    hz: int | None = None

    @classmethod
    def from_info(cls, info: dict[str, str]) -> "TimerUnit":
        unit = info.get("timer", "")
        try:
            if unit == "instructions":
                return cls(unit, 1 / Fraction(info["ticks_per_instr"]))
            if unit in ("cycles", "ticks"):
                return cls(unit, Fraction(1), int(info["timer_hz"]) if "timer_hz" in info else None)
        except (KeyError, ValueError, ZeroDivisionError):
            pass
        raise HarnessError(f"the board's smpq-info does not say what its timer counts (timer={unit or '?'}, "
                           f"ticks_per_instr={info.get('ticks_per_instr', '?')}, timer_hz={info.get('timer_hz', '?')})")

    def convert(self, ticks: float) -> float:
        return float(ticks * self.per_tick)


@dataclass
class AccuracyRun:
    raw: np.ndarray       # (N, output_bytes) int8 outputs as read from the board
    results: np.ndarray   # (N, output_bytes) dequantised outputs of m-results
    ticks: np.ndarray     # (N,) T1 − T0 of each `infer 1 0`
    load_s: float         # seconds spent loading inputs
    infer_s: float        # seconds spent in `infer` + `smpq-raw` exchanges
    wall_s: float         # the whole loop
    payload_bytes: int    # input bytes delivered
    wire_bytes: int       # bytes sent and received on the link during the loop


def accuracy_mode(client: DutClient, inputs: np.ndarray, progress: Progress | None = None) -> AccuracyRun:
    """Load, run and read back every input of `inputs` (N, …) int8 codes, one at a time."""
    n = len(inputs)
    raw, results, ticks = [], [], np.zeros(n, np.int64)
    load_s = infer_s = 0.0
    wire0 = client.stats.bytes_sent + client.stats.bytes_received
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        client.load(np.ascontiguousarray(inputs[i], np.int8).tobytes())
        t1 = time.perf_counter()
        r = client.infer(1, 0)
        raw.append(np.frombuffer(client.raw_output(), np.int8))
        t2 = time.perf_counter()
        load_s, infer_s = load_s + t1 - t0, infer_s + t2 - t1
        results.append(r.results)
        ticks[i] = r.ticks
        if progress:
            progress(1)
    wall = time.perf_counter() - start
    wire = client.stats.bytes_sent + client.stats.bytes_received - wire0
    return AccuracyRun(np.stack(raw), np.array(results, np.float64), ticks, load_s, infer_s, wall,
                       int(inputs[0].size) * n, wire)


@dataclass
class PerformanceRun:
    iterations: int
    warmup: int
    window_ticks: list[int]       # T1 − T0 of each window
    per_inference_ticks: float    # median over windows of (T1 − T0) / iterations
    lap_checked: bool


def performance_mode(client: DutClient, input_codes: np.ndarray, *, iterations: int, warmup: int,
                     windows: int = 5, progress: Progress | None = None) -> PerformanceRun:
    """`windows` × ``infer iterations warmup`` on one input; the median per-inference ticks."""
    return _timed_windows(client, [input_codes] + [None] * (windows - 1), iterations, warmup, progress)


def mlperf_performance_mode(client: DutClient, inputs: np.ndarray, *, iterations: int, warmup: int,
                            progress: Progress | None = None) -> PerformanceRun:
    """The MLCommons runner's performance mode: per window a new input ("download"), then ``infer I W``;
    one window per input, the median per-inference ticks."""
    return _timed_windows(client, list(inputs), iterations, warmup, progress)


def _timed_windows(client: DutClient, loads: list, iterations: int, warmup: int,
                   progress: Progress | None) -> PerformanceRun:
    """One ``infer iterations warmup`` per entry of `loads`, loading the entry first unless it is None."""
    runs = []
    for x in loads:
        if x is not None:
            client.load(np.ascontiguousarray(x, np.int8).tobytes())
        runs.append(client.infer(iterations, warmup))
        if progress:
            progress(1)
    per = statistics.median(r.ticks / iterations for r in runs)
    return PerformanceRun(iterations, warmup, [r.ticks for r in runs], per, all(r.lap_checked for r in runs))


def layer_breakdown(client: DutClient, unit: TimerUnit) -> list[dict[str, object]]:
    """Each op of the last inference: index, kind, bit widths, ticks, converted value, share of the total."""
    layers, ticks = client.layers(), client.layer_times()
    if len(layers) != len(ticks):
        raise HarnessError(f"the board at {client.url} lists {len(layers)} ops but timed {len(ticks)}")
    total = sum(ticks) or 1
    return [{"op": i, "kind": kind, "w_bits": w, "a_bits": a, "ticks": t, unit.unit: unit.convert(t),
             "share": t / total} for (i, kind, w, a), t in zip(layers, ticks)]


def compare(raw: np.ndarray, reference: np.ndarray, labels: np.ndarray | None = None) -> dict[str, object]:
    """Board outputs vs the integer reference (both (N, K) int8): mismatches, and top-1 of each if labelled."""
    raw, reference = raw.reshape(len(raw), -1), reference.reshape(len(reference), -1)
    if raw.shape != reference.shape:
        raise HarnessError(f"the board returned outputs of shape {raw.shape}, the reference {reference.shape}")
    differ = raw != reference
    out: dict[str, object] = {"samples": len(raw), "mismatched_images": int(differ.any(axis=1).sum()),
                              "mismatched_values": int(differ.sum()), "bit_exact": not differ.any()}
    if labels is not None:
        out["top1"] = float((raw.argmax(1) == labels).mean())  # on the board
        out["reference_top1"] = float((reference.argmax(1) == labels).mean())
    return out
