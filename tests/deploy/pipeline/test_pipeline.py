"""The one command, end to end at toy scale up to the export (--to export; tests/hil/test_pipeline_board.py runs
the board stages): train → search + QAT → export → host verification → report.json;
a second invocation skips the finished stages and reproduces the verification."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ARGS = ["--device", "qemu-mps2-an500", "--model", "resnet8", "--subset", "512", "--no-progress", "--to", "export",
        "--set", "train.epochs=1", "--set", "search.epochs=1", "--set", "search.warmup_epochs=1",
        "--set", "qat.epochs=1", "--set", "search.w_bits=[2,4,8]", "--set", "search.a_bits=[4,8]",
        "--set", "search.shapley.permutations=1", "--set", "harness.samples=40"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pipeline") / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "deploy.cli.main", *ARGS, "--output", str(out)], env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_report_shows_every_backend_bit_exact_and_the_budget_met(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    v = report["host_verification"]
    assert v["samples"] == 40 and v["tflm_samples"] == 40
    assert v["c_runtime_bit_exact"] and v["onnx_int_bit_exact"] and v["tflm_bit_exact"]
    assert v["c_runtime_accuracy"] == v["reference_accuracy"]
    assert 0.5 <= v["onnx_qdq_top1_agreement"] <= 1 and 0 <= v["onnx_qdq_within_1lsb"] <= 1
    assert v["tflm_arena_bytes"] > 0
    assert all(entry["ok"] for entry in report["budget"].values())
    # the cost model's flash and SRAM figures are the blob's size and arena, and the blob is checked too
    deployed = report["deployed"]
    assert report["budget"]["flash_bytes"]["value"] == deployed["flash_bytes"]["value"] == report["artifact_bytes"]["model.smpq"]
    assert report["budget"]["sram_bytes"]["value"] == deployed["sram_bytes"]["value"]
    assert deployed["flash_bytes"]["ok"] and deployed["sram_bytes"]["ok"]
    for name in ("model.onnx", "model.int.onnx", "model.tflite", "model.smpq", "model_data.c", "qat.pt"):
        assert report["artifact_bytes"][name] > 0, name
    policy = json.loads((run_dir / "policy.json").read_text())
    assert policy["model"] == "resnet8" and policy["seed"] == 0


def test_second_invocation_skips_finished_stages(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deploy.cli.main import main

    before = json.loads((run_dir / "report.json").read_text())
    mtimes = {p.name: p.stat().st_mtime for p in run_dir.iterdir() if p.suffix in (".pt", ".onnx", ".tflite", ".smpq")}
    assert main([*ARGS, "--output", str(run_dir)]) == 0
    after = json.loads((run_dir / "report.json").read_text())
    assert set(after["stage_seconds"]) == {"verify"}
    assert after["host_verification"] == before["host_verification"]
    assert {p: (run_dir / p).stat().st_mtime for p in mtimes} == mtimes


def test_blob_of_an_older_format_is_re_exported(run_dir: Path) -> None:
    """After an upgrade of the .smpq format, the pipeline re-exports instead of failing in verification."""
    from deploy.cli.main import main
    from firmware_harness.smpq_format import VERSION, parse

    blob = bytearray((run_dir / "model.smpq").read_bytes())
    blob[4:6] = (VERSION - 1).to_bytes(2, "little")
    (run_dir / "model.smpq").write_bytes(bytes(blob))
    assert main([*ARGS, "--output", str(run_dir)]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["stage_seconds"]) == {"export", "verify"}
    assert parse((run_dir / "model.smpq").read_bytes()).version == VERSION
    assert report["host_verification"]["c_runtime_bit_exact"]
