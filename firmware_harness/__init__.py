"""Stage 3 of smpq-deploy: C runtime and board support, firmware build, flashing, serial protocol, HIL runner.

`firmware_harness` never imports `search` or `deploy`.
"""
