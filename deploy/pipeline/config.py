"""The pipeline configuration: one pydantic schema for pipeline.yaml, its loader and CLI overrides.

``load_config(path, overrides)`` reads a YAML file (default: the checkout's ``pipeline.yaml``; keys it
leaves out take the schema defaults below, which that file documents), applies overrides given as
dotted keys (``search.method=edmips``, ``budgets.flash_bytes=1MB``) and validates. Every problem is
one :class:`DeployError` line naming the key, what is wrong and where the value came from.

Budgets are numbers (human units allowed), ``auto`` (from the device profile) or null
(unconstrained); :func:`resolve_budget` turns them into a :class:`search.budget.Budget`.
"""
from __future__ import annotations

import argparse
import inspect
import math
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, field_validator,
                      model_validator)

from deploy.devices.profiles import DeviceProfile, latency_model, load_device
from deploy.errors import DeployError
from deploy.pipeline.validation import (Key, closest_key, dotted_keys, format_bytes, key_source, merge_dotted, one_line_error, parse_bytes,
                               parse_count, parse_duration_ms, read_yaml, shipped_path, show)
from search.budget import Budget
from search.methods import METHODS

__all__ = ["PipelineConfig", "load_config", "config_from_args", "resolve_budget", "candidate_bits", "latency_model",
           "DEFAULT_CONFIG", "FLAG_KEYS"]

DEFAULT_CONFIG = shipped_path("pipeline.yaml")
#: The common CLI flags (argparse dest) and the config key each one sets.
FLAG_KEYS = {"device": "device", "model": "model.name", "dataset": "dataset.name", "data_dir": "dataset.data_dir",
             "seed": "seed", "output": "output"}
#: Sections that may be written as a bare name (``model: mbv2``) and the key that name sets.
SHORTHANDS = {"model": "name", "dataset": "name"}
FORMATS = ("onnx", "onnx-int", "tflite", "smpq", "c")


def _auto_or(parse):
    """A before-validator: 'auto' and null pass through, anything else goes through `parse`."""
    def validate(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            return None if value is None else "auto"
        return parse(value)
    return validate


def _bits_list(value: Any) -> Any:
    """Candidate bit widths: a list of 1..8, sorted and de-duplicated (a single int is a one-item list)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value or \
            any(isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 8 for b in value):
        raise ValueError(f"must be a non-empty list of bit widths in 1..8 like [2, 4, 8], got {show(value)}")
    return sorted(set(value))


BudgetBytes = Annotated[int | Literal["auto"] | None, BeforeValidator(_auto_or(parse_bytes))]
BudgetMs = Annotated[float | Literal["auto"] | None, BeforeValidator(_auto_or(parse_duration_ms))]
BudgetS = Annotated[float | Literal["auto"] | None,
                    BeforeValidator(_auto_or(lambda v: parse_duration_ms(v, "s") / 1e3))]
BudgetCount = Annotated[float | Literal["auto"] | None, BeforeValidator(_auto_or(parse_count))]
Bits = Annotated[list[int], BeforeValidator(_bits_list)]
PositiveInt = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(gt=0, lt=1)]


class Section(BaseModel):
    """A config section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True, allow_inf_nan=False)


