"""torch.distributed search: sharded Shapley walks and batches, 1 vs 2 processes (gloo), a killed rank and resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from search import distributed
from search.nn.data import BatchLoader, load_dataset
from search.errors import SearchError
from search.nn.models import build_model
from search.runner import validate_policy_file
from search.search_state import STATE_FILE
from search.shapley import estimate_shapley
from search.smpq import LOG_FILE, SMPQConfig, run_smpq
from search.supernet import Supernet
from search.nn.train import TrainConfig, fit, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
ROUND_CFG = dict(warmup_epochs=0, rounds=1, permutations=3, val_batch_size=48, batch_size=64, subset=192, seed=5,
                 progress=False)
DRIVER = """
import json, sys
from pathlib import Path
import torch.distributed as dist
from search import distributed
from search.nn.data import load_dataset
from search.edmips import EdMIPSConfig, run_edmips
from search.search_state import tensors_digest
from search.smpq import SMPQConfig, run_smpq
from search.supernet import Supernet
from search.nn.train import load_checkpoint
with distributed.session("cpu"):
    ds = load_dataset("digits", seed=0)
    res = run_smpq(Supernet(load_checkpoint(sys.argv[1])[0], seed=0), ds, SMPQConfig(**json.loads(sys.argv[3])),
                   sys.argv[2], device="cpu")
    # EdMIPS under DDP (W and alpha by gradient): every rank must end with the same weights and alpha
    ed = run_edmips(Supernet(load_checkpoint(sys.argv[1])[0], seed=0), ds,
                    EdMIPSConfig(epochs=1, batch_size=64, subset=192, seed=5, progress=False),
                    Path(sys.argv[2], "edmips"), device="cpu")
    mine = [tensors_digest(ed.supernet.state_dict()), ed.alpha.tolist()]
    every = [None] * distributed.world_size()
    dist.all_gather_object(every, mine)
    if distributed.is_main():
        Path(sys.argv[2], "result.json").write_text(json.dumps({
            "world": distributed.world_size(), "psi": res.history[0]["psi"], "alpha": res.alpha.tolist(),
            "evaluations": res.value_evaluations, "policy": {n: list(b) for n, b in res.policy.items()},
            "edmips_ranks_agree": all(e == mine for e in every), "edmips_alpha": ed.alpha.tolist(),
            "edmips_loss": ed.history[-1]["loss"]}))
"""


@pytest.fixture(scope="module")
def fp_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-8 briefly trained on digits (the search starts from an FP model, as in the pipeline)."""
    out = tmp_path_factory.mktemp("fp")
    torch.manual_seed(0)
    ds = load_dataset("digits", seed=0)
    fit(build_model("resnet8", ds.input_shape, ds.num_classes), ds,
        TrainConfig(epochs=1, batch_size=64, lr=0.1, warmup_epochs=0, subset=512, progress=False), out,
        model_name="resnet8")
    return out / "fp.pt"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_sharded_walks_reproduce_the_one_process_estimate() -> None:
    """Ranks walk p ≡ r (mod N) with per-walk generators; gathering the rows gives ψ bit for bit, for any N."""
    w = np.random.default_rng(0).normal(size=7)

    def value(mask: np.ndarray) -> float:  # a non-additive game with truncation at work
        return float(np.tanh(w[mask].sum()) + 1.0)

    def per_walk(p: int) -> np.random.Generator:
        return np.random.default_rng([9, p])

    for anti in (False, True):  # antithetic: an odd walk's partner may be on another rank
        one = estimate_shapley(value, 7, 5, 0.4, permutation_rng=per_walk, antithetic=anti)
        assert one.n_saved_by_truncation > 0
        for world in (2, 3, 5):
            locals_ = []
            for r in range(world):
                estimate_shapley(value, 7, 5, 0.4, permutation_rng=per_walk, shard=(r, world),
                                 gather=lambda rows: locals_.append(rows) or rows, antithetic=anti)
            rows = np.stack([locals_[p % world][p] for p in range(5)])
            merged = estimate_shapley(value, 7, 5, 0.4, permutation_rng=per_walk, shard=(0, world),
                                      gather=lambda _rows: rows, antithetic=anti)
            np.testing.assert_array_equal(merged.psi, one.psi)
            np.testing.assert_array_equal(merged.permutations, one.permutations)
            assert (merged.n_evaluations, merged.n_saved_by_truncation) == (one.n_evaluations, one.n_saved_by_truncation)
    with pytest.raises(ValueError, match="permutation_rng"):
        estimate_shapley(value, 7, 5, shard=(0, 2))


