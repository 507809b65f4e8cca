"""Device profiles: every shipped profile is valid, sourced and usable as a LatencyModel; bad ones are one line."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deploy.devices.profiles import DEVICES_DIR_ENV, devices_dir, latency_model, list_devices, load_device
from deploy.errors import DeployError
from search.budget import OP_TYPES, LatencyModel

KIB, MIB = 1024, 1024 * 1024
SHIPPED = ["max78000", "nrf52840", "qemu-mps2-an500", "rp2040", "stm32f746", "stm32h7", "stm32l4r5"]


def one_line_error(name: str) -> str:
    with pytest.raises(DeployError) as info:
        load_device(name)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_every_profile_of_the_brief_ships() -> None:
    assert set(SHIPPED) <= set(list_devices())


@pytest.mark.parametrize("name", SHIPPED)
def test_profile_loads_and_converts_to_a_latency_model(name: str) -> None:
    profile = load_device(name)
    assert profile.name == name
    model = latency_model(profile)
    assert isinstance(model, LatencyModel) and model.clock_hz == profile.clock_hz
    for op in OP_TYPES:
        for w in profile.allowed_bits.weight:
            for a in profile.allowed_bits.activation:
                assert model.mac_cost(op, w, a) > 0
    conv8 = profile.cost_model.cycles_per_mac["conv2d"][8]
    cycles = model.layer_cycles("conv2d", 1e6, 8)
    assert cycles == pytest.approx(profile.cost_model.per_layer_overhead_cycles + 1e6 * conv8)
    assert profile.model_flash_bytes == profile.flash_bytes - profile.firmware_flash_bytes > 0


@pytest.mark.parametrize("name", [n for n in SHIPPED if n != "qemu-mps2-an500"])
def test_every_figure_has_a_source_and_unmeasured_ones_say_estimate(name: str) -> None:
    profile = load_device(name)
    for op in profile.cost_model.cycles_per_mac:
        assert profile.source_of(f"cost_model.cycles_per_mac.{op}").strip()
        for bits in profile.cost_model.cycles_per_mac[op]:
            if bits != 8:  # sub-byte costs on real boards are not measured
                assert profile.is_estimate(f"cost_model.cycles_per_mac.{op}.{bits}"), (name, op, bits)
    assert profile.is_estimate("cost_model.per_layer_overhead_cycles")
    for op in ("depthwise_conv2d", "fully_connected", "add", "pool"):
        assert profile.is_estimate(f"cost_model.cycles_per_mac.{op}.8")
    if not profile.is_estimate("cost_model.cycles_per_mac.conv2d.8"):  # the figures taken from MLPerf Tiny v1.1
        assert "MLPerf Tiny v1.1" in profile.source_of("cost_model.cycles_per_mac.conv2d.8")


def test_emulated_board_counts_measured_instructions() -> None:
    qemu = load_device("qemu-mps2-an500")
    assert qemu.cost_model.latency_unit == "instructions"
    for op in qemu.cost_model.cycles_per_mac:
        assert "measured" in qemu.source_of(f"cost_model.cycles_per_mac.{op}")
        assert not qemu.is_estimate(f"cost_model.cycles_per_mac.{op}")


@pytest.mark.parametrize("name, mac_per_cycle", [("stm32h7", 0.86), ("stm32l4r5", 0.49)])
def test_published_int8_conv_throughput(name: str, mac_per_cycle: float) -> None:
    profile = load_device(name)
    assert 1 / profile.cost_model.cycles_per_mac["conv2d"][8] == pytest.approx(mac_per_cycle, rel=0.01)
    assert not profile.is_estimate("cost_model.cycles_per_mac.conv2d.8")


@pytest.mark.parametrize("name, core, clock_mhz, sram, flash", [
    ("stm32h7", "cortex-m7", 480, 512 * KIB, 2 * MIB),
    ("stm32f746", "cortex-m7", 216, 304 * KIB, 1 * MIB),
    ("stm32l4r5", "cortex-m4f", 120, 624 * KIB, 2 * MIB),
    ("nrf52840", "cortex-m4f", 64, 240 * KIB, 1 * MIB),
    ("rp2040", "cortex-m0plus", 133, 240 * KIB, 2 * MIB),
    ("max78000", "cortex-m4f+cnn", 50, 512 * KIB, 442368),
    ("qemu-mps2-an500", "cortex-m7", 25, 3968 * KIB, 4 * MIB),
])
def test_datasheet_figures(name: str, core: str, clock_mhz: int, sram: int, flash: int) -> None:
    p = load_device(name)
    assert (p.core, p.clock_hz, p.sram_bytes, p.flash_bytes) == (core, clock_mhz * 1e6, sram, flash)
    if p.arena_region is not None:
        assert p.sram_bytes <= p.memory[p.arena_region].length


def test_special_devices() -> None:
    npu = load_device("max78000")
    assert npu.allowed_bits.weight == [1, 2, 4, 8] and npu.allowed_bits.activation == [8]
    qemu = load_device("qemu-mps2-an500")
    assert qemu.cost_model.latency_unit == "instructions" and qemu.flash.backend == "qemu"
    assert (qemu.memory["flash"].origin, qemu.memory["flash"].length) == (0, 4 * MIB)
    assert (qemu.memory["ram"].origin, qemu.memory["ram"].length) == (0x20000000, 4 * MIB)
    h7 = load_device("stm32h7")
    assert h7.arena_region == "axi_sram" and h7.memory["axi_sram"].origin == 0x24000000
    assert all(load_device(n).flash.baud == 115200 for n in SHIPPED)


def test_unknown_device_lists_the_known_ones() -> None:
    message = one_line_error("stm32h9")
    assert message.startswith("unknown device 'stm32h9'; known devices: ")
    for name in SHIPPED:
        assert name in message


@pytest.fixture
def profile_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A devices folder holding a copy of the stm32h7 profile as 'board.yaml'."""
    data = yaml.safe_load((devices_dir() / "stm32h7.yaml").read_text())
    data["name"] = "board"
    (tmp_path / "board.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv(DEVICES_DIR_ENV, str(tmp_path))
    return tmp_path


def edit(folder: Path, change) -> None:
    path = folder / "board.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_profile_from_another_folder_and_from_a_path(profile_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert list_devices() == ["board"] and load_device("board").clock_hz == 480e6
    monkeypatch.delenv(DEVICES_DIR_ENV)
    assert load_device(str(profile_dir / "board.yaml")).name == "board"


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.update(clock_hz="fast"), "'clock_hz' must be a number, got 'fast' ({path}:"),
    (lambda d: d.update(sram_bytes="-1KB"), "'sram_bytes' must be a positive byte size"),
    (lambda d: d.update(clok_hz=1), "unknown key 'clok_hz' in {path}:"),
    (lambda d: d["cost_model"]["cycles_per_mac"]["conv2d"].update({8: -1}),
     "'cost_model.cycles_per_mac': 'conv2d' must map weight bits 1..8 to positive cycles per MAC"),
    (lambda d: d["cost_model"]["cycles_per_mac"].update(matmul={8: 1.0}),
     "'cost_model.cycles_per_mac' has an unknown entry 'matmul': keys must be 'conv2d', 'depthwise_conv2d'"),
    (lambda d: d["cost_model"].update(cycles_per_gathered={"conv2d": {2: -1.0}}),
     "'cost_model.cycles_per_gathered': 'conv2d' must map weight bits 1..8 to cycles per input value gathered into a "
     "patch >= 0"),
    (lambda d: d["cost_model"].update(cycles_per_output={"conv2d_unaligned": {9: 1.0}}),
     "'cost_model.cycles_per_output': 'conv2d_unaligned' must map weight bits 1..8 to cycles per output element"),
    (lambda d: d["cost_model"].update(cycles_per_gathered={"conv2d": {2: 1.0}}),
     "no source for 'cost_model.cycles_per_gathered.conv2d'"),
    (lambda d: d["cost_model"].update(cycles_per_gathered={"conv3d": {2: 1.0}}),
     "'cost_model.cycles_per_gathered' has an unknown entry 'conv3d'"),
    (lambda d: d["sources"].pop("clock_hz"), "device profile {path}: no source for 'clock_hz'"),
    (lambda d: d["allowed_bits"].update(weight=[4, 9]), "'allowed_bits.weight' must be a non-empty list of bit widths in 1..8"),
    (lambda d: d.update(sram_bytes="1MB"), "'sram_bytes' (1048576) exceeds the arena region 'axi_sram'"),
    (lambda d: d["flash"].update(backend="jtag"), "'flash.backend' must be 'qemu', 'stm32-uart', 'pyocd' or 'none', got 'jtag'"),
    (lambda d: d.update(name="other"), "{path}: 'name' is 'other' but the file is board.yaml"),
])
def test_malformed_profile_is_one_line_naming_file_and_key(profile_dir: Path, change, expected: str) -> None:
    edit(profile_dir, change)
    message = one_line_error("board")
    assert expected.format(path=profile_dir.resolve() / "board.yaml") in message, message


def test_malformed_yaml_profile(profile_dir: Path) -> None:
    (profile_dir / "board.yaml").write_text("name: board\nclock_hz: [1, 2\n")
    assert one_line_error("board").startswith(f"{profile_dir.resolve() / 'board.yaml'}:3:1: malformed YAML")
