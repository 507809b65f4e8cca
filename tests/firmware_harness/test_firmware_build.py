"""Firmware images (firmware_harness/build.py): both boards build and link with arm-none-eabi-gcc, sizes come
from the ELF, the vector table sits where each core boots, the runtime objects hold no floating point,
rebuilds are incremental, a model that does not fit is a one-line error; `smpq-deploy firmware`; and one
boot test on QEMU (marked hil) that also checks the raw outputs against the integer reference."""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from deploy.cli import main as cli
from deploy.export.smpq import build_smpq, export_c
from deploy.lower.irbuild import synthetic_graph
from deploy.lower.reference import run as run_reference
from firmware_harness.build import FirmwareImage, boards, build_firmware, section_sizes
from firmware_harness.errors import FirmwareBuildError

pytestmark = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc not installed")

#: Where each board's core fetches its vector table at reset, and its RAM regions (start, length).
BOOT = {"qemu-mps2-an500": (0x00000000, [(0x20000000, 4 << 20)]),
        "stm32h7": (0x08000000, [(0x20000000, 128 << 10), (0x24000000, 512 << 10)])}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("model")
    export_c(synthetic_graph(3), d)
    return d


@pytest.fixture(scope="module")
def images(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, FirmwareImage]:
    return {b: build_firmware(model_dir, b, tmp_path_factory.mktemp(b)) for b in BOOT}


def _symbols(elf: Path) -> dict[str, int]:
    out = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    return {parts[2]: int(parts[0], 16) for parts in (ln.split() for ln in out.splitlines()) if len(parts) == 3}


def test_boards_are_the_folders_with_a_linker_script():
    assert boards() == sorted(BOOT)


@pytest.mark.parametrize("board", sorted(BOOT))
def test_image_links_with_sizes_from_the_elf(board, images, model_dir):
    img = images[board]
    assert img.board == board and all(p.is_file() for p in (img.elf, img.bin, img.hex))
    blob_size = int(re.search(r"SIZE (\d+)u", (model_dir / "model_data.h").read_text()).group(1))
    arena = int(re.search(r"ARENA_SIZE (\d+)u", (model_dir / "model_data.h").read_text()).group(1))
    sizes = section_sizes(img.elf)
    assert sizes[".model"] == blob_size and sizes[".arena"] == arena
    assert 4_000 < sizes[".text"] < 64_000  # runtime + protocol + board code, newlib-nano
    assert 0 <= img.flash_bytes - (sizes[".text"] + sizes[".model"] + sizes.get(".ARM.exidx", 0) + sizes.get(".data", 0)) < 32
    assert img.flash_bytes == img.bin.stat().st_size  # the .bin is exactly what goes to flash
    assert img.ram_bytes == sizes.get(".data", 0) + sizes[".arena"] + sizes[".bss"] + sizes[".stack"]
    assert re.fullmatch(r"[0-9a-f]{64}", img.fw_hash) and img.fw_hash.encode() in img.elf.read_bytes()


@pytest.mark.parametrize("board", sorted(BOOT))
def test_vector_table_boots_the_reset_handler(board, images):
    img = images[board]
    origin, rams = BOOT[board]
    sym = _symbols(img.elf)
    assert sym["vector_table"] == origin
    sp, pc = struct.unpack_from("<II", img.bin.read_bytes(), 0)
    assert sp == sym["__stack_top__"] and sp % 8 == 0 and any(a < sp <= a + n for a, n in rams)
    assert pc == sym["Reset_Handler"] | 1  # Thumb
    assert origin <= sym["smpq_model_data"] < origin + img.flash_bytes and sym["smpq_model_data"] % 16 == 0
    arena_at = sym["arena"]
    assert arena_at % 16 == 0 and arena_at == rams[-1][0]  # its own region: data RAM / AXI SRAM


def test_runtime_objects_use_no_floating_point(images):
    """The runtime (-mgeneral-regs-only) neither touches an FPU register nor calls a soft-float helper."""
    objs = sorted((images["qemu-mps2-an500"].elf.parent / "firmware.build").glob("*__*.o"))
    runtime = [o for o in objs if o.name.split("__")[0] in ("src", "kernels", "cortex_m_dsp")]  # DSP kernels too
    assert len(runtime) >= 10
    dis = subprocess.run(["arm-none-eabi-objdump", "-d", *map(str, runtime)], capture_output=True, text=True,
                         check=True).stdout
    assert not re.findall(r"^\s+[0-9a-f]+:\s+[0-9a-f ]+\s+v[a-z]+", dis, re.M)
    undefined = subprocess.run(["arm-none-eabi-nm", "-u", *map(str, runtime)], capture_output=True, text=True).stdout
    assert not re.search(r"__aeabi_(f|d|[iul]2[fd])", undefined)
    app = (images["qemu-mps2-an500"].elf.parent / "firmware.build" / "app__io.o")
    app_dis = subprocess.run(["arm-none-eabi-objdump", "-d", str(app)], capture_output=True, text=True).stdout
    assert re.search(r"\svmul\.f32\s", app_dis)  # the check would see FPU instructions: the app prints floats