class ModelConfig(Section):
    """Which zoo model (search.nn.models); `kwargs` per model name (only the chosen model's entry is used, so
    --model can switch models); `checkpoint` is an FP checkpoint that replaces FP training."""

    name: str = "mbv2"
    kwargs: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"mbv2": {"width_mult": 0.5}})
    checkpoint: Path | None = None
    pretrained: bool = True  # no checkpoint: start from the shipped FP checkpoint of (model, dataset) if there is one

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for search.nn.models.build_model of the chosen model."""
        return dict(self.kwargs.get(self.name, {}))


class DatasetConfig(Section):
    name: str = "cifar10"
    data_dir: Path | None = None  # None: $SMPQ_DATA_DIR, else ../shared/data, else ./data
    val_fraction: Fraction = 0.1


class BudgetsConfig(Section):
    """Hard limits of the search. Bytes are binary (512KB = 524288). latency_ms and latency_s are one budget."""

    flash_bytes: BudgetBytes = "auto"
    sram_bytes: BudgetBytes = "auto"
    latency_ms: BudgetMs = None
    latency_s: BudgetS = None
    bops: BudgetCount = None

    @model_validator(mode="after")
    def _one_latency(self) -> "BudgetsConfig":
        if self.latency_ms is not None and self.latency_s is not None:
            raise ValueError("give the latency budget once: latency_ms or latency_s, not both")
        return self


class TrainConfig(Section):
    """Full-precision training (field names as search.nn.train.TrainConfig)."""

    epochs: PositiveInt = 30
    batch_size: PositiveInt = 128
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(default=5e-4, ge=0)
    warmup_epochs: float = Field(default=1.0, ge=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    subset: PositiveInt | None = None
    eval_batch_size: PositiveInt = 500


class ShapleyConfig(Section):
    """SMPQ's Monte-Carlo Shapley rounds and α update (search.smpq: preset "paper" = the paper's game and
    Eq. 8-9 update; "default" = fallback game, α = mean ψ; ξ, β, λ act in the paper's update only)."""

    preset: Literal["default", "paper"] = "default"
    permutations: PositiveInt = 10
    threshold: float = Field(default=0.5, ge=0, lt=1)
    xi: float = Field(default=0.1, gt=0)
    beta: float = Field(default=0.8, ge=0, le=1)
    lambda_: float = Field(default=0.2, ge=0, le=1, alias="lambda")
    value: Literal["accuracy", "tradeoff", "probability"] = "accuracy"
    estimator: Literal["mean", "mean-std"] = "mean"
    score: Literal["shapley", "last", "singleton"] = "singleton"  # "last": last-of-group steps; "singleton": each candidate alone (search.smpq, score)
    bn: Literal["running", "batch"] = "batch"  # BatchNorm in the game: running statistics or the batch's own
    layout: Literal["nchw", "channels_last"] = "nchw"  # memory layout of the evaluations: channels_last ≈ 1.5× on CPU, not bit for bit
    rounds: PositiveInt | None = 1           # None: search.epochs − search.warmup_epochs + 1
    steps_per_round: int | None = Field(default=0, ge=0)  # supernet SGD steps between rounds; None: one epoch

    @model_validator(mode="after")
    def _momentum_sums_to_one(self) -> "ShapleyConfig":
        if abs(self.beta + self.lambda_ - 1.0) > 1e-9:
            raise ValueError(f"beta + lambda must be 1 (got {self.beta} + {self.lambda_}); e.g. beta 0.8, lambda 0.2")
        return self


class EdmipsConfig(Section):
    cd: float = Field(default=1e-3, ge=0)  # weight of the complexity loss


class HawqSection(Section):
    """HAWQ-v3 baseline: Hutchinson trace estimator and its calibration batch (search.hawq.HawqConfig)."""

    batch_size: PositiveInt = 256
    min_samples: PositiveInt = 16
    max_samples: PositiveInt = 200
    tol: float = Field(default=1e-3, gt=0)

    @model_validator(mode="after")
    def _samples_ordered(self) -> "HawqSection":
        if self.min_samples > self.max_samples:
            raise ValueError(f"min_samples ({self.min_samples}) must not exceed max_samples ({self.max_samples})")
        return self


class UniformConfig(Section):
    w_bits: int = Field(default=8, ge=1, le=8)
    a_bits: int = Field(default=8, ge=1, le=8)


