"""pipeline.yaml schema, loader and overrides: every problem is one actionable line."""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import pytest

from deploy.pipeline.config import (DEFAULT_CONFIG, PipelineConfig, candidate_bits, config_from_args, load_config,
                           resolve_budget)
from deploy.devices.profiles import list_devices, load_device
from deploy.errors import DeployError
from search.budget import Budget


def write(tmp_path: Path, text: str, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(*args, **kwargs) -> str:
    """The message of the DeployError load_config raises; asserts it is a single line."""
    with pytest.raises(DeployError) as info:
        load_config(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


def test_shipped_pipeline_yaml_is_valid_and_documents_the_schema_defaults() -> None:
    assert DEFAULT_CONFIG.is_file()
    shipped = load_config(DEFAULT_CONFIG)
    assert shipped == PipelineConfig(), "pipeline.yaml and the schema defaults in deploy/pipeline/config.py differ: keep them equal"
    assert shipped.device == "stm32h7" and shipped.model.name == "mbv2" and shipped.dataset.name == "cifar10"
    assert shipped.budgets.flash_bytes == "auto" and shipped.budgets.sram_bytes == "auto"
    assert shipped.harness.board == "qemu-mps2-an500" and shipped.seed == 0
    assert set(shipped.deploy.formats) == {"onnx", "onnx-int", "tflite", "smpq", "c"}


def test_partial_file_takes_defaults_for_the_rest(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "device: rp2040\nsearch:\n  method: edmips\n"))
    assert cfg.device == "rp2040" and cfg.search.method == "edmips"
    assert cfg.search.shapley.permutations == PipelineConfig().search.shapley.permutations


def test_shapley_score_reaches_the_search_only_when_it_is_not_the_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "search:\n  shapley:\n    score: last\n"))
    assert cfg.search.shapley.score == "last" and PipelineConfig().search.shapley.score == "singleton"
    assert error_of(None, {"search.shapley.score": "first"}).startswith("'search.shapley.score' must be")
    assert load_config(write(tmp_path, "search:\n  shapley:\n    score: singleton\n")).search.shapley.score == "singleton"


