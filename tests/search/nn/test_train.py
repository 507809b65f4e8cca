"""FP training: it learns, checkpoints load back, and a SIGKILLed run resumes to bit-identical weights."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from deploy.cli.main import main as cli_main
from search.nn.data import BatchLoader, load_dataset
from search.errors import SearchError
from search.nn.models import build_model
from search.nn.train import FP_FILE, STATE_FILE, TrainConfig, evaluate, fit, load_checkpoint, lr_factor, resolve_device

ROOT = Path(__file__).resolve().parents[3]
TINY = dict(epochs=2, batch_size=32, subset=256, lr=0.05, seed=0, progress=False)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """resnet8 trained for two epochs on 256 digits; returns (run folder, result, loss before training)."""
    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = build_model("resnet8", digits.input_shape, digits.num_classes)
    loader = BatchLoader(digits.train.subset(256), digits, 128)
    before = evaluate(model, loader)
    result = fit(model, digits, TrainConfig(**TINY), out, model_name="resnet8")
    return out, result, before


def test_training_lowers_the_loss(trained, digits) -> None:
    _, result, before = trained
    after = evaluate(result.model, BatchLoader(digits.train.subset(256), digits, 128))
    assert after.loss < 0.8 * before.loss
    assert after.accuracy > before.accuracy + 0.2
    history = result.history
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert 0.0 <= history[-1]["lr"] < TINY["lr"]  # cosine decays towards 0


def test_fp_checkpoint_rebuilds_the_model(trained, digits) -> None:
    out, result, _ = trained
    model, meta = load_checkpoint(out / FP_FILE)
    assert meta["model"] == "resnet8" and meta["dataset"] == "digits"
    assert meta["input_shape"] == [1, 8, 8] and meta["classes"] == digits.classes
    assert meta["mean"] == list(digits.mean) and meta["std"] == list(digits.std)
    assert meta["epochs"] == 2 and meta["seed"] == 0 and meta["torch"] == torch.__version__
    assert 0.0 <= meta["val_accuracy"] <= 1.0
    test = evaluate(model, BatchLoader(digits.test.subset(256), digits, 100))
    assert test.accuracy == pytest.approx(meta["test_accuracy"])
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), result.model.eval()(x))
    assert all(t.is_contiguous() for t in model.state_dict().values())


def test_state_file_holds_everything_needed_to_resume(trained) -> None:
    out, result, _ = trained
    state = torch.load(out / STATE_FILE, weights_only=False)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    assert {"model", "optimizer", "scheduler", "rng", "config"} <= state.keys()
    assert state["scheduler"]["last_epoch"] == 2 * (256 // 32)
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporary files behind


def test_finished_run_is_not_trained_again(trained, digits) -> None:
    out, result, _ = trained
    torch.manual_seed(123)  # a different fresh model: resuming must overwrite it with the saved weights
    model = build_model("resnet8", digits.input_shape, digits.num_classes)
    again = fit(model, digits, TrainConfig(**TINY), out, model_name="resnet8")
    assert again.history == result.history
    for a, b in zip(again.model.state_dict().values(), result.model.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_with_other_settings_is_refused(trained, digits) -> None:
    out, _, _ = trained
    model = build_model("resnet8", digits.input_shape, digits.num_classes)
    with pytest.raises(SearchError, match=r"lr: saved 0.05 vs now 0.1.*another --output") as err:
        fit(model, digits, TrainConfig(**{**TINY, "lr": 0.1}), out, model_name="resnet8")
    assert "\n" not in str(err.value)


def test_missing_and_corrupt_checkpoints_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(SearchError, match="not found") as err:
        load_checkpoint(tmp_path / "nothing.pt")
    assert "\n" not in str(err.value)
    bad = tmp_path / "fp.pt"
    bad.write_bytes(b"\x80\x02 this is not a checkpoint")
    with pytest.raises(SearchError, match="corrupt") as err:
        load_checkpoint(bad)
    assert "\n" not in str(err.value)
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(SearchError, match="meta"):
        load_checkpoint(bad)
    model = build_model("resnet8", (1, 8, 8), 10)
    meta = {"model": "resnet8", "input_shape": [1, 8, 8], "classes": [str(i) for i in range(5)]}
    torch.save({"state_dict": model.state_dict(), "meta": meta}, bad)  # 10 outputs saved, meta says 5
    with pytest.raises(SearchError, match="does not match") as err:
        load_checkpoint(bad)
    assert "\n" not in str(err.value)


def test_corrupt_state_file_is_a_one_line_error(tmp_path: Path, digits) -> None:
    (tmp_path / STATE_FILE).write_bytes(b"garbage")
    model = build_model("resnet8", digits.input_shape, digits.num_classes)
    with pytest.raises(SearchError, match="corrupt"):
        fit(model, digits, TrainConfig(**TINY), tmp_path, model_name="resnet8")


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(lr=-1.0), dict(batch_size=0), dict(momentum=1.0),
                                 dict(subset=0), dict(warmup_epochs=5.0, epochs=2), dict(label_smoothing=1.0)])
def test_bad_config_is_refused(bad: dict) -> None:
    with pytest.raises(SearchError, match="train: "):
        TrainConfig(**bad)


def test_lr_schedule_warms_up_then_decays_to_zero() -> None:
    total, warmup = 100, 10
    f = np.array([lr_factor(s, total, warmup) for s in range(total + 1)])
    assert f[0] == pytest.approx(0.1) and f[warmup - 1] == pytest.approx(1.0)
    assert np.all(np.diff(f[:warmup]) > 0) and np.all(np.diff(f[warmup:]) <= 0)
    assert f[total] == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0, total, 0) == pytest.approx(1.0)


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(SearchError, match="cpu, cuda, auto"):
        resolve_device("tpu")


CHILD = """
import sys, time
import torch
torch.set_num_threads(1)
from search.nn.data import load_dataset
from search.nn.models import build_model
from search.nn.train import TrainConfig, fit

