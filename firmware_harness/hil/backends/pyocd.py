"""SWD through pyOCD (ST-LINK, CMSIS-DAP, J-Link probes): flash the image, reset, talk on the board's UART.

pyOCD is imported only here and only when used (``pip install 'smpq-deploy[hw]'``). No probe, or not the
requested one, is one line naming the probe and the target. The serial port of the board (e.g. the
ST-LINK virtual COM port) is separate from the probe and must be given.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

from firmware_harness.hil.backends import Backend, require_module
from firmware_harness.errors import HarnessError


class PyocdBackend(Backend):
    """Program `image` (.hex next to the ELF) on `target` (pyOCD target type) through probe `probe` (unique id)."""

    def __init__(self, target: str, port: str | None, *, probe: str | None = None) -> None:
        self.target, self.port, self.probe = target, port, probe
        self._session = None

    def open(self, image: Path) -> str:
        hexfile = Path(image).with_suffix(".hex")
        if not hexfile.is_file():
            raise HarnessError(f"firmware image {hexfile} does not exist: build it with 'smpq-deploy firmware'")
        if not self.port:
            raise HarnessError("the board's serial port is needed to talk to it after flashing through pyOCD: pass --port "
                               "(e.g. /dev/ttyACM0)")
        require_module("pyocd", "flashing through a debug probe (SWD)")
        from pyocd.core.helpers import ConnectHelper
        from pyocd.flash.file_programmer import FileProgrammer

        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pyOCD prints "No connected debug probes" itself
                session = ConnectHelper.session_with_chosen_probe(unique_id=self.probe, target_override=self.target,
                                                                  blocking=False, return_first=True)
        except Exception as exc:  # pyOCD raises its own exception types for USB/permission problems
            raise HarnessError(f"pyOCD could not open a debug probe{self._which()}: {' '.join(str(exc).split())}") from None
        if session is None:
            raise HarnessError(f"no debug probe found{self._which() or ' (any probe)'} for target {self.target}: connect the board's "
                               f"ST-LINK/CMSIS-DAP over USB ('pyocd list' shows probes)")
        self._session = session
        try:
            session.open()
            FileProgrammer(session).program(str(hexfile), file_format="hex")
            session.target.reset()
        except Exception as exc:
            self.close()
            raise HarnessError(f"pyOCD could not flash {hexfile.name} on {self.target}{self._which()}: "
                               f"{' '.join(str(exc).split())}") from None
        return self.port

    def _which(self) -> str:
        return f" '{self.probe}'" if self.probe else ""

    def close(self) -> None:
        if self._session is not None:
            try:
                self._session.close()
            finally:
                self._session = None
