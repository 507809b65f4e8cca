"""Build and run the kernel benchmark firmware (kernels_bench.c) on QEMU mps2-an500.

One image holds the reference kernels (renamed ``ref_*``), the Cortex-M DSP kernels and, optionally, Arm's
CMSIS-NN compiled from its source folder (a measurement anchor outside the project: referenced by path,
never copied). It runs every case at 8/4/2/1-bit weights through both of our kernel sets and CMSIS-NN
(s8; s4 for conv), reading the board's SysTick around each call under ``-icount shift=N``, where a tick
is 2^N/40 instructions. Used by bench/kernels_qemu.py and tests/firmware_harness/test_kernels_dsp.py.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from firmware_harness.build import (BOARDS, CPU_FLAGS, LINK_FLAGS, RUNTIME, RUNTIME_FLAGS, kernel_sources,
                                    replaced_kernels)
from firmware_harness.errors import FirmwareBuildError

HERE = Path(__file__).resolve().parent
CC = "arm-none-eabi-gcc"
QEMU = "qemu-system-arm"
BOARD = "qemu-mps2-an500"
KIND_CODES = {"conv2d": 0, "depthwise_conv2d": 1, "fully_connected": 2}
WIDTHS = (8, 4, 2, 1)
FLAGS = (*CPU_FLAGS, "-std=c99", "-O2", "-g", "-ffunction-sections", "-fdata-sections")
CMSIS_DIRS = ("ConvolutionFunctions", "NNSupportFunctions", "FullyConnectedFunctions")
CMSIS_BUF = 64 * 1024


@dataclass(frozen=True)
class Case:
    """One layer shape (NHWC; fully connected: in_h = in_w = 1, in_c = inputs)."""

    kind: str  # conv2d, depthwise_conv2d, fully_connected
    in_h: int
    in_w: int
    in_c: int
    out_c: int
    kh: int = 1
    kw: int = 1
    sh: int = 1
    sw: int = 1
    pad_t: int = 0
    pad_l: int = 0

    @property
    def out_h(self) -> int:
        return (self.in_h + 2 * self.pad_t - self.kh) // self.sh + 1

    @property
    def out_w(self) -> int:
        return (self.in_w + 2 * self.pad_l - self.kw) // self.sw + 1

    @property
    def k(self) -> int:
        """Taps per output value (conv: kh·kw·C_in; depthwise: kh·kw; fully connected: inputs)."""
        return self.kh * self.kw * (1 if self.kind == "depthwise_conv2d" else self.in_c)

    @property
    def macs(self) -> int:
        return self.out_h * self.out_w * self.out_c * self.k

    def label(self) -> str:
        if self.kind == "fully_connected":
            return f"fc {self.in_c}->{self.out_c}"
        s = f" s{self.sh}" if self.sh > 1 else ""
        tag = "dw" if self.kind == "depthwise_conv2d" else "conv"
        return f"{tag} {self.kh}x{self.kw}{s} {self.in_h}x{self.in_w}x{self.in_c}->{self.out_c}"


@dataclass(frozen=True)
class Measurement:
    case: int
    impl: str         # ref, dsp, cmsis
    w_bits: int
    instructions: float
    checksum: int     # FNV-1a of the output bytes


def cmsis_dir() -> Path:
    """Arm's CMSIS-NN sources: $SMPQ_CMSIS_NN, else ../shared/anchors/cmsis-nn next to the repository."""
    return Path(os.environ.get("SMPQ_CMSIS_NN") or HERE.parents[2] / "shared" / "anchors" / "cmsis-nn")


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        first = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "")
        raise FirmwareBuildError(f"{what} failed: {first.strip()}")


