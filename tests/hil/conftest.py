"""Fixtures of the hardware-in-the-loop tests: the firmware is built once per session, QEMU per test module.

The board is qemu-system-arm's mps2-an500 (Cortex-M7) running firmware_harness's image for a resnet8 with a
mixed 1–8-bit policy (random weights: bit-exactness does not depend on training).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deploy.export.smpq import export_c, export_smpq
from firmware_harness.build import build_firmware
from tests.firmware_harness.test_smpq_format import bench_module

BOARD = "qemu-mps2-an500"


def require_tools() -> None:
    for tool in ("qemu-system-arm", "arm-none-eabi-gcc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (scripts/setup.sh installs it)")


@pytest.fixture(scope="session")
def resnet8_run(tmp_path_factory) -> Path:
    """A run folder with the integer resnet8 (mixed 1–8-bit weights), its blob, model_data.c and firmware.elf."""
    require_tools()
    g = bench_module().cached_ir("resnet8", "mixed")
    assert {op.attrs["w_bits"] for op in g.ops if "w_bits" in op.attrs} >= set(range(1, 9))
    run = tmp_path_factory.mktemp("resnet8-mixed")
    g.save(run / "model")
    export_smpq(g, run / "model.smpq")
    export_c(g, run)
    build_firmware(run, BOARD, run)
    return run


@pytest.fixture(scope="session")
def resnet8_graph():
    return bench_module().cached_ir("resnet8", "mixed")


@pytest.fixture(scope="session")
def cifar_test() -> Path:
    path = bench_module().DATA
    if not path.is_file():
        pytest.skip(f"CIFAR-10 test split not found at {path}")
    return path