def test_rebuild_is_incremental_and_tracks_the_model(tmp_path):
    export_c(synthetic_graph(1), tmp_path / "m")
    first = build_firmware(tmp_path / "m", "qemu-mps2-an500", tmp_path / "out")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()}
    again = build_firmware(tmp_path / "m", "qemu-mps2-an500", tmp_path / "out")
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten
    export_c(synthetic_graph(2), tmp_path / "m")
    other = build_firmware(tmp_path / "m", "qemu-mps2-an500", tmp_path / "out")
    assert other.fw_hash != first.fw_hash and other.elf.stat().st_mtime_ns != stamps[first.elf]
    runtime_obj = tmp_path / "out" / "firmware.build" / "src__interpreter.o"
    assert runtime_obj.stat().st_mtime_ns == stamps[runtime_obj]  # only what depends on the model is rebuilt
    shutil.copytree(tmp_path / "m", tmp_path / "elsewhere" / "m")
    moved = build_firmware(tmp_path / "elsewhere" / "m", "qemu-mps2-an500", tmp_path / "elsewhere" / "out")
    assert moved.fw_hash == other.fw_hash  # the hash names the sources and flags, not where they lie


def test_a_model_over_the_limit_says_by_how_many_bytes(model_dir, tmp_path, images):
    flash = images["qemu-mps2-an500"].flash_bytes
    with pytest.raises(FirmwareBuildError, match=rf"needs {flash} bytes of flash, 100 more than the {flash - 100}"):
        build_firmware(model_dir, "qemu-mps2-an500", tmp_path, flash_limit=flash - 100)
    ram = images["qemu-mps2-an500"].ram_bytes
    with pytest.raises(FirmwareBuildError, match=rf"{ram} bytes of RAM, 1 more"):
        build_firmware(model_dir, "qemu-mps2-an500", tmp_path, ram_limit=ram - 1)


def test_a_blob_larger_than_the_flash_is_a_linker_region_error(model_dir, tmp_path):
    """A 3 MB blob on the 2 MB STM32H743: the linker's overflow, as one line with the byte count."""
    big = tmp_path / "big"
    big.mkdir()
    header = (model_dir / "model_data.h").read_text()
    big_size = 3 << 20
    (big / "model_data.h").write_text(re.sub(r"_SIZE \d+u", f"_SIZE {big_size}u", header, count=1))
    (big / "model_data.c").write_text('#include "model_data.h"\n'
                                      "SMPQ_MODEL_DATA_ATTR const uint8_t smpq_model_data[SMPQ_MODEL_DATA_SIZE] = {1};\n")
    with pytest.raises(FirmwareBuildError) as err:
        build_firmware(big, "stm32h7", tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and re.search(r"region FLASH overflowed by (\d+) bytes", msg)
    over = int(re.search(r"by (\d+) bytes", msg).group(1))
    assert big_size - (2 << 20) < over < big_size - (2 << 20) + 64_000


def test_bad_inputs_are_one_line_errors(tmp_path, model_dir):
    with pytest.raises(FirmwareBuildError, match="no board support for 'rp2040'; boards: qemu-mps2-an500, stm32h7"):
        build_firmware(model_dir, "rp2040", tmp_path)
    with pytest.raises(FirmwareBuildError, match="unknown kernel set 'fast'"):
        build_firmware(model_dir, "stm32h7", tmp_path, kernels="fast")
    with pytest.raises(FirmwareBuildError, match="has no model_data.c or model_data.h; export it first"):
        build_firmware(tmp_path, "stm32h7", tmp_path)


def test_firmware_command_exports_and_builds(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    synthetic_graph(0).save(run / "model")
    assert cli.main(["firmware", "--run", str(run), "--device", "stm32h7"]) == 0
    out = capsys.readouterr().out
    assert (run / "model_data.c").is_file() and (run / "firmware.elf").is_file() and (run / "firmware.hex").is_file()
    assert re.search(r"flash \d+ B .* of 2 MiB", out) and re.search(r"RAM \d+ B .* of 640 KiB", out)
    assert cli.main(["firmware", "--run", str(run), "--device", "rp2040"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: no board support for 'rp2040'; boards: qemu-mps2-an500, stm32h7"
    assert cli.main(["firmware", "--run", str(tmp_path / "empty"), "--device", "stm32h7"]) == 2
    (tmp_path / "empty").mkdir()
    assert cli.main(["firmware", "--run", str(tmp_path / "empty"), "--device", "stm32h7"]) == 2
    assert "neither model_data.c nor model.ir.json" in capsys.readouterr().err


@pytest.mark.hil
@pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm not installed")
def test_qemu_image_boots_and_answers(images):
    """name/profile/smpq-info answer; three inputs give the integer reference's raw outputs bit for bit."""
    from firmware_harness.hil.backends.qemu import QemuBoard
    from firmware_harness.hil.protocol import DutClient

    g = synthetic_graph(3)
    img = images["qemu-mps2-an500"]
    x = np.random.default_rng(7).integers(-128, 128, (3, 8, 8, 3)).astype(np.int8)
    ref = run_reference(g, x)
    with QemuBoard(img.elf, icount_shift=3) as board, DutClient(board.url) as dut:
        assert dut.name() == "smpq-qemu-mps2-an500"
        assert dut.profile() == ("ULPMark for tinyML Firmware V0.0.1", "ic01")
        info = dut.info()
        blob = build_smpq(g)
        assert info["blob_crc"] == f"{zlib.crc32(blob):08x}" and int(info["blob_bytes"]) == len(blob)
        assert info["fw"] == img.fw_hash and info["board"] == "qemu-mps2-an500"
        assert (info["timer"], info["ticks_per_instr"], info["icount_shift"]) == ("instructions", "8/40", "3")
        assert int(info["input_bytes"]) == 192 and int(info["output_bytes"]) == 10
        for k in range(len(x)):
            dut.load(x[k].tobytes())
            result = dut.infer(1, 0)
            assert result.t1 > result.t0
            np.testing.assert_array_equal(np.frombuffer(dut.raw_output(), np.int8), ref[k])
        assert len(dut.layer_times()) == int(info["n_ops"])
