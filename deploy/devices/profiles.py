"""Device profiles (``devices/<name>.yaml``): memory, core, clock, allowed bit widths, cost model, flashing.

A profile is validated by :class:`DeviceProfile` (unknown keys are errors). Every figure carries a
text under ``sources`` saying where it came from; figures not measured or published are marked
``estimate`` there. :func:`latency_model` turns the cost model into the plain
:class:`search.budget.LatencyModel` the search receives.

Profiles are looked up in ``$SMPQ_DEVICES_DIR`` when set, else in the shipped ``devices/`` folder;
a path to a ``.yaml`` file is accepted as a device name too (a user's own board).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from deploy.errors import DeployError
from deploy.pipeline.validation import dotted_keys, key_source, one_line_error, parse_bytes, read_yaml, shipped_path
from search.budget import OP_TYPES, TERM_TABLES, LatencyModel

DEVICES_DIR_ENV = "SMPQ_DEVICES_DIR"
_SHIPPED_DIR = shipped_path("devices")
Bytes = Annotated[int, BeforeValidator(parse_bytes)]
BytesOrZero = Annotated[int, BeforeValidator(lambda v: parse_bytes(v, allow_zero=True))]
OpType = Literal[OP_TYPES]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Region(_Strict):
    """One memory region for the linker script."""

    origin: int = Field(ge=0)
    length: Bytes


class AllowedBits(_Strict):
    """Bit widths the device's runtime (or accelerator) can execute."""

    weight: list[int]
    activation: list[int]

    @field_validator("weight", "activation")
    @classmethod
    def _bits(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 or b > 8 for b in v):
            raise ValueError(f"must be a non-empty list of bit widths in 1..8, got {v}")
        return sorted(set(v))


#: the optional tables of a cost model's other work terms (search.budget.TERM_TABLES but the MACs'): name → one unit
TERM_UNITS = {TERM_TABLES["outputs"]: "output element", TERM_TABLES["gathered"]: "input value gathered into a patch"}


