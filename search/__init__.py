"""Stage 1 of smpq-deploy: models, data, quantizers, supernet, Ω(Q) cost model, SMPQ and baselines.

`search` knows nothing about devices: budgets and cost models arrive as plain objects.
"""

from search.allocator import KEEPING_FREED_MEMORY  # noqa: E402,F401  (process-wide, before big tensors)