def test_malformed_yaml_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        train:
          epochs: 3
         bad: [1, 2
        """)
    message = error_of(path)
    assert message.startswith(f"{path}:3:2: malformed YAML")


def test_unclosed_flow_list_reports_its_position(tmp_path: Path) -> None:
    path = write(tmp_path, "search:\n  w_bits: [2, 4\n")
    assert error_of(path).startswith(f"{path}:3:1: malformed YAML")


def test_unknown_key_suggests_the_closest_valid_key(tmp_path: Path) -> None:
    path = write(tmp_path, "device: stm32h7\nsearch:\n  methd: smpq\n")
    assert error_of(path) == f"unknown key 'search.methd' in {path}:3; did you mean 'search.method'?"


@pytest.mark.parametrize("key, suggestion", [
    ("search.shapley.permutatons", "search.shapley.permutations"),
    ("budgets.flash", "budgets.flash_bytes"),
    ("train.w_bits", "search.w_bits"),  # a key in the wrong section
    ("searh", "search"),
])
def test_unknown_override_key_suggests(key: str, suggestion: str) -> None:
    message = error_of(None, {key: 1})
    assert message.startswith(f"unknown key '{key}' in command line")
    assert message.endswith(f"did you mean '{suggestion}'?")


def test_wrong_type_names_key_value_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  epochs: ten\n")
    assert error_of(path) == f"'train.epochs' must be an integer, got 'ten' ({path}:2)"


@pytest.mark.parametrize("override, expected", [
    ({"search.method": "foo"}, "'search.method' must be 'smpq', 'edmips', 'hawq' or 'uniform', got 'foo'"),
    ({"search.hawq.min_samples": "300"}, "'search.hawq': min_samples (300) must not exceed max_samples (200)"),
    ({"search.w_bits": "[2, 9]"}, "'search.w_bits' must be a non-empty list of bit widths in 1..8"),
    ({"deploy.formats": "onnx,tfl"}, "'deploy.formats[1]' must be 'onnx', 'onnx-int', 'tflite', 'smpq' or 'c', got 'tfl'"),
    ({"train.epochs": "0"}, "'train.epochs' must be greater than or equal to 1, got 0"),
    ({"deploy.onnx_opset": "13"}, "'deploy.onnx_opset' must be greater than or equal to 21, got 13"),
    ({"search.shapley.lambda": "0.3"}, "'search.shapley': beta + lambda must be 1"),
    ({"dataset.val_fraction": "1.5"}, "'dataset.val_fraction' must be less than 1"),
    ({"model.name": "resnet9"}, "'model.name' is 'resnet9', not a zoo model; known models:"),
    ({"dataset.name": "imagenet"}, "'dataset.name' is 'imagenet', not a known dataset"),
    ({"model.kwargs.mbv2.width_mul": "0.3"}, "unknown key 'model.kwargs.mbv2.width_mul'"),
])
def test_bad_values_give_one_line_naming_the_key(override: dict, expected: str) -> None:
    message = error_of(None, override)
    assert message.startswith(expected), message
    assert "command line" in message


def test_unknown_model_argument_suggests_the_real_one() -> None:
    assert error_of(None, {"model.kwargs.mbv2.width_mul": 0.3}).endswith("did you mean 'model.kwargs.mbv2.width_mult'?")


def test_unknown_device_lists_every_known_device(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "device: stm32h9\n"))
    assert message.startswith("'device': unknown device 'stm32h9'; known devices:")
    assert f"({tmp_path / 'pipeline.yaml'}:1)" in message
    for name in list_devices():
        assert name in message
    assert error_of(None, {"harness.board": "nucleo"}).startswith("'harness.board': unknown device 'nucleo'")


@pytest.mark.parametrize("key", ["flash_bytes", "sram_bytes", "latency_ms", "latency_s", "bops"])
@pytest.mark.parametrize("value", [-1, 0, "-512KB", float("inf"), float("nan")])
def test_negative_or_zero_budget_names_the_key(key: str, value) -> None:
    message = error_of(None, {f"budgets.{key}": value})
    assert message.startswith(f"'budgets.{key}' must be a positive")


@pytest.mark.parametrize("key, text, expected", [
    ("flash_bytes", "512KB", 524288),
    ("flash_bytes", "2MB", 2 * 1024 * 1024),
    ("flash_bytes", "1.5 MiB", 1572864),
    ("flash_bytes", "1000", 1000),
    ("flash_bytes", 1000, 1000),
    ("sram_bytes", "100kb", 102400),
    ("bops", "1.5G", 1.5e9),
    ("bops", "300M", 3e8),
    ("bops", "2e9", 2e9),
    ("latency_ms", "20ms", 20.0),
    ("latency_ms", "0.5s", 500.0),
    ("latency_ms", "800us", 0.8),
    ("latency_ms", 12, 12.0),
    ("latency_s", "0.25", 0.25),
    ("latency_s", "40ms", 0.04),
])
def test_human_units(key: str, text, expected: float) -> None:
    cfg = load_config(None, {f"budgets.{key}": text})
    assert getattr(cfg.budgets, key) == pytest.approx(expected)


def test_bad_unit_is_reported() -> None:
    assert error_of(None, {"budgets.flash_bytes": "2 parsecs"}).startswith("'budgets.flash_bytes' must be a positive byte size")


def test_overrides_beat_the_file_and_flags_beat_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "device: stm32f746\nseed: 3\nsearch:\n  method: edmips\nbudgets:\n  flash_bytes: 512KB\n")
    cfg = load_config(path, ["search.method=edmips", "budgets.flash_bytes=1MB", "search.w_bits=[4, 2, 8, 4]"])
    assert cfg.search.method == "edmips" and cfg.budgets.flash_bytes == 1024 * 1024
    assert cfg.search.w_bits == [2, 4, 8] and cfg.device == "stm32f746" and cfg.seed == 3
    args = argparse.Namespace(config=str(path), set=["seed=5", "device=rp2040"], device="nrf52840", model="resnet8",
                              dataset=None, data_dir="/data", seed=None, output="runs/x")
    cfg = config_from_args(args)
    assert cfg.device == "nrf52840" and cfg.seed == 5 and cfg.model.name == "resnet8"
    assert cfg.dataset.data_dir == Path("/data") and cfg.output == Path("runs/x")
    assert cfg.search.method == "edmips"  # from the file, untouched
    flags = argparse.Namespace(config=None, set=[], device=None, model=None, dataset=None, data_dir="2024",
                               seed=None, output="on")
    cfg = config_from_args(flags)  # flag values are taken literally, not read as YAML ('on' is not true)
    assert cfg.output == Path("on") and cfg.dataset.data_dir == Path("2024")


def test_set_needs_key_equals_value() -> None:
    assert error_of(None, ["search.method"]) == \
        "--set expects KEY=VALUE (e.g. --set search.method=edmips), got 'search.method'"


def test_model_shorthand_and_switching_models_keeps_kwargs_per_model(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "model: resnet8\n"))
    assert cfg.model.name == "resnet8" and cfg.model.model_kwargs == {}
    cfg = load_config(None, {"model": "resnet20"})
    assert cfg.model.name == "resnet20" and cfg.model.model_kwargs == {}
    assert load_config(None, {}).model.model_kwargs == {"width_mult": 0.5}


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "seed: 1\nseed: 2\n"))
    assert "duplicate key 'seed'" in message and ":2:" in message


def test_auto_budgets_resolve_against_every_device() -> None:
    for name in list_devices():
        profile = load_device(name)
        budget = load_config(None, {"device": name}).budget()
        assert isinstance(budget, Budget)
        assert budget.flash_bytes == profile.flash_bytes - profile.firmware_flash_bytes
        assert budget.sram_bytes == profile.sram_bytes
        assert budget.latency_s is None and budget.bops is None


def test_explicit_budgets_pass_through_and_latency_ms_becomes_seconds() -> None:
    cfg = load_config(None, {"budgets.flash_bytes": "1MB", "budgets.sram_bytes": None, "budgets.latency_ms": "50ms",
                             "budgets.bops": "1G"})
    assert resolve_budget(cfg.budgets, load_device("stm32h7")) == \
        Budget(flash_bytes=1024 * 1024, sram_bytes=None, latency_s=0.05, bops=1e9)


def test_budget_beyond_the_device_and_auto_latency_are_errors() -> None:
    cfg = load_config(None, {"budgets.sram_bytes": "1MB"})
    with pytest.raises(DeployError, match=r"'budgets.sram_bytes' is 1048576 B but device 'stm32h7' offers 524288 B"):
        cfg.budget()
    cfg = load_config(None, {"budgets.latency_ms": "auto"})
    with pytest.raises(DeployError, match=r"'budgets.latency_ms' is auto"):
        cfg.budget()
    assert error_of(None, {"budgets.latency_ms": 10, "budgets.latency_s": 1}).startswith("'budgets': give the latency budget once")


def test_candidate_bits_follow_the_device() -> None:
    cfg = load_config(None, {"device": "max78000"})
    w, a, dropped = candidate_bits(cfg, cfg.profile())
    assert w == [2, 4, 8] and a == [8]
    assert dropped == {"w_bits": [3, 5, 6], "a_bits": [4, 6]}
    cfg = load_config(None, {"device": "max78000", "search.a_bits": [4, 6]})
    with pytest.raises(DeployError, match=r"'search.a_bits' \[4, 6\] has no width device 'max78000' can run"):
        candidate_bits(cfg, cfg.profile())
    cfg = load_config(None, {"device": "stm32h7"})
    assert candidate_bits(cfg, cfg.profile())[:2] == (cfg.search.w_bits, cfg.search.a_bits)


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nope.yaml").startswith(f"config file '{tmp_path / 'nope.yaml'}' does not exist")
