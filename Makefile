# The two commands of the README. Both set everything up first (idempotent).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-slow bench

setup:
	@scripts/setup.sh

## The main job on the offline default (pipeline.yaml: bundled CIFAR-10 copy, emulated board).
demo: setup
	$(VENV)/bin/smpq-deploy --config pipeline.yaml $(ARGS)

## The default test suite (what CI runs).
test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: setup
	$(PY) bench/search_compare.py
	$(PY) bench/runtime_host.py
