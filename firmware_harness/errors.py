"""User-facing errors of the firmware harness (printed as one line by the CLI, never a traceback)."""


class HarnessError(Exception):
    """A build, flashing or board-communication problem the user can fix; the message says how."""


class FirmwareBuildError(HarnessError):
    """The firmware image cannot be built: missing toolchain or model, a compile error, or it does not fit."""