out, hang_at = sys.argv[1], int(sys.argv[2])
ds = load_dataset("digits", seed=0)
torch.manual_seed(0)
model = build_model("resnet8", ds.input_shape, ds.num_classes)
calls = 0

def hang(module, inputs):
    global calls
    if module.training:
        calls += 1
        if calls == hang_at:
            print("HANG", flush=True)
            time.sleep(600)

if hang_at > 0:
    model.register_forward_pre_hook(hang)
fit(model, ds, TrainConfig(epochs=3, batch_size=32, subset=128, lr=0.05, seed=0, progress=False), out, model_name="resnet8")
print("DONE", flush=True)
"""


def test_killed_run_resumes_to_identical_weights(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    killed, straight = tmp_path / "killed", tmp_path / "straight"

    def start(out: Path, hang_at: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script), str(out), str(hang_at)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    # 4 batches per epoch: the 6th training forward is the 2nd batch of epoch 2, after one step of epoch 2
    proc = start(killed, 6)
    watchdog = threading.Timer(300, proc.kill)
    watchdog.start()
    try:
        line = proc.stdout.readline()
        assert line.strip() == b"HANG", proc.stderr.read().decode()[-2000:]
        assert torch.load(killed / STATE_FILE, weights_only=False)["epoch"] == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        watchdog.cancel()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / FP_FILE).exists()

    runs = [start(killed, 0), start(straight, 0)]  # the resumed run and an uninterrupted one, side by side
    errs = []
    for p in runs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip().endswith(b"DONE"), err.decode()[-2000:]
        errs.append(err)
    assert b"resuming" in errs[0] and b"after epoch 1/3" in errs[0] and b"resuming" not in errs[1]

    a = torch.load(killed / FP_FILE, weights_only=True)["state_dict"]
    b = torch.load(straight / FP_FILE, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(killed / STATE_FILE, weights_only=False)
    sb = torch.load(straight / STATE_FILE, weights_only=False)
    for ga, gb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert torch.equal(ga["momentum_buffer"], gb["momentum_buffer"])
    assert [h["val_loss"] for h in sa["history"]] == [h["val_loss"] for h in sb["history"]]


def test_cli_command_trains_and_reports(tmp_path: Path, capsys) -> None:
    rc = cli_main(["train", "--model", "resnet8", "--dataset", "digits", "--epochs", "1", "--subset", "64",
                   "--batch-size", "32", "--output", str(tmp_path / "r"), "--no-progress", "--seed", "3",
                   "--set", "train.weight_decay=0.001", "--accelerator", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "fp.pt" in printed and "test" in printed
    _, meta = load_checkpoint(tmp_path / "r" / FP_FILE)
    assert meta["seed"] == 3 and meta["subset"] == 64 and meta["epochs"] == 1 and meta["model"] == "resnet8"
    state = torch.load(tmp_path / "r" / STATE_FILE, weights_only=False)
    assert state["config"]["weight_decay"] == 0.001 and state["config"]["batch_size"] == 32


def test_cli_reports_missing_data_in_one_line(tmp_path: Path, capsys) -> None:
    rc = cli_main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "none"), "--output", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: CIFAR-10 not found") and "\n" not in err


def test_cli_rejects_bad_training_values_in_one_line(tmp_path: Path, capsys) -> None:
    rc = cli_main(["train", "--dataset", "digits", "--epochs", "0", "--output", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "epochs" in err and "\n" not in err


def test_cli_init_starts_from_a_checkpoint(trained, tmp_path: Path, capsys) -> None:
    run_dir, _, _ = trained
    init, _ = load_checkpoint(run_dir / FP_FILE)
    rc = cli_main(["train", "--model", "resnet8", "--dataset", "digits", "--init", str(run_dir / FP_FILE), "--epochs", "1",
                   "--subset", "64", "--batch-size", "32", "--lr", "1e-5", "--output", str(tmp_path / "ft"), "--no-progress"])
    assert rc == 0
    tuned, meta = load_checkpoint(tmp_path / "ft" / FP_FILE)
    assert meta["init"] == str(run_dir / FP_FILE)
    assert (tuned.conv1.weight - init.conv1.weight).abs().max() < 1e-3  # a tiny step away from the init weights
    capsys.readouterr()
    rc = cli_main(["train", "--model", "resnet20", "--dataset", "digits", "--init", str(run_dir / FP_FILE),
                   "--epochs", "1", "--output", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "pick a matching checkpoint" in err and "\n" not in err
