"""Firmware image build: C runtime + board support + MLPerf Tiny application + a model's ``model_data.c``.

READY: builds a QEMU image that speaks docs/protocol.md (checked bit-exact against deploy.lower.reference), e.g.
    img = build_firmware(Path("runs/demo"), "qemu-mps2-an500", Path("runs/demo"))  # needs runs/demo/model_data.c/.h
    qemu-system-arm -machine mps2-an500 -kernel runs/demo/firmware.elf -icount shift=3 -serial tcp:... (boot: m-init-done, m-ready)

arm-none-eabi-gcc with newlib-nano, -O2, Cortex-M7 with the hard-float ABI (``-mfpu=fpv5-d16
-mfloat-abi=hard``): the M7's FPU is there and the application uses it to print dequantised results, and
Debian's newlib ships that multilib. The runtime objects are compiled with ``-mgeneral-regs-only`` so the
integer runtime provably touches no floating-point register. Objects are rebuilt only when their source,
headers or flags changed; the image only when an object or the linker script did.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from firmware_harness.errors import FirmwareBuildError

HERE = Path(__file__).resolve().parent
RUNTIME = HERE / "runtime"
BOARDS = HERE / "boards"
APP = HERE / "app"
CC, OBJCOPY, OBJDUMP = "arm-none-eabi-gcc", "arm-none-eabi-objcopy", "arm-none-eabi-objdump"

#: kernel set name → source folders (relative to the runtime). The first folder's files of a name win, so an
#: optimised set lists its own folder before the reference kernels it does not replace.
KERNEL_SETS: dict[str, tuple[str, ...]] = {"reference": ("kernels",),
                                            "cortex_m_dsp": ("kernels/cortex_m_dsp", "kernels")}
#: every board here is a Cortex-M7 (CPU_FLAGS), which has the DSP extension: the optimised set is the default; it is
#: bit-exact with the reference set (tests/firmware_harness/test_kernels_dsp.py) and is what devices/calibrated/ was measured with.
DEFAULT_KERNELS = "cortex_m_dsp"

CPU_FLAGS = ("-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16", "-mfloat-abi=hard")
C_FLAGS = ("-std=c99", "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-ffunction-sections", "-fdata-sections")
RUNTIME_FLAGS = ("-mgeneral-regs-only",)  # the runtime is integer-only: no FPU register may appear in it
LINK_FLAGS = ("--specs=nano.specs", "--specs=nosys.specs", "-nostartfiles", "-Wl,--gc-sections")
#: sections that occupy RAM (flash is the span of the loaded sections: code, constants, the model blob,
#: .data's initial values).
RAM_SECTIONS = (".data", ".arena", ".bss", ".stack")


@dataclass(frozen=True)
class FirmwareImage:
    """A linked firmware image and what it occupies."""

    elf: Path
    bin: Path
    hex: Path
    board: str
    flash_bytes: int  # text + rodata + model + data's initial values (+ alignment), read from the ELF
    ram_bytes: int    # data + arena + bss + stack, read from the ELF
    fw_hash: str      # sha256 of the sources + flags that built it (also reported by `smpq-info%`)


def boards() -> list[str]:
    """Board folders with a linker script, sorted."""
    return sorted(p.parent.name for p in BOARDS.glob("*/link.ld"))


def kernel_sources(kernels: str) -> list[Path]:
    """The kernel .c files of a kernel set (the one rule: a file of a set's first folder replaces the reference
    file of the same name). The runtime Makefile asks for it: ``python3 -m firmware_harness.build sources SET``."""
    chosen: dict[str, Path] = {}
    for folder in KERNEL_SETS[kernels]:
        for src in sorted((RUNTIME / folder).glob("*.c")):
            chosen.setdefault(src.name, src)
    return sorted(chosen.values())


def replaced_kernels(kernels: str) -> list[Path]:
    """The reference kernel files that `kernels` replaces (each defines ``smpq_<stem>``)."""
    own = {p.name for p in kernel_sources(kernels)}
    return [p for p in sorted((RUNTIME / KERNEL_SETS["reference"][0]).glob("*.c"))
            if p.name in own and p not in kernel_sources(kernels)]


def _sources(model_dir: Path, board: str, kernels: str) -> tuple[list[Path], list[Path]]:
    """(runtime sources, other sources) of an image."""
    runtime = sorted((RUNTIME / "src").glob("*.c")) + kernel_sources(kernels)
    other = (sorted(APP.glob("*.c")) + sorted((BOARDS / "common").glob("*.c")) + sorted((BOARDS / board).glob("*.c"))
             + [model_dir / "model_data.c"])
    return runtime, other


def _headers(model_dir: Path, kernels: str) -> list[Path]:
    dirs = [RUNTIME / "include", RUNTIME / "src", APP, BOARDS, BOARDS / "common"]
    dirs += [RUNTIME / f for f in KERNEL_SETS[kernels]]
    return sorted({h for d in dirs for h in d.glob("*.h")}) + [model_dir / "model_data.h"]


def _include_flags(model_dir: Path, kernels: str) -> list[str]:
    dirs = [RUNTIME / "include", RUNTIME / "src", *(RUNTIME / f for f in KERNEL_SETS[kernels]), model_dir]
    return [f"-I{d}" for d in dirs]


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


def _label(path: Path) -> bytes:
    """A file's name for the firmware hash: relative to firmware_harness/, or bare (the model's files)."""
    return (path.relative_to(HERE).as_posix() if path.is_relative_to(HERE) else path.name).encode()


def _check_inputs(model_dir: Path, board: str, kernels: str) -> None:
    if board not in boards():
        raise FirmwareBuildError(f"no board support for '{board}'; boards: {', '.join(boards())}")
    if kernels not in KERNEL_SETS:
        raise FirmwareBuildError(f"unknown kernel set '{kernels}'; kernel sets: {', '.join(KERNEL_SETS)}")
    missing = [n for n in ("model_data.c", "model_data.h") if not (model_dir / n).is_file()]
    if missing:
        raise FirmwareBuildError(f"'{model_dir}' has no {' or '.join(missing)}; export it first "
                                 "(smpq-deploy export --formats c)")
    for tool in (CC, OBJCOPY, OBJDUMP):
        if shutil.which(tool) is None:
            raise FirmwareBuildError(f"'{tool}' not found; install gcc-arm-none-eabi and libnewlib-arm-none-eabi "
                                     "(scripts/setup.sh does)")


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        out = (proc.stderr or proc.stdout).strip()
        overflow = re.search(r"region `(\w+)' overflowed by (\d+) bytes", out)
        if overflow:
            raise FirmwareBuildError(f"the firmware does not fit: region {overflow.group(1)} overflowed by "
                                     f"{overflow.group(2)} bytes")
        first = next((ln for ln in out.splitlines() if "error" in ln.lower()), out.splitlines()[0] if out else "")
        raise FirmwareBuildError(f"{what} failed: {first.strip()}")
    return proc.stdout


def _compile(src: Path, obj: Path, flags: list[str], key: str) -> None:
    stamp = obj.with_suffix(".key")
    if obj.is_file() and stamp.is_file() and stamp.read_text() == key:
        return
    _run([CC, *flags, "-c", str(src), "-o", str(obj)], f"compiling {src.name}")
    stamp.write_text(key)


@dataclass(frozen=True)
class Section:
    """One section of an ELF image (arm-none-eabi-objdump -h)."""

    name: str
    size: int
    vma: int
    lma: int
    loaded: bool  # has contents that go into the image (.bin/.hex)


def elf_sections(elf: Path) -> list[Section]:
    """The allocated sections of `elf`, in address order."""
    out = _run([OBJDUMP, "-h", str(elf)], "reading the image's sections").splitlines()
    found = []
    for head, flags in zip(out, out[1:]):
        parts = head.split()
        if len(parts) == 7 and parts[0].isdigit() and "ALLOC" in flags:
            found.append(Section(parts[1], int(parts[2], 16), int(parts[3], 16), int(parts[4], 16), "LOAD" in flags))
    return found


def section_sizes(elf: Path) -> dict[str, int]:
    """Section name → bytes of the allocated sections of `elf`."""
    return {s.name: s.size for s in elf_sections(elf)}


def _flash_bytes(sections: list[Section]) -> int:
    """Bytes from the first to the last loaded byte (the .bin's size, alignment gaps included)."""
    loaded = [s for s in sections if s.loaded and s.size]
    return max(s.lma + s.size for s in loaded) - min(s.lma for s in loaded) if loaded else 0


def build_firmware(model_dir: Path, board: str, out_dir: Path, *, kernels: str = DEFAULT_KERNELS,
                   flash_limit: int | None = None, ram_limit: int | None = None) -> FirmwareImage:
    """Build ``firmware.elf/.bin/.hex`` for `board` around `model_dir`'s ``model_data.c/.h`` in `out_dir`.

    Raises FirmwareBuildError (one line) when the toolchain or model is missing, a source does not compile,
    or the image exceeds a linker region, `flash_limit` or `ram_limit` (saying by how many bytes).
    """
    model_dir, out_dir = Path(model_dir).resolve(), Path(out_dir).resolve()
    _check_inputs(model_dir, board, kernels)
    runtime_srcs, other_srcs = _sources(model_dir, board, kernels)
    headers = _headers(model_dir, kernels)
    link_scripts = [BOARDS / board / "link.ld", BOARDS / "common" / "sections.ld"]
    base = [*CPU_FLAGS, *C_FLAGS, *_include_flags(model_dir, kernels)]
    everything = runtime_srcs + other_srcs + headers + link_scripts
    flags_key = [*CPU_FLAGS, *C_FLAGS, *RUNTIME_FLAGS, *LINK_FLAGS, board, kernels]  # no paths: same on any machine
    fw_hash = _digest([" ".join(flags_key).encode()] + [_label(p) + b"\0" + p.read_bytes() for p in everything])
    header_key = _digest([h.read_bytes() for h in headers])

    obj_dir = out_dir / "firmware.build"
    obj_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for src in runtime_srcs + other_srcs:
        flags = base + (list(RUNTIME_FLAGS) if src in runtime_srcs else [])
        if src.parent == APP:
            flags += [f'-DSMPQ_FW_HASH="{fw_hash}"', f'-DSMPQ_KERNELS="{kernels}"']
        obj = obj_dir / f"{src.parent.name}__{src.stem}.o"
        jobs.append((src, obj, flags, _digest([src.read_bytes(), header_key.encode(), " ".join(flags).encode()])))
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for f in [pool.submit(_compile, *job) for job in jobs]:
            f.result()

    elf, bin_, hex_ = out_dir / "firmware.elf", out_dir / "firmware.bin", out_dir / "firmware.hex"
    stamp = out_dir / "firmware.build" / "image.key"
    if not (elf.is_file() and bin_.is_file() and hex_.is_file() and stamp.is_file() and stamp.read_text() == fw_hash):
        tmp = obj_dir / "firmware.elf"
        _run([CC, *CPU_FLAGS, *LINK_FLAGS, f"-L{BOARDS / 'common'}", "-T", str(link_scripts[0]),
              f"-Wl,-Map={obj_dir / 'firmware.map'}", *(str(j[1]) for j in jobs), "-o", str(tmp)], "linking")
        _run([OBJCOPY, "-O", "binary", str(tmp), str(obj_dir / "firmware.bin")], "objcopy")
        _run([OBJCOPY, "-O", "ihex", str(tmp), str(obj_dir / "firmware.hex")], "objcopy")
        for name in ("firmware.bin", "firmware.hex", "firmware.elf"):
            os.replace(obj_dir / name, out_dir / name)
        stamp.write_text(fw_hash)

    sections = elf_sections(elf)
    image = FirmwareImage(elf, bin_, hex_, board, _flash_bytes(sections),
                          sum(s.size for s in sections if s.name in RAM_SECTIONS), fw_hash)
    for what, used, limit in (("flash", image.flash_bytes, flash_limit), ("RAM", image.ram_bytes, ram_limit)):
        if limit is not None and used > limit:
            raise FirmwareBuildError(f"the firmware does not fit: it needs {used} bytes of {what}, "
                                     f"{used - limit} more than the {limit} available")
    return image


def main(argv: list[str] | None = None) -> int:
    """``python3 -m firmware_harness.build sources|replaced SET``: a kernel set's files (or the reference files it
    replaces), relative to the runtime folder, one line; for the runtime Makefile (stdlib only)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("sources", "replaced") or args[1] not in KERNEL_SETS:
        print(f"usage: python3 -m firmware_harness.build sources|replaced {{{','.join(KERNEL_SETS)}}}", file=sys.stderr)
        return 2
    files = kernel_sources(args[1]) if args[0] == "sources" else replaced_kernels(args[1])
    print(" ".join(p.relative_to(RUNTIME).as_posix() for p in files))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
