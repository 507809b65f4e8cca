"""STM32 ROM bootloader over a UART (ST AN3155), through ``stm32loader``: real boards without a debug probe.

The board must be in its system bootloader (BOOT0 high, then reset). The link is 8E1. Before handing the
image to ``stm32loader`` (erase, write, verify, go) the backend checks that a bootloader answers the
AN3155 synchronisation byte, so a missing board or a board not in bootloader mode is one line naming
the port. After ``go`` the firmware speaks the protocol on the same port, which :meth:`open` returns.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import serial

from firmware_harness.hil.backends import Backend, require_module
from firmware_harness.errors import HarnessError

SYNC, ACK, NACK = 0x7F, 0x79, 0x1F
FLASH_BASE = 0x08000000


def bootloader_sync(port: str, baud: int = 115200, timeout: float = 1.0) -> None:
    """Send AN3155's 0x7F and expect ACK (or NACK: already synchronised); a one-line error otherwise."""
    try:
        link = serial.serial_for_url(port, baudrate=baud, parity=serial.PARITY_EVEN, stopbits=1, bytesize=8,
                                     timeout=timeout, write_timeout=timeout)
    except Exception as exc:  # SerialException, OSError, termios.error (a tty that refuses 8E1), ValueError
        raise HarnessError(f"cannot open the serial port {port}: {' '.join(str(exc).split())}") from None
    with link:
        link.reset_input_buffer()
        link.write(bytes([SYNC]))
        reply = link.read(1)
    if not reply:
        raise HarnessError(f"no STM32 ROM bootloader answers on {port} (sent 0x7F at {baud} baud 8E1, no reply within "
                           f"{timeout:g} s): connect the board, hold BOOT0 high and reset it")
    if reply[0] not in (ACK, NACK):
        raise HarnessError(f"the device on {port} is not an STM32 ROM bootloader (answered 0x{reply[0]:02x} to 0x7F)")


class Stm32UartBackend(Backend):
    """Flash a ``.bin`` through the ROM bootloader on `port`; the protocol then runs on the same port."""

    def __init__(self, port: str, *, baud: int = 115200, family: str | None = None, address: int = FLASH_BASE) -> None:
        self.port, self.baud, self.family, self.address = port, baud, family, address

    def open(self, image: Path) -> str:
        binary = Path(image).with_suffix(".bin")
        if not binary.is_file():
            raise HarnessError(f"firmware image {binary} does not exist: build it with 'smpq-deploy firmware'")
        require_module("stm32loader", "flashing over the STM32 ROM bootloader")
        bootloader_sync(self.port, self.baud)
        cmd = [sys.executable, "-m", "stm32loader", "-p", self.port, "-b", str(self.baud), "-P", "even", "-q", "-n",
               "-e", "-w", "-v", "-a", hex(self.address), "-g", hex(self.address), *(["-f", self.family] if self.family else []),
               str(binary)]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            last = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()][-1:] or ["no message"]
            raise HarnessError(f"stm32loader could not flash {binary.name} on {self.port}: {last[0].strip()}")
        return self.port

    def close(self) -> None:
        """Nothing runs on the host after flashing."""
