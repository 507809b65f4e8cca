"""search.allocator: with freed memory kept (the default), re-allocating a big tensor no longer page-faults
every page, and a masked evaluation computes bit for bit what it computes under glibc's default."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                                reason="search.allocator tunes glibc's malloc only (a no-op elsewhere)")

FAULTS = """
import resource, torch, search
from search.nn.models import build_model
from search.supernet import Supernet
torch.manual_seed(0)
sn = Supernet(build_model("resnet8", (3, 32, 32), 10), (2, 4, 8), (4, 8), first_last_8bit=True, seed=0)
x = torch.randn(256, 3, 32, 32)  # activations of 16 MB, as in a Shapley round's batch
with sn.masked(bn="batch"):
    sn(x)
    sn(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        sn(x)
print(search.KEEPING_FREED_MEMORY, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

LOGITS = """
import hashlib, torch
from search.nn.models import build_model
from search.supernet import Supernet, IncrementalForward
torch.manual_seed(0)
sn = Supernet(build_model("resnet8", (3, 32, 32), 10), (2, 4, 8), (4, 8), first_last_8bit=True, seed=0)
x = torch.randn(64, 3, 32, 32)
h = hashlib.sha256()
with sn.masked(bn="batch"):
    fwd = IncrementalForward(sn)
    mask = torch.ones(sn.num_players)
    for p in torch.randperm(sn.num_players, generator=torch.Generator().manual_seed(1))[:12]:
        mask[p] = 0.0
        sn.set_mask(mask)
        h.update(fwd(x).numpy().tobytes())
print(h.hexdigest())
"""


def _run(code: str, allocator: str) -> str:
    env = {**os.environ, "SMPQ_ALLOCATOR": allocator, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_repeated_masked_passes_reuse_memory_instead_of_page_faulting() -> None:
    kept, kept_faults = _run(FAULTS, "keep").split()
    default, default_faults = _run(FAULTS, "default").split()
    assert (kept, default) == ("True", "False")
    # glibc's default maps the big activations anew in every pass (≈ 3e5 faults measured); kept: 0–4e3
    assert int(kept_faults) * 10 < int(default_faults)


def test_masked_evaluations_are_bit_identical_under_both_settings() -> None:
    assert _run(LOGITS, "keep") == _run(LOGITS, "default")


def test_an_unknown_setting_is_refused_in_one_line() -> None:
    env = {**os.environ, "SMPQ_ALLOCATOR": "jemalloc", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", "import search"], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "SMPQ_ALLOCATOR" in lines[0] and "keep, default" in lines[0]
