"""The C runtime on the host: build ``libsmpq.so`` with gcc (when missing or older than its sources)
and drive it through ctypes — load an ``.smpq`` blob, run int8 / uint8 inputs, get int8 outputs.

>>> rt = HostRuntime(Path("runs/x/model.smpq").read_bytes())
>>> logits = rt.run(images_uint8)          # (N, classes) int8 codes
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np

from firmware_harness.errors import HarnessError
from firmware_harness.format_spec import ERRORS, HINTS, MODEL_STRUCT

RUNTIME_DIR = Path(__file__).resolve().parent / "runtime"
BUILD_DIR_ENV = "SMPQ_RUNTIME_BUILD"  # override where the host build goes (default runtime/build)
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


class RuntimeStatusError(HarnessError):
    """The C runtime returned an error status; `.code` is its name (e.g. 'E_CRC')."""

    def __init__(self, status: int, what: str) -> None:
        self.status = status
        self.code = ERRORS.get(status, f"E_UNKNOWN({status})")
        super().__init__(f"{what} failed with {self.code}: {HINTS.get(self.code, 'see docs/smpq-format.md')}")


#: C type of a format_spec.MODEL_STRUCT field → its ctypes type.
CTYPES = {"const uint8_t *": ctypes.c_void_p, "uint8_t *": ctypes.c_void_p, "uint32_t": ctypes.c_uint32,
          "uint16_t": ctypes.c_uint16, "int": ctypes.c_int}


class _Model(ctypes.Structure):
    """smpq_model (include/smpq_types.h), field for field from format_spec.MODEL_STRUCT."""

    _fields_ = [(f.name, CTYPES[f.ctype]) for f in MODEL_STRUCT]


def build_dir() -> Path:
    """Folder of the host build (``runtime/build`` unless $SMPQ_RUNTIME_BUILD is set)."""
    return Path(os.environ.get(BUILD_DIR_ENV, RUNTIME_DIR / "build"))


def _sources() -> list[Path]:
    return [p for p in RUNTIME_DIR.rglob("*") if p.suffix in (".c", ".h") or p.name == "Makefile"
            if "build" not in p.relative_to(RUNTIME_DIR).parts]


def build_host() -> Path:
    """Run ``make -C runtime host`` if the library is missing or older than any source; returns the .so."""
    lib = build_dir() / "libsmpq.so"
    newest = max(p.stat().st_mtime for p in _sources())
    if lib.exists() and lib.stat().st_mtime >= newest:
        return lib
    if shutil.which("make") is None or shutil.which(os.environ.get("CC", "gcc")) is None:
        raise HarnessError("building the host runtime needs 'make' and 'gcc' on PATH (apt-get install build-essential)")
    proc = subprocess.run(["make", "-C", str(RUNTIME_DIR), f"BUILD={build_dir()}", "host"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        raise HarnessError(f"host runtime build failed ({tail[0]}); run 'make -C {RUNTIME_DIR} host' to see the full log")
    return lib


def library() -> ctypes.CDLL:
    """The host runtime, built if needed and loaded once per process."""
    global _lib
    with _lock:
        if _lib is None:
            lib = ctypes.CDLL(str(build_host()))
            u8p, i8p = ctypes.POINTER(ctypes.c_uint8), ctypes.POINTER(ctypes.c_int8)
            lib.smpq_load.argtypes = [ctypes.POINTER(_Model), ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32]
            lib.smpq_load.restype = ctypes.c_int
            lib.smpq_invoke.argtypes = [ctypes.POINTER(_Model)]
            lib.smpq_invoke.restype = ctypes.c_int
            lib.smpq_run_batch.argtypes = [ctypes.POINTER(_Model), ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p]
            lib.smpq_run_batch.restype = ctypes.c_int
            lib.smpq_arena_size.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
            lib.smpq_arena_size.restype = ctypes.c_uint32
            lib.smpq_input.argtypes = [ctypes.POINTER(_Model), ctypes.POINTER(ctypes.c_uint32)]
            lib.smpq_input.restype = i8p
            lib.smpq_output.argtypes = [ctypes.POINTER(_Model), ctypes.POINTER(ctypes.c_uint32)]
            lib.smpq_output.restype = i8p
            lib.smpq_tensor_shape.argtypes = [ctypes.POINTER(_Model), ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)]
            lib.smpq_tensor_shape.restype = ctypes.c_int
            lib.smpq_crc32.argtypes = [u8p, ctypes.c_uint32]
            lib.smpq_crc32.restype = ctypes.c_uint32
            _lib = lib
        return _lib


def load_status(blob: bytes, arena_capacity: int | None = None) -> int:
    """The C loader's status for `blob` (0 = valid), without keeping the model."""
    lib = library()
    buf = ctypes.create_string_buffer(bytes(blob), max(len(blob), 1))
    cap = lib.smpq_arena_size(buf, len(blob)) if arena_capacity is None else arena_capacity
    arena = (ctypes.c_uint32 * max(1, (cap + 3) // 4))()
    return int(lib.smpq_load(ctypes.byref(_Model()), buf, len(blob), arena, cap))


class HostRuntime:
    """One model loaded into the host runtime with its own arena."""

    def __init__(self, blob: bytes) -> None:
        self.lib = library()
        self._blob = ctypes.create_string_buffer(bytes(blob), max(len(blob), 1))
        self.arena_size = int(self.lib.smpq_arena_size(self._blob, len(blob)))
        self._arena = (ctypes.c_uint32 * max(1, (self.arena_size + 3) // 4))()  # 4-byte aligned
        self._model = _Model()
        st = self.lib.smpq_load(ctypes.byref(self._model), self._blob, len(blob), self._arena, self.arena_size)
        if st != 0:
            raise RuntimeStatusError(st, "loading the .smpq blob")
        self.input_shape = self._shape(self._model.input)
        self.output_shape = self._shape(self._model.output)

    def _shape(self, index: int) -> tuple[int, ...]:
        dims = (ctypes.c_uint32 * 4)()
        rank = self.lib.smpq_tensor_shape(ctypes.byref(self._model), index, dims)
        return tuple(int(d) for d in dims[4 - rank:])

    def run(self, x: np.ndarray) -> np.ndarray:
        """Outputs (N, *output_shape[1:]) int8 for a batch of inputs: int8 codes, or uint8 pixels
        (converted as pixel − 128, the IR's input convention)."""
        x = np.asarray(x)
        if x.dtype == np.uint8:
            x = (x.astype(np.int16) - 128).astype(np.int8)
        if x.dtype != np.int8:
            raise HarnessError(f"runtime inputs must be int8 codes or uint8 pixels, got {x.dtype}")
        if tuple(x.shape[1:]) != tuple(self.input_shape[1:]):
            raise HarnessError(f"input shape {tuple(x.shape[1:])} does not match the model input {tuple(self.input_shape[1:])}")
        x = np.ascontiguousarray(x)
        out = np.empty((len(x), *self.output_shape[1:]), np.int8)
        st = self.lib.smpq_run_batch(ctypes.byref(self._model), x.ctypes.data, len(x), out.ctypes.data)
        if st != 0:
            raise RuntimeStatusError(st, "inference")
        return out

    def invoke(self) -> int:
        """One smpq_invoke on whatever the input tensor holds (for timing); returns the status."""
        return int(self.lib.smpq_invoke(ctypes.byref(self._model)))

    def set_input(self, x: np.ndarray) -> None:
        """Write one int8 input (no batch dimension or batch of 1) into the arena."""
        n = ctypes.c_uint32()
        ptr = self.lib.smpq_input(ctypes.byref(self._model), ctypes.byref(n))
        data = np.ascontiguousarray(np.asarray(x, np.int8)).ravel()
        if data.size != n.value:
            raise HarnessError(f"input has {data.size} values, the model takes {n.value}")
        ctypes.memmove(ptr, data.ctypes.data, n.value)
