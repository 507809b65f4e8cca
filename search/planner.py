"""Offline memory planner: place buffers with known lifetimes in one static arena.

A generic greedy planner in the manner of TensorFlow Lite Micro's ``GreedyMemoryPlanner``: buffers
are taken by size, largest first, and each is put at the lowest (aligned) offset where it overlaps
no already-placed buffer whose lifetime overlaps its own. Lifetimes are inclusive step intervals
``[first_use, last_use]`` (an op's inputs and outputs are live at the same step, so they never
share memory).

One implementation for the whole project, with one lifetime rule (:func:`live_ranges`) and one arena
plan (:func:`plan_arena`: tensors, then per-step kernel scratch): the Ω(Q) cost model plans the
runtime schedule's tensors with it, the ``.smpq`` exporter the blob's arena — the same plan, so the
predicted peak SRAM is the blob's arena size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from search.errors import SearchError

DEFAULT_ALIGNMENT = 16  # bytes; TFLite Micro's arena alignment (fits any word/SIMD load on Cortex-M)


@dataclass(frozen=True)
class Buffer:
    """One buffer to place: size in bytes and the inclusive step interval during which it is live."""

    size_bytes: int
    first_use: int
    last_use: int
    name: str = ""

    def overlaps(self, other: "Buffer") -> bool:
        """True if the two lifetimes share at least one step."""
        return self.first_use <= other.last_use and other.first_use <= self.last_use


@dataclass(frozen=True)
class MemoryPlan:
    """Offsets (same order as the planned buffers) and the arena size that holds them all."""

    buffers: tuple[Buffer, ...]
    offsets: tuple[int, ...]
    arena_bytes: int
    alignment: int

    def offset_of(self, name: str) -> int:
        """Offset of the buffer called `name`."""
        for b, off in zip(self.buffers, self.offsets):
            if b.name == name:
                return off
        raise KeyError(name)


def live_ranges(n: int, steps: Sequence[tuple[Sequence[int], Sequence[int]]], inputs: Sequence[int] = (),
                outputs: Sequence[int] = (), end: int | None = None) -> list[tuple[int, int]]:
    """(first_use, last_use) of tensors 0..n−1 when op i — `steps[i]` = (its input ids, its output ids) — runs at step i.

    The one lifetime rule of every arena in the project: `inputs` are live from step 0, every tensor
    from the step of its producer to that of its last reader, `outputs` until `end` (default
    ``len(steps)``: past the last op); a tensor no op touches gets (0, 0).
    """
    first = {t: 0 for t in inputs}
    last = dict(first)
    for step, (ins, outs) in enumerate(steps):
        for t in ins:
            last[t] = step
        for o in outs:
            first.setdefault(o, step)
            last[o] = max(last.get(o, step), step)
    for t in outputs:
        last[t] = len(steps) if end is None else end
    return [(first.get(i, 0), last.get(i, first.get(i, 0))) for i in range(n)]


def arena_buffers(sizes: Sequence[int], lives: Sequence[tuple[int, int]], scratch: Sequence[int] = (),
                  scratch_names: Sequence[str] | None = None) -> list[Buffer]:
    """The buffers of a static arena: tensor i (``t<i>``, `sizes[i]` bytes, live over `lives[i]` from
    :func:`live_ranges`), then step s's scratch (``scratch:<name>``, `scratch[s]` bytes, live during step s)."""
    bufs = [Buffer(int(size), *life, f"t{i}") for i, (size, life) in enumerate(zip(sizes, lives))]
    names = scratch_names or [str(s) for s in range(len(scratch))]
    return bufs + [Buffer(int(size), s, s, f"scratch:{names[s]}") for s, size in enumerate(scratch)]


