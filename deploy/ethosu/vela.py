"""Running Arm's Vela compiler (PyPI ``ethos-u-vela``) and reading what it reports.

:func:`compile_tflite` writes an int8 TFLite model into a folder, runs the ``vela`` command of this
Python environment on it (``--verbose-performance --enable-debug-db``) and parses

* the summary CSV ``<stem>_summary_<system_config>.csv`` (cycles_npu, cycles_total, inference_time,
  total_npu_encoded_weights, memory used per area, ...),
* the per-layer CSV ``<stem>_per-layer.csv`` (one row per NPU/CPU operation: target, op cycles, NPU
  cycles) and
* the debug database ``<stem>_debug.xml`` (per operation: the TFLite operator index it came from, its
  encoded weight bytes).

Vela's cycle figures are its own estimates (Arm's performance model), never measurements: everything
here is labelled "estimated by Vela". Facts measured with Vela 5.2.0 are in docs/ethos-u.md.
"""
from __future__ import annotations

import csv
import io
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from deploy.errors import DeployError
from search.atomic import atomic_write_bytes, atomic_write_text

VELA_PACKAGE = "ethos-u-vela"
VELA_TIMEOUT_S = 600
KIB = 1024
#: summary CSV `weights_storage_area` → the column holding that area's bytes used (in KiB)
STORAGE_COLUMNS = {"Off-chip Flash": "off_chip_flash_memory_used", "On-chip Flash": "on_chip_flash_memory_used",
                   "DRAM": "dram_memory_used", "SRAM": "sram_memory_used"}


@dataclass(frozen=True)
class VelaTarget:
    """What Vela compiles for: accelerator configuration, system configuration and memory mode of a
    Vela configuration file (``Arm/vela.ini`` ships with Vela)."""

    accelerator: str
    system_config: str
    memory_mode: str
    config_file: str = "Arm/vela.ini"

    def args(self) -> list[str]:
        return ["--accelerator-config", self.accelerator, "--system-config", self.system_config,
                "--memory-mode", self.memory_mode, "--config", self.config_file]

    def key(self) -> str:
        """A text that identifies the target and the compiler version (cache keys)."""
        return f"vela {vela_version()} {self.accelerator} {self.system_config} {self.memory_mode} {self.config_file}"


@dataclass(frozen=True)
class VelaOp:
    """One row of Vela's per-layer report."""

    tflite_index: int | None   # the TFLite operator it came from (None: not traceable)
    tflite_op: str             # "Original Operator" (Conv2D, Add, ...)
    vela_op: str               # Vela's own operation ("NNG Operator"; Passthrough for CPU ops)
    name: str                  # its output tensor
    target: str                # "NPU" or "CPU"
    op_cycles: float
    npu_cycles: float
    macs: float
    weight_bytes: int          # encoded weight bytes of the operation's weight stream (0: none)
    ir_op: str | None = None   # the IR op the TFLite operator was emitted for, when known


@dataclass
class VelaResult:
    """What one Vela compilation reports; `files` are the artifacts it wrote."""

    summary: dict[str, str]
    ops: list[VelaOp]
    files: dict[str, Path] = field(default_factory=dict)

    def _num(self, key: str) -> float:
        try:
            return float(self.summary[key])
        except (KeyError, ValueError):
            raise DeployError(f"Vela's summary has no number '{key}' ({self.files.get('summary')})") from None

    @property
    def cycles_total(self) -> float:
        return self._num("cycles_total")

    @property
    def cycles_npu(self) -> float:
        return self._num("cycles_npu")

    @property
    def inference_time_s(self) -> float:
        return self._num("inference_time")

    @property
    def clock_hz(self) -> float:
        return self._num("core_clock")

    @property
    def encoded_weight_bytes(self) -> int:
        return int(self._num("total_npu_encoded_weights"))

    @property
    def original_weight_bytes(self) -> int:
        return int(self._num("total_original_weights"))

    @property
    def weights_area(self) -> str:
        return self.summary.get("weights_storage_area", "")

    @property
    def weights_area_bytes(self) -> int:
        """Bytes Vela uses in the memory area holding the weights (encoded weights + scales/biases + ...)."""
        column = STORAGE_COLUMNS.get(self.weights_area)
        if column is None:
            raise DeployError(f"Vela reports weights in an unknown memory area '{self.weights_area}'")
        return round(self._num(column) * KIB)

    @property
    def sram_bytes(self) -> int:
        return round(self._num("sram_memory_used") * KIB)

    def cpu_ops(self) -> list[VelaOp]:
        """The operations Vela leaves to the CPU (empty when everything runs on the NPU)."""
        return [op for op in self.ops if op.target != "NPU"]

    def as_dict(self) -> dict:
        """The figures the report shows (cycles are Vela's estimates)."""
        return {"estimated_by": f"Vela {vela_version()} (Arm's performance model, not a measurement)",
                "cycles_total": self.cycles_total, "cycles_npu": self.cycles_npu,
                "inference_time_s": self.inference_time_s, "clock_hz": self.clock_hz,
                "encoded_weight_bytes": self.encoded_weight_bytes, "original_weight_bytes": self.original_weight_bytes,
                "weights_area": self.weights_area, "weights_area_bytes": self.weights_area_bytes,
                "sram_bytes": self.sram_bytes, "npu_ops": sum(op.target == "NPU" for op in self.ops),
                "cpu_ops": [{"tflite_op": op.tflite_op, "name": op.name, "ir_op": op.ir_op, "macs": op.macs}
                            for op in self.cpu_ops()],
                "files": {k: p.name for k, p in self.files.items()}}


