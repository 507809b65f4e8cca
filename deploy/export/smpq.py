"""IR → ``.smpq`` blob (docs/smpq-format.md) and ``model_data.c/.h`` for firmware builds.

Weights are packed at each layer's own bit width and stored once per layer: the instances of a layer
(ops naming the same IR ``weights`` array, "<layer>", "<layer>#1", ...) point at one packed region,
each with its own channel parameters. The data section is written in op order: an op's channel
parameters, then its packed weights unless an earlier instance wrote them. The arena (activations +
the conv/FC patch scratch) is planned offline by :func:`search.planner.plan_greedy`. The flash layout
follows :mod:`firmware_harness.format_spec` (header, 64-byte records, channel parameters and weights
each aligned to 4), as does the cost model (:mod:`deploy.devices.cost`), so a blob's size is its flash prediction. Reshape ops are elided:
their output aliases their input (same bytes in NHWC order).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy.errors import DeployError
from deploy.lower.ir import Graph, Op
from firmware_harness import smpq_format as fmt
from search.atomic import atomic_write_bytes, atomic_write_text
from search.planner import live_ranges, plan_arena


@dataclass(frozen=True)
class ArenaPlan:
    """Arena offsets of the blob's tensors (by blob tensor index) and of each op's scratch."""

    tensor_offsets: list[int]
    scratch: list[tuple[int, int]]  # (offset, size) per blob op
    arena_bytes: int


def _dims(shape: list[int], name: str) -> tuple[int, int, int, int]:
    if not 1 <= len(shape) <= 4 or shape[0] != 1 or any(not 1 <= s <= 0xFFFF for s in shape):
        raise DeployError(f"tensor '{name}' has shape {shape}: .smpq needs batch 1, rank 1..4 and dims 1..65535")
    return tuple([1] * (4 - len(shape)) + list(shape))  # type: ignore[return-value]


def _elide_reshapes(g: Graph) -> tuple[list[Op], dict[int, int]]:
    """Ops without reshapes, and the map IR tensor → blob-visible IR tensor (reshape outputs alias inputs)."""
    alias: dict[int, int] = {}
    ops = []
    for op in g.ops:
        if op.kind == "reshape":
            src = op.inputs[0]
            alias[op.outputs[0]] = alias.get(src, src)
        else:
            ops.append(op)
    return ops, alias


def _kernel(g: Graph, op: Op) -> tuple[int, int]:
    if op.kind in ("conv2d", "depthwise_conv2d"):
        w = g.const(op, "weights")
        return int(w.shape[1]), int(w.shape[2])
    if op.kind in ("avg_pool", "max_pool"):
        return tuple(int(k) for k in op.attrs["kernel"])  # type: ignore[return-value]
    return 1, 1


def plan_blob_arena(g: Graph, ops: list[Op], tensors: list[int], alias: dict[int, int]) -> ArenaPlan:
    """The .smpq runtime's own arena (= Ω's SRAM, :func:`search.planner.plan_arena`): blob tensors (reshapes
    aliased) + C-kernel scratch, output live past the last op."""
    index = {t: i for i, t in enumerate(tensors)}
    ref = lambda t: index[alias.get(t, t)]  # noqa: E731
    lives = live_ranges(len(tensors), [([ref(t) for t in op.inputs], [ref(op.outputs[0])]) for op in ops],
                        [ref(g.inputs[0])], [ref(t) for t in g.outputs])
    scratch = []
    for op in ops:
        shp = g.tensors[op.inputs[0]].shape
        kh, kw = _kernel(g, op)
        k = kh * kw * int(shp[-1]) if op.kind == "conv2d" else int(np.prod(shp))
        scratch.append(fmt.scratch_bytes(op.kind, k, int(op.attrs.get("w_bits", 8))))
    plan = plan_arena([int(np.prod(g.tensors[t].shape)) for t in tensors], lives, scratch)
    n = len(tensors)
    return ArenaPlan(list(plan.offsets[:n]), [(plan.offsets[n + i], scratch[i]) for i in range(len(ops))],
                     plan.arena_bytes)


def _pad(body: bytes) -> bytes:
    return body + bytes(-len(body) % fmt.DATA_ALIGN)


def _channel_params(g: Graph, op: Op) -> bytes:
    """int32 bias[C], int32 multiplier[C], int8 shift[C] of a weighted op, padded to DATA_ALIGN."""
    bias, mult, shift = (g.const(op, k) for k in ("bias", "multiplier", "shift"))
    if np.any(shift < -31) or np.any(shift > 31):
        raise DeployError(f"op '{op.name}': requantisation shifts {shift.min()}..{shift.max()} are outside -31..31")
    body = _pad(np.asarray(bias, "<i4").tobytes() + np.asarray(mult, "<i4").tobytes() + np.asarray(shift, np.int8).tobytes())
    assert len(body) == fmt.channel_param_bytes(len(bias))
    return body


def _packed_weights(g: Graph, op: Op) -> bytes:
    """The op's weight codes packed at its w_bits (OHWI / 1HWC / OI flattened in C order), padded to DATA_ALIGN."""
    w = g.const(op, "weights")
    bits = int(op.attrs["w_bits"])
    body = _pad(fmt.pack_codes(w, bits))
    assert len(body) == fmt.weight_region_bytes(w.size, bits)
    return body


