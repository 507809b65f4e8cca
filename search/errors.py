"""User-facing errors of the search stage (printed as one line by the CLI, never a traceback)."""


class SearchError(Exception):
    """Bad input or an impossible request detected by the search stage; the message says how to fix it."""
