"""The one declaration of the ``.smpq`` contract between Python and the C runtime.

Record layouts (header, tensor and op records), op kinds, limits, the kernel-scratch formula, the
runtime's status codes and its public model struct are declared here and nowhere else.
``python -m firmware_harness.gen_contracts`` writes from it the C headers
(``runtime/src/smpq_format.h``, ``runtime/include/smpq_types.h``) and the tables of
``docs/smpq-format.md``; :mod:`firmware_harness.smpq_format` (the Python reader and writer helpers)
and :mod:`firmware_harness.host` (ctypes) read it directly. Plain data: no numpy, no imports from
``deploy`` or ``search``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"SMPQ"
VERSION = 2


# ---------------------------------------------------------------------------- record layouts
@dataclass(frozen=True)
class Field:
    """One field of a little-endian record: `code` is its :mod:`struct` code (``"4H"``, ``"3x"``)."""

    name: str   # C offset macro suffix, e.g. "TOTAL_SIZE" → H_TOTAL_SIZE
    code: str
    type: str   # as the docs write it (u16, i8, u8[4], ...)
    doc: str


@dataclass(frozen=True)
class Record:
    """A fixed-size record: its fields in order; `prefix` names the C offset macros (``H_`` …)."""

    name: str
    prefix: str
    fields: tuple[Field, ...]
    base: int = 0   # offset of the first field inside the enclosing record (op-record unions start at 20)

    @property
    def format(self) -> str:
        return "<" + "".join(f.code for f in self.fields)

    @property
    def size(self) -> int:
        return struct.calcsize(self.format)

    def offsets(self) -> list[tuple[Field, int]]:
        """(field, offset in the enclosing record) pairs."""
        out, off = [], self.base
        for f in self.fields:
            out.append((f, off))
            off += struct.calcsize("<" + f.code)
        return out


HEADER = Record("header", "H_", (
    Field("MAGIC", "4s", "char[4]", "magic `SMPQ`"),
    Field("VERSION", "H", "u16", f"format version ({VERSION})"),
    Field("FLAGS", "H", "u16", "flags (0; any other value is rejected)"),
    Field("TOTAL_SIZE", "I", "u32", "total_size: bytes of the blob"),
    Field("CRC32", "I", "u32", "CRC-32 (IEEE 802.3 / zlib) of bytes [32, total_size)"),
    Field("N_TENSORS", "H", "u16", "n_tensors (≥ 1)"),
    Field("N_OPS", "H", "u16", "n_ops (≥ 1)"),
    Field("INPUT", "H", "u16", "input tensor index"),
    Field("OUTPUT", "H", "u16", "output tensor index"),
    Field("ARENA_SIZE", "I", "u32", "arena_size: bytes of the static arena the model needs (activations and scratch), < 2^31"),
    Field("RESERVED", "I", "u32", "reserved (0)"),
))

TENSOR = Record("tensor record", "T_", (
    Field("RANK", "B", "u8", "rank (1..4)"),
    Field("BITS", "B", "u8", "activation bits a (1..8) — informative; the clamp below enforces it"),
    Field("ZERO_POINT", "b", "i8", "zero point"),
    Field("QMIN", "b", "i8", "qmin (clamp low)"),
    Field("QMAX", "b", "i8", "qmax (clamp high), qmin ≤ qmax"),
    Field("RESERVED", "3x", "u8[3]", "reserved (0)"),
    Field("DIMS", "4H", "u16[4]", "dims N, H, W, C; a rank-r shape fills the last r entries, the leading ones are 1; "
                                  "N = 1; every dim ≥ 1"),
    Field("SCALE", "f", "f32", "scale — informative only; the runtime never reads it"),
    Field("ARENA_OFFSET", "I", "u32", "arena offset"),
))

OP_HEAD = Record("op record", "O_", (
    Field("KIND", "B", "u8", "kind: {kinds}"),
    Field("W_BITS", "B", "u8", "w_bits (weighted ops: 1..8)"),
    Field("ACT_MIN", "b", "i8", "act_min (output clamp)"),
    Field("ACT_MAX", "b", "i8", "act_max, act_min ≤ act_max"),
    Field("IN0", "H", "u16", "input tensor"),
    Field("IN1", "H", "u16", "second input (add only; 0xFFFF otherwise)"),
    Field("OUT", "H", "u16", "output tensor"),
    Field("RESERVED", "H", "u16", "reserved (0)"),
    Field("KERNEL", "2B", "u8[2]", "kernel kh, kw (conv, depthwise, pools; 1, 1 otherwise)"),
    Field("STRIDE", "2B", "u8[2]", "stride sh, sw"),
    Field("PAD", "4B", "u8[4]", "padding top, left, bottom, right (explicit; padded taps contribute zero to "
                                "convolutions and are excluded from pools)"),
))
OP_UNION_BYTES = 44  # the op record's kind-dependent tail

OP_WEIGHTED = Record("weighted op fields", "O_", (
    Field("DATA_OFFSET", "I", "u32", "data offset: the op's channel parameters in the data section (multiple of 4)"),
    Field("SCRATCH_OFFSET", "I", "u32", "scratch arena offset (even)"),
    Field("SCRATCH_SIZE", "I", "u32", "scratch size"),
    Field("WEIGHTS_OFFSET", "I", "u32", "weights offset: the packed weights in the data section (multiple of 4); "
                                        "the instances of one layer hold the same value"),
    Field("WEIGHTED_END", "28x", "28 bytes", "zero"),
), base=20)

N_PARAMS = 7  # add: left_shift, in1_multiplier, in1_shift, in2_multiplier, in2_shift, out_multiplier, out_shift
OP_PARAMS = Record("add / requantize / softmax parameters", "O_", (
    Field("PARAMS", f"{N_PARAMS}i", f"i32[{N_PARAMS}]", "add: left_shift, in1_multiplier, in1_shift, in2_multiplier, "
                                                       "in2_shift, out_multiplier, out_shift; requantize: multiplier, shift; "
                                                       "softmax: input_multiplier, input_left_shift, diff_min"),
    Field("PARAMS_END", "16x", "16 bytes", "zero"),
), base=20)

HEADER_BYTES = HEADER.size
TENSOR_BYTES = TENSOR.size
OP_BYTES = OP_HEAD.size + OP_UNION_BYTES

# Data section: per weighted op its channel parameters, per layer its packed weights.
CHANNEL_PARAMS = (("bias", 4), ("multiplier", 4), ("shift", 1))  # per output channel: int32, int32 (Q31), int8
CHANNEL_BYTES = sum(n for _, n in CHANNEL_PARAMS)
DATA_ALIGN = 4  # channel parameters and packed weights each start at, and are padded to, a multiple of 4


# ---------------------------------------------------------------------------- op kinds
@dataclass(frozen=True)
class OpKind:
    name: str
    code: int
    weighted: bool  # has channel parameters and packed weights in the data section


OP_KIND_TABLE = (
    OpKind("conv2d", 1, True), OpKind("depthwise_conv2d", 2, True), OpKind("fully_connected", 3, True),
    OpKind("add", 4, False), OpKind("avg_pool", 5, False), OpKind("max_pool", 6, False),
    OpKind("reshape", 7, False), OpKind("requantize", 8, False), OpKind("softmax", 9, False),
)
OP_KINDS = {k.name: k.code for k in OP_KIND_TABLE}
WEIGHTED = tuple(k.name for k in OP_KIND_TABLE if k.weighted)


# ---------------------------------------------------------------------------- limits
@dataclass(frozen=True)
class Limit:
    name: str   # the Python constant
    value: int
    doc: str
    c_name: str = ""  # the C macro (default SMPQ_<name>)

    @property
    def c(self) -> str:
        return self.c_name or f"SMPQ_{self.name}"


LIMITS = (
    Limit("NO_TENSOR", 0xFFFF, "the second input index of an op that has none"),
    Limit("MAX_K", 32768, "largest K = kh·kw·C_in (conv2d) or input elements (fully connected): keeps the int32 accumulator from overflowing"),
    Limit("MAX_DW_TAPS", 64, "largest depthwise kh·kw (the kernel decodes the taps into a stack array)",
          "SMPQ_DW_MAX_TAPS"),
    Limit("CONV_TILE", 4, "output pixels per conv2d tile (one int16 input patch each)", "SMPQ_TILE"),
    Limit("MAX_WEIGHT_BYTES", 0x0FFFFFFF, "packed weights of one op (keeps the readers' bit indices below 2^31)"),
    Limit("MAX_ARENA", 0x7FFFFFFF, "largest arena_size"),
)
_LIMIT = {lim.name: lim.value for lim in LIMITS}
NO_TENSOR = _LIMIT["NO_TENSOR"]
MAX_K = _LIMIT["MAX_K"]
MAX_DW_TAPS = _LIMIT["MAX_DW_TAPS"]
CONV_TILE = _LIMIT["CONV_TILE"]
MAX_WEIGHT_BYTES = _LIMIT["MAX_WEIGHT_BYTES"]
MAX_ARENA = _LIMIT["MAX_ARENA"]


# ---------------------------------------------------------------------------- kernel scratch
SCRATCH_ELEMENT_BYTES = 2  # the kernels' input patches and decoded weight rows are int16


@dataclass(frozen=True)
class Scratch:
    """Arena scratch of one op kind: `patches` int16 patches of K, plus one decoded int16 weight row
    when `row_below_8_bits` and the weights are narrower than 8 bits."""

    kind: str
    patches: str            # a limit name ("CONV_TILE") or a number
    row_below_8_bits: bool


SCRATCH = (Scratch("conv2d", "CONV_TILE", True), Scratch("fully_connected", "1", False))


def scratch_bytes(kind: str, k: int, w_bits: int) -> int:
    """Arena scratch of one op with K = kh·kw·C_in (conv2d) or input elements (fully connected); 0 for other kinds."""
    for s in SCRATCH:
        if s.kind == kind:
            patches = _LIMIT[s.patches] if s.patches in _LIMIT else int(s.patches)
            return SCRATCH_ELEMENT_BYTES * k * (patches + (1 if s.row_below_8_bits and w_bits < 8 else 0))
    return 0


# ---------------------------------------------------------------------------- status codes
REEXPORT = "re-export it with 'smpq-deploy export --formats smpq'"


@dataclass(frozen=True)
class Status:
    code: int
    name: str     # SMPQ_<name> in C
    meaning: str  # what the loader or runtime found (C comment, docs table)
    hint: str     # what the user should do (Python error messages)


STATUSES = (
    Status(0, "OK", "loaded", ""),
    Status(-1, "E_NULL", "a NULL argument", "a NULL pointer was passed to the runtime"),
    Status(-2, "E_TRUNCATED", "shorter than the header or than total_size",
           f"the blob is shorter than its header says (truncated file): {REEXPORT}"),
    Status(-3, "E_MAGIC", "not an .smpq blob", "the file is not an .smpq blob (magic is not 'SMPQ')"),
    Status(-4, "E_VERSION", "unsupported version", f"the blob's format version is not the runtime's: {REEXPORT} with this version"),
    Status(-5, "E_HEADER", "flags/reserved non-zero, total_size < 32, zero counts, input/output index out of range, arena ≥ 2^31",
           f"the header is inconsistent: {REEXPORT}"),
    Status(-6, "E_CRC", "CRC-32 mismatch", f"the payload's CRC32 does not match: the blob is corrupted, {REEXPORT}"),
    Status(-7, "E_TABLE_RANGE", "the tables do not fit in total_size", f"the tensor/op tables do not fit in the blob: {REEXPORT}"),
    Status(-8, "E_TENSOR", "rank, bits, dims (0, batch ≠ 1, leading dims ≠ 1), clamp or reserved bytes invalid",
           f"a tensor record is invalid: {REEXPORT}"),
    Status(-9, "E_ARENA_RANGE", "a tensor or scratch region ends past arena_size, odd scratch offset",
           f"a tensor or scratch region lies outside the arena: {REEXPORT}"),
    Status(-10, "E_OP_KIND", "unknown kind", "an op kind is unknown to this runtime: update the runtime or re-export"),
    Status(-11, "E_OP_INDEX", "an op names a tensor that does not exist (or a second input where none is allowed)",
           f"an op refers to a missing tensor: {REEXPORT}"),
    Status(-12, "E_OP_SHAPE", "output size ≠ ⌊(in + pad_before + pad_after − k)/stride⌋ + 1, channels differ (depthwise, "
                              "pools), element counts differ (add, reshape, requantize), FC output not [.., C]",
           f"an op's tensor shapes are inconsistent: {REEXPORT}"),
    Status(-13, "E_OP_PARAM", f"w_bits ∉ 1..8, kernel/stride 0, padding ≥ kernel, K > {MAX_K}, depthwise taps > {MAX_DW_TAPS}, "
                              "shift ∉ −31..31, add left_shift ∉ 0..31, act_min > act_max, scratch too small, "
                              "non-zero reserved bytes",
           f"an op parameter (bits, kernel, stride, padding, shift, clamp, scratch) is out of range: {REEXPORT}"),
    Status(-14, "E_DATA_RANGE", "channel parameters misaligned, past the data section, or overlapping another op's "
                                "channel parameters",
           f"an op's channel parameters lie outside the data section or overlap another op's: {REEXPORT}"),
    Status(-15, "E_ARENA_SMALL", "the caller's arena is smaller than arena_size, or not 4-byte aligned",
           "the arena is smaller than the model needs (or not 4-byte aligned): give smpq_load a larger arena"),
    Status(-16, "E_ALIAS", "an op's output overlaps its input (element-wise ops may share the exact region) or its "
                           "scratch overlaps a tensor it uses",
           f"an op's output overlaps its inputs or scratch: {REEXPORT}"),
    Status(-17, "E_NOT_LOADED", "smpq_invoke on a model that did not load", "the model did not load: check smpq_load's status first"),
    Status(-18, "E_PLATFORM", "the runtime was built for a big-endian target",
           "the runtime was built for a big-endian target; .smpq is little-endian only"),
    Status(-19, "E_WEIGHTS_RANGE", "packed weights misaligned, past the data section or > 256 MiB, or overlapping any "
                                   "op's channel parameters",
           f"an op's packed weights lie outside the data section or overlap channel parameters: {REEXPORT}"),
    Status(-20, "E_WEIGHTS_SHARED", "two ops' packed weights overlap without being the same region: ops may share weights "
                                    "only at the same offset with the same w_bits and the same number of codes",
           f"two ops' packed weights overlap without being the same weights (offset, bits, size): {REEXPORT}"),
)
ERRORS = {s.code: s.name for s in STATUSES}
HINTS = {s.name: s.hint for s in STATUSES if s.hint}


# ---------------------------------------------------------------------------- the C API's model struct
@dataclass(frozen=True)
class StructField:
    name: str
    ctype: str   # one of CTYPES
    doc: str = ""


#: smpq_model (include/smpq.h): views into the caller's blob and arena (the runtime owns no memory).
MODEL_STRUCT = (
    StructField("blob", "const uint8_t *"),
    StructField("tensors", "const uint8_t *", "tensor table"),
    StructField("ops", "const uint8_t *", "op table"),
    StructField("data", "const uint8_t *", "data section (channel parameters, packed weights)"),
    StructField("arena", "uint8_t *"),
    StructField("blob_size", "uint32_t"),
    StructField("data_size", "uint32_t"),
    StructField("arena_size", "uint32_t", "bytes the model needs"),
    StructField("n_tensors", "uint16_t"),
    StructField("n_ops", "uint16_t"),
    StructField("input", "uint16_t"),
    StructField("output", "uint16_t"),
    StructField("loaded", "int"),
)

assert HEADER_BYTES == 32 and TENSOR_BYTES == 24 and OP_BYTES == 64 and OP_HEAD.size == OP_WEIGHTED.base
assert OP_WEIGHTED.size == OP_PARAMS.size == OP_UNION_BYTES
