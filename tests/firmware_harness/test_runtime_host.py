"""The C runtime on the host: C unit tests, Cortex-M7 compile check, bit-exactness against the integer
reference (deploy/lower/reference.py), the loader's error codes on corrupted blobs, and model_data.c."""
from __future__ import annotations

import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest

from deploy.export.smpq import build_smpq, export_c
from deploy.lower.irbuild import synthetic_graph
from deploy.lower.reference import run as run_reference
from deploy.lower.reference import to_int8_input
from firmware_harness import host
from firmware_harness import smpq_format as fmt
from tests.firmware_harness.test_smpq_format import bench_module

RUNTIME = host.RUNTIME_DIR


def test_c_unit_tests_pass(tmp_path):
    proc = subprocess.run(["make", "-C", str(RUNTIME), f"BUILD={tmp_path}", "test"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "all runtime unit tests passed" in proc.stdout


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc not installed")
def test_runtime_compiles_for_cortex_m7_without_floating_point(tmp_path):
    proc = subprocess.run(["make", "-C", str(RUNTIME), f"BUILD={tmp_path}", "arm-check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(list((tmp_path / "arm").rglob("*.o"))) == len(list(RUNTIME.glob("src/*.c")) + list(RUNTIME.glob("kernels/*.c")))


@pytest.mark.parametrize("seed", range(4))
def test_synthetic_graph_is_bit_exact(seed):
    """Every op kind, weights at 2/3/4/5/8 bits, sub-8-bit activations and clamps."""
    g = synthetic_graph(seed)
    x = np.random.default_rng(100 + seed).integers(-128, 128, (64, 8, 8, 3)).astype(np.int8)
    out = host.HostRuntime(build_smpq(g)).run(x)
    np.testing.assert_array_equal(out, run_reference(g, x))


MODEL_CASES = [("resnet8", "w8a8", 500), ("resnet8", "mixed", 500), ("mbv2", "mixed", 100)]  # ~30 s of CPU
SLOW_CASES = [("mbv2", "w8a8", 500), ("mbv2", "mixed", 500), ("resnet8", "mixed_rev", 500),
              ("mbv2", "mixed_rev", 500), ("resnet8", "w1a4", 500), ("resnet8", "w4a8", 500)]


def _bit_exact(model: str, policy: str, n: int) -> None:
    bench = bench_module()
    g = bench.cached_ir(model, policy)
    widths = {op.attrs["w_bits"] for op in g.ops if "w_bits" in op.attrs}
    if policy.startswith("mixed"):
        assert widths >= set(range(1, 9))
    x = to_int8_input(bench.cifar_images(n))
    assert len(x) == n
    out = host.HostRuntime(build_smpq(g)).run(x)
    ref = run_reference(g, x)
    assert out.shape == ref.shape == (n, 10)
    np.testing.assert_array_equal(out, ref)
    assert (ref != ref[:1]).any()  # outputs differ between images: not a degenerate constant model


@pytest.mark.parametrize("model, policy, n", MODEL_CASES)
def test_models_are_bit_exact_with_the_reference(model, policy, n):
    _bit_exact(model, policy, n)


@pytest.mark.parametrize("model, policy, n", SLOW_CASES)
def test_more_policies_are_bit_exact_with_the_reference(model, policy, n):
    _bit_exact(model, policy, n)


# ------------------------------------------------------------------------------------------ corrupted blobs
def _offsets(blob: bytes) -> tuple[int, int, int]:
    n_t, n_o = struct.unpack_from("<HH", blob, 16)
    ot = fmt.HEADER_BYTES + fmt.TENSOR_BYTES * n_t
    return fmt.HEADER_BYTES, ot, ot + fmt.OP_BYTES * n_o


def _patch(blob: bytes, offset: int, fmt_code: str, *values, fix_crc: bool = True) -> bytes:
    b = bytearray(blob)
    struct.pack_into(fmt_code, b, offset, *values)
    if fix_crc:
        struct.pack_into("<I", b, 12, zlib.crc32(bytes(b[fmt.HEADER_BYTES:])))
    return bytes(b)


def _tensor(blob, i, field):  # byte offset of a tensor record field
    return _offsets(blob)[0] + fmt.TENSOR_BYTES * i + {"rank": 0, "bits": 1, "dims": 8, "offset": 20}[field]


def _op(blob, i, field):
    return _offsets(blob)[1] + fmt.OP_BYTES * i + {"kind": 0, "w_bits": 1, "in0": 4, "out": 8, "kernel": 12,
                                                   "stride": 14, "pad": 16, "data": 20, "weights": 32}[field]


def _arena(blob):
    return struct.unpack_from("<I", blob, 24)[0]


# synthetic graph: op 0 conv1 (t0 -> t1), op 1 depthwise (t1 -> t2), op 2 conv shortcut, ...
CORRUPTIONS = {
    "truncated header": (lambda b: b[:20], "E_TRUNCATED"),
    "truncated payload": (lambda b: b[:-10], "E_TRUNCATED"),
    "bad magic": (lambda b: b"SMPX" + b[4:], "E_MAGIC"),
    "future version": (lambda b: _patch(b, 4, "<H", 3, fix_crc=False), "E_VERSION"),
    "version 1 (weights per instance)": (lambda b: _patch(b, 4, "<H", 1, fix_crc=False), "E_VERSION"),
    "flags set": (lambda b: _patch(b, 6, "<H", 1, fix_crc=False), "E_HEADER"),
    "wrong crc": (lambda b: _patch(b, 12, "<I", struct.unpack_from("<I", b, 12)[0] ^ 1, fix_crc=False), "E_CRC"),
    "flipped payload bit": (lambda b: b[:-3] + bytes([b[-3] ^ 0x10]) + b[-2:], "E_CRC"),
    "input index out of range": (lambda b: _patch(b, 20, "<H", 999, fix_crc=False), "E_HEADER"),
    "op table past the end": (lambda b: _patch(b, 18, "<H", 60000, fix_crc=False), "E_TABLE_RANGE"),
    "tensor offset past arena": (lambda b: _patch(b, _tensor(b, 1, "offset"), "<I", _arena(b)), "E_ARENA_RANGE"),
    "absurd tensor shape": (lambda b: _patch(b, _tensor(b, 1, "dims"), "<4H", 1, 65535, 65535, 65535), "E_ARENA_RANGE"),
    "zero dimension": (lambda b: _patch(b, _tensor(b, 2, "dims") + 6, "<H", 0), "E_TENSOR"),
    "tensor bits 9": (lambda b: _patch(b, _tensor(b, 1, "bits"), "<B", 9), "E_TENSOR"),
    "unknown op kind": (lambda b: _patch(b, _op(b, 1, "kind"), "<B", 99), "E_OP_KIND"),
    "op input index out of range": (lambda b: _patch(b, _op(b, 0, "in0"), "<H", 500), "E_OP_INDEX"),
    "weight bits 0": (lambda b: _patch(b, _op(b, 0, "w_bits"), "<B", 0), "E_OP_PARAM"),
    "weight bits 9": (lambda b: _patch(b, _op(b, 2, "w_bits"), "<B", 9), "E_OP_PARAM"),
    "stride 0": (lambda b: _patch(b, _op(b, 0, "stride"), "<BB", 0, 1), "E_OP_PARAM"),
    "padding as large as the kernel": (lambda b: _patch(b, _op(b, 0, "pad"), "<B", 3), "E_OP_PARAM"),
    "kernel inconsistent with shapes": (lambda b: _patch(b, _op(b, 0, "kernel"), "<BB", 5, 5), "E_OP_SHAPE"),
    "depthwise channels differ": (lambda b: _patch(b, _tensor(b, 2, "dims") + 6, "<H", 4), "E_OP_SHAPE"),
    "channel parameters past the end": (lambda b: _patch(b, _op(b, 0, "data"), "<I", 1 << 20), "E_DATA_RANGE"),
    "misaligned channel parameters": (lambda b: _patch(b, _op(b, 0, "data"), "<I", 2), "E_DATA_RANGE"),
    "weights past the end": (lambda b: _patch(b, _op(b, 0, "weights"), "<I", 1 << 20), "E_WEIGHTS_RANGE"),
    "weights on channel parameters": (lambda b: _patch(b, _op(b, 0, "weights"), "<I", 0), "E_WEIGHTS_RANGE"),
    "weights shared at another width": (lambda b: _patch(b, _op(b, 1, "weights"), "<I",
                                                         struct.unpack_from("<I", b, _op(b, 0, "weights"))[0]),
                                        "E_WEIGHTS_SHARED"),
    "reserved weighted-op bytes set": (lambda b: _patch(b, _op(b, 0, "weights") + 4, "<I", 1), "E_OP_PARAM"),
    "output aliases input": (lambda b: _patch(b, _tensor(b, 1, "offset"), "<I",
                                              struct.unpack_from("<I", b, _tensor(b, 0, "offset"))[0]), "E_ALIAS"),
    "shift out of range": (lambda b: _patch(b, _offsets(b)[2] + 8 * 8, "<b", 100), "E_OP_PARAM"),
}


@pytest.fixture(scope="module")
def valid_blob() -> bytes:
    return build_smpq(synthetic_graph(0))


def test_valid_blob_loads(valid_blob):
    assert host.load_status(valid_blob) == 0
    assert fmt.parse(valid_blob).arena_size == _arena(valid_blob)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupted_blob_gives_its_error_code(valid_blob, name):
    mutate, code = CORRUPTIONS[name]
    bad = mutate(valid_blob)
    assert bad != valid_blob
    assert fmt.ERRORS[host.load_status(bad)] == code
    with pytest.raises(host.RuntimeStatusError) as e:
        host.HostRuntime(bad)
    assert e.value.code == code


def test_arena_too_small_and_empty_blob(valid_blob):
    assert fmt.ERRORS[host.load_status(valid_blob, arena_capacity=_arena(valid_blob) - 1)] == "E_ARENA_SMALL"
    assert fmt.ERRORS[host.load_status(b"")] == "E_TRUNCATED"


def test_bad_inputs_are_one_line_errors(valid_blob):
    rt = host.HostRuntime(valid_blob)
    with pytest.raises(host.HarnessError, match="does not match the model input"):
        rt.run(np.zeros((1, 4, 4, 3), np.int8))
    with pytest.raises(host.HarnessError, match="int8 codes or uint8 pixels"):
        rt.run(np.zeros((1, 8, 8, 3), np.float32))


# ------------------------------------------------------------------------------------------ model_data.c
MAIN_C = r"""
#include <stdio.h>
#include "model_data.h"
#include "smpq.h"
static uint32_t arena[(SMPQ_MODEL_DATA_ARENA_SIZE + 3) / 4];
int main(int argc, char **argv) {
    smpq_model m;
    int st = smpq_load(&m, smpq_model_data, SMPQ_MODEL_DATA_SIZE, (uint8_t *)arena, sizeof arena);
    if (st) { printf("load %d\n", st); return 1; }
    FILE *fi = fopen(argv[1], "rb"), *fo = fopen(argv[2], "wb");
    uint32_t n;
    int8_t *in = smpq_input(&m, &n);
    while (fread(in, 1, n, fi) == n) {
        if (smpq_invoke(&m)) return 2;
        fwrite(smpq_output(&m, NULL), 1, SMPQ_MODEL_DATA_OUTPUT_SIZE, fo);
    }
    fclose(fi); fclose(fo);
    return 0;
}
"""


def test_model_data_c_builds_and_matches_the_blob(tmp_path):
    g = synthetic_graph(2)
    export_c(g, tmp_path)
    (tmp_path / "main.c").write_text(MAIN_C)
    srcs = [str(p) for p in sorted(RUNTIME.glob("src/*.c")) + sorted(RUNTIME.glob("kernels/*.c"))]
    exe = tmp_path / "model"
    cc = ["gcc", "-std=c99", "-O2", "-Wall", "-Werror", f"-I{RUNTIME / 'include'}", f"-I{tmp_path}",
          str(tmp_path / "main.c"), str(tmp_path / "model_data.c"), *srcs, "-o", str(exe)]
    proc = subprocess.run(cc, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    x = np.random.default_rng(5).integers(-128, 128, (16, 8, 8, 3)).astype(np.int8)
    (tmp_path / "in.bin").write_bytes(x.tobytes())
    proc = subprocess.run([str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    out = np.frombuffer((tmp_path / "out.bin").read_bytes(), np.int8).reshape(16, -1)
    np.testing.assert_array_equal(out, run_reference(g, x))


def test_export_command_writes_smpq_and_c(tmp_path):
    """`smpq-deploy export --formats smpq,c` exporters (deploy/cli/export.py FORMATS entries)."""
    import argparse

    from deploy.cli.export import FORMATS, parse_formats

    assert parse_formats("smpq,c") == ["smpq", "c"]
    g = synthetic_graph(4)
    blob_path = FORMATS["smpq"](g, tmp_path, argparse.Namespace())
    c_path = FORMATS["c"](g, tmp_path, argparse.Namespace())
    assert blob_path.read_bytes() == build_smpq(g) and host.load_status(blob_path.read_bytes()) == 0
    assert c_path.name == "model_data.c" and (tmp_path / "model_data.h").is_file()
