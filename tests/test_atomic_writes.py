"""A torn artifact is impossible: `smpq-deploy export` killed (SIGKILL) at seeded random points leaves every
artifact either the old complete file or the new complete file, and no temporary file under an artifact's name.

The old artifacts are the export of a uniform w8a8 run; the new ones are those of a w4a8 policy put in the
same folder (so every old and new file differs). After the kills, one more export finishes the job.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from search.atomic import atomic_path, atomic_write_bytes, temp_name
from test_bad_input import TREE, Fixtures, smpq

FORMATS = "onnx,onnx-int,tflite,smpq,c"
ARTIFACTS = ("model.ir.json", "model.ir.npz", "model.onnx", "model.int.onnx", "model.tflite", "model.smpq",
             "model_data.c", "model_data.h")
INPUTS = ("policy.json", "qat.pt")
KILLS = 5
SEED = 20261201


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _export_argv(run: Path) -> list[str]:
    return ["export", "--run", str(run), "--formats", FORMATS, "--calib-batches", "1"]


def _parses(path: Path) -> None:
    """Each artifact reads back in its own format (a torn file would not)."""
    if path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".npz":
        with np.load(path) as npz:
            [npz[k] for k in npz.files]
    elif path.suffix == ".onnx":
        import onnx

        onnx.checker.check_model(onnx.load(str(path)))
    elif path.suffix == ".smpq":
        from firmware_harness.smpq_format import parse

        parse(path.read_bytes())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """(old, new, seconds of one export): two exported run folders of the same FP model, w8a8 and w4a8."""
    fx = Fixtures(tmp_path_factory.mktemp("atomic_fixtures"))
    old = fx.base / "old"
    shutil.copytree(fx.run, old)
    proc = smpq(*_export_argv(old), cwd=fx.base, data=fx.data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = fx.base / "new"
    shutil.copytree(fx.run, new)
    proc = smpq("search", "--model", "resnet8", "--device", "stm32h7", "--output", str(new), "--method", "uniform",
                "--uniform", "w4a8", "--qat-epochs", "0", "--no-progress", cwd=fx.base, data=fx.data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    t0 = time.perf_counter()
    proc = smpq(*_export_argv(new), cwd=fx.base, data=fx.data)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ARTIFACTS:
        assert _digest(old / name) != _digest(new / name), f"{name}: old and new must differ for the test to mean anything"
    return old, new, seconds


def test_export_killed_at_random_points_leaves_old_or_new_files(runs: tuple[Path, Path, float], tmp_path: Path) -> None:
    old, new, seconds = runs
    old_hash = {n: _digest(old / n) for n in ARTIFACTS}
    new_hash = {n: _digest(new / n) for n in ARTIFACTS}
    rng = np.random.default_rng(SEED)
    env = {**os.environ, "PYTHONPATH": str(TREE), "SMPQ_DATA_DIR": str(old.parent / "data"), "OMP_NUM_THREADS": "1"}
    mixed = 0
    for i in range(KILLS):
        run = tmp_path / f"kill{i}"
        shutil.copytree(old, run)
        for name in INPUTS:  # the new policy: the export that gets killed writes the new artifacts
            shutil.copy2(new / name, run / name)
        delay = float(rng.uniform(0.5, 1.0)) * seconds  # the writes come at the end, after imports and lowering
        proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", *_export_argv(run)], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        states = set()
        for name in ARTIFACTS:
            digest = _digest(run / name)
            assert digest in (old_hash[name], new_hash[name]), f"kill {i} after {delay:.1f} s: {name} is torn"
            _parses(run / name)
            states.add("new" if digest == new_hash[name] else "old")
        mixed += states == {"old", "new"}
        visible = {p.name for p in run.iterdir() if not p.name.startswith(".")}
        assert visible <= set(ARTIFACTS) | set(INPUTS) | {"fp.pt", "train_state.pt", "run.json"}, visible
    # the last folder, exported again to the end, holds exactly the new artifacts
    proc = smpq(*_export_argv(run), cwd=tmp_path, data=old.parent / "data")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {n: _digest(run / n) for n in ARTIFACTS} == new_hash
    print(f"{KILLS} kills (seed {SEED}, export {seconds:.1f} s): {mixed} left a mix of old and new files")


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "model.smpq"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert target.read_bytes() == b"old"
    assert not temp_name(target).exists() and [p.name for p in tmp_path.iterdir()] == ["model.smpq"]


def test_atomic_path_onto_a_folder_is_an_error_and_leaves_no_temp(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").mkdir()
    with pytest.raises(IsADirectoryError):
        atomic_write_bytes(tmp_path / "model.onnx", b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