def test_sharded_loader_cuts_every_global_batch_into_rank_chunks() -> None:
    ds = load_dataset("digits", seed=0)
    split = ds.train.subset(203)
    loader = BatchLoader(split, ds, 64, shuffle=True, augment=True, seed=4)
    loader.set_epoch(2)
    whole = list(loader)
    shards = [distributed.ShardedLoader(BatchLoader(split, ds, 64, shuffle=True, augment=True, seed=4), r, 3)
              for r in range(3)]
    for s in shards:
        s.set_epoch(2)
    parts = [list(s) for s in shards]
    assert all(len(s) == len(whole) == len(p) for s, p in zip(shards, parts))  # the last batch (11) ≥ 3 ranks: kept
    for b, (x, y) in enumerate(whole):
        torch.testing.assert_close(torch.cat([p[b][0] for p in parts]), x, rtol=0, atol=0)  # same images, same augmentation
        assert torch.equal(torch.cat([p[b][1] for p in parts]), y)
        assert max(len(p[b][1]) for p in parts) - min(len(p[b][1]) for p in parts) <= 1
    assert shards[0].global_size == len(whole[-1][1])
    tiny = distributed.ShardedLoader(BatchLoader(split.subset(2), ds, 64), 0, 3)
    assert len(tiny) == 0 and list(tiny) == []  # fewer images than ranks: skipped on every rank


def test_two_processes_give_the_same_psi_and_policy_as_one(fp_checkpoint: Path, tmp_path: Path) -> None:
    """One Shapley round as 1 process and under a plain `torchrun --nproc_per_node 2` (gloo): identical ψ, α, policy.
    The same launch trains EdMIPS under DDP: both ranks end with identical weights and α."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    cfg = json.dumps(ROUND_CFG)
    res = run_smpq(Supernet(load_checkpoint(fp_checkpoint)[0], seed=0), load_dataset("digits", seed=0),
                   SMPQConfig(**ROUND_CFG), tmp_path / "one", device="cpu")  # one process, no torch.distributed
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(driver), str(fp_checkpoint), str(tmp_path / "two"), cfg],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    a = {"psi": res.history[0]["psi"], "alpha": res.alpha.tolist(), "evaluations": res.value_evaluations,
         "policy": {n: list(b) for n, b in res.policy.items()}}
    b = json.loads((tmp_path / "two" / "result.json").read_text())
    assert b["world"] == 2
    assert np.abs(a["psi"]).max() > 0
    assert a["psi"] == b["psi"] and a["alpha"] == b["alpha"] and a["policy"] == b["policy"]
    assert a["evaluations"] == b["evaluations"]
    assert b["edmips_ranks_agree"] and np.isfinite(b["edmips_loss"])  # DDP kept W and α identical on both ranks
    assert np.abs(np.array(b["edmips_alpha"])).max() > 0.01  # α was trained (it starts within ~1e-3 of 0)
    lines = (tmp_path / "two" / LOG_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1]  # written by rank 0 alone
    assert not [p for p in (tmp_path / "two").iterdir() if ".tmp" in p.name]


def _worker_pid(parent: int, rank: int, deadline: float) -> int:
    """The pid of the torchrun worker of `rank` among the children of the launcher process `parent`."""
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                environ = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            if ppid == parent and f"RANK={rank}".encode() in environ:
                return int(entry.name)
        time.sleep(0.05)
    raise AssertionError(f"no worker of rank {rank} under pid {parent}")


def test_killed_rank_stops_the_run_with_one_line_errors_and_it_resumes(fp_checkpoint: Path, tmp_path: Path) -> None:
    """`search --nproc 2`: SIGKILL rank 1 after the first checkpoint → exit 2 and one `error:` line per surviving
    process; the same command then resumes from the checkpoint and finishes (policy.json, qat.pt by DDP QAT)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "deploy.cli.main", "search", "--method", "smpq", "--fp", str(fp_checkpoint),
           "--dataset", "digits", "--output", str(out), "--subset", "192", "--epochs", "2", "--warmup-epochs", "1",
           "--qat-epochs", "1", "--no-progress", "--seed", "1", "--accelerator", "cpu",
           "--set", "search.shapley.permutations=3", "--nproc", "2",
           # the walks on a supernet trained between rounds (pipeline.yaml's default plays no walks, trains nothing)
           "--set", "search.shapley.score=shapley", "--set", "search.shapley.rounds=null",
           "--set", "search.shapley.steps_per_round=null"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        rank1 = _worker_pid(proc.pid, 1, deadline)
        while not (out / STATE_FILE).is_file():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        os.kill(rank1, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors[-1].startswith("error: the run of 2 processes failed: rank 1") and "SIGKILL" in errors[-1], err
    assert "resume" in errors[-1]
    assert any(line.startswith("error: rank 0 of 2:") for line in errors), err  # the survivor says why it stops
    assert "Traceback" not in err
    killed_at = torch.load(out / STATE_FILE, weights_only=True)["step"]
    assert 1 <= killed_at < 4 and not (out / "policy.json").exists()

    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    record = validate_policy_file(out / "policy.json")
    assert record.method_details["rounds"] == 2 and (out / "qat.pt").is_file()
    assert torch.load(out / STATE_FILE, weights_only=True)["step"] == 4
    steps = [json.loads(line)["step"] for line in (out / LOG_FILE).read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4]  # each unit logged once: the resumed run did not redo the finished ones
    assert again.stdout.count("wrote ") == 1  # rank 0 reports, rank 1 stays quiet


def test_bad_process_counts_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    from deploy.cli.main import main

    assert main(["search", "--method", "uniform", "--output", str(tmp_path), "--nproc", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --nproc must be >= 1, got 0"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(SearchError, match="launch with torchrun or `--nproc N`"):
        with distributed.session("cpu"):
            pass
