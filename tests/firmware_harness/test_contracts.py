"""Every contract exists once: the generated files match firmware_harness/format_spec.py, the C side
agrees with the spec when compiled, copies are gone, and the package import rules hold."""
from __future__ import annotations

import ast
import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from firmware_harness import format_spec as spec
from firmware_harness import gen_contracts, host

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "firmware_harness" / "runtime"


def test_generated_files_are_up_to_date():
    """Regenerating changes nothing (byte for byte); run `python -m firmware_harness.gen_contracts` if this fails."""
    for path, text in gen_contracts.outputs().items():
        assert path.read_bytes() == text.encode("utf-8"), f"{path.relative_to(ROOT)} is stale"
    assert gen_contracts.main(["--check"]) == 0


def test_record_layouts_are_the_documented_sizes():
    assert (spec.HEADER_BYTES, spec.TENSOR_BYTES, spec.OP_BYTES, spec.CHANNEL_BYTES) == (32, 24, 64, 9)
    assert dict((f.name, off) for f, off in spec.OP_WEIGHTED.offsets())["WEIGHTS_OFFSET"] == 32


def _compile_and_run(tmp_path: Path, body: str) -> str:
    cc = shutil.which("gcc")
    assert cc, "gcc is needed (scripts/setup.sh installs build tools)"
    src = tmp_path / "probe.c"
    src.write_text("#include <stddef.h>\n#include <stdio.h>\n#include \"smpq.h\"\n#include \"smpq_format.h\"\n"
                   f"int main(void) {{\n{body}\nreturn 0;\n}}\n")
    exe = tmp_path / "probe"
    subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", f"-I{RUNTIME / 'include'}", f"-I{RUNTIME / 'src'}",
                    str(src), "-o", str(exe)], check=True, capture_output=True, text=True)
    return subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout


def test_c_scratch_macros_equal_the_python_formula(tmp_path):
    cases = [(k, b) for k in (1, 27, 144, 576, spec.MAX_K) for b in range(1, 9)]
    body = "\n".join(f'printf("%llu %llu\\n", (unsigned long long)SMPQ_SCRATCH_CONV2D({k}u, {b}u), '
                     f'(unsigned long long)SMPQ_SCRATCH_FULLY_CONNECTED({k}u, {b}u));' for k, b in cases)
    got = [tuple(map(int, line.split())) for line in _compile_and_run(tmp_path, body).splitlines()]
    assert got == [(spec.scratch_bytes("conv2d", k, b), spec.scratch_bytes("fully_connected", k, b)) for k, b in cases]
    assert spec.scratch_bytes("depthwise_conv2d", 9, 4) == 0


def test_ctypes_model_matches_the_compiled_struct(tmp_path):
    body = 'printf("%zu\\n", sizeof(smpq_model));\n' + "\n".join(
        f'printf("%zu\\n", offsetof(smpq_model, {f.name}));' for f in spec.MODEL_STRUCT)
    size, *offsets = map(int, _compile_and_run(tmp_path, body).split())
    assert size == ctypes.sizeof(host._Model)
    assert offsets == [getattr(host._Model, f.name).offset for f in spec.MODEL_STRUCT]


def test_c_status_names_and_op_kinds_come_from_the_spec(tmp_path):
    lib = host.library()
    lib.smpq_status_name.restype = ctypes.c_char_p
    lib.smpq_status_name.argtypes = [ctypes.c_int]
    for s in spec.STATUSES:
        assert lib.smpq_status_name(s.code).decode() == s.name
    assert lib.smpq_status_name(min(spec.ERRORS) - 1).decode() == "E_UNKNOWN"
    lib.smpq_op_kind_name.restype = ctypes.c_char_p
    lib.smpq_op_kind_name.argtypes = [ctypes.c_int]
    assert [lib.smpq_op_kind_name(k.code).decode() for k in spec.OP_KIND_TABLE] == list(spec.OP_KINDS)
    assert lib.smpq_op_kind_name(0).decode() == lib.smpq_op_kind_name(len(spec.OP_KINDS) + 1).decode() == "?"
    body = "\n".join(f'printf("%d\\n", (int)SMPQ_OP_{k.name.upper()});' for k in spec.OP_KIND_TABLE)
    body += "\n" + "\n".join(f'printf("%d\\n", (int)SMPQ_{s.name});' for s in spec.STATUSES)
    got = list(map(int, _compile_and_run(tmp_path, body).split()))
    assert got == [k.code for k in spec.OP_KIND_TABLE] + [s.code for s in spec.STATUSES]