class SearchConfig(Section):
    """Mixed-precision search: method, candidate bit widths and schedule."""

    method: Literal[METHODS] = "smpq"  # type: ignore[valid-type]
    w_bits: Bits = Field(default_factory=lambda: [2, 3, 4, 5, 6, 8])
    a_bits: Bits = Field(default_factory=lambda: [4, 6, 8])
    epochs: PositiveInt = 10
    warmup_epochs: int = Field(default=0, ge=0)
    first_last_8bit: bool = True
    verify_top: int = Field(default=0, ge=0)  # budget step: also value the K next-best knapsack policies (smpq)
    uniform_guard: float | None = Field(default=2.0, ge=0, allow_inf_nan=False)  # budget step: z (smpq), null: off
    shapley: ShapleyConfig = Field(default_factory=ShapleyConfig)
    edmips: EdmipsConfig = Field(default_factory=EdmipsConfig)
    hawq: HawqSection = Field(default_factory=HawqSection)
    uniform: UniformConfig = Field(default_factory=UniformConfig)

    @model_validator(mode="after")
    def _warmup_fits(self) -> "SearchConfig":
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs ({self.epochs})")
        return self


class QatConfig(Section):
    epochs: PositiveInt = 5
    lr: float = Field(default=0.01, gt=0)