def plan_arena(sizes: Sequence[int], lives: Sequence[tuple[int, int]], scratch: Sequence[int] = (),
               alignment: int = DEFAULT_ALIGNMENT, scratch_names: Sequence[str] | None = None) -> MemoryPlan:
    """The one arena plan of the project (the ``.smpq`` blob's, and the cost model's peak SRAM):
    :func:`plan_greedy` of :func:`arena_buffers`. Offsets: tensors first, then one scratch buffer per step."""
    return plan_greedy(arena_buffers(sizes, lives, scratch, scratch_names), alignment)


def align_up(n: int, alignment: int) -> int:
    """`n` rounded up to a multiple of `alignment`."""
    return -(-n // alignment) * alignment


def _validate(buffers: Sequence[Buffer], alignment: int) -> None:
    if not isinstance(alignment, int) or alignment < 1:
        raise SearchError(f"memory planner alignment must be a positive integer number of bytes, got {alignment!r}")
    for i, b in enumerate(buffers):
        label = b.name or f"#{i}"
        if b.size_bytes < 0:
            raise SearchError(f"buffer {label} has a negative size ({b.size_bytes} bytes)")
        if b.last_use < b.first_use:
            raise SearchError(f"buffer {label} ends (step {b.last_use}) before it starts (step {b.first_use})")


def plan_greedy(buffers: Sequence[Buffer], alignment: int = DEFAULT_ALIGNMENT) -> MemoryPlan:
    """Greedy-by-size placement (largest first; ties by earlier first use, then input order).

    Offsets are multiples of `alignment`; the arena size is the end of the highest buffer rounded
    up to `alignment`. Zero-size buffers get offset 0 and take no space.
    """
    buffers = tuple(buffers)
    _validate(buffers, alignment)
    order = sorted(range(len(buffers)), key=lambda i: (-buffers[i].size_bytes, buffers[i].first_use, i))
    offsets = [0] * len(buffers)
    placed: list[int] = []
    for i in order:
        buf = buffers[i]
        if buf.size_bytes == 0:
            continue
        live = sorted((offsets[j], offsets[j] + buffers[j].size_bytes) for j in placed if buffers[j].overlaps(buf))
        candidate = 0
        for start, end in live:
            if candidate + buf.size_bytes <= start:
                break  # fits in the gap below this neighbour
            candidate = max(candidate, align_up(end, alignment))
        offsets[i] = candidate
        placed.append(i)
    top = max((offsets[i] + buffers[i].size_bytes for i in placed), default=0)
    return MemoryPlan(buffers, tuple(offsets), align_up(top, alignment), alignment)


def naive_sum(buffers: Sequence[Buffer], alignment: int = DEFAULT_ALIGNMENT) -> int:
    """Arena size without reuse: every buffer gets its own aligned slot."""
    buffers = tuple(buffers)
    _validate(buffers, alignment)
    return sum(align_up(b.size_bytes, alignment) for b in buffers)


def peak_live_bytes(buffers: Sequence[Buffer]) -> int:
    """Lower bound of any plan: the largest total size of buffers live at the same step."""
    buffers = tuple(buffers)
    _validate(buffers, 1)
    steps = sorted({b.first_use for b in buffers})
    return max((sum(b.size_bytes for b in buffers if b.first_use <= s <= b.last_use) for s in steps), default=0)


def check_plan(plan: MemoryPlan) -> None:
    """Raise SearchError if two buffers with overlapping lifetimes overlap in memory or leave the arena."""
    bufs, offs = plan.buffers, plan.offsets
    for i, (a, oa) in enumerate(zip(bufs, offs)):
        if a.size_bytes and (oa % plan.alignment or oa + a.size_bytes > plan.arena_bytes or oa < 0):
            raise SearchError(f"buffer {a.name or i} at {oa} (+{a.size_bytes}) is misaligned or outside the arena")
        for j in range(i + 1, len(bufs)):
            b, ob = bufs[j], offs[j]
            if a.size_bytes and b.size_bytes and a.overlaps(b) and oa < ob + b.size_bytes and ob < oa + a.size_bytes:
                raise SearchError(f"buffers {a.name or i} and {b.name or j} are live together and overlap in the arena")
