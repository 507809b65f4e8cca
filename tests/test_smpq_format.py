"""The .smpq format: bit packing, the Python reader, and the blob's size against the Ω cost model."""
from __future__ import annotations

import importlib.util
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from deploy.export_smpq import build_smpq, model_data_sources
from deploy.irbuild import synthetic_graph
from firmware_harness import smpq_format as fmt

ROOT = Path(__file__).resolve().parent.parent


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


@pytest.mark.parametrize("mutate, code", [
    (lambda b: b[:20], "E_TRUNCATED"),
    (lambda b: b[:-1], "E_TRUNCATED"),
    (lambda b: b"XMPQ" + b[4:], "E_MAGIC"),
    (lambda b: b[:4] + b"\x07\x00" + b[6:], "E_VERSION"),
    (lambda b: b[:-5] + bytes([b[-5] ^ 1]) + b[-4:], "E_CRC"),
])
def test_parse_rejects_corrupt_blobs(mutate, code):
    blob = build_smpq(synthetic_graph(0))
    with pytest.raises(fmt.SmpqFormatError) as e:
        fmt.parse(mutate(blob))
    assert e.value.code == code


def test_model_data_sources_embed_the_blob():
    g = synthetic_graph(1)
    blob = build_smpq(g)
    c, h = model_data_sources(g)
    assert f"#define SMPQ_MODEL_DATA_SIZE {len(blob)}u" in h
    body = c[c.index("{") + 1:c.rindex("}")]
    assert bytes(int(v, 16) for v in body.replace("\n", "").split(",")) == blob


@pytest.mark.parametrize("model", ["resnet8", "mbv2"])
def test_blob_size_is_the_cost_models_flash_and_weights_are_dense(model):
    """Ω's flash prediction (search/cost.py) is the blob's exact size; packed weights ≤ 1.01 × Σ params·bits/8."""
    from search.cost import omega
    from search.graph import extract_graph
    from search.models import build_model, quantizable_layers
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
