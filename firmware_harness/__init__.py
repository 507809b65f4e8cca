"""Stage 3 of smpq-deploy: the C runtime that runs ``.smpq`` blobs, and what builds, flashes and talks to a board.

- ``format_spec`` declares the ``.smpq`` contract once; ``gen_contracts`` writes the C headers and doc
  tables from it; ``smpq_format`` packs weights and reads blobs in Python.
- ``runtime/`` is the C99 runtime (loader, interpreter, one kernel per op); ``host`` builds it for the
  host and drives it through ctypes.
- ``build``, ``boards/`` and ``app/`` build the firmware image; ``hil/`` (``backends/``, ``protocol``,
  ``measure``, ``faultproxy``) puts it on a board (QEMU or real) and runs it over the serial protocol
  (docs/protocol.md).

`firmware_harness` never imports `search` or `deploy` (tests/firmware_harness/test_contracts.py checks it).
"""
