"""The .smpq format: bit packing, the Python reader, and the blob's size against the Ω cost model."""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from deploy.errors import DeployError
from deploy.export.smpq import build_smpq, model_data_sources
from deploy.lower.irbuild import synthetic_graph
from firmware_harness import host
from firmware_harness import smpq_format as fmt

ROOT = Path(__file__).resolve().parents[2]


def bench_module():
    """bench/runtime_host.py (lowered random QAT models, cached per session), imported once."""
    name = "smpq_runtime_host_bench"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "runtime_host.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return sys.modules[name]


def random_codes(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    if bits == 1:
        return rng.choice(np.array([-1, 1], np.int8), n)
    hi = (1 << (bits - 1)) - 1
    return rng.integers(-hi, hi + 1, n).astype(np.int8)


def test_packing_is_lsb_first_and_documented_layout():
    assert fmt.pack_codes(np.array([-1, -7]), 4) == b"\x9f"            # low nibble first, two's complement
    assert fmt.pack_codes(np.array([-1, 1, 1]), 1) == b"\x06"          # 1 bit: -1 -> 0, +1 -> 1
    assert fmt.pack_codes(np.array([1, -1, 3]), 3) == b"\xf9\x00"      # 001 111 011, the third code spans bytes
    assert fmt.pack_codes(np.array([-128 + 1, 127]), 8) == b"\x81\x7f"


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_roundtrip_dense(bits):
    rng = np.random.default_rng(bits)
    codes = random_codes(rng, 1001, bits)
    buf = fmt.pack_codes(codes, bits)
    assert len(buf) == fmt.weight_bytes(1001, bits) == -(-1001 * bits // 8)
    np.testing.assert_array_equal(fmt.unpack_codes(buf, 1001, bits), codes)
    np.testing.assert_array_equal(fmt.unpack_codes(buf, 27, bits, start=13), codes[13:40])  # a row starting mid-byte


def test_pack_rejects_codes_outside_the_width():
    with pytest.raises(ValueError):
        fmt.pack_codes(np.array([0]), 1)
    with pytest.raises(ValueError):
        fmt.pack_codes(np.array([8]), 4)


def test_parse_returns_the_ir_arrays():
    g = synthetic_graph(3)
    blob = build_smpq(g)
    p = fmt.parse(blob)
    assert p.total_size == len(blob) and p.crc32 == zlib.crc32(blob[fmt.HEADER_BYTES:])
    weighted = [op for op in g.ops if op.kind in fmt.WEIGHTED]
    recs = [op for op in p.ops if op.kind in fmt.WEIGHTED]
    assert [o.kind for o in recs] == [o.kind for o in weighted]
    assert len(p.ops) == len([o for o in g.ops if o.kind != "reshape"])  # reshapes are elided (aliases)
    for op, rec in zip(weighted, recs):
        bias, mult, shift, wbytes = p.layer(rec)
        np.testing.assert_array_equal(bias, g.const(op, "bias"))
        np.testing.assert_array_equal(mult, g.const(op, "multiplier"))
        np.testing.assert_array_equal(shift, g.const(op, "shift"))
        w = g.const(op, "weights")
        assert rec.w_bits == op.attrs["w_bits"]
        np.testing.assert_array_equal(fmt.unpack_codes(wbytes, w.size, rec.w_bits), w.ravel())
    tin = p.tensors[p.input]
    assert tin.shape == tuple(g.tensors[g.inputs[0]].shape) and tin.zero_point == -128


def _set_op(blob: bytes, i: int, **fields: int) -> bytes:
    """`blob` with fields of op record `i` replaced (w_bits, data = channel-parameter offset, weights
    = weights offset) and the CRC fixed, so the corruption reaches the deeper checks."""
    n_t = struct.unpack_from("<H", blob, 16)[0]
    base = fmt.HEADER_BYTES + fmt.TENSOR_BYTES * n_t + fmt.OP_BYTES * i
    b = bytearray(blob)
    layout = {"w_bits": ("<B", 1), "data": ("<I", 20), "weights": ("<I", 32)}
    for name, value in fields.items():
        code, at = layout[name]
        struct.pack_into(code, b, base + at, value)
    struct.pack_into("<I", b, 12, zlib.crc32(bytes(b[fmt.HEADER_BYTES:])))
    return bytes(b)


def _ops(blob: bytes) -> tuple[fmt.OpRecord, ...]:
    return fmt.parse(blob).ops


# synthetic_graph(0): op 0 conv1 (4-bit, 8 channels), op 1 depthwise (3-bit), op 2 conv shortcut (2-bit), ...
CORRUPT = {
    "truncated header": (lambda b: b[:20], "E_TRUNCATED"),
    "truncated payload": (lambda b: b[:-1], "E_TRUNCATED"),
    "bad magic": (lambda b: b"XMPQ" + b[4:], "E_MAGIC"),
    "unknown version": (lambda b: b[:4] + b"\x07\x00" + b[6:], "E_VERSION"),
    "version 1 blob": (lambda b: b[:4] + b"\x01\x00" + b[6:], "E_VERSION"),
    "flipped payload bit": (lambda b: b[:-5] + bytes([b[-5] ^ 1]) + b[-4:], "E_CRC"),
    "channel parameters past the end": (lambda b: _set_op(b, 0, data=1 << 20), "E_DATA_RANGE"),
    "misaligned channel parameters": (lambda b: _set_op(b, 0, data=2), "E_DATA_RANGE"),
    "channel parameters overlap another op's": (lambda b: _set_op(b, 1, data=_ops(b)[0].data_offset), "E_DATA_RANGE"),
    "weights past the end": (lambda b: _set_op(b, 0, weights=1 << 20), "E_WEIGHTS_RANGE"),
    "misaligned weights": (lambda b: _set_op(b, 0, weights=_ops(b)[0].weights_offset + 2), "E_WEIGHTS_RANGE"),
    "weights over the op's own channel parameters": (lambda b: _set_op(b, 0, weights=_ops(b)[0].data_offset),
                                                     "E_WEIGHTS_RANGE"),
    "weights over a later op's channel parameters": (lambda b: _set_op(b, 0, weights=_ops(b)[1].data_offset),
                                                     "E_WEIGHTS_RANGE"),
    "weights shared at another width": (lambda b: _set_op(b, 1, weights=_ops(b)[0].weights_offset), "E_WEIGHTS_SHARED"),
    "weights shared with another code count": (lambda b: _set_op(b, 1, w_bits=4, weights=_ops(b)[0].weights_offset),
                                               "E_WEIGHTS_SHARED"),
    "weights overlapping others at another offset": (lambda b: _set_op(b, 1, weights=_ops(b)[0].weights_offset + 4),
                                                     "E_WEIGHTS_SHARED"),
}


@pytest.mark.parametrize("name", list(CORRUPT))
def test_parse_rejects_corrupt_blobs_like_the_c_loader(name):
    """One error code per corruption, the same from the Python reader and the C loader."""
    mutate, code = CORRUPT[name]
    blob = build_smpq(synthetic_graph(0))
    bad = mutate(blob)
    assert bad != blob
    with pytest.raises(fmt.SmpqFormatError) as e:
        fmt.parse(bad)
    assert e.value.code == code
    assert fmt.ERRORS[host.load_status(bad)] == code


def test_version_1_blobs_are_rejected_with_a_re_export_hint():
    blob = build_smpq(synthetic_graph(0))
    assert struct.unpack_from("<H", blob, 4)[0] == fmt.VERSION == 2
    with pytest.raises(fmt.SmpqFormatError, match="version 1 is not supported.*re-export") as e:
        fmt.parse(blob[:4] + b"\x01\x00" + blob[6:])
    assert e.value.code == "E_VERSION" and "re-export" in fmt.HINTS["E_VERSION"]


def test_data_section_is_channel_parameters_then_weights_in_op_order():
    """Without layer instances: per weighted op, its channel parameters then its packed weights, no gaps."""
    g = synthetic_graph(3)
    p = fmt.parse(build_smpq(g))
    at = 0
    for rec in (r for r in p.ops if r.kind in fmt.WEIGHTED):
        assert (rec.data_offset, rec.weights_offset) == (at, at + fmt.channel_param_bytes(p.tensors[rec.output].dims[3]))
        at = rec.weights_offset + fmt.weight_region_bytes(p.codes(rec), rec.w_bits)
    assert at == len(p.data)


def test_writer_refuses_one_weights_array_at_two_widths():
    g = synthetic_graph(0)
    conv1, shortcut = g.ops[0], next(op for op in g.ops if op.name == "shortcut")
    assert conv1.attrs["w_bits"] != shortcut.attrs["w_bits"]
    shortcut.arrays["weights"] = conv1.arrays["weights"]
    with pytest.raises(DeployError, match="different widths"):
        build_smpq(g)


def test_model_data_sources_embed_the_blob():
    g = synthetic_graph(1)
    blob = build_smpq(g)
    c, h = model_data_sources(g)
    assert f"#define SMPQ_MODEL_DATA_SIZE {len(blob)}u" in h
    body = c[c.index("{") + 1:c.rindex("}")]
    assert bytes(int(v, 16) for v in body.replace("\n", "").split(",")) == blob


def _with_instances(g):
    """A copy of `g` in which every conv2d also runs as a second instance ("<layer>#1", the same IR arrays,
    into a tensor of its own): the lowering emits each layer once, but the format lets ops share weights."""
    g = copy.deepcopy(g)
    for i in reversed([i for i, op in enumerate(g.ops) if op.kind == "conv2d"]):
        op, out = g.ops[i], g.tensors[g.ops[i].outputs[0]]
        g.tensors.append(dataclasses.replace(out, name=out.name + "#1", shape=list(out.shape)))
        g.ops.insert(i + 1, dataclasses.replace(op, name=op.name + "#1", outputs=[len(g.tensors) - 1]))
    return g


@pytest.mark.parametrize("model", ["resnet8", "mbv2"])
def test_layer_instances_store_their_weights_once(model):
    """Instances of a layer ("<layer>", "<layer>#1", ...: one IR weights array) point at one packed
    weights region; each has its own channel parameters; every op reads back its IR arrays."""
    g = _with_instances(bench_module().cached_ir(model, "mixed"))
    blob = build_smpq(g)
    p = fmt.parse(blob)
    weighted = [op for op in g.ops if op.kind in fmt.WEIGHTED]
    recs = [r for r in p.ops if r.kind in fmt.WEIGHTED]
    keys = {op.arrays["weights"] for op in weighted}
    assert len(keys) < len(weighted)  # the model has layer instances
    assert len({r.weights_offset for r in recs}) == len(keys) == len(p.weight_regions())
    assert len({r.data_offset for r in recs}) == len(recs)
    offset_of: dict[str, int] = {}
    for op, rec in zip(weighted, recs):
        assert offset_of.setdefault(op.arrays["weights"], rec.weights_offset) == rec.weights_offset
        bias, mult, shift, wbytes = p.layer(rec)
        np.testing.assert_array_equal(mult, g.const(op, "multiplier"))
        np.testing.assert_array_equal(shift, g.const(op, "shift"))
        np.testing.assert_array_equal(bias, g.const(op, "bias"))
        np.testing.assert_array_equal(fmt.unpack_codes(wbytes, p.codes(rec), rec.w_bits), g.const(op, "weights").ravel())
    assert len(p.data) == (sum(fmt.channel_param_bytes(p.tensors[r.output].dims[3]) for r in recs)
                           + sum(fmt.weight_region_bytes(p.codes(r), r.w_bits) for r in p.weight_regions().values()))
    assert host.load_status(blob) == 0


@pytest.mark.parametrize("model", ["resnet8", "mbv2"])
def test_blob_size_is_the_cost_models_flash_and_weights_are_dense(model):
    """Ω's flash prediction (deploy/devices/cost.py) is the blob's exact size; packed weights ≤ 1.01 × Σ params·bits/8
    (each layer once)."""
    from deploy.devices.cost import omega
    from search.nn.graph import extract_graph
    from search.nn.models import build_model, quantizable_layers
    from search.policy import Policy

    bench = bench_module()
    g = bench.cached_ir(model, "mixed")
    blob = build_smpq(g)
    m = build_model(model, (3, 32, 32), 10)
    names = [n for n, _ in quantizable_layers(m)]
    policy = Policy([(n, bench.every_width(i, n)) for i, n in enumerate(names)])
    assert {op.attrs["w_bits"] for op in g.ops if op.kind in fmt.WEIGHTED} >= set(range(1, 9))
    assert len(blob) == omega(extract_graph(m), policy).flash_bytes
    packed, ideal = bench.weight_stats(blob)
    assert ideal <= packed <= 1.01 * ideal