class DeployConfig(Section):
    formats: list[Literal["onnx", "onnx-int", "tflite", "smpq", "c"]] = Field(default_factory=lambda: list(FORMATS))
    onnx_opset: int = Field(default=21, ge=21, le=25)  # = deploy.export.onnx.OPSETS (not imported: loads onnx)

    @field_validator("formats", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v


class HarnessConfig(Section):
    """Where the firmware runs: a device profile name (its flash backend) and the serial link."""

    board: str = "qemu-mps2-an500"
    port: str | None = None  # serial port of a real board; None for QEMU (a free TCP port)
    baud: PositiveInt = 115200
    samples: PositiveInt | None = 200  # test images sent to the board; None = the whole test split


class PipelineConfig(Section):
    """The whole pipeline, as written in pipeline.yaml."""

    device: str = "stm32h7"
    model: ModelConfig = Field(default_factory=ModelConfig)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    budgets: BudgetsConfig = Field(default_factory=BudgetsConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    qat: QatConfig = Field(default_factory=QatConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    harness: HarnessConfig = Field(default_factory=HarnessConfig)
    seed: int = Field(default=0, ge=0)
    output: Path = Path("runs/default")
    accelerator: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("model", "dataset", mode="before")
    @classmethod
    def _shorthand(cls, v: Any, info: Any) -> Any:
        return {SHORTHANDS[info.field_name]: v} if isinstance(v, str) else v

    def profile(self) -> DeviceProfile:
        """The target device's profile."""
        return load_device(self.device)

    def budget(self) -> Budget:
        """The budgets with `auto` resolved against the target device."""
        return resolve_budget(self.budgets, self.profile())


VALID_KEYS = dotted_keys(PipelineConfig)


def _parse_overrides(overrides: Mapping[str, Any] | Sequence[str] | None) -> dict[str, Any]:
    """Dotted key → value; 'key=value' strings have their value read as YAML ('[2, 4]' is a list)."""
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = []
        for item in overrides:
            key, sep, value = str(item).partition("=")
            if not sep or not key.strip():
                raise DeployError(f"--set expects KEY=VALUE (e.g. --set search.method=edmips), got {show(item)}")
            items.append((key.strip(), value))
    out: dict[str, Any] = {}
    for key, value in items:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) if value.strip() else None
            except yaml.YAMLError:
                pass  # keep the raw string; validation names the key if it is wrong
        out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | Sequence[str] | None = None,
                flags: Mapping[str, Any] | None = None) -> PipelineConfig:
    """Read `path` (default: the checkout's pipeline.yaml, else schema defaults), apply overrides, validate.

    `overrides` maps dotted keys to values (strings are read as YAML: '[2, 4]' is a list) or is a list
    of 'key=value' strings (the CLI's --set); `flags` (dotted key → value, taken literally) come last.
    Raises DeployError with one line on any problem.
    """
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    data: dict[str, Any] = {}
    lines: dict[Key, int] = {}
    if path is not None:
        path = Path(path)
        data, lines = read_yaml(path)
    from_cli = _parse_overrides(overrides)
    from_cli.update({k: v for k, v in (flags or {}).items() if v is not None})
    for key, value in list(from_cli.items()):
        if key in SHORTHANDS and not isinstance(value, dict):  # --set model=resnet8 sets model.name only
            del from_cli[key]
            key = f"{key}.{SHORTHANDS[key]}"
            from_cli[key] = value
        merge_dotted(data, key, value, SHORTHANDS)
    cli_keys = {tuple(k.split(".")) for k in from_cli}
    name = "the default configuration" if path is None else \
        "pipeline.yaml" if path.resolve() == DEFAULT_CONFIG else str(path)

    def source(key: Key) -> str:
        if any(k[:len(key)] == key or key[:len(k)] == k for k in cli_keys):
            return "command line"
        return key_source(lines, key, name)

    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise one_line_error(exc, source, VALID_KEYS, name) from None
    for key, value in (("device", cfg.device), ("harness.board", cfg.harness.board)):
        try:
            load_device(value)
        except DeployError as exc:
            raise DeployError(f"'{key}': {exc} ({source(tuple(key.split('.')))})") from None
    _check_names(cfg, source)
    return cfg


def _check_names(cfg: PipelineConfig, source) -> None:
    """Model and dataset names against the zoo and the loaders (imported here: they pull in torch)."""
    from search.nn.data import DATASETS
    from search.nn.models import MODELS

    if cfg.model.name not in MODELS:
        raise DeployError(f"'model.name' is '{cfg.model.name}', not a zoo model; known models: "
                          f"{', '.join(sorted(MODELS))} ({source(('model', 'name'))})")
    params = inspect.signature(MODELS[cfg.model.name]).parameters
    hints = typing.get_type_hints(MODELS[cfg.model.name])
    reserved = {"in_channels", "num_classes"}
    for arg, value in cfg.model.model_kwargs.items():
        key = f"model.kwargs.{cfg.model.name}.{arg}"
        where = source(("model", "kwargs", cfg.model.name, arg))
        if arg not in params or arg in reserved:
            valid = [f"model.kwargs.{cfg.model.name}.{p}" for p in params if p not in reserved]
            close = closest_key(key, valid)
            hint = f"; did you mean '{close}'?" if close else f"; it takes {', '.join(valid) or 'no arguments'}"
            raise DeployError(f"unknown key '{key}': not an argument of model '{cfg.model.name}' ({where}){hint}")
        _check_model_kwarg(key, value, hints.get(arg, Any), where)
    if cfg.dataset.name not in DATASETS:
        raise DeployError(f"'dataset.name' is '{cfg.dataset.name}', not a known dataset; known datasets: "
                          f"{', '.join(DATASETS)} ({source(('dataset', 'name'))})")


def _check_model_kwarg(key: str, value: Any, annotation: Any, where: str) -> None:
    """A model argument has its annotated type; numbers are sizes or multipliers, so they must be > 0."""
    try:
        checked = TypeAdapter(annotation).validate_python(value, strict=isinstance(value, str))
    except ValidationError:
        raise DeployError(f"'{key}' must be {_type_words(annotation)}, got {show(value)} ({where})") from None
    if isinstance(checked, (int, float)) and not isinstance(checked, bool) and not (math.isfinite(checked) and checked > 0):
        raise DeployError(f"'{key}' must be a positive number, got {show(value)} ({where})")


def _type_words(annotation: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    args = typing.get_args(annotation) or (annotation,)
    return " or ".join(names.get(a, getattr(a, "__name__", str(a))) for a in args)


def config_from_args(args: argparse.Namespace, command_flags: Mapping[str, str] | None = None) -> PipelineConfig:
    """The config for a CLI invocation: --config file, then --set overrides, then the common flags and a
    command's own flags (`command_flags`: argparse dest → config key), validated like every other key."""
    keys = {**FLAG_KEYS, **(command_flags or {})}
    flags = {key: getattr(args, dest, None) for dest, key in keys.items()}
    return load_config(getattr(args, "config", None), getattr(args, "set", None) or [], flags)


def device_limits(profile: DeviceProfile) -> dict[str, int]:
    """The device's hard memory limits for the model: flash for the blob, SRAM for the arena."""
    return {"flash_bytes": profile.model_flash_bytes, "sram_bytes": profile.sram_bytes}


def check_device_limit(key: str, value: int | None, profile: DeviceProfile, what: str) -> None:
    """A budget may tighten the device's flash / SRAM limit, never loosen it; `what` names the setting."""
    limit = device_limits(profile)[key]
    if value is not None and value > limit:
        raise DeployError(f"{what} is {value} B but device '{profile.name}' offers "
                          f"{limit} B ({format_bytes(limit)}) for the model; a budget may tighten the device's "
                          f"limits, never loosen them: use a value up to {limit} or auto")


def resolve_budget(budgets: BudgetsConfig, profile: DeviceProfile) -> Budget:
    """`auto` → the device's model flash / arena SRAM; explicit values must fit the device."""
    values: dict[str, Any] = {}
    for key, limit in device_limits(profile).items():
        value = getattr(budgets, key)
        if value == "auto":
            value = limit
        check_device_limit(key, value, profile, f"'budgets.{key}'")
        values[key] = value
    for key in ("latency_ms", "latency_s", "bops"):
        if getattr(budgets, key) == "auto":
            raise DeployError(f"'budgets.{key}' is auto but device profiles set no {key.split('_')[0]} target; "
                              f"give a number (e.g. latency_ms: 50) or null for unconstrained")
    latency_s = budgets.latency_s if budgets.latency_s is not None else (
        budgets.latency_ms / 1e3 if budgets.latency_ms is not None else None)
    return Budget(flash_bytes=values["flash_bytes"], sram_bytes=values["sram_bytes"], latency_s=latency_s,
                  bops=budgets.bops)


def candidate_bits(cfg: PipelineConfig, profile: DeviceProfile, w_bits: Sequence[int] | None = None,
                   a_bits: Sequence[int] | None = None, method: str | None = None,
                   uniform: tuple[int, int] | None = None) -> tuple[list[int], list[int], dict[str, list[int]]]:
    """The search's weight and activation candidates the device can run, and those dropped (by kind).

    The one check of bit widths against the device's ``allowed_bits``. The config's lists are
    intersected with them (widths the device cannot run are dropped; none left is an error); widths
    given on the command line (`w_bits`, `a_bits` from --w-bits/--a-bits, `uniform` from --uniform) must
    all be allowed. With method uniform (`method`, else search.method) the uniform pair must be allowed.
    """
    allowed = {"w_bits": profile.allowed_bits.weight, "a_bits": profile.allowed_bits.activation}
    flags = {"w_bits": w_bits, "a_bits": a_bits}
    kept: dict[str, list[int]] = {}
    dropped: dict[str, list[int]] = {}
    for key, ok in allowed.items():
        given = flags[key]
        if given is not None:
            bad = sorted({b for b in given if b not in ok})
            if bad or not given:
                raise DeployError(f"--{key.replace('_', '-')} {','.join(map(str, given))}: device '{profile.name}' "
                                  f"cannot run {','.join(map(str, bad))}-bit {_KIND[key]} (allowed: "
                                  f"{','.join(map(str, ok))})")
            kept[key], dropped[key] = sorted(set(given)), []
            continue
        wanted = getattr(cfg.search, key)
        kept[key] = [b for b in wanted if b in ok]
        dropped[key] = [b for b in wanted if b not in ok]
        if not kept[key]:
            raise DeployError(f"'search.{key}' {wanted} has no width device '{profile.name}' can run "
                              f"(allowed: {ok}); e.g. --set search.{key}={ok}")
    if (method or cfg.search.method) == "uniform":
        pair = uniform or (cfg.search.uniform.w_bits, cfg.search.uniform.a_bits)
        for key, bits in zip(allowed, pair):
            if bits not in allowed[key]:
                what = f"--uniform w{pair[0]}a{pair[1]}" if uniform else f"'search.uniform.{key}' is {bits}"
                raise DeployError(f"{what}: device '{profile.name}' cannot run {bits}-bit {_KIND[key]} "
                                  f"(allowed: {','.join(map(str, allowed[key]))})")
    return kept["w_bits"], kept["a_bits"], dropped


_KIND = {"w_bits": "weights", "a_bits": "activations"}
