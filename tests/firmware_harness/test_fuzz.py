"""CI-sized libFuzzer run of the .smpq loader + one inference (clang, ASan + UBSan).

Long runs: see firmware_harness/fuzz/README.md.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from deploy.export.smpq import export_smpq
from deploy.lower.irbuild import synthetic_graph

FUZZ_DIR = Path(__file__).resolve().parents[2] / "firmware_harness" / "fuzz"
RUNS = 100_000


def _fuzzer_available(tmp: Path) -> bool:
    if shutil.which("clang") is None or shutil.which("make") is None:
        return False
    probe = tmp / "probe.c"
    probe.write_text("#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n")
    return subprocess.run(["clang", "-fsanitize=fuzzer", str(probe), "-o", str(tmp / "probe")], capture_output=True).returncode == 0


def test_fuzz_loader_and_inference(tmp_path):
    if not _fuzzer_available(tmp_path):
        pytest.skip("clang with libFuzzer is not installed")
    build = tmp_path / "build"
    proc = subprocess.run(["make", "-C", str(FUZZ_DIR), f"BUILD={build}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for seed, hw in ((0, 8), (1, 6)):  # tiny valid blobs: every op kind, several bit widths
        export_smpq(synthetic_graph(seed, hw=hw), corpus / f"seed{seed}.smpq")
    # -rss_limit_mb=0: libFuzzer reads its peak RSS from getrusage, which on Linux keeps the peak of the
    # pytest process it was forked from (torch models: ~3 GB), so its default 2 GB limit fires at start-up;
    # -malloc_limit_mb still catches a runaway allocation by the code under test
    proc = subprocess.run([str(build / "fuzz_loader"), f"-runs={RUNS}", "-seed=1", "-max_len=4096", "-timeout=10",
                           "-rss_limit_mb=0", "-malloc_limit_mb=512", f"-artifact_prefix={tmp_path}/", str(corpus)],
                          capture_output=True, text=True, timeout=600)
    log = proc.stderr
    assert proc.returncode == 0, log[-3000:]
    done = re.search(r"Done (\d+) runs", log)
    assert done and int(done.group(1)) >= RUNS, log[-3000:]
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("leak-*"))
