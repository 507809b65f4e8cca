"""Benchmark firmware for the kernels (kernels_bench.c) and its build/run helpers (kernel_bench.py)."""
