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
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, tuple[float, float]]:
    """(old, new, write window): two exported run folders of the same FP model, w8a8 and w4a8, and the seconds
    after its start between which an export writes its artifacts (from the files' mtimes)."""
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
    t0 = time.time()
    proc = smpq(*_export_argv(new), cwd=fx.base, data=fx.data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = [(new / name).stat().st_mtime - t0 for name in ARTIFACTS]
    for name in ARTIFACTS:
        assert _digest(old / name) != _digest(new / name), f"{name}: old and new must differ for the test to mean anything"
    return old, new, (max(min(written) - 1.0, 0.0), max(written) + 0.5)


def test_export_killed_at_random_points_leaves_old_or_new_files(runs: tuple[Path, Path, tuple[float, float]],
                                                                tmp_path: Path) -> None:
    old, new, (first, last) = runs
    old_hash = {n: _digest(old / n) for n in ARTIFACTS}
    new_hash = {n: _digest(new / n) for n in ARTIFACTS}
    rng = np.random.default_rng(SEED)
    env = {**os.environ, "PYTHONPATH": str(TREE), "SMPQ_DATA_DIR": str(old.parent / "data"), "OMP_NUM_THREADS": "1"}
    outcomes: list[str] = []
    for i in range(KILLS):
        run = tmp_path / f"kill{i}"
        shutil.copytree(old, run)
        for name in INPUTS:  # the new policy: the export that gets killed writes the new artifacts
            shutil.copy2(new / name, run / name)
        before = {p.name for p in run.iterdir()}
        delay = float(rng.uniform(first, last))  # around the writes, which come after the imports and the lowering
        proc = subprocess.Popen([sys.executable, "-m", "deploy.cli.main", *_export_argv(run)], cwd=tmp_path, env=env,
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
        outcomes.append("mixed" if len(states) == 2 else states.pop())
        new_names = {p.name for p in run.iterdir()} - before  # only hidden temporaries may be left beside them
        assert all(n.startswith(".") and ".tmp" in n for n in new_names), new_names
    # the last folder, exported again to the end, holds exactly the new artifacts
    proc = smpq(*_export_argv(run), cwd=tmp_path, data=old.parent / "data")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {n: _digest(run / n) for n in ARTIFACTS} == new_hash
    print(f"{KILLS} kills (seed {SEED}) between {first:.1f} and {last:.1f} s: files left "
          + ", ".join(f"{outcomes.count(k)} {k}" for k in ("old", "mixed", "new")))


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