def test_op_kind_vocabularies_agree():
    """The IR runs the format's kinds; search's own vocabulary (it may not import the format) names the weighted ones."""
    from deploy.devices import profiles as devices
    from deploy.lower import ir
    from search.budget import OP_TYPES, QUANTIZABLE

    assert tuple(ir.OP_KINDS) == tuple(spec.OP_KINDS)
    assert QUANTIZABLE == spec.WEIGHTED and OP_TYPES[:len(QUANTIZABLE)] == QUANTIZABLE
    assert devices.OpType.__args__ == OP_TYPES  # type: ignore[attr-defined]


def _sources(*folders: str, suffixes: tuple[str, ...] = (".py",)) -> list[Path]:
    return [p for f in folders for p in (ROOT / f).rglob("*") if p.suffix in suffixes and "build" not in p.parts]


# A definition of each former copy: (what, regex). Each may match only in the spec and generated files.
DEFINITIONS = [
    ("record sizes", r"(HEADER_BYTES|TENSOR_RECORD_BYTES|OP_RECORD_BYTES|OP_BYTES)\s*=\s*\d|Struct\(\"<4sHH"),
    ("record sizes (C)", r"#define SMPQ_(HEADER_SIZE|TENSOR_RECORD|OP_RECORD)\b"),
    ("channel bytes", r"(BYTES_PER_OUT_CHANNEL|CHANNEL_BYTES|BIAS_BYTES)\s*=\s*\d|#define SMPQ_CHANNEL_BYTES"),
    ("limits", r"(MAX_K|MAX_DW_TAPS|CONV_TILE|MAX_WEIGHT_BYTES)\s*=\s*\d|#define (SMPQ_)?(MAX_K|DW_MAX_TAPS|TILE|MAX_DW_TAPS)\b"),
    ("scratch formula", r"CONV_TILE \+|SMPQ_TILE \+"),
    ("op kinds", r"\"requantize\":\s*8|SMPQ_OP_REQUANTIZE\s*=|\"requantize\"\)\s*$|return \"requantize\""),
    ("error table", r"\"E_WEIGHTS_SHARED\"\s*[:}]|-20:\s*\"|SMPQ_E_WEIGHTS_SHARED\s*="),
]
_COMMENTS = {".py": re.compile(r'""".*?"""|#[^\n]*', re.S), ".c": re.compile(r"/\*.*?\*/|//[^\n]*", re.S)}


def _code(path: Path) -> str:
    """The file without comments (and, for Python, without triple-quoted strings): definitions, not mentions."""
    return _COMMENTS[".c" if path.suffix in (".c", ".h") else ".py"].sub("", path.read_text(encoding="utf-8"))


SPEC_FILES = {ROOT / "firmware_harness" / "format_spec.py", gen_contracts.FORMAT_H, gen_contracts.TYPES_H}


@pytest.mark.parametrize("what,pattern", DEFINITIONS, ids=[d[0] for d in DEFINITIONS])
def test_each_contract_is_defined_once(what, pattern):
    rx = re.compile(pattern, re.M)
    files = _sources("search", "deploy", "firmware_harness", "bench", suffixes=(".py", ".c", ".h"))
    hits = sorted(str(p.relative_to(ROOT)) for p in files if p not in SPEC_FILES and rx.search(_code(p)))
    assert hits == [], f"{what} defined outside firmware_harness/format_spec.py: {hits}"


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package,forbidden", [("search", {"deploy", "firmware_harness"}),
                                               ("firmware_harness", {"deploy", "search"})])
def test_dependencies_point_one_way(package, forbidden):
    bad = {str(p.relative_to(ROOT)): sorted(_imports(p) & forbidden) for p in _sources(package)}
    assert {k: v for k, v in bad.items() if v} == {}
