"""Run a TFLite flatbuffer in TFLite Micro (PyPI ``tflite_micro``) and in LiteRT, and measure TFLM's arena.

Both runners take int8 input codes (N, ...) and return int8 output codes, one image per invoke.
LiteRT runs its reference kernels by default (BUILTIN_REF: bit-exact with the IR); its optimised kernels
(no default delegate: XNNPACK would re-round int8 arithmetic) differ by ±1 LSB on near-half values in
per-channel 1×1 convolutions.
TFLM prints "Arena allocation total N bytes" to the C-level stderr; :func:`tflm_arena_bytes` captures
file descriptor 2 into a temporary file to read it.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile

import numpy as np

DEFAULT_ARENA = 1 << 22


class RuntimeFailure(Exception):
    """A TFLite runtime rejected the model or failed to run it (one-line message)."""


def _tflm_interpreter(model: bytes, arena_size: int):
    from tflite_micro.python.tflite_micro import runtime

    try:
        return runtime.Interpreter.from_bytes(model, arena_size=arena_size)
    except (RuntimeError, ValueError) as e:
        raise RuntimeFailure(f"TFLite Micro rejected the model: {str(e).strip().splitlines()[-1]}") from None


def run_tflm(model: bytes, x: np.ndarray, arena_size: int = DEFAULT_ARENA) -> np.ndarray:
    """Outputs of TFLite Micro for every image of x (int8 codes, batch first)."""
    interp = _tflm_interpreter(model, arena_size)
    outs = []
    for img in np.asarray(x, np.int8):
        interp.set_input(img[None], 0)
        interp.invoke()
        outs.append(np.array(interp.get_output(0)).reshape(-1))
    return np.stack(outs).reshape(len(outs), *np.array(interp.get_output(0)).shape[1:])


def run_litert(model: bytes, x: np.ndarray, reference_kernels: bool = True) -> np.ndarray:
    """Outputs of LiteRT (builtin optimised kernels, or its reference kernels) for every image of x."""
    from ai_edge_litert import interpreter as lrt

    kind = lrt.OpResolverType.BUILTIN_REF if reference_kernels else lrt.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interp = lrt.Interpreter(model_content=model, experimental_op_resolver_type=kind, num_threads=1)
        interp.allocate_tensors()
    except (RuntimeError, ValueError) as e:
        raise RuntimeFailure(f"LiteRT rejected the model: {str(e).strip().splitlines()[0]}") from None
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    outs = []
    for img in np.asarray(x, np.int8):
        interp.set_tensor(inp["index"], img[None])
        interp.invoke()
        outs.append(interp.get_tensor(out["index"])[0].copy())
    return np.stack(outs)


def tflm_arena_bytes(model: bytes, sample: np.ndarray, arena_size: int = DEFAULT_ARENA) -> int:
    """TFLM's total arena allocation (bytes) after one invoke on `sample` (one int8 image, no batch dim)."""
    interp = _tflm_interpreter(model, arena_size)
    interp.set_input(np.asarray(sample, np.int8)[None], 0)
    interp.invoke()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as f:
        os.dup2(f.fileno(), 2)
        try:
            interp.print_allocations()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode(errors="replace")
    m = re.search(r"Arena allocation total (\d+) bytes", text)
    if m is None:
        raise RuntimeFailure(f"TFLite Micro printed no arena total (got: {text.strip()[:200]!r})")
    return int(m.group(1))
