"""User-facing errors of the deploy stage, the set of errors the CLI reports as one line, and that line.

:func:`user_message` is the one place an exception becomes the text after ``error:``.
"""
from __future__ import annotations

import errno

from deploy.lower.ir import IRError
from firmware_harness.errors import HarnessError
from search.errors import SearchError


class DeployError(Exception):
    """Bad input to the deploy stage or the pipeline (config, device, CLI); the message says how to fix it."""


#: Errors caused by the user's input: the CLI prints ``error: <message>`` and exits 2, no traceback.
USER_ERRORS: tuple[type[Exception], ...] = (DeployError, SearchError, IRError, HarnessError)

_OS_HINTS = {errno.ENOSPC: "free some space or choose another --output",
             errno.EROFS: "choose a writable --output folder",
             errno.EACCES: "check its permissions or choose another --output",
             errno.EPERM: "check its permissions or choose another --output",
             errno.EISDIR: "it is a folder; move it away or choose another --output",
             errno.ENOTDIR: "a part of that path is a file, not a folder; choose another --output",
             errno.EEXIST: "a file is in the way; move it or choose another --output"}


def user_message(exc: BaseException) -> str | None:
    """The one-line message for an error the user can fix (USER_ERRORS, or an OSError on a file such as a
    full disk or an output under a file); None for a bug, which keeps its traceback."""
    if isinstance(exc, USER_ERRORS):
        return " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None:
        what = exc.strerror or type(exc).__name__
        hint = _OS_HINTS.get(exc.errno or 0, "check the path and rerun")
        return f"cannot use '{exc.filename2 or exc.filename}': {what}; {hint}"  # filename2: a rename's target
    return None
