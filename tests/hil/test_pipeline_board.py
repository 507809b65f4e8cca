"""`smpq-deploy run` end to end on the emulated board, at toy scale: FP → search + QAT → export → firmware →
QEMU measurement → report, with a flash budget the argmax policy need not meet.

Also: a new --device in the same --output reruns what depends on it (not FP training), and (slow) a run
killed during the search and again during the measurement ends, after --resume, with the same
policy.json and board.json as the uninterrupted run.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.hil.conftest import require_tools

pytestmark = pytest.mark.hil

ARGS = ["--model", "resnet8", "--subset", "256", "--no-progress", "--set", "model.pretrained=false",  # train FP too
        "--set", "train.epochs=1", "--set", "search.epochs=1", "--set", "search.warmup_epochs=0",
        "--set", "qat.epochs=1", "--set", "search.w_bits=[2,4,8]", "--set", "search.a_bits=[8]",
        "--set", "search.shapley.permutations=1", "--set", "harness.samples=16", "--set", "deploy.formats=[smpq,c]",
        "--set", "budgets.flash_bytes=48KB"]
QEMU = ["--device", "qemu-mps2-an500"]
#: board.json's wall-clock fields (host↔board rates and seconds per image), left out of comparisons; and its
#: SysTick counts, compared within TICK_JITTER: two uninterrupted measurements of one firmware on QEMU differ by
#: ±1–2 ticks per layer and window (the timer read is not aligned with -icount's clock), everything else is equal.
BOARD_WALL_CLOCK = ("transfer", "latency", "layers")
TICK_JITTER = 3
#: policy.json's wall-clock fields (seconds per step), left out of comparisons.
POLICY_WALL_CLOCK = ("timings_s",)


def smpq(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SMPQ_TRACEBACK", None)
    return subprocess.Popen([sys.executable, "-m", "deploy.cli.main", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: int = 900) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def stages(run: Path) -> dict[str, Any]:
    path = run / "stages.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def kill_when(proc: subprocess.Popen, run: Path, stage: str, after_s: float) -> None:
    """SIGKILL the run (and QEMU, its child) `after_s` after `stage` started; the stage must not have finished."""
    deadline = time.monotonic() + 900
    while stage not in stages(run):
        assert proc.poll() is None, f"the run ended before stage {stage} started"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(after_s)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not stages(run)[stage]["done"], f"stage {stage} finished before the kill: kill earlier"


def without(doc: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in keys}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tools()
    out = tmp_path_factory.mktemp("pipeline-board") / "run"
    finish(smpq(*ARGS, *QEMU, "--output", str(out)))
    return out


def test_every_artifact_exists_and_agrees(run_dir: Path) -> None:
    for name in ("run.json", "stages.json", "fp.pt", "policy.json", "qat.pt", "model.ir.json", "model.smpq",
                 "model_data.c", "firmware.elf", "board.json", "report.json", "report.html"):
        assert (run_dir / name).is_file(), name
    book = stages(run_dir)
    assert set(book) == {"train", "search", "export", "firmware", "board"} and all(r["done"] for r in book.values())
    policy = json.loads((run_dir / "policy.json").read_text())
    assert policy["budget"] and all(entry["ok"] for entry in policy["budget"].values())
    assert policy["omega"]["flash_bytes"] <= 48 * 1024
    board = json.loads((run_dir / "board.json").read_text())
    assert board["device"] == "qemu-mps2-an500" and board["samples"] == 16
    assert board["bit_exact"] and board["accuracy"]["mismatched_values"] == 0  # on-board outputs = integer reference
    assert board["latency"]["unit"] == "instructions" and board["latency"]["per_inference"] > 0
    report = json.loads((run_dir / "report.json").read_text())
    assert report["board"]["bit_exact"] is True and report["board"]["samples"] == 16
    assert report["board"]["latency"] == board["latency"]["per_inference"]
    assert report["host_verification"]["c_runtime_bit_exact"]
    assert set(report["stage_seconds"]) == {"train", "search", "export", "firmware", "board", "verify"}


def test_new_device_reruns_what_depends_on_it_not_training(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = stages(run)
    fp_mtime = (run / "fp.pt").stat().st_mtime_ns
    finish(smpq(*ARGS, "--device", "stm32h7", "--output", str(run)))
    after = stages(run)
    assert after["train"] == before["train"] and (run / "fp.pt").stat().st_mtime_ns == fp_mtime
    for stage in ("search", "export", "firmware"):
        assert after[stage]["key"] != before[stage]["key"] and after[stage]["done"], stage
    assert "board" not in after and not (run / "board.json").exists()  # stm32h7 without --port: not connected
    policy = json.loads((run / "policy.json").read_text())
    assert policy["settings"]["latency_model"] != json.loads((run_dir / "policy.json").read_text())["settings"]["latency_model"]
    report = json.loads((run / "report.json").read_text())
    assert set(report["stage_seconds"]) == {"search", "export", "firmware", "verify"}
    assert "not connected" in report["board_run"] and report["board"] is None
    assert json.loads((run / "run.json").read_text())["device"] == "stm32h7"


@pytest.mark.slow
def test_killed_during_search_and_measure_resumes_to_the_same_results(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("fp.pt", "train_state.pt"):  # the same FP training (its key matches): no need to train again
        shutil.copy2(run_dir / name, run / name)
    (run / "stages.json").write_text(json.dumps({"train": stages(run_dir)["train"]}))
    argv = [*ARGS, *QEMU, "--output", str(run)]
    kill_when(smpq(*argv), run, "search", after_s=8)
    kill_when(smpq(*argv, "--resume"), run, "board", after_s=3)
    out = finish(smpq(*argv, "--resume"))
    assert "resuming: stage(s) board" in out
    for name, wall_clock in (("policy.json", POLICY_WALL_CLOCK), ("board.json", BOARD_WALL_CLOCK)):
        got, want = (json.loads((d / name).read_text().replace(str(d), "RUN")) for d in (run, run_dir))
        assert without(got, wall_clock) == without(want, wall_clock), name
    got, want = (json.loads((d / "board.json").read_text()) for d in (run, run_dir))
    assert [{k: v for k, v in op.items() if k not in ("ticks", "instructions", "share")} for op in got["layers"]] == \
           [{k: v for k, v in op.items() if k not in ("ticks", "instructions", "share")} for op in want["layers"]]
    assert all(abs(a["ticks"] - b["ticks"]) <= TICK_JITTER for a, b in zip(got["layers"], want["layers"]))
    assert all(abs(a - b) <= TICK_JITTER for a, b in zip(got["latency"]["window_ticks"], want["latency"]["window_ticks"]))
    assert got["latency"]["unit"] == want["latency"]["unit"] and got["latency"]["iterations"] == want["latency"]["iterations"]
