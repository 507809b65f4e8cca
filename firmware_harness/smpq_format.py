"""The ``.smpq`` blob format in Python (docs/smpq-format.md): struct layouts, bit packing, a reader/validator.

The layouts, op kinds, limits and status codes come from :mod:`firmware_harness.format_spec` (the
one declaration, shared with the C runtime through generated headers); this module adds the
LSB-first weight packing and the reader, used by the writer (deploy/export/smpq.py), by tests and
by tools that inspect a blob. It imports nothing from ``deploy`` or ``search``.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from firmware_harness import format_spec as _spec
from firmware_harness.errors import HarnessError
from firmware_harness.format_spec import (CHANNEL_BYTES, CONV_TILE, DATA_ALIGN, ERRORS, HINTS, MAGIC,  # noqa: F401
                                          MAX_DW_TAPS, MAX_K, MAX_WEIGHT_BYTES, NO_TENSOR, OP_BYTES, OP_KINDS,
                                          REEXPORT, VERSION, WEIGHTED, scratch_bytes)

HEADER = struct.Struct(_spec.HEADER.format)            # magic version flags total_size crc32 n_tensors n_ops input output arena_size reserved
TENSOR = struct.Struct(_spec.TENSOR.format)            # rank bits zero_point qmin qmax pad dims[4] scale arena_offset
OP_HEAD = struct.Struct(_spec.OP_HEAD.format)          # kind w_bits act_min act_max in0 in1 out reserved kh kw sh sw pt pl pb pr
OP_WEIGHTED = struct.Struct(_spec.OP_WEIGHTED.format)  # data_offset scratch_offset scratch_size weights_offset (union, 44 bytes)
OP_PARAMS = struct.Struct(_spec.OP_PARAMS.format)      # add: left_shift m1 s1 m2 s2 mo so; requantize: m s 0...
HEADER_BYTES, TENSOR_BYTES = HEADER.size, TENSOR.size
KIND_NAMES = {v: k for k, v in OP_KINDS.items()}
CODES = {v: k for k, v in ERRORS.items()}


class SmpqFormatError(HarnessError):
    """A malformed blob: `.code` is the C runtime's error name (e.g. 'E_CRC'), the message says what is wrong."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def align_up(n: int, a: int = DATA_ALIGN) -> int:
    """`n` rounded up to a multiple of `a`."""
    return -(-n // a) * a


def weight_bytes(codes: int, bits: int) -> int:
    """Bytes of `codes` weights packed densely at `bits` (one layer's stream)."""
    return (codes * bits + 7) // 8


def channel_param_bytes(channels: int) -> int:
    """Bytes of one weighted op's channel parameters in the data section: int32 bias, int32 multiplier
    and int8 shift per output channel, zero-padded to DATA_ALIGN."""
    return align_up(CHANNEL_BYTES * channels)


def weight_region_bytes(codes: int, bits: int) -> int:
    """Bytes of one packed weights region in the data section: the dense stream, zero-padded to DATA_ALIGN."""
    return align_up(weight_bytes(codes, bits))


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack integer weight codes (flattened in C order) LSB-first at `bits` each, densely.

    Codes are two's complement b-bit for b ≥ 2; for b = 1 the code −1 is bit 0 and +1 is bit 1.
    The last byte is zero-padded.
    """
    c = np.asarray(codes).astype(np.int64).ravel()
    if not 1 <= bits <= 8:
        raise ValueError(f"weight bits must be 1..8, got {bits}")
    if bits == 1:
        if np.any((c != 1) & (c != -1)):
            raise ValueError("1-bit weight codes must be -1 or +1")
        u = (c > 0).astype(np.uint8)
    else:
        hi = (1 << (bits - 1)) - 1
        if c.size and (c.min() < -hi - 1 or c.max() > hi):
            raise ValueError(f"weight codes outside the {bits}-bit range")
        u = (c & ((1 << bits) - 1)).astype(np.uint8)
    bitplane = ((u[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).astype(np.uint8).ravel()
    return np.packbits(bitplane, bitorder="little").tobytes()


def unpack_codes(buf: bytes, n: int, bits: int, start: int = 0) -> np.ndarray:
    """Codes `start`…`start+n−1` of a stream packed by :func:`pack_codes` (int8)."""
    raw = np.unpackbits(np.frombuffer(bytes(buf), np.uint8), bitorder="little")
    b = raw[start * bits:(start + n) * bits].reshape(n, bits).astype(np.int64)
    u = (b << np.arange(bits)).sum(axis=1)
    if bits == 1:
        return (2 * u - 1).astype(np.int8)
    half = 1 << (bits - 1)
    return ((u ^ half) - half).astype(np.int8)


@dataclass(frozen=True)
class TensorRecord:
    rank: int
    bits: int
    zero_point: int
    qmin: int
    qmax: int
    dims: tuple[int, int, int, int]
    scale: float
    offset: int

    @property
    def size(self) -> int:
        return int(np.prod(self.dims))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.dims[4 - self.rank:]


@dataclass(frozen=True)
class OpRecord:
    kind: str
    w_bits: int
    act_min: int
    act_max: int
    inputs: tuple[int, ...]
    output: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    data_offset: int = 0      # weighted ops: channel parameters (bias, multiplier, shift) in the data section
    scratch_offset: int = 0
    scratch_size: int = 0
    weights_offset: int = 0   # weighted ops: packed weights in the data section (instances of a layer share it)
    params: tuple[int, ...] = ()


@dataclass(frozen=True)
class SmpqBlob:
    """A parsed blob: header values, tables and the raw data section."""

    version: int
    total_size: int
    crc32: int
    arena_size: int
    input: int
    output: int
    tensors: tuple[TensorRecord, ...]
    ops: tuple[OpRecord, ...]
    data: bytes

    @property
    def data_offset(self) -> int:
        return HEADER_BYTES + TENSOR_BYTES * len(self.tensors) + OP_BYTES * len(self.ops)

    def layer(self, op: OpRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray, bytes]:
        """(bias int32[C], multiplier int32[C], shift int8[C], packed weight bytes) of a weighted op."""
        c = self.tensors[op.output].dims[3]
        d = self.data[op.data_offset:]
        bias = np.frombuffer(d[:4 * c], "<i4")
        mult = np.frombuffer(d[4 * c:8 * c], "<i4")
        shift = np.frombuffer(d[8 * c:9 * c], np.int8)
        return bias, mult, shift, self.data[op.weights_offset:op.weights_offset + weight_bytes(self.codes(op), op.w_bits)]

    def weight_regions(self) -> dict[int, OpRecord]:
        """The distinct packed weights regions by data-section offset, each with the first op that reads it."""
        regions: dict[int, OpRecord] = {}
        for op in self.ops:
            if op.kind in WEIGHTED:
                regions.setdefault(op.weights_offset, op)
        return regions

    def codes(self, op: OpRecord) -> int:
        """Number of weight codes of a weighted op."""
        ti, to = self.tensors[op.inputs[0]], self.tensors[op.output]
        if op.kind == "conv2d":
            return op.kernel[0] * op.kernel[1] * ti.dims[3] * to.dims[3]
        if op.kind == "depthwise_conv2d":
            return op.kernel[0] * op.kernel[1] * to.dims[3]
        return ti.size * to.dims[3]


@dataclass(frozen=True)
class _Regions:
    """A weighted op's two data-section regions: channel parameters and packed weights (padded sizes)."""

    op: int
    cp_off: int
    cp_size: int
    w_off: int
    codes: int
    bits: int

    @property
    def w_size(self) -> int:
        return weight_region_bytes(self.codes, self.bits)


def _overlap(a: int, an: int, b: int, bn: int) -> bool:
    return a < b + bn and b < a + an


def _check_regions(r: _Regions, earlier: list[_Regions], data_size: int, name: str) -> None:
    """The data-section checks of one weighted op, in the C loader's order (check_weights in loader.c)."""
    what = f"op {r.op} ({name})"
    if r.cp_off % DATA_ALIGN or r.cp_off + r.cp_size > data_size:
        raise SmpqFormatError("E_DATA_RANGE", f"{what} channel parameters at {r.cp_off} (+{r.cp_size}) are misaligned "
                                              f"or outside the {data_size}-byte data section")
    if weight_bytes(r.codes, r.bits) > MAX_WEIGHT_BYTES or r.w_off % DATA_ALIGN or r.w_off + r.w_size > data_size:
        raise SmpqFormatError("E_WEIGHTS_RANGE", f"{what} packed weights at {r.w_off} (+{r.w_size}) are misaligned "
                                                 f"or outside the {data_size}-byte data section")
    if _overlap(r.cp_off, r.cp_size, r.w_off, r.w_size):
        raise SmpqFormatError("E_WEIGHTS_RANGE", f"{what} packed weights at {r.w_off} overlap its own channel parameters")
    for e in earlier:
        if _overlap(r.cp_off, r.cp_size, e.cp_off, e.cp_size):
            raise SmpqFormatError("E_DATA_RANGE", f"{what} channel parameters at {r.cp_off} overlap those of op {e.op}")
        if _overlap(r.cp_off, r.cp_size, e.w_off, e.w_size) or _overlap(r.w_off, r.w_size, e.cp_off, e.cp_size):
            raise SmpqFormatError("E_WEIGHTS_RANGE", f"{what} and op {e.op}: packed weights overlap channel parameters")
        if _overlap(r.w_off, r.w_size, e.w_off, e.w_size) and (r.w_off, r.codes, r.bits) != (e.w_off, e.codes, e.bits):
            raise SmpqFormatError("E_WEIGHTS_SHARED", f"{what} packed weights at {r.w_off} ({r.codes} codes, {r.bits} bits) "
                                                      f"overlap op {e.op}'s at {e.w_off} ({e.codes} codes, {e.bits} bits): "
                                                      f"only the same weights (offset, width and count) may be shared")


def parse(blob: bytes) -> SmpqBlob:
    """Parse and validate the framing of a blob (header, CRC, tables, ranges); raises SmpqFormatError.

    The C loader's checks are the complete ones (op geometry, aliasing); this reader checks what
    a tool needs to read the blob safely.
    """
    blob = bytes(blob)
    if len(blob) < 4:
        raise SmpqFormatError("E_TRUNCATED", f"blob has {len(blob)} bytes, fewer than the magic")
    if blob[:4] != MAGIC:
        raise SmpqFormatError("E_MAGIC", f"magic is {blob[:4]!r}, expected {MAGIC!r}: not an .smpq blob")
    if len(blob) < HEADER_BYTES:
        raise SmpqFormatError("E_TRUNCATED", f"blob has {len(blob)} bytes, fewer than the {HEADER_BYTES}-byte header")
    _, version, flags, total, crc, n_t, n_o, inp, out, arena, reserved = HEADER.unpack_from(blob)
    if version != VERSION:
        why = " (version 1 stored every layer instance's packed weights again)" if version == 1 else ""
        raise SmpqFormatError("E_VERSION", f"format version {version} is not supported (expected {VERSION}){why}: "
                                           f"{REEXPORT} to get a version-{VERSION} blob")
    if flags or reserved or total < HEADER_BYTES:
        raise SmpqFormatError("E_HEADER", f"header flags={flags} reserved={reserved} total_size={total} are invalid")
    if total > len(blob):
        raise SmpqFormatError("E_TRUNCATED", f"header says {total} bytes but the blob has {len(blob)}: the file is truncated")
    actual = zlib.crc32(blob[HEADER_BYTES:total])
    if actual != crc:
        raise SmpqFormatError("E_CRC", f"CRC32 {actual:#010x} of the payload does not match the header's {crc:#010x}: the blob is corrupted")
    if not n_t or not n_o or inp >= n_t or out >= n_t:
        raise SmpqFormatError("E_HEADER", f"counts/indices invalid: {n_t} tensors, {n_o} ops, input {inp}, output {out}")
    data_off = HEADER_BYTES + TENSOR_BYTES * n_t + OP_BYTES * n_o
    if data_off > total:
        raise SmpqFormatError("E_TABLE_RANGE", f"tables end at byte {data_off}, past the blob's {total} bytes")
    tensors = []
    for i in range(n_t):
        rank, bits, zp, qmin, qmax, *rest = TENSOR.unpack_from(blob, HEADER_BYTES + TENSOR_BYTES * i)
        dims, scale, offset = tuple(rest[:4]), rest[4], rest[5]
        t = TensorRecord(rank, bits, zp, qmin, qmax, dims, scale, offset)  # type: ignore[arg-type]
        if not 1 <= rank <= 4 or not 1 <= bits <= 8 or qmin > qmax or 0 in dims or any(d != 1 for d in dims[:4 - rank]) or dims[0] != 1:
            raise SmpqFormatError("E_TENSOR", f"tensor {i}: rank {rank}, bits {bits}, dims {dims}, clamp [{qmin}, {qmax}] invalid")
        if offset + t.size > arena:
            raise SmpqFormatError("E_ARENA_RANGE", f"tensor {i} at arena offset {offset} (+{t.size}) ends past the arena ({arena} bytes)")
        tensors.append(t)
    data = blob[data_off:total]
    ops: list[OpRecord] = []
    regions: list[_Regions] = []  # of the weighted ops before the current one
    for i in range(n_o):
        base = HEADER_BYTES + TENSOR_BYTES * n_t + OP_BYTES * i
        kind, w_bits, amin, amax, in0, in1, o, _res, kh, kw, sh, sw, pt, pl, pb, pr = OP_HEAD.unpack_from(blob, base)
        if kind not in KIND_NAMES:
            raise SmpqFormatError("E_OP_KIND", f"op {i} has unknown kind {kind}")
        name = KIND_NAMES[kind]
        ins = (in0, in1) if name == "add" else (in0,)
        if any(t >= n_t for t in (*ins, o)):
            raise SmpqFormatError("E_OP_INDEX", f"op {i} ({name}) refers to tensor {max(*ins, o)} of {n_t}")
        geo = dict(kind=name, w_bits=w_bits, act_min=amin, act_max=amax, inputs=ins, output=o,
                   kernel=(kh, kw), stride=(sh, sw), padding=(pt, pl, pb, pr))
        if name in WEIGHTED:
            d_off, s_off, s_size, w_off = OP_WEIGHTED.unpack_from(blob, base + OP_HEAD.size)
            op = OpRecord(**geo, data_offset=d_off, scratch_offset=s_off, scratch_size=s_size,  # type: ignore[arg-type]
                          weights_offset=w_off)
            if not 1 <= w_bits <= 8:
                raise SmpqFormatError("E_OP_PARAM", f"op {i} ({name}) has {w_bits}-bit weights (must be 1..8)")
            tmp = SmpqBlob(version, total, crc, arena, inp, out, tuple(tensors), (), data)
            reg = _Regions(i, d_off, channel_param_bytes(tensors[o].dims[3]), w_off, tmp.codes(op), w_bits)
            _check_regions(reg, regions, len(data), name)
            regions.append(reg)
            if s_off + s_size > arena:
                raise SmpqFormatError("E_ARENA_RANGE", f"op {i} ({name}) scratch at {s_off} (+{s_size}) ends past the arena")
        else:
            op = OpRecord(**geo, params=OP_PARAMS.unpack_from(blob, base + OP_HEAD.size))  # type: ignore[arg-type]
        ops.append(op)
    return SmpqBlob(version, total, crc, arena, inp, out, tuple(tensors), tuple(ops), data)
