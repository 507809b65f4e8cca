"""The bad-input catalogue: every case runs `smpq-deploy` in a subprocess and must end in one line.

Each :class:`Case` is an id, an argv, the substrings its one error line must hold (the offending
file, key or value) and an optional ``setup(tmp, fx)`` that prepares files in the case's folder.
Every case asserts: exit status 2, no traceback, exactly one non-empty stderr line starting with
``error:`` that holds every expected substring, and that every file in the folder before the
command is still there, byte for byte (but ``stages.json``, where ``run`` records the stage it
started). ``{tmp}`` in argv is the case's folder, ``{data}`` the tiny CIFAR-10-shaped dataset every
case gets through ``$SMPQ_DATA_DIR``.

Adding a case is one line in :data:`CASES`. ``fx.run`` is a tiny finished run folder (resnet8 on
the tiny dataset, uniform w8a8, exported to ``.smpq``), built once, on first use.
``SMPQ_TREE=/path/to/checkout`` runs the catalogue against another checkout (a baseline count).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
TREE = Path(os.environ.get("SMPQ_TREE", ROOT))
N_TRAIN, N_TEST, SIDE = 160, 40, 32
CASE_TIMEOUT_S = 150  # a case still running by then has not refused its input (it would fail anyway)


def smpq(*argv: str, cwd: Path, data: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`smpq-deploy ARGV` as a fresh process (the console script's entry point), tracebacks off."""
    env = {k: v for k, v in os.environ.items() if k != "SMPQ_TRACEBACK"}
    env.update(PYTHONPATH=str(TREE), SMPQ_DATA_DIR=str(data), OMP_NUM_THREADS="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "deploy.cli.main", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def write_cifar(root: Path, x_train: np.ndarray | None = None, y_train: np.ndarray | None = None,
                n_train: int = N_TRAIN, n_test: int = N_TEST, seed: int = 0) -> Path:
    """A CIFAR-10-shaped dataset (uint8 NHWC 'x', int labels 'y') under root/cifar10; returns root."""
    rng = np.random.default_rng(seed)
    d = root / "cifar10"
    d.mkdir(parents=True, exist_ok=True)
    for name, n, x, y in (("train", n_train, x_train, y_train), ("test", n_test, None, None)):
        x = rng.integers(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8) if x is None else x
        y = (np.arange(n) % 10).astype(np.int64) if y is None else y
        np.savez(d / f"{name}.npz", x=x, y=y)
    return root


