"""`smpq-deploy flash`: put a run's firmware on the device and check that it boots with the run's model.

    smpq-deploy flash --run runs/<name> --device qemu-mps2-an500|stm32h7|… [--port /dev/ttyACM0] [--probe ID]

The image is (re)built incrementally for the device's board (``smpq-deploy firmware``). The device
profile's ``flash.backend`` picks how it gets there: ``qemu`` starts the emulated board on the ELF,
``stm32-uart`` writes through the ROM bootloader (AN3155, needs --port), ``pyocd`` programs over SWD
(the board's --port is needed to talk to it afterwards); --backend overrides the profile. Then the
board must answer ``name%`` as ``smpq-<board>`` and ``smpq-info%`` with the CRC32 of the run's blob.
"""
from __future__ import annotations

import argparse
import zlib
from pathlib import Path
from typing import Any

from deploy.errors import DeployError

HELP = "flash a run's firmware on the device (QEMU: boot it) and check it answers with the run's model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", default=None, help="the board's serial port or URL (/dev/ttyACM0, socket://host:port)")
    parser.add_argument("--backend", default=None, choices=["qemu", "stm32-uart", "pyocd"],
                        help="how to flash (default: the device profile's flash.backend)")
    parser.add_argument("--probe", default=None, help="pyOCD probe unique id (default: the only probe)")
    parser.add_argument("--icount-shift", type=int, default=3, help="QEMU -icount shift (default 3)")


def run_dir_of(args: argparse.Namespace) -> Path:
    """The --run folder, which must exist and hold the run's integer model."""
    if not getattr(args, "output", None):
        raise DeployError(f"{args.command} needs the run folder: --run runs/<name>")
    run_dir = Path(args.output)
    if not (run_dir / "model.ir.json").is_file():
        raise DeployError(f"'{run_dir}' has no model.ir.json; run 'smpq-deploy export --run {run_dir}' first")
    return run_dir


def device_of(args: argparse.Namespace) -> Any:
    """The device profile (--device, else the config's harness.board)."""
    from deploy.pipeline.config import config_from_args
    from deploy.devices.profiles import load_device

    return load_device(args.device or config_from_args(args).harness.board)


def firmware_image(run_dir: Path, profile: Any) -> Any:
    """The run's firmware for the profile's board, built or brought up to date (firmware_harness.build)."""
    from deploy.cli.firmware import ensure_model_data
    from firmware_harness.build import boards, build_firmware

    if profile.name not in boards():
        raise DeployError(f"no board support for '{profile.name}'; boards: {', '.join(boards())}")
    ensure_model_data(run_dir)
    return build_firmware(run_dir, profile.name, run_dir, flash_limit=profile.memory["flash"].length,
                          ram_limit=sum(r.length for name, r in profile.memory.items() if name != "flash"))


def model_blob(run_dir: Path) -> bytes:
    """The run's .smpq blob (what model_data.c holds)."""
    if (run_dir / "model.smpq").is_file():
        return (run_dir / "model.smpq").read_bytes()
    from deploy.export.smpq import build_smpq
    from deploy.lower.ir import Graph

    return build_smpq(Graph.load(run_dir / "model"))


def check_board(client: Any, profile: Any, run_dir: Path) -> dict[str, str]:
    """The board must be this device's firmware with this run's model; its smpq-info."""
    from firmware_harness.errors import HarnessError

    name = client.name()
    if name != f"smpq-{profile.name}":
        raise HarnessError(f"the board at {client.url} is '{name}', not the firmware for '{profile.name}'")
    info = client.info()
    want = f"{zlib.crc32(model_blob(run_dir)) & 0xFFFFFFFF:08x}"
    if info.get("blob_crc", "").lower() != want:
        raise HarnessError(f"the board at {client.url} runs another model (blob CRC {info.get('blob_crc')}, "
                           f"{run_dir} has {want}): flash it with 'smpq-deploy flash --run {run_dir}'")
    return info


def run(args: argparse.Namespace) -> int:
    from firmware_harness.hil.backends import make_backend
    from firmware_harness.errors import HarnessError
    from firmware_harness.hil.protocol import DutClient

    run_dir = run_dir_of(args)
    profile = device_of(args)
    image = firmware_image(run_dir, profile)
    method = profile.flash
    kind = args.backend or method.backend
    backend = make_backend(kind, port=args.port, baud=method.baud, target=method.target,
                           machine=method.machine, icount_shift=args.icount_shift, probe=args.probe)
    with backend:
        url = backend.open(image.elf)
        try:
            with DutClient(url, baud=method.baud) as client:
                info = check_board(client, profile, run_dir)
        except HarnessError as exc:
            raise backend.explain(exc) from None
    print(f"flash: {image.elf.name} ({image.flash_bytes} B flash, {image.ram_bytes} B RAM) on {profile.name} via "
          f"{kind}: boots, answers as smpq-{profile.name}, blob CRC {info['blob_crc']} = {run_dir}'s model "
          f"({info.get('n_ops')} ops, arena {info.get('arena')} B, timer {info.get('timer')})")
    return 0
