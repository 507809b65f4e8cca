"""User-facing errors of the deploy stage and the set of errors the CLI reports as one line."""
from __future__ import annotations

from deploy.ir import IRError
from firmware_harness.errors import HarnessError
from search.errors import SearchError


class DeployError(Exception):
    """Bad input to the deploy stage or the pipeline (config, device, CLI); the message says how to fix it."""


#: Errors caused by the user's input: the CLI prints ``error: <message>`` and exits 2, no traceback.
USER_ERRORS: tuple[type[Exception], ...] = (DeployError, SearchError, IRError, HarnessError)