class Fixtures:
    """Shared, lazily built inputs: the tiny dataset and a tiny finished run folder."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = write_cifar(base / "data")
        self._run: Path | None = None

    @property
    def run(self) -> Path:
        """`smpq-deploy run` of resnet8 for stm32h7 on the tiny dataset: fp.pt, policy.json (uniform w8a8), qat.pt,
        model.ir.*, model.smpq, run.json, report.json."""
        if self._run is None:
            run = self.base / "run"
            argv = [part.replace("{tmp}/run", str(run)) for part in RUN_FX]
            proc = smpq(*argv, cwd=self.base, data=self.data)
            assert proc.returncode == 0, f"building the run fixture: {argv}\n{proc.stderr[-3000:]}"
            self._run = run
        return self._run


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    expect: tuple[str, ...]
    setup: Callable[[Path, Fixtures], None] | None = None


# ---- setup helpers: each prepares files inside the case folder -------------------------------------------------

def copy_run(tmp: Path, fx: Fixtures, name: str = "run") -> Path:
    dst = tmp / name
    shutil.copytree(fx.run, dst)
    return dst


def run_with(edit: Callable[[Path], None]) -> Callable[[Path, Fixtures], None]:
    """Setup: a copy of the finished run folder at {tmp}/run, then `edit(run)`."""
    return lambda tmp, fx: edit(copy_run(tmp, fx))


def cifar_with(**arrays: np.ndarray) -> Callable[[Path, Fixtures], None]:
    """Setup: a CIFAR-10 folder at {tmp}/d whose train.npz holds `arrays` instead of the good ones."""
    def setup(tmp: Path, fx: Fixtures) -> None:
        write_cifar(tmp / "d")
        good = dict(np.load(tmp / "d" / "cifar10" / "train.npz"))
        np.savez(tmp / "d" / "cifar10" / "train.npz", **{**good, **arrays})
    return setup


def train_npz_bytes(data: bytes | Callable[[bytes], bytes]) -> Callable[[Path, Fixtures], None]:
    """Setup: a CIFAR-10 folder at {tmp}/d whose train.npz is `data` (or `data(good bytes)`)."""
    def setup(tmp: Path, fx: Fixtures) -> None:
        write_cifar(tmp / "d")
        f = tmp / "d" / "cifar10" / "train.npz"
        f.write_bytes(data(f.read_bytes()) if callable(data) else data)
    return setup


def object_npz(tmp: Path, fx: Fixtures) -> None:
    write_cifar(tmp / "d")
    np.savez(tmp / "d" / "cifar10" / "train.npz", x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4, np.int64))


def wrong_keys_npz(tmp: Path, fx: Fixtures) -> None:
    write_cifar(tmp / "d")
    good = np.load(tmp / "d" / "cifar10" / "train.npz")
    np.savez(tmp / "d" / "cifar10" / "train.npz", images=good["x"], labels=good["y"])


def image_tree(bad: bytes | None) -> Callable[[Path, Fixtures], None]:
    """Setup: an image folder {tmp}/img with two classes of PNGs; `bad` becomes the bytes of cls1/bad.png."""
    def setup(tmp: Path, fx: Fixtures) -> None:
        from PIL import Image

        rng = np.random.default_rng(0)
        for c in ("cls0", "cls1"):
            (tmp / "img" / c).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp / "img" / c / f"{i}.png")
        if bad is not None:
            good = (tmp / "img" / "cls1" / "0.png").read_bytes()
            (tmp / "img" / "cls1" / "bad.png").write_bytes(bad if bad else good[: len(good) // 2])
    return setup


def write(name: str, text: str | bytes) -> Callable[[Path, Fixtures], None]:
    def setup(tmp: Path, fx: Fixtures) -> None:
        p = tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


def mkdir(name: str) -> Callable[[Path, Fixtures], None]:
    return lambda tmp, fx: (tmp / name).mkdir(parents=True)


def policy_with_unknown_layer(run: Path) -> None:
    doc = json.loads((run / "policy.json").read_text())
    doc["layers"][0]["name"] = "no_such_layer"
    (run / "policy.json").write_text(json.dumps(doc))


def truncate(name: str, keep: float = 0.5) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: int(len(data) * keep)])
    return edit


def remove(name: str) -> Callable[[Path], None]:
    return lambda run: (run / name).unlink()


def replace_with_dir(name: str) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        (run / name).unlink(missing_ok=True)
        (run / name).mkdir()
        (run / name / "keep").write_text("x")
    return edit


def both(*edits: Callable[[Path], None]) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        for e in edits:
            e(run)
    return edit


def bad_tflite(kind: str) -> Callable[[Path, Fixtures], None]:
    """Setup: {tmp}/m.tflite, the MLPerf Tiny IC model damaged as tflite_fixtures.BAD_TFLITE[kind] says."""
    def setup(tmp: Path, fx: Fixtures) -> None:
        from tests.tflite_fixtures import BAD_TFLITE, IC

        (tmp / "m.tflite").write_bytes(BAD_TFLITE[kind](IC.read_bytes()))
    return setup


R8 = ("--model", "resnet8")
TRAIN = ("train", *R8, "--epochs", "1", "--batch-size", "32", "--no-progress", "--output", "{tmp}/out")
SEARCH = ("search", *R8, "--no-progress", "--output", "{tmp}/out")
EXPORT_RUN = ("export", "--run", "{tmp}/run", "--formats", "smpq", "--calib-batches", "1")
QUICK = ("--subset", "64", "--set", "train.epochs=1", "--set", "search.method=uniform", "--set", "qat.epochs=1",
         "--set", "deploy.formats=[smpq]", "--set", "harness.samples=8", "--no-progress")  # (if a stage does run)
RUN_R8 = ("run", *R8, "--device", "stm32h7", *QUICK, "--output", "{tmp}/run")
#: The settings of `fx.run`: run again on a copy, every stage's key matches, so no stage reruns.
RUN_FX = ("run", *R8, "--device", "stm32h7", "--output", "{tmp}/run", "--no-progress",
          *(f"--set={s}" for s in ("train.epochs=1", "train.batch_size=32", "search.method=uniform", "qat.epochs=1",
                                   "deploy.formats=[smpq]", "harness.samples=8")))
MAX = ("--device", "max78000")

CASES: list[Case] = [
    # --- the device's limits are hard -------------------------------------------------------------------------
    Case("budget-flash-over-device", (*SEARCH, *MAX, "--budget-flash", "10MB"), ("--budget-flash", "max78000")),
    Case("budget-sram-over-device", (*SEARCH, *MAX, "--budget-sram", "10MB"), ("--budget-sram", "max78000")),
    Case("budget-flash-nan", (*SEARCH, "--budget-flash", "nan"), ("--budget-flash", "nan")),
    Case("budget-bops-nan", (*SEARCH, "--budget-bops", "nan"), ("--budget-bops", "nan")),
    Case("budget-bops-negative", (*SEARCH, "--budget-bops=-5M"), ("--budget-bops", "-5M")),
    Case("budget-flash-in-ms", (*SEARCH, "--budget-flash", "64ms"), ("--budget-flash", "64ms")),
    Case("budget-latency-in-bops-units", (*SEARCH, "--budget-latency-ms", "1G"), ("--budget-latency-ms", "1G")),
    Case("set-latency-in-bops-units", (*SEARCH, "--set", "budgets.latency_ms=1G"), ("budgets.latency_ms", "1G")),
    Case("set-flash-budget-over-device", (*SEARCH, *MAX, "--set", "budgets.flash_bytes=10MB"),
         ("budgets.flash_bytes", "max78000")),
    Case("w-bits-device-cannot-run", (*SEARCH, *MAX, "--w-bits", "3,5", "--a-bits", "8"), ("--w-bits", "max78000")),
    Case("a-bits-device-cannot-run", (*SEARCH, *MAX, "--w-bits", "4", "--a-bits", "4"), ("--a-bits", "max78000")),
    Case("uniform-flag-device-cannot-run", (*SEARCH, *MAX, "--method", "uniform", "--uniform", "w3a4"),
         ("--uniform", "max78000")),
    Case("uniform-set-device-cannot-run", (*SEARCH, *MAX, "--method", "uniform", "--set", "search.uniform.w_bits=3"),
         ("search.uniform.w_bits", "max78000")),
    Case("w-bits-out-of-range", (*SEARCH, "--method", "uniform", "--w-bits", "9"), ("--w-bits", "9")),
    Case("w-bits-zero", (*SEARCH, "--w-bits", "0,4"), ("--w-bits", "0")),
    Case("w-bits-not-numbers", (*SEARCH, "--w-bits", "a,b"), ("--w-bits", "a,b")),
    Case("uniform-malformed", (*SEARCH, "--method", "uniform", "--uniform", "w4"), ("--uniform", "w4")),
    # --- run checks every stage's settings before the first one starts (tests/deploy/pipeline/test_run_stages.py: reruns) ----
    Case("run-budget-impossible", ("run", *R8, "--device", "stm32h7", *QUICK, "--set", "search.method=smpq",
                                   "--set", "budgets.flash_bytes=2KB", "--output", "{tmp}/out"),
         ("flash", "smallest achievable")),
    Case("run-uniform-over-budget", ("run", *R8, "--device", "stm32h7", *QUICK, "--set", "budgets.flash_bytes=20KB",
                                     "--output", "{tmp}/out"), ("uniform W8A8", "flash")),
    Case("run-unknown-stage", (*RUN_R8, "--from", "deploy"), ("--from deploy", "search")),
    Case("run-stages-reversed", (*RUN_R8, "--from", "export", "--to", "train"), ("--from export", "--to train")),
    Case("run-resume-nothing-started", ("run", *R8, "--device", "stm32h7", *QUICK, "--resume", "--output", "{tmp}/out"),
         ("--resume", "stages.json")),
    Case("run-policy-corrupt", RUN_FX, ("policy.json",), run_with(lambda run: (run / "policy.json").write_text("{oops"))),
    Case("run-blob-truncated", RUN_FX, ("model.smpq",), run_with(truncate("model.smpq"))),
    # --- data is validated when it loads ----------------------------------------------------------------------
    Case("data-labels-shorter", (*TRAIN, "--data-dir", "{tmp}/d"), ("train.npz", "labels"),
         cifar_with(y=np.zeros(N_TRAIN - 10, np.int64))),
    Case("data-float-pixels", (*TRAIN, "--data-dir", "{tmp}/d"), ("train.npz", "uint8"),
         cifar_with(x=np.random.default_rng(0).random((N_TRAIN, SIDE, SIDE, 3)).astype(np.float32))),
    Case("data-labels-out-of-range", (*TRAIN, "--data-dir", "{tmp}/d"), ("train.npz", "label", "10"),
         cifar_with(y=np.full(N_TRAIN, 10, np.int64))),
    Case("data-labels-negative", (*TRAIN, "--data-dir", "{tmp}/d"), ("train.npz", "label", "-1"),
         cifar_with(y=-np.ones(N_TRAIN, np.int64))),
    Case("data-labels-float", (*TRAIN, "--data-dir", "{tmp}/d"), ("train.npz", "label"),
         cifar_with(y=np.full(N_TRAIN, 0.5))),
    Case("data-single-class", (*TRAIN, "--data-dir", "{tmp}/d"), ("train.npz", "class"),
         cifar_with(y=np.zeros(N_TRAIN, np.int64))),
    Case("data-nchw", (*TRAIN, "--data-dir", "{tmp}/d"), ("train.npz", "NHWC"),
         cifar_with(x=np.zeros((N_TRAIN, 3, SIDE, SIDE), np.uint8))),
    Case("data-flat", (*TRAIN, "--data-dir", "{tmp}/d"), ("train.npz", "NHWC"),
         cifar_with(x=np.zeros((N_TRAIN, 3 * SIDE * SIDE), np.uint8))),
    Case("data-npz-truncated", (*TRAIN, "--data-dir", "{tmp}/d"), ("train.npz",),
         train_npz_bytes(lambda good: good[: len(good) // 2])),
    Case("data-npz-empty", (*TRAIN, "--data-dir", "{tmp}/d"), ("train.npz",), train_npz_bytes(b"")),
    Case("data-npz-random-bytes", (*TRAIN, "--data-dir", "{tmp}/d"), ("train.npz",),
         train_npz_bytes(np.random.default_rng(1).bytes(4096))),
    Case("data-npz-object-array", (*TRAIN, "--data-dir", "{tmp}/d"), ("train.npz",), object_npz),
    Case("data-npz-wrong-keys", (*TRAIN, "--data-dir", "{tmp}/d"), ("train.npz", "'x'"), wrong_keys_npz),
    Case("data-dir-missing", (*TRAIN, "--data-dir", "{tmp}/nope"), ("nope",)),
    Case("data-dir-is-file", (*TRAIN, "--data-dir", "{tmp}/f"), ("f",), write("f", "x")),
    Case("imagefolder-unreadable-image", (*TRAIN, "--dataset", "imagefolder", "--data-dir", "{tmp}/img"),
         ("bad.png",), image_tree(b"not an image at all")),
    Case("imagefolder-truncated-image", (*TRAIN, "--dataset", "imagefolder", "--data-dir", "{tmp}/img"),
         ("bad.png",), image_tree(b"")),
    Case("imagefolder-missing", (*TRAIN, "--dataset", "imagefolder", "--data-dir", "{tmp}/nope"), ("nope",)),
    Case("dataset-unknown", (*TRAIN, "--dataset", "cifar100"), ("cifar100",)),
    # --- training settings ------------------------------------------------------------------------------------
    Case("train-lr-inf", (*TRAIN, "--lr", "inf"), ("lr", "inf")),
    Case("train-lr-nan", (*TRAIN, "--lr", "nan"), ("lr", "nan")),
    Case("train-lr-zero", (*TRAIN, "--lr", "0"), ("lr", "0")),
    Case("train-diverges", (*TRAIN, "--lr", "1e30", "--warmup-epochs", "0"), ("diverged",)),
    Case("train-epochs-zero", (*TRAIN, "--epochs", "0"), ("epochs", "0")),
    Case("train-epochs-negative", (*TRAIN, "--epochs", "-3"), ("epochs", "-3")),
    Case("train-batch-size-zero", (*TRAIN, "--batch-size", "0"), ("batch_size", "0")),
    Case("train-momentum-one", (*TRAIN, "--momentum", "1"), ("momentum", "1")),
    Case("train-subset-zero", (*TRAIN, "--subset", "0"), ("subset", "0")),
    Case("train-subset-larger-than-split", (*TRAIN, "--subset", "100000"), ("subset", "100000")),
    Case("train-seed-not-int", (*TRAIN, "--seed", "abc"), ("--seed", "abc")),
    Case("train-seed-negative", (*TRAIN, "--seed", "-1"), ("seed", "-1")),
    Case("set-seed-not-int", (*TRAIN, "--set", "seed=abc"), ("seed", "abc")),
    Case("train-init-dir", (*TRAIN, "--init", "{tmp}/initdir"), ("initdir", "folder"), mkdir("initdir")),
    Case("train-init-missing", (*TRAIN, "--init", "{tmp}/nope.pt"), ("nope.pt",)),
    Case("train-init-corrupt", (*TRAIN, "--init", "{tmp}/bad.pt"), ("bad.pt",), write("bad.pt", b"\x00garbage")),
    Case("width-mult-zero", ("train", "--model", "mbv2", "--set", "model.kwargs.mbv2.width_mult=0", "--epochs", "1",
                             "--output", "{tmp}/out"), ("width_mult", "0")),
    Case("width-mult-not-a-number", ("train", "--model", "mbv2", "--set", "model.kwargs.mbv2.width_mult=abc",
                                     "--epochs", "1", "--output", "{tmp}/out"), ("width_mult", "abc")),
    Case("model-unknown", (*TRAIN[:1], "--model", "resnet9"), ("resnet9",)),
    # --- output locations -------------------------------------------------------------------------------------
    Case("output-is-a-file", (*TRAIN[:-1], "{tmp}/taken"), ("taken",), write("taken", "keep me")),
    Case("output-under-a-file", (*TRAIN[:-1], "{tmp}/taken/sub"), ("taken",), write("taken", "keep me")),
    Case("output-on-pseudo-fs", (*TRAIN[:-1], "/proc/smpq-run"), ("/proc/smpq-run",)),
    Case("output-is-dev-full", (*TRAIN[:-1], "/dev/full"), ("/dev/full",)),
    Case("train-artifact-is-a-dir", TRAIN, ("fp.pt",), lambda tmp, fx: (tmp / "out" / "fp.pt" / "keep").mkdir(parents=True)),
    Case("export-artifact-is-a-dir", EXPORT_RUN, ("model.smpq",), run_with(replace_with_dir("model.smpq"))),
    Case("export-output-is-a-file", ("export", "--run", "{tmp}/taken"), ("taken",), write("taken", "keep me")),
    # --- run folders and policies -----------------------------------------------------------------------------
    Case("export-empty-run-folder", ("export", "--run", "{tmp}/empty"), ("qat.pt", "smpq-deploy search"), mkdir("empty")),
    Case("export-missing-qat", EXPORT_RUN, ("qat.pt", "smpq-deploy search"), run_with(remove("qat.pt"))),
    Case("export-missing-policy", EXPORT_RUN, ("policy.json",), run_with(remove("policy.json"))),
    Case("export-policy-corrupt", EXPORT_RUN, ("policy.json",), run_with(lambda r: (r / "policy.json").write_text("{"))),
    # qat.pt names the policy it was trained for by hash: an edited policy.json is refused as a whole
    Case("export-policy-edited", EXPORT_RUN, ("policy.json", "is not the policy", "rerun QAT"), run_with(policy_with_unknown_layer)),
    Case("export-qat-truncated", EXPORT_RUN, ("qat.pt",), run_with(truncate("qat.pt"))),
    Case("export-unknown-format", ("export", "--run", "{tmp}/run", "--formats", "onnx,pdf"), ("pdf",)),
    Case("export-calib-batches-zero", (*EXPORT_RUN[:-1], "0"), ("--calib-batches", "0"), run_with(lambda run: None)),
    Case("export-opset-too-old", ("export", "--run", "{tmp}/run", "--formats", "onnx", "--opset", "9"), ("opset", "9")),
    Case("export-ethos-u-for-an-mcu", ("export", "--run", "{tmp}/run", "--formats", "ethos-u", "--device", "stm32h7"),
         ("stm32h7", "Ethos-U"), run_with(lambda run: None)),
    Case("search-fp-missing", (*SEARCH, "--fp", "{tmp}/nope.pt"), ("nope.pt", "smpq-deploy train")),
    Case("search-fp-is-dir", (*SEARCH, "--fp", "{tmp}/fpdir"), ("fpdir", "folder"), mkdir("fpdir")),
    Case("search-epochs-zero", (*SEARCH, "--method", "smpq", "--epochs", "0"), ("epochs", "0")),
    Case("search-qat-epochs-negative", (*SEARCH, "--qat-epochs", "-1"), ("--qat-epochs", "-1")),
    Case("search-subset-zero", (*SEARCH, "--subset", "0"), ("subset", "0")),
    # --- cost ---------------------------------------------------------------------------------------------------
    Case("cost-input-shape-zero", ("cost", *R8, "--input-shape", "0,32,32"), ("--input-shape", "0,32,32")),
    Case("cost-input-shape-two-dims", ("cost", *R8, "--input-shape", "3,32"), ("--input-shape", "3,32")),
    Case("cost-num-classes-zero", ("cost", *R8, "--input-shape", "3,32,32", "--num-classes", "0"),
         ("--num-classes", "0")),
    Case("cost-policy-corrupt", ("cost", *R8, "--input-shape", "3,32,32", "--policy", "{tmp}/p.json"), ("p.json",),
         write("p.json", "{not json")),
    Case("cost-policy-unknown-layer", ("cost", *R8, "--input-shape", "3,32,32", "--policy", "{tmp}/run/policy.json"),
         ("policy.json", "no_such_layer"), run_with(policy_with_unknown_layer)),
    Case("cost-policy-bad-spec", ("cost", *R8, "--input-shape", "3,32,32", "--policy", "w9a9"), ("w9a9",)),
    # --- import of .tflite models -------------------------------------------------------------------------------
    Case("import-tflite-missing", ("import", "{tmp}/nope.tflite", "--output", "{tmp}/out"), ("nope.tflite", "does not exist")),
    Case("import-tflite-truncated", ("import", "{tmp}/m.tflite", "--output", "{tmp}/out"), ("m.tflite", "truncated"),
         bad_tflite("truncated")),
    Case("import-tflite-wrong-magic", ("import", "{tmp}/m.tflite", "--output", "{tmp}/out"), ("m.tflite", "not a TFLite model"),
         bad_tflite("wrong-magic")),
    Case("import-tflite-float-model", ("import", "{tmp}/m.tflite", "--output", "{tmp}/out"), ("m.tflite", "FLOAT32", "float model"),
         bad_tflite("float")),
    Case("import-tflite-unsupported-op", ("import", "{tmp}/m.tflite", "--output", "{tmp}/out"),
         ("m.tflite", "operator 12", "MAX_POOL_2D", "not supported"), bad_tflite("unsupported-op")),
    Case("measure-mlperf-not-imported", ("measure", "--mlperf", "--run", "{tmp}/run", "--device", "qemu-mps2-an500"),
         ("--mlperf", "MLPerf Tiny"), run_with(lambda run: None)),
    # --- the command line itself -------------------------------------------------------------------------------
    Case("unknown-command", ("trian",), ("unknown command 'trian'", "train")),
    Case("unknown-command-help", ("trian", "--help"), ("unknown command 'trian'", "train")),
    Case("devices-config-missing", ("devices", "--config", "{tmp}/missing.yaml"), ("missing.yaml",)),
    Case("devices-unknown", ("devices", "stm32h9"), ("stm32h9",)),
    Case("set-without-equals", ("devices", "--set", "seed"), ("--set", "seed")),
    Case("set-unknown-key", (*TRAIN, "--set", "train.epoch=3"), ("train.epoch", "train.epochs")),
    Case("config-malformed-yaml", (*TRAIN, "--config", "{tmp}/p.yaml"), ("p.yaml",), write("p.yaml", "train: [\n")),
]


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixtures:
    return Fixtures(tmp_path_factory.mktemp("bad_input_fixtures"))


def _hashes(folder: Path) -> dict[str, str]:
    """Every file's hash, but stages.json: `run`'s own record of which stage started (deploy/pipeline/stages.py)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "stages.json"}


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line(case: Case, fx: Fixtures, tmp_path: Path) -> None:
    if case.setup is not None:
        case.setup(tmp_path, fx)
    before = _hashes(tmp_path)
    argv = [a.format(tmp=tmp_path, data=fx.data) for a in case.argv]
    proc = smpq(*argv, cwd=tmp_path, data=fx.data, timeout=CASE_TIMEOUT_S)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    shown = f"argv {argv}\nexit {proc.returncode}\nstderr:\n{proc.stderr[-2500:]}"
    assert "Traceback" not in proc.stderr, shown
    assert proc.returncode == 2, shown
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    for part in case.expect:
        assert part.format(tmp=tmp_path) in lines[0], f"expected {part!r} in the error line\n{shown}"
    after = _hashes(tmp_path)
    assert {k: after.get(k) for k in before} == before, f"files changed or removed\n{shown}"
