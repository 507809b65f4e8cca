"""`smpq-deploy firmware`: build the firmware image of a run for a device's board.

    smpq-deploy firmware --run runs/<name> [--device qemu-mps2-an500|stm32h7] [--kernels cortex_m_dsp|reference]

Uses ``RUN/model_data.c/.h`` (exported from ``RUN/model.ir.json`` when missing), compiles the C runtime,
the board support (firmware_harness/boards/<device>/) and the MLPerf Tiny application with
arm-none-eabi-gcc (firmware_harness.build), writes ``firmware.elf/.bin/.hex`` into the run folder and
prints the flash and RAM the image uses against the device profile's memory. The device defaults to
``harness.board`` of the config (the board the harness runs on).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from deploy.errors import DeployError

HELP = "build the firmware image (C runtime + board support + MLPerf Tiny protocol) of a run for a device"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from firmware_harness.build import DEFAULT_KERNELS, KERNEL_SETS

    parser.add_argument("--kernels", default=DEFAULT_KERNELS, choices=sorted(KERNEL_SETS),
                        help=f"kernel set compiled in (default: {DEFAULT_KERNELS})")


def ensure_model_data(run_dir: Path) -> Path:
    """``run_dir/model_data.c`` (+ ``.h``), exported from the run's integer IR when missing."""
    if (run_dir / "model_data.c").is_file() and (run_dir / "model_data.h").is_file():
        return run_dir / "model_data.c"
    if not (run_dir / "model.ir.json").is_file():
        raise DeployError(f"'{run_dir}' has neither model_data.c nor model.ir.json; run "
                          f"'smpq-deploy export --run {run_dir} --formats c' first")
    from deploy.export.smpq import export_c
    from deploy.lower.ir import Graph

    return export_c(Graph.load(run_dir / "model"), run_dir)[0]


def _share(used: int, limit: int) -> str:
    from deploy.pipeline.validation import format_bytes

    return f"{used} B ({format_bytes(used)}) of {format_bytes(limit)}, {100 * used / limit:.1f}%"


def run(args: argparse.Namespace) -> int:
    from deploy.pipeline.config import config_from_args
    from deploy.devices.profiles import load_device
    from firmware_harness.build import boards, build_firmware, section_sizes

    if not getattr(args, "output", None):
        raise DeployError("firmware needs the run folder: --run runs/<name>")
    run_dir = Path(args.output)
    if not run_dir.is_dir():
        raise DeployError(f"run folder '{run_dir}' does not exist")
    device = args.device or config_from_args(args).harness.board
    profile = load_device(device)
    if profile.name not in boards():
        raise DeployError(f"no board support for '{profile.name}'; boards: {', '.join(boards())}")
    ensure_model_data(run_dir)
    flash_limit = profile.memory["flash"].length
    ram_limit = sum(r.length for name, r in profile.memory.items() if name != "flash")
    image = build_firmware(run_dir, profile.name, run_dir, kernels=args.kernels,
                           flash_limit=flash_limit, ram_limit=ram_limit)
    sizes = section_sizes(image.elf)
    print(f"firmware: {image.elf} (+ .bin, .hex) for {image.board}, kernels {args.kernels}, fw {image.fw_hash[:16]}")
    print(f"firmware: flash {_share(image.flash_bytes, flash_limit)} (model blob {sizes.get('.model', 0)} B, "
          f"code and constants {sizes.get('.text', 0)} B)")
    print(f"firmware: RAM {_share(image.ram_bytes, ram_limit)} (arena {sizes.get('.arena', 0)} B, "
          f"stack {sizes.get('.stack', 0)} B, other {sizes.get('.data', 0) + sizes.get('.bss', 0)} B)")
    return 0