@lru_cache(maxsize=1)
def vela_version() -> str:
    """The installed Vela version; a one-line error when it is missing."""
    try:
        return metadata.version(VELA_PACKAGE)
    except metadata.PackageNotFoundError:
        raise DeployError(f"Arm's Vela compiler is not installed: pip install {VELA_PACKAGE} "
                          "(scripts/setup.sh installs it with the project)") from None


def vela_command() -> list[str]:
    """The ``vela`` console script of this Python environment."""
    vela_version()
    exe = Path(sys.executable).parent / "vela"
    if exe.is_file():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from ethosu.vela.vela import main; sys.exit(main())"]


def compile_tflite(tflite: bytes, target: VelaTarget, out_dir: str | Path, stem: str = "model",
                   op_origin: list[str] | None = None, extra_args: tuple[str, ...] = ()) -> VelaResult:
    """Compile an int8 TFLite model with Vela into `out_dir` (``<stem>.tflite`` is written there first).

    `op_origin` names, per TFLite operator, the IR op it was emitted for (from
    :func:`deploy.export.tflite.to_tflite`); the per-layer rows then carry ``ir_op``. `extra_args` go to
    Vela as they are (e.g. ``("--ignore-ops", "ADD")`` leaves ADD to the CPU).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = out / f"{stem}.tflite"
    atomic_write_bytes(src, tflite)
    cmd = [*vela_command(), str(src), *target.args(), "--output-dir", str(out), "--verbose-performance",
           "--enable-debug-db", *extra_args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=VELA_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DeployError(f"Vela did not finish within {VELA_TIMEOUT_S} s on {src}") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip() and not ln.startswith("Warning")]
        why = lines[-1].strip() if lines else (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                                              else f"exit {proc.returncode}")
        raise DeployError(f"Vela {vela_version()} failed on {src} for {target.accelerator}: {why}")
    files = {"tflite": src, "vela_tflite": out / f"{stem}_vela.tflite",
             "summary": out / f"{stem}_summary_{target.system_config}.csv",
             "per_layer": out / f"{stem}_per-layer.csv", "debug_db": out / f"{stem}_debug.xml"}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise DeployError(f"Vela {vela_version()} did not write {', '.join(missing)}")
    atomic_write_text(out / f"{stem}_vela.log", proc.stdout)
    files["log"] = out / f"{stem}_vela.log"
    return VelaResult(read_summary(files["summary"]), read_ops(files["debug_db"], files["per_layer"], op_origin), files)


def read_summary(path: Path) -> dict[str, str]:
    """The one data row of Vela's summary CSV, by column name."""
    rows = list(csv.DictReader(path.open()))
    if len(rows) != 1:
        raise DeployError(f"{path}: expected one summary row, found {len(rows)}")
    return rows[0]


def _tables(path: Path) -> dict[str, list[dict[str, str]]]:
    root = ET.parse(path).getroot()
    return {t.get("name", ""): list(csv.DictReader(io.StringIO((t.text or "").strip()))) for t in root.iter("table")}


def read_ops(debug_db: Path, per_layer: Path, op_origin: list[str] | None = None) -> list[VelaOp]:
    """Per-operation rows: the per-layer CSV joined (in order) with the debug database's ``perf`` table
    (TFLite operator index through ``source.ext_key``, encoded weight bytes from ``perf_debug``)."""
    t = _tables(debug_db)
    csv_rows = list(csv.DictReader(per_layer.open()))
    perf = t.get("perf", [])
    if len(perf) != len(csv_rows):
        raise DeployError(f"{debug_db}: {len(perf)} operations in the debug database but {len(csv_rows)} in {per_layer}")
    source = {r["id"]: int(r["ext_key"]) for r in t.get("source", []) if r.get("ext_key", "").lstrip("-").isdigit()}
    weights = {r["id"]: int(r["weight_total_bytes"] or 0) for r in t.get("perf_debug", [])}
    ops = []
    for p, row in zip(perf, csv_rows):
        index = source.get(p["source_id"])
        origin = op_origin[index] if op_origin is not None and index is not None and 0 <= index < len(op_origin) else None
        ops.append(VelaOp(index, row["Original Operator"], row["NNG Operator"], row["Name"], row["Target"],
                          float(row["Op Cycles"] or 0), float(row["NPU"] or 0), float(row["MAC Count"] or 0),
                          weights.get(p["id"], 0), origin))
    return ops