def _cases_header(cases: list[Case], widths: tuple[int, ...]) -> str:
    n_in = max(c.in_h * c.in_w * c.in_c for c in cases)
    n_out = max(c.out_h * c.out_w * c.out_c for c in cases)
    n_w = max(c.k * (c.in_c if c.kind == "depthwise_conv2d" else c.out_c) for c in cases)
    cout = max(c.out_c for c in cases)
    scratch = max(2 * c.k * 5 for c in cases)  # ≥ SMPQ_SCRATCH_CONV2D / _FULLY_CONNECTED at any width
    rows = ",\n".join(f"    {{{KIND_CODES[c.kind]}, {c.in_h}, {c.in_w}, {c.in_c}, {c.out_h}, {c.out_w}, {c.out_c}, "
                      f"{c.kh}, {c.kw}, {c.sh}, {c.sw}, {c.pad_t}, {c.pad_l}}}" for c in cases)
    return f"""/* Written by firmware_harness/bench/kernel_bench.py. */
#define BENCH_CONV 0
#define BENCH_DEPTHWISE 1
#define BENCH_FC 2
typedef struct {{ int32_t kind, in_h, in_w, in_c, out_h, out_w, out_c, kh, kw, sh, sw, pad_t, pad_l; }} bench_case;
#define BENCH_N_CASES {len(cases)}
#define BENCH_MAX_IN {n_in}u
#define BENCH_MAX_OUT {n_out}u
#define BENCH_MAX_W {n_w}u
#define BENCH_MAX_COUT {cout}
#define BENCH_MAX_SCRATCH {scratch}u
#define BENCH_CMSIS_BUF {CMSIS_BUF}
#define BENCH_WIDTHS {{{", ".join(map(str, widths))}}}
static const bench_case BENCH_CASES[BENCH_N_CASES] = {{
{rows}
}};
"""


def _sources(with_cmsis: bool) -> tuple[list[Path], list[Path], list[Path]]:
    """(DSP-set runtime kernels, reference kernels to rename, CMSIS-NN sources)."""
    kernels, renamed = kernel_sources("cortex_m_dsp"), replaced_kernels("cortex_m_dsp")
    cmsis: list[Path] = []
    if with_cmsis:
        root = cmsis_dir() / "Source"
        if not root.is_dir():
            raise FirmwareBuildError(f"CMSIS-NN sources not found at {root.parent}; set SMPQ_CMSIS_NN "
                                     "or pass --no-cmsis")
        cmsis = [p for d in CMSIS_DIRS for p in sorted((root / d).glob("*.c"))
                 if not re.search(r"_(f16|f32)\.c$", p.name)]
    return kernels, renamed, cmsis


