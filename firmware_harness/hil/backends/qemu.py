"""The emulated board: ``qemu-system-arm -machine mps2-an500`` with its UART on a loopback TCP socket.

QEMU loads the ELF with ``-kernel``, counts instructions deterministically with ``-icount shift=N``
(SysTick ticks = instructions·2^N/40, see docs/protocol.md) and waits for the host
to connect before the guest starts (``server=on,wait=on``; ``nodelay=on`` avoids ~43 ms per exchange).
The TCP port is picked free and, if another process takes it first, picked again. QEMU's stdin is
/dev/null, its stderr is kept for error messages, and it is ended by its PID on every path (also when
the object is garbage-collected or the interpreter exits).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

from firmware_harness.hil.backends import Backend
from firmware_harness.errors import HarnessError

QEMU = "qemu-system-arm"
#: QEMU's stderr line once the serial socket listens (wait=on).
_LISTENING = "waiting for connection"
_START_TIMEOUT = 20.0
_PORT_ATTEMPTS = 5


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _end(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, by PID; reaps the process."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
    proc.wait()


class QemuBoard(Backend):
    """``with QemuBoard(elf) as board: DutClient(board.url)``; ``board.pid`` is QEMU's process id."""

    def __init__(self, elf: Path | None = None, *, icount_shift: int = 3, machine: str = "mps2-an500",
                 cpu: str | None = None) -> None:
        self.elf = Path(elf) if elf is not None else None
        self.icount_shift = icount_shift
        self.machine = machine
        self.cpu = cpu
        self.url = ""
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self._log: Path | None = None
        self._finalizer: weakref.finalize | None = None
        #: How QEMU had ended before close() (empty when close() ended it).
        self.ended = ""

    def __enter__(self) -> "QemuBoard":
        """Starts QEMU when the board was made with an ELF (else call open(elf) inside the block)."""
        if self.elf is not None and self._proc is None:
            self.open(self.elf)
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self, elf: Path, port: int) -> list[str]:
        """The qemu-system-arm command line."""
        cmd = [QEMU, "-machine", self.machine, "-kernel", str(elf), "-icount", f"shift={self.icount_shift}",
               "-serial", f"tcp:127.0.0.1:{port},server=on,wait=on,nodelay=on", "-monitor", "none",
               "-display", "none"]
        return cmd + (["-cpu", self.cpu] if self.cpu else [])

    def open(self, image: Path) -> str:
        """Start QEMU on `image` (ELF) and wait until its serial socket listens; the socket:// URL."""
        if self._proc is not None:
            raise HarnessError("this QEMU board is already open")
        elf = Path(image)
        if not elf.is_file():
            raise HarnessError(f"firmware image {elf} does not exist: build it with 'smpq-deploy firmware'")
        if shutil.which(QEMU) is None:
            raise HarnessError(f"{QEMU} not found: install the Debian package qemu-system-arm (scripts/setup.sh does)")
        self.elf = elf
        for _ in range(_PORT_ATTEMPTS):
            port = _free_port()
            if self._start(elf, port):
                self.port = port
                self.url = f"socket://127.0.0.1:{port}"
                return self.url
        raise HarnessError(f"QEMU could not bind a free loopback port in {_PORT_ATTEMPTS} attempts")

    def _start(self, elf: Path, port: int) -> bool:
        """Start QEMU on `port`; False if the port was taken meanwhile (the caller picks another)."""
        fd, log = tempfile.mkstemp(prefix="smpq-qemu-", suffix=".log")
        self._log = Path(log)
        with os.fdopen(fd, "wb") as err:
            self._proc = subprocess.Popen(self.command(elf, port), stdin=subprocess.DEVNULL,
                                          stdout=err, stderr=err)
        self._finalizer = weakref.finalize(self, _end, self._proc)
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            text = self.stderr()
            if _LISTENING in text:
                return True
            if self._proc.poll() is not None:
                self.close()
                if "in use" in text.lower():
                    return False
                raise HarnessError(f"QEMU did not start on {elf.name}: {_last_line(text) or 'no message'}")
            time.sleep(0.02)
        self.close()
        raise HarnessError(f"QEMU did not open its serial port within {_START_TIMEOUT:g} s")

    def stderr(self) -> str:
        """What QEMU wrote so far (stdout and stderr)."""
        try:
            return self._log.read_text(errors="replace") if self._log else ""
        except OSError:
            return ""

    def exit_message(self, wait: float = 0.0) -> str:
        """How QEMU ended, for an error message ('' if it still runs after `wait` seconds)."""
        if self._proc is None:
            return self.ended
        try:
            self._proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return ""
        code = self._proc.returncode
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        last = _last_line(self.stderr())
        return f"QEMU ({how}{': ' + last if last else ''})"

    def close(self) -> None:
        """End QEMU by its PID and delete its log (idempotent)."""
        self.ended = self.exit_message() or self.ended
        if self._finalizer is not None:
            self._finalizer()  # runs _end once
            self._finalizer = None
        if self._log is not None:
            self._log.unlink(missing_ok=True)
            self._log = None
        self._proc = None


def _last_line(text: str) -> str:
    """QEMU's own message (``qemu…: …``; a CPU lockup dumps registers after it), else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and _LISTENING not in ln]
    own = [ln for ln in lines if ln.lower().startswith("qemu")]
    return (own or lines or [""])[-1]
