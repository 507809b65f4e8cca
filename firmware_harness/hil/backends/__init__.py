"""Ways to put a firmware image on a board and reach its serial link, behind one interface.

Every backend is a :class:`Backend`: ``open(image) -> url`` flashes or starts the board and returns the
URL :class:`firmware_harness.hil.protocol.DutClient` connects to; ``close()`` releases it. Used as context
managers they leave no process behind on any path. QEMU needs nothing beyond ``qemu-system-arm``;
the real-board backends need the ``hw`` extra (``pip install smpq-deploy[hw]``) and say so when it is missing.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path


class Backend(ABC):
    """A board: ``open(image)`` returns the serial URL, ``close()`` ends everything ``open`` started."""

    @abstractmethod
    def open(self, image: Path) -> str:
        """Put `image` (an ELF; real-board backends use its .bin/.hex siblings) on the board; the serial URL."""

    @abstractmethod
    def close(self) -> None:
        """Release the board (idempotent)."""

    def exit_message(self, wait: float = 0.0) -> str:
        """Why the board went away, when the backend can tell (QEMU's exit); '' otherwise."""
        return ""

    def explain(self, exc: Exception) -> Exception:
        """`exc` with the backend's exit message appended (one line), to re-raise."""
        from firmware_harness.errors import HarnessError

        ended = self.exit_message(wait=2.0)
        return HarnessError(f"{exc}; {ended}") if ended and isinstance(exc, HarnessError) else exc

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def require_module(module: str, what: str) -> None:
    """A one-line error naming the extra to install when an optional hardware package is missing."""
    import importlib.util

    from firmware_harness.errors import HarnessError

    if importlib.util.find_spec(module) is None:
        raise HarnessError(f"{what} needs the Python package '{module}': pip install 'smpq-deploy[hw]'")


def make_backend(kind: str, *, port: str | None = None, baud: int = 115200, target: str | None = None,
                 machine: str | None = None, icount_shift: int = 3, probe: str | None = None) -> Backend:
    """The backend named by a device profile's ``flash.backend`` (``qemu``, ``stm32-uart``, ``pyocd``)."""
    from firmware_harness.errors import HarnessError

    if kind == "qemu":
        from firmware_harness.hil.backends.qemu import QemuBoard

        return QemuBoard(icount_shift=icount_shift, machine=machine or "mps2-an500")
    if not port and kind == "stm32-uart":
        raise HarnessError("flashing over the STM32 ROM bootloader needs the board's serial port: pass --port")
    if kind == "stm32-uart":
        from firmware_harness.hil.backends.stm32uart import Stm32UartBackend

        return Stm32UartBackend(port or "", baud=baud)
    if kind == "pyocd":
        from firmware_harness.hil.backends.pyocd import PyocdBackend

        if not target:
            raise HarnessError("the device profile names no pyOCD target ('flash.target')")
        return PyocdBackend(target, port, probe=probe)
    raise HarnessError(f"unknown flash backend '{kind}' (known: qemu, stm32-uart, pyocd)")
