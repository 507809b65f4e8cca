"""The Cortex-M DSP kernel set (firmware_harness/runtime/kernels/cortex_m_dsp) is bit-exact with the reference kernels.

On the host: the C test links both sets (the reference one renamed ref_*) with the DSP instructions emulated
in portable C, and compares every output byte over random shapes, bit widths 1-8, paddings, strides, offsets
and requantization parameters. On the board: one firmware image runs both sets on QEMU mps2-an500 with the
real DSP instructions (arm-none-eabi-gcc, ACLE intrinsics) and the outputs' checksums must agree.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from firmware_harness.bench.kernel_bench import WIDTHS, Case, build, run
from firmware_harness.build import KERNEL_SETS, kernel_sources

RUNTIME = Path(__file__).resolve().parents[2] / "firmware_harness" / "runtime"


def _make(*targets: str, **env: str) -> subprocess.CompletedProcess:
    args = ["make", "-s", "-C", str(RUNTIME), *targets, *(f"{k}={v}" for k, v in env.items())]
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def test_dsp_kernels_bit_exact_on_host_random_shapes():
    proc = _make("test-dsp", DSP_CASES="250", DSP_SEED="11")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = re.findall(r"^(\w+): (\d+)/(\d+) cases bit-exact$", proc.stdout, re.M)
    assert {c[0] for c in counts} == {"conv2d", "conv2d_1x1", "depthwise_conv2d", "fully_connected", "add",
                                      "requantize_op"}
    assert all(int(ok) == int(n) == 250 for _, ok, n in counts)
    rq = re.search(r"^requantize: (\d+)/(\d+) values exact$", proc.stdout, re.M)  # the folded requantization
    assert rq and int(rq[1]) == int(rq[2]) > 0


def test_dsp_kernel_set_is_selectable():
    assert KERNEL_SETS["cortex_m_dsp"][0] == "kernels/cortex_m_dsp"
    proc = _make("arm-check", KERNELS="cortex_m_dsp")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cortex_m_dsp/conv2d.o" in "".join(p.as_posix() for p in (RUNTIME / "build" / "cortex_m_dsp").rglob("*.o"))
    assert _make("host", KERNELS="nonsense").returncode != 0
    for name in KERNEL_SETS:  # the Makefile's kernel files are build.py's (one rule)
        listed = _make("print-sources", KERNELS=name).stdout.split()
        assert listed == [p.relative_to(RUNTIME).as_posix() for p in kernel_sources(name)]
    unit = _make("test", KERNELS="cortex_m_dsp")  # the runtime's own C unit tests, DSP set linked in
    assert unit.returncode == 0 and "all runtime unit tests passed" in unit.stdout, unit.stdout + unit.stderr


# Shapes that take every path: 3x3 with padding and stride, C_in not a multiple of 4, 1x1 strided,
# K below one decoded word, packed rows' tails (K % 32 = 8, 16, 24), odd channel and pixel counts, depthwise with a channel tail, FC over a chunk.
BOARD_CASES = [
    Case("conv2d", 7, 6, 3, 5, 3, 3, 1, 1, 1, 1),
    Case("conv2d", 8, 8, 16, 8, 3, 3, 2, 2, 1, 1),
    Case("conv2d", 6, 6, 12, 7, 1, 1, 2, 2, 0, 0),
    Case("conv2d", 5, 5, 40, 4, 1, 1),
    Case("conv2d", 3, 5, 24, 6, 1, 1),  # packed rows with both tails (1-bit: 2 + 1 bytes)
    Case("depthwise_conv2d", 7, 7, 22, 22, 3, 3, 2, 2, 1, 1),
    Case("depthwise_conv2d", 24, 24, 3, 3),  # 1x1 on a few channels and many pixels: tabulated
    Case("fully_connected", 1, 1, 300, 9),
]


def test_dsp_kernels_bit_exact_on_qemu(tmp_path):
    elf = build(BOARD_CASES, tmp_path, with_cmsis=False)
    results = run(elf, icount_shift=5, timeout_s=300)
    assert len(results) == len(BOARD_CASES) * len(WIDTHS) * 2
    sums = {(m.case, m.impl, m.w_bits): m.checksum for m in results}
    for i in range(len(BOARD_CASES)):
        for b in WIDTHS:
            assert sums[(i, "ref", b)] == sums[(i, "dsp", b)], (BOARD_CASES[i].label(), b)
    # the 8-bit DSP conv runs fewer instructions than the reference one (an instruction count, not a time)
    ins = {(m.case, m.impl, m.w_bits): m.instructions for m in results}
    assert ins[(1, "dsp", 8)] < ins[(1, "ref", 8)]


def test_dsp_kernels_bit_exact_on_qemu_every_requantization(tmp_path):
    """Right shifts 0/1/>=2, left shifts, negative multipliers and clamps inside int8 (the assembly's branches)."""
    cases = [c for c in BOARD_CASES if c.kind == "conv2d"]
    elf = build(cases, tmp_path, with_cmsis=False, widths=(8, 4), varied_requant=True)
    sums = {(m.case, m.impl, m.w_bits): m.checksum for m in run(elf, icount_shift=5, timeout_s=300)}
    assert len(sums) == len(cases) * 2 * 2
    for i in range(len(cases)):
        for b in (8, 4):
            assert sums[(i, "ref", b)] == sums[(i, "dsp", b)], (cases[i].label(), b)


def test_bench_refuses_missing_cmsis(tmp_path, monkeypatch):
    from firmware_harness.errors import FirmwareBuildError

    monkeypatch.setenv("SMPQ_CMSIS_NN", str(tmp_path / "nowhere"))
    with pytest.raises(FirmwareBuildError, match="CMSIS-NN sources not found"):
        build(BOARD_CASES[:1], tmp_path / "b", with_cmsis=True)
