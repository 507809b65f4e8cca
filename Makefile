# The two commands of the README. Both set everything up first (idempotent).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-slow bench

setup:
	@scripts/setup.sh

## The main job on the offline default: pipeline.yaml on the bundled CIFAR-10 copy, for the emulated
## board's profile, at demo scale: ResNet-8 from the shipped FP checkpoint (checkpoints/, 80.6%), a search
## on 4,000 training images (bits w{2,4,8} a{4,8}; pipeline.yaml's SMPQ: singleton scores on the calibrated
## supernet, batch BatchNorm, uniform guard), 1 QAT epoch, firmware, 100 test images on the QEMU board, report. Its flash budget (36 KB) binds; its latency budget (800 ms) holds.
## `make demo DEMO_ARGS=` runs pipeline.yaml exactly as written (hours on a CPU).
DEMO_ARGS ?= --device qemu-mps2-an500 --model resnet8 --output runs/demo --subset 4000 \
	--set qat.epochs=1 --set "search.w_bits=[2,4,8]" --set "search.a_bits=[4,8]" \
	--set harness.samples=100 --set budgets.flash_bytes=36KB --set budgets.latency_ms=800
demo: setup
	$(VENV)/bin/smpq-deploy --config pipeline.yaml $(DEMO_ARGS) $(ARGS)

## The default test suite (what CI runs).
test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: setup
	$(PY) bench/search_compare.py
	$(PY) bench/runtime_host.py
	$(PY) bench/export_sizes.py
	$(PY) bench/board_qemu.py
	$(PY) bench/wire_faults.py
	$(PY) bench/kernels_qemu.py