class CostModel(_Strict):
    """Cycles of a layer = per_layer_overhead_cycles + MACs × cycles_per_mac[op][w_bits] × act_bits_factor[a_bits]
    + output elements × cycles_per_output[op][w_bits] + gathered input values × cycles_per_gathered[op][w_bits]
    (the last two optional; the work quantities of search.budget.weighted_work, priced by
    search.budget.LatencyModel).

    For add and requantize the "MACs" are output elements, for pool input elements.
    With latency_unit 'instructions' (emulators) the counts are instructions, not cycles.
    """

    latency_unit: Literal["cycles", "instructions"] = "cycles"
    per_layer_overhead_cycles: float = Field(ge=0)
    cycles_per_mac: dict[OpType, dict[int, float]]
    act_bits_factor: dict[int, float] = Field(default_factory=dict)
    cycles_per_output: dict[OpType, dict[int, float]] = Field(default_factory=dict)
    cycles_per_gathered: dict[OpType, dict[int, float]] = Field(default_factory=dict)

    @field_validator(*TERM_UNITS)
    @classmethod
    def _term_tables(cls, v: dict[str, dict[int, float]], info) -> dict[str, dict[int, float]]:
        for op, table in v.items():
            if not table or any(b < 1 or b > 8 for b in table) or any(c < 0 for c in table.values()):
                raise ValueError(f"'{op}' must map weight bits 1..8 to cycles per {TERM_UNITS[info.field_name]} "
                                 f">= 0, got {table}")
        return v

    @field_validator("cycles_per_mac")
    @classmethod
    def _tables(cls, v: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
        if "conv2d" not in v:
            raise ValueError("needs a 'conv2d' table (other op types fall back to it)")
        for op, table in v.items():
            if not table or any(b < 1 or b > 8 for b in table) or any(c <= 0 for c in table.values()):
                raise ValueError(f"'{op}' must map weight bits 1..8 to positive cycles per MAC, got {table}")
        return v

    @field_validator("act_bits_factor")
    @classmethod
    def _factors(cls, v: dict[int, float]) -> dict[int, float]:
        if any(b < 1 or b > 8 for b in v) or any(f <= 0 for f in v.values()):
            raise ValueError(f"must map activation bits 1..8 to positive factors, got {v}")
        return v


class FlashMethod(_Strict):
    """How firmware gets onto the device and how the host talks to it."""

    backend: Literal["qemu", "stm32-uart", "pyocd", "none"]  # none: no way to run it here (e.g. an NPU estimated by its compiler)
    baud: int = Field(default=115200, gt=0)
    target: str | None = None  # pyOCD target type, e.g. stm32h743zitx
    machine: str | None = None  # qemu-system-arm -machine
    cpu: str | None = None  # qemu-system-arm -cpu
    notes: str = ""


class NpuConfig(_Strict):
    """An NPU whose compiler prices the model: Arm Ethos-U compiled by Vela (docs/ethos-u.md).

    With it, the search's flash and latency come from Vela (deploy/ethosu/cost.py), export adds the
    Vela stage, and the board figures in the report are "estimated by Vela"."""

    kind: Literal["ethos-u"]
    accelerator_config: str   # vela --accelerator-config, e.g. ethos-u55-128
    system_config: str        # a [System_Config.*] section of config_file
    memory_mode: str          # a [Memory_Mode.*] section of config_file
    config_file: str = "Arm/vela.ini"  # Vela's own file (vela --list-config-files) or a path


#: Figures that must each have an entry under `sources` (cost-model tables add one key per op type;
#: a single width may have its own entry too, e.g. cost_model.cycles_per_mac.conv2d.8).
SOURCED_FIGURES = ("clock_hz", "sram_bytes", "flash_bytes", "firmware_flash_bytes", "memory", "allowed_bits",
                   "cost_model.per_layer_overhead_cycles")


class DeviceProfile(_Strict):
    """One device. `sram_bytes` is what the tensor arena may use; the model's weights get
    flash_bytes − firmware_flash_bytes."""

    name: str
    description: str
    core: str
    clock_hz: float = Field(gt=0)
    sram_bytes: Bytes
    flash_bytes: Bytes
    firmware_flash_bytes: BytesOrZero = 0
    memory: dict[str, Region]
    arena_region: str | None = "ram"  # memory region holding the tensor arena; None: accelerator memory
    allowed_bits: AllowedBits
    cost_model: CostModel
    npu: NpuConfig | None = None
    flash: FlashMethod
    sources: dict[str, str]

    @model_validator(mode="after")
    def _consistent(self) -> "DeviceProfile":
        missing = [r for r in ("flash", "ram") if r not in self.memory]
        if missing:
            raise ValueError(f"'memory' needs regions 'flash' and 'ram' for the linker; missing {', '.join(missing)}")
        if self.arena_region is not None:
            region = self.memory.get(self.arena_region)
            if region is None:
                raise ValueError(f"'arena_region' is '{self.arena_region}', not one of the 'memory' regions "
                                 f"({', '.join(self.memory)})")
            if self.sram_bytes > region.length:
                raise ValueError(f"'sram_bytes' ({self.sram_bytes}) exceeds the arena region '{self.arena_region}' "
                                 f"({region.length} B)")
        if self.firmware_flash_bytes >= self.flash_bytes:
            raise ValueError(f"'firmware_flash_bytes' ({self.firmware_flash_bytes}) must be below "
                             f"'flash_bytes' ({self.flash_bytes})")
        needed = set(SOURCED_FIGURES) | {f"cost_model.cycles_per_mac.{op}" for op in self.cost_model.cycles_per_mac} \
            | {f"cost_model.{kind}.{op}" for kind in TERM_UNITS for op in getattr(self.cost_model, kind)}
        if self.cost_model.act_bits_factor:
            needed.add("cost_model.act_bits_factor")
        if self.npu is not None:
            needed.add("npu")
        unsourced = sorted(needed - {k for k, v in self.sources.items() if v.strip()})
        if unsourced:
            raise ValueError(f"no source for {', '.join(repr(k) for k in unsourced)}: add "
                             "'sources: {<figure>: <where it came from, or estimate + reasoning>}'")
        per_width = {f"cost_model.{kind}.{op}.{b}" for kind in ("cycles_per_mac", *TERM_UNITS)
                     for op, table in getattr(self.cost_model, kind).items() for b in table}
        stray = sorted(set(self.sources) - needed - per_width)
        if stray:
            raise ValueError(f"'sources' names figures the profile does not have: {', '.join(stray)}")
        return self

    @property
    def model_flash_bytes(self) -> int:
        """Flash left for the model's weights once the firmware's code is in."""
        return self.flash_bytes - self.firmware_flash_bytes

    def source_of(self, figure: str) -> str:
        """Where `figure` came from; 'cost_model.cycles_per_mac.conv2d.8' falls back to the op's source."""
        while figure not in self.sources and "." in figure:
            figure = figure.rsplit(".", 1)[0]
        return self.sources.get(figure, "")

    def is_estimate(self, figure: str) -> bool:
        """Whether the source of `figure` is marked as an estimate."""
        return "estimate" in self.source_of(figure).lower()


def devices_dir() -> Path:
    """$SMPQ_DEVICES_DIR, else the checkout's devices/ folder."""
    env = os.environ.get(DEVICES_DIR_ENV)
    return Path(env) if env else _SHIPPED_DIR


def list_devices() -> list[str]:
    """Names of the shipped device profiles, sorted."""
    folder = devices_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_device(name: str) -> DeviceProfile:
    """The validated profile `name` (or a path to a profile .yaml); one-line DeployError otherwise."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        path = devices_dir() / f"{name}.yaml"
    if not path.is_file():
        known = list_devices()
        listing = (f"known devices: {', '.join(known)}" if known
                   else f"no profiles found in '{devices_dir()}' (set ${DEVICES_DIR_ENV})")
        raise DeployError(f"unknown device '{name}'; {listing} (or give a path to a profile .yaml)")
    cal = calibrated_profile_path(path)
    return _load_profile(path.resolve(), path.stat().st_mtime_ns, cal.stat().st_mtime_ns if cal.is_file() else 0)


def calibrated_profile_path(profile_path: Path) -> Path:
    """``calibrated/<name>.yaml`` next to a profile: its cost model measured by ``smpq-deploy calibrate``."""
    return profile_path.parent / "calibrated" / profile_path.name


def _with_calibration(data: dict, path: Path) -> dict:
    """`data` with the cost model of its calibrated profile (when there is one), sourced to the measurement."""
    cal = calibrated_profile_path(path)
    if not cal.is_file() or not isinstance(data, dict):
        return data
    measured, _ = read_yaml(cal)
    try:
        cm = measured["cost_model"]
        where = (f"measured by `{measured['command']}` on {measured['date']} ({measured['kernels']} kernels, "
                 f"sha256 {str(measured['kernels_hash'])[:12]}; calibrated/{cal.name})")
        model = dict(data.get("cost_model") or {})
        tables = {**(model.get("cycles_per_mac") or {}), **cm["cycles_per_mac"]}
        model.update(latency_unit=cm["latency_unit"], per_layer_overhead_cycles=cm["per_layer_overhead_cycles"],
                     cycles_per_mac=tables, **{kind: cm.get(kind) or {} for kind in TERM_UNITS})
        replaced = {"cost_model.per_layer_overhead_cycles", *(f"cost_model.cycles_per_mac.{op}" for op in cm["cycles_per_mac"]),
                    *(f"cost_model.{kind}.{op}" for kind in TERM_UNITS for op in cm.get(kind) or {})}
    except (KeyError, TypeError, AttributeError) as exc:
        raise DeployError(f"calibrated/{cal.name}: not a profile written by smpq-deploy calibrate ({exc})") from None
    sources = {k: v for k, v in (data.get("sources") or {}).items()
               if k not in replaced and not any(k.startswith(r + ".") for r in replaced)}
    sources.update({k: where for k in replaced})
    return {**data, "cost_model": model, "sources": sources}


@lru_cache(maxsize=64)
def _load_profile(path: Path, _mtime: int, _calibrated_mtime: int = 0) -> DeviceProfile:
    data, lines = read_yaml(path)
    data = _with_calibration(data, path)
    shown = f"devices/{path.name}" if path.parent == _SHIPPED_DIR else str(path)

    def source(key: tuple[str, ...]) -> str:
        return key_source(lines, key, shown)

    try:
        profile = DeviceProfile.model_validate(data)
    except ValidationError as exc:
        raise one_line_error(exc, source, dotted_keys(DeviceProfile), f"device profile {shown}") from None
    if path.parent == devices_dir().resolve() and profile.name != path.stem:
        raise DeployError(f"{shown}: 'name' is '{profile.name}' but the file is {path.name}; make them equal")
    return profile


def latency_model(profile: DeviceProfile) -> LatencyModel:
    """The device's cost model as the plain object the search uses."""
    cm = profile.cost_model
    return LatencyModel(clock_hz=float(profile.clock_hz),
                        cycles_per_mac={op: dict(table) for op, table in cm.cycles_per_mac.items()},
                        per_layer_overhead_cycles=float(cm.per_layer_overhead_cycles),
                        act_bits_factor=dict(cm.act_bits_factor),
                        **{kind: {op: dict(table) for op, table in getattr(cm, kind).items()} for kind in TERM_UNITS})
