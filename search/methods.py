"""The search methods this version implements: one list for config validation, the runner and policy.json."""
from __future__ import annotations

METHODS = ("smpq", "edmips", "hawq", "uniform")