def build(cases: list[Case], out_dir: Path, *, with_cmsis: bool = True, widths: tuple[int, ...] = WIDTHS,
          varied_requant: bool = False) -> Path:
    """Compile and link the benchmark image for `cases` (our kernels at `widths` bits) into `out_dir`; returns the ELF.
    varied_requant: per-channel shifts -3..2, some multipliers negated, odd cases clamped inside int8 (every
    requantization form of the kernels, for bit-exactness tests; not for figures)."""
    out_dir = Path(out_dir).resolve()
    obj_dir = out_dir / "obj"
    obj_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_cases.h").write_text(_cases_header(cases, widths))
    kernels, renamed, cmsis = _sources(with_cmsis)
    inc = [f"-I{RUNTIME / 'include'}", f"-I{RUNTIME / 'src'}", f"-I{RUNTIME / 'kernels'}"]
    cmsis_inc = [f"-I{cmsis_dir() / 'Include'}"] if with_cmsis else []
    rename = [f"-Dsmpq_{p.stem}=ref_{p.stem}" for p in renamed]  # the functions the DSP set replaces
    jobs: list[tuple[Path, str, list[str]]] = []
    jobs += [(p, f"k_{p.parent.name}_{p.stem}", [*inc, *RUNTIME_FLAGS, "-Wall", "-Wextra", "-Werror"]) for p in kernels]
    jobs += [(p, f"ref_{p.stem}", [*inc, *RUNTIME_FLAGS, *rename]) for p in renamed]
    jobs += [(p, f"cmsis_{p.stem}", cmsis_inc) for p in cmsis]
    jobs += [(p, f"board_{p.stem}", [f"-I{BOARDS}"]) for p in
             (BOARDS / "common" / "startup.c", BOARDS / "common" / "systick.c", BOARDS / BOARD / "board.c")]
    main_flags = [*inc, *cmsis_inc, f"-I{BOARDS}", f"-I{out_dir}", "-Wall", "-Wextra", "-Werror"]
    if not with_cmsis:
        main_flags.append("-DBENCH_NO_CMSIS")
    if varied_requant:
        main_flags.append("-DBENCH_VARIED_REQUANT")
    jobs.append((HERE / "kernels_bench.c", "kernels_bench", main_flags))
    objs, pending = [], []
    for src, name, flags in jobs:
        obj = obj_dir / f"{name}.o"
        objs.append(obj)
        key = obj.with_suffix(".key")
        stamp = f"{src.stat().st_mtime_ns} {' '.join(flags)}"
        if src.name == "kernels_bench.c" or not (obj.is_file() and key.is_file() and key.read_text() == stamp):
            key.unlink(missing_ok=True)
            pending.append((src, obj, flags, stamp))
    for i in range(0, len(pending), 2):  # two compilers at a time
        procs = [(subprocess.Popen([CC, *FLAGS, *flags, "-c", str(src), "-o", str(obj)], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True), src, obj, stamp)
                 for src, obj, flags, stamp in pending[i:i + 2]]
        for proc, src, obj, stamp in procs:
            out, _ = proc.communicate()
            if proc.returncode != 0:
                lines = out.strip().splitlines()
                first = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "")
                raise FirmwareBuildError(f"compiling {src.name} failed: {first.strip()}")
            obj.with_suffix(".key").write_text(stamp)
    elf = out_dir / "kernels_bench.elf"
    _run([CC, *CPU_FLAGS, *LINK_FLAGS, f"-L{BOARDS / 'common'}", "-T", str(BOARDS / BOARD / "link.ld"),
          *map(str, objs), "-o", str(elf)], "linking the kernel benchmark")
    return elf


def run(elf: Path, *, icount_shift: int = 5, timeout_s: float = 600.0) -> list[Measurement]:
    """Run the image on QEMU (-icount shift=N, UART0 on stdout, semihosting exit) and parse its lines."""
    cmd = [QEMU, "-machine", "mps2-an500", "-display", "none", "-monitor", "none", "-serial", "stdio",
           "-semihosting-config", "enable=on,target=native", "-icount", f"shift={icount_shift}",
           "-kernel", str(elf)]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise FirmwareBuildError(f"{QEMU} not found: install qemu-system-arm (scripts/setup.sh does)") from None
    except subprocess.TimeoutExpired:
        raise FirmwareBuildError(f"the kernel benchmark did not finish on QEMU within {timeout_s:.0f} s") from None
    out = proc.stdout
    if "\ndone" not in out:
        raise FirmwareBuildError(f"the kernel benchmark stopped early (QEMU exit {proc.returncode}): "
                                 f"{(out.strip().splitlines() or [proc.stderr.strip()])[-1]}")
    timer = re.search(r"ticks_per_instr=(\d+)/40", out)
    if not timer:
        raise FirmwareBuildError("the kernel benchmark ran without -icount (no instruction timer)")
    per_tick = 40.0 / int(timer.group(1))
    errors = re.findall(r"^E .*$", out, re.M)
    if errors:
        raise FirmwareBuildError(f"CMSIS-NN refused a case: {errors[0]}")
    return [Measurement(int(c), impl, int(b), int(t) * per_tick, int(h))
            for c, impl, b, t, h in re.findall(r"^R (\d+) (\w+) (\d+) (\d+) (\d+)$", out, re.M)]