class _DataSection:
    """The data section, written in op order: each weighted op's channel parameters, then its packed
    weights unless an op naming the same IR weights array (an instance of the same layer) wrote them."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.weights: dict[str, tuple[int, int, str]] = {}  # IR weights key -> (offset, w_bits, first op)

    def add(self, g: Graph, op: Op) -> tuple[int, int]:
        """(channel-parameter offset, weights offset) of a weighted op, appending what is new."""
        params_at = len(self.data)
        self.data += _channel_params(g, op)
        key, bits = op.arrays["weights"], int(op.attrs["w_bits"])
        if key in self.weights:
            at, first_bits, first = self.weights[key]
            if bits != first_bits:
                raise DeployError(f"ops '{first}' and '{op.name}' share the weights array '{key}' at different widths "
                                  f"({first_bits} and {bits} bits): instances of a layer must have one w_bits")
            return params_at, at
        at = len(self.data)
        self.data += _packed_weights(g, op)
        self.weights[key] = (at, bits, op.name)
        return params_at, at


def build_smpq(g: Graph) -> bytes:
    """The ``.smpq`` blob of an IR graph."""
    if len(g.inputs) != 1 or len(g.outputs) != 1:
        raise DeployError(f"the .smpq runtime takes one input and one output (the IR has {len(g.inputs)} and {len(g.outputs)})")
    ops, alias = _elide_reshapes(g)
    tensors = [i for i in range(len(g.tensors)) if i not in alias]
    index = {t: i for i, t in enumerate(tensors)}
    ref = lambda t: index[alias.get(t, t)]  # noqa: E731
    if len(tensors) > 0xFFFE or len(ops) > 0xFFFF:
        raise DeployError(f"the graph has {len(tensors)} tensors and {len(ops)} ops; .smpq holds at most 65534 / 65535")
    plan = plan_blob_arena(g, ops, tensors, alias)
    table = bytearray()
    for i, t in zip(range(len(tensors)), tensors):
        s = g.tensors[t]
        table += fmt.TENSOR.pack(len(s.shape), s.bits, s.zero_point, s.qmin, s.qmax, *_dims(s.shape, s.name),
                                 float(s.scale), plan.tensor_offsets[i])
    data = _DataSection()
    for step, op in enumerate(ops):
        if op.kind not in fmt.OP_KINDS:
            raise DeployError(f"op '{op.name}' of kind '{op.kind}' has no .smpq kernel")
        kh, kw = _kernel(g, op)
        sh, sw = (int(s) for s in op.attrs.get("stride", (1, 1)))
        pad = [int(p) for p in op.attrs.get("padding", (0, 0, 0, 0))]
        if max(kh, kw, sh, sw, *pad) > 255:
            raise DeployError(f"op '{op.name}': kernel/stride/padding above 255 do not fit the .smpq op record")
        ins = [ref(t) for t in op.inputs]
        head = fmt.OP_HEAD.pack(fmt.OP_KINDS[op.kind], int(op.attrs.get("w_bits", 0)), int(op.attrs.get("act_min", -128)),
                                int(op.attrs.get("act_max", 127)), ins[0], ins[1] if len(ins) > 1 else fmt.NO_TENSOR,
                                ref(op.outputs[0]), 0, kh, kw, sh, sw, *pad)
        if op.kind in fmt.WEIGHTED:
            params_at, weights_at = data.add(g, op)
            body = fmt.OP_WEIGHTED.pack(params_at, *plan.scratch[step], weights_at)
        elif op.kind == "add":
            a = op.attrs
            body = fmt.OP_PARAMS.pack(a["left_shift"], a["in1_multiplier"], a["in1_shift"], a["in2_multiplier"],
                                      a["in2_shift"], a["out_multiplier"], a["out_shift"])
        elif op.kind == "requantize":
            body = fmt.OP_PARAMS.pack(op.attrs["multiplier"], op.attrs["shift"], 0, 0, 0, 0, 0)
        elif op.kind == "softmax":
            a = op.attrs
            body = fmt.OP_PARAMS.pack(a["input_multiplier"], a["input_left_shift"], a["diff_min"], 0, 0, 0, 0)
        else:
            body = bytes(fmt.OP_WEIGHTED.size)
        table += head + body
    payload = bytes(table + data.data)
    total = fmt.HEADER_BYTES + len(payload)
    header = fmt.HEADER.pack(fmt.MAGIC, fmt.VERSION, 0, total, zlib.crc32(payload), len(tensors), len(ops),
                             ref(g.inputs[0]), ref(g.outputs[0]), plan.arena_bytes, 0)
    return header + payload


def export_smpq(g: Graph, path: str | Path) -> Path:
    """Write the ``.smpq`` blob of `g` to `path`."""
    path = Path(path)
    atomic_write_bytes(path, build_smpq(g))
    return path


def model_data_sources(g: Graph, symbol: str = "smpq_model_data") -> tuple[str, str]:
    """(model_data.c, model_data.h): the blob as a const array (flash) plus its sizes as macros."""
    blob = build_smpq(g)
    parsed = fmt.parse(blob)
    tin, tout = parsed.tensors[parsed.input], parsed.tensors[parsed.output]
    up = symbol.upper()
    first = {op.weights_offset: i for i, op in reversed(list(enumerate(parsed.ops))) if op.kind in fmt.WEIGHTED}
    layers = "\n".join(f" *   {op.kind:<17} w_bits={op.w_bits}"
                       + (f" (weights of op {first[op.weights_offset]})" if first[op.weights_offset] != i else "")
                       for i, op in enumerate(parsed.ops) if op.kind in fmt.WEIGHTED)
    h = (f"/* Generated by smpq-deploy (deploy/export/smpq.py) from the integer IR. Do not edit. */\n"
         f"#ifndef {up}_H\n#define {up}_H\n\n#include <stdint.h>\n\n"
         f"#define {up}_SIZE {len(blob)}u\n#define {up}_ARENA_SIZE {parsed.arena_size}u\n"
         f"#define {up}_INPUT_SIZE {tin.size}u\n#define {up}_OUTPUT_SIZE {tout.size}u\n\n"
         f"/* Placement of the blob: 16-byte aligned (the runtime reads it with word loads) and in a section of its\n"
         f" * own, which the firmware's linker script keeps in flash (firmware_harness/boards/common/sections.ld). */\n"
         f"#ifndef {up}_ATTR\n#if defined(__GNUC__) || defined(__clang__)\n"
         f"#define {up}_ATTR __attribute__((aligned(16), section(\".{symbol}\")))\n"
         f"#else\n#define {up}_ATTR\n#endif\n#endif\n\n"
         f"/* The .smpq blob (docs/smpq-format.md); pass it to smpq_load(). */\n"
         f"extern const uint8_t {symbol}[{up}_SIZE];\n\n#endif\n")
    rows = ",\n".join("    " + ", ".join(f"0x{b:02x}" for b in blob[i:i + 16]) for i in range(0, len(blob), 16))
    c = (f"/* Generated by smpq-deploy (deploy/export/smpq.py) from the integer IR. Do not edit.\n"
         f" * {len(parsed.ops)} ops, {len(parsed.tensors)} tensors, arena {parsed.arena_size} bytes, blob {len(blob)} bytes.\n"
         f" * Weighted layers:\n{layers}\n */\n#include \"model_data.h\"\n\n"
         f"{up}_ATTR const uint8_t {symbol}[{up}_SIZE] = {{\n{rows}\n}};\n")
    return c, h


def export_c(g: Graph, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``model_data.c`` and ``model_data.h`` into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    c, h = model_data_sources(g)
    atomic_write_text(out_dir / "model_data.c", c)
    atomic_write_text(out_dir / "model_data.h", h)
    return out_dir / "model_data.c", out_dir / "model_data.h"
