"""SMPQ on a real supernet (ResNet-8 on scikit-learn's digits): rounds, α, determinism, SIGKILL + resume."""
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

from deploy.devices.cost import omega
from search.budget import Budget
from search.nn.data import BatchLoader, load_dataset
from search.errors import SearchError
from search.nn.graph import extract_graph
from search.nn.models import build_model
from search.edmips import mixture_cost_for, mixture_probs
from search.search_state import STATE_FILE, SUPERNET_FILE
from search.smpq import (LOG_FILE, SMPQConfig, SMPQSearch, _budget_overshoot, coalition_mask, run_smpq, smpq_options,
                         widest_candidates)
from search.policy import Policy
from search.supernet import Supernet
from search.nn.train import TrainConfig, fit, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CFG = dict(warmup_epochs=1, rounds=2, permutations=2, val_batch_size=32, batch_size=64, subset=256, seed=3,
           progress=False)

DRIVER = """
import sys, torch
torch.set_num_threads(1)
from search.nn.data import load_dataset
from search.smpq import SMPQConfig, run_smpq
from search.supernet import Supernet
from search.nn.train import load_checkpoint
model, _ = load_checkpoint(sys.argv[1])
run_smpq(Supernet(model, seed=0), load_dataset("digits", seed=0), SMPQConfig(**{cfg!r}), sys.argv[2], device="cpu")
"""


@pytest.fixture(scope="module")
def fp_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-8 briefly trained on digits (the search starts from an FP model, as in the pipeline)."""
    out = tmp_path_factory.mktemp("fp")
    torch.manual_seed(0)
    ds = load_dataset("digits", seed=0)
    fit(build_model("resnet8", ds.input_shape, ds.num_classes), ds,
        TrainConfig(epochs=1, batch_size=64, lr=0.1, warmup_epochs=0, progress=False), out, model_name="resnet8")
    return out / "fp.pt"


def _supernet(fp: Path, **kwargs) -> Supernet:
    model, _ = load_checkpoint(fp)
    return Supernet(model, seed=0, **kwargs)


def test_round_freezes_bn_and_weights_and_updates_alpha(fp_checkpoint: Path, tmp_path: Path) -> None:
    sn = _supernet(fp_checkpoint, first_last_8bit=True)
    cfg = SMPQConfig(**smpq_options({**CFG, "preset": "paper"}))
    search = SMPQSearch(sn, load_dataset("digits", seed=0), cfg, tmp_path, torch.device("cpu"), None, {}, STATE_FILE, LOG_FILE)
    before = {k: v.clone() for k, v in sn.state_dict().items() if k != "alpha"}
    sn.train()
    alpha0 = search.alpha.copy()
    record = search._shapley_round(0, lambda *a, **k: None)
    assert sn.training  # mode restored
    assert torch.all(sn.mask == 1)  # mask restored
    for k, v in sn.state_dict().items():
        if k != "alpha":
            assert torch.equal(v, before[k]), f"{k} changed during a Shapley round"
    psi = np.array(record["psi"])
    held = [i for i, p in enumerate(sn.players) if p.layer in (sn.layer_names[0], sn.layer_names[-1])]
    assert len(held) == 4 and not set(held) & set(search.game_players.tolist())  # no choice there: not players
    assert len(search.game_players) == sn.num_players - 4 and np.all(psi[held] == 0)
    assert record["n_evaluations"] + record["n_saved_by_truncation"] == 2 * (len(search.game_players) + 1)
    assert record["n_saved_by_truncation"] > 0  # a trained net collapses well before every candidate is gone
    assert record["full_value_mean"] > 0.5
    assert np.abs(psi).max() > 0
    # α moved by exactly ξ (first step: q = λ ψ/‖ψ‖, α += ξ q/‖q‖)
    np.testing.assert_allclose(np.linalg.norm(search.alpha - alpha0), cfg.xi, rtol=1e-9)
    np.testing.assert_allclose(search.alpha - alpha0, cfg.xi * psi / np.linalg.norm(psi), atol=1e-12)


def test_fallback_game_puts_the_widest_candidate_back_and_alpha_is_the_mean_psi(fp_checkpoint: Path,
                                                                                  tmp_path: Path) -> None:
    sn = _supernet(fp_checkpoint, first_last_8bit=True)
    search = SMPQSearch(sn, load_dataset("digits", seed=0), SMPQConfig(**CFG), tmp_path, torch.device("cpu"), None, {},
                        STATE_FILE, LOG_FILE)
    players = torch.from_numpy(search.game_players)
    # the empty coalition is the all-widest (W8A8) policy; the paper's game leaves every free layer empty
    empty = np.zeros(len(players), dtype=bool)
    w8a8 = sn.policy_mask(Policy.uniform(sn.layer_names, 8, 8, first_last_8bit=True))
    assert torch.equal(coalition_mask(sn, players, empty, "fallback"), w8a8)
    assert float(coalition_mask(sn, players, empty, "zero")[players].sum()) == 0
    # a group keeps what it has; only emptied groups get their widest candidate back
    some = np.ones(len(players), dtype=bool)
    some[:2] = False  # the first free layer's 2- and 4-bit weights (its 8-bit weight stays)
    assert torch.equal(coalition_mask(sn, players, some, "fallback"), coalition_mask(sn, players, some, "zero"))
    assert sorted(sn.players[int(i)].bits for i in widest_candidates(sn)) == [8] * sn.num_groups
    # α = α0 + mean ψ over rounds, in accuracy units (not normalised to a ξ step)
    r0 = search._shapley_round(0, lambda *a, **k: None)
    np.testing.assert_allclose(search.alpha, search.alpha0 + np.array(r0["psi"]), atol=1e-12)
    r1 = search._shapley_round(1, lambda *a, **k: None)
    np.testing.assert_allclose(search.alpha, search.alpha0 + (np.array(r0["psi"]) + np.array(r1["psi"])) / 2, atol=1e-12)
    assert r0["n_saved_by_truncation"] == 0  # the W8A8 fallback never collapses below half of v(full)
    # ψ sums to v(full) − v(∅) on each walk (efficiency), v(∅) being the W8A8 network, not a collapsed one
    assert abs(float(np.sum(r0["psi"]))) < 0.5


def test_last_score_is_the_mean_last_of_group_contribution(fp_checkpoint: Path, tmp_path: Path) -> None:
    sn = _supernet(fp_checkpoint, first_last_8bit=True)
    cfg = SMPQConfig(**{**CFG, "score": "last", "permutations": 3})
    search = SMPQSearch(sn, load_dataset("digits", seed=0), cfg, tmp_path, torch.device("cpu"), None, {},
                        STATE_FILE, LOG_FILE)
    search._before_unit()
    res, _ = search.estimate_round(0)
    r0 = search._shapley_round(0, lambda *a, **k: None)
    assert r0["n_evaluations"] == res.n_evaluations
    # three walks, groups of three candidates (bits 2, 4, 8): every candidate is its group's last once
    count = search.last_count[search.game_players]
    assert count.tolist() == [1] * len(search.game_players)
    group = search.game_group
    for p, perm in enumerate(res.permutations):
        last = {int(group[j]): int(j) for j in perm}
        for j in last.values():
            assert search.last_sum[search.game_players[j]] == pytest.approx(res.contributions[p, j])
    np.testing.assert_allclose(search.alpha, search.alpha0 + search.last_scores(), atol=1e-12)
    # an 8-bit candidate left last falls back to itself: it contributes exactly 0
    eight = [i for i in search.game_players if sn.players[i].bits == 8]
    assert np.all(search.last_sum[eight] == 0)
    with pytest.raises(SearchError, match="score 'last' needs"):
        SMPQConfig(**{**CFG, "score": "last", "game": "zero"})
    # the same stratified walks estimate ψ with score "shapley" and stratified=True
    strat = SMPQSearch(sn, load_dataset("digits", seed=0), SMPQConfig(**{**CFG, "stratified": True, "permutations": 3}),
                       tmp_path / "stratified", torch.device("cpu"), None, {}, STATE_FILE, LOG_FILE)
    strat._before_unit()
    np.testing.assert_array_equal(strat.estimate_round(0)[0].permutations, res.permutations)
    with pytest.raises(SearchError, match="stratified and antithetic walks exclude each other"):
        SMPQConfig(**{**CFG, "stratified": True, "antithetic": True})


@pytest.mark.parametrize("bn", ["running", "batch"])
def test_singleton_score_is_each_candidate_alone_against_w8a8(fp_checkpoint: Path, tmp_path: Path, bn: str) -> None:
    sn = _supernet(fp_checkpoint, first_last_8bit=True)
    cfg = SMPQConfig(**{**CFG, "score": "singleton", "permutations": 2, "bn": bn})
    buffers = {k: v.clone() for k, v in sn.named_buffers()}
    ds = load_dataset("digits", seed=0)
    search = SMPQSearch(sn, ds, cfg, tmp_path, torch.device("cpu"), None, {}, STATE_FILE, LOG_FILE)
    search._before_unit()
    r0 = search._shapley_round(0, lambda *a, **k: None)
    n = len(search.game_players)
    groups = len(np.unique(search.game_group))  # each group's widest candidate alone is W8A8 itself: not evaluated
    assert r0["n_evaluations"] == 2 * (n + 1 - groups) and r0["n_saved_by_truncation"] == 0
    # batch 0 of round 0 measured directly: candidate i as its layer's only one, every other layer at W8A8
    rng = np.random.default_rng([cfg.seed, 13, 0, 0])
    idx = torch.from_numpy(np.sort(rng.choice(len(search.val_y), size=cfg.val_batch_size, replace=False)))
    x, y = search.val_x[idx], search.val_y[idx]
    w8a8 = sn.policy_mask(Policy.uniform(sn.layer_names, 8, 8, first_last_8bit=True))

    def acc(mask: torch.Tensor) -> float:
        with sn.masked(mask, bn):
            return float((sn(x).argmax(1) == y).float().mean())
    ref = acc(w8a8)
    res, _ = search.estimate_singletons(0)  # deterministic: round 0's batches again
    assert all(torch.equal(v, buffers[k]) for k, v in sn.named_buffers() if k in buffers and "mask" not in k)
    assert res.full_values[0] == pytest.approx(ref, abs=1e-12)
    for j in (0, 4, n - 1):
        i = int(search.game_players[j])
        p = sn.players[i]
        alone = w8a8.clone()
        alone[sn.player_index(p.layer, p.kind, 8)] = 0.0
        alone[i] = 1.0
        assert res.contributions[0, j] == pytest.approx(acc(alone) - ref, abs=1e-12)
    # α = α0 + the mean over the round's batches; 8-bit candidates are the fallback itself: exactly 0
    np.testing.assert_allclose(search.alpha[search.game_players] - search.alpha0[search.game_players],
                               res.contributions.mean(0), atol=1e-12)
    assert search.last_count[search.game_players].tolist() == [2] * n
    eight = [i for i in search.game_players if sn.players[i].bits == 8]
    assert np.all(search.last_sum[eight] == 0) and np.abs(res.contributions).max() > 0
    with pytest.raises(SearchError, match="score 'singleton' needs"):
        SMPQConfig(**{**CFG, "score": "singleton", "update": "paper"})
    with pytest.raises(SearchError, match="bn must be one of running, batch"):
        SMPQConfig(**{**CFG, "bn": "frozen"})


def test_probability_value_is_the_mean_probability_of_the_true_class(fp_checkpoint: Path, tmp_path: Path) -> None:
    sn = _supernet(fp_checkpoint, first_last_8bit=True)
    ds = load_dataset("digits", seed=0)
    results = {}
    for value in ("accuracy", "probability"):
        cfg = SMPQConfig(**{**CFG, "score": "singleton", "permutations": 2, "bn": "batch", "value": value})
        search = SMPQSearch(sn, ds, cfg, tmp_path / value, torch.device("cpu"), None, {}, STATE_FILE, LOG_FILE)
        search._before_unit()
        results[value] = search.estimate_singletons(0)[0]
    # batch 1 measured directly: softmax probability of each image's label, averaged
    rng = np.random.default_rng([cfg.seed, 13, 0, 1])
    idx = torch.from_numpy(np.sort(rng.choice(len(search.val_y), size=cfg.val_batch_size, replace=False)))
    x, y = search.val_x[idx], search.val_y[idx]
    w8a8 = sn.policy_mask(Policy.uniform(sn.layer_names, 8, 8, first_last_8bit=True))
    i = int(search.game_players[1])
    p = sn.players[i]
    alone = w8a8.clone()
    alone[sn.player_index(p.layer, p.kind, 8)] = 0.0
    alone[i] = 1.0

    def measure(mask: torch.Tensor) -> tuple[float, float]:
        with sn.masked(mask, "batch"):
            logits = sn(x)
        return float((logits.argmax(1) == y).double().mean()), float(logits.softmax(1)[torch.arange(len(y)), y].double().mean())
    (acc0, prob0), (acc1, prob1) = measure(w8a8), measure(alone)
    prob, acc = results["probability"], results["accuracy"]
    assert prob.full_values[1] == pytest.approx(prob0, abs=1e-9) and acc.full_values[1] == pytest.approx(acc0, abs=1e-12)
    assert prob.contributions[1, 1] == pytest.approx(prob1 - prob0, abs=1e-9)
    assert acc.contributions[1, 1] == pytest.approx(acc1 - acc0, abs=1e-12)
    assert prob.n_evaluations == acc.n_evaluations and not np.array_equal(prob.contributions, acc.contributions)
    with pytest.raises(SearchError, match="value must be one of accuracy, tradeoff, probability"):
        SMPQConfig(**{**CFG, "value": "loss"})


@pytest.mark.parametrize("score", ["singleton", "shapley"])
def test_channels_last_layout_changes_values_only_by_float_rounding_and_is_undone(fp_checkpoint: Path, tmp_path: Path,
                                                                                  score: str) -> None:
    sn = _supernet(fp_checkpoint, first_last_8bit=True)
    ds = load_dataset("digits", seed=0)
    before = {k: v.clone() for k, v in sn.state_dict().items()}
    conv = next(m for m in sn.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    seen: list[bool] = []  # its outputs (16 channels of 8 × 8: the two layouts are told apart) in channels_last?
    hook = conv.register_forward_hook(lambda m, a, out: seen.append(not out.is_contiguous()))
    results = {}
    for layout in ("nchw", "channels_last"):
        cfg = SMPQConfig(**{**CFG, "score": score, "permutations": 2, "bn": "batch", "value": "probability",
                            "threshold": 0.0, "layout": layout})
        search = SMPQSearch(sn, ds, cfg, tmp_path / layout, torch.device("cpu"), None, {}, STATE_FILE, LOG_FILE)
        search._before_unit()
        seen.clear()
        results[layout] = (search.estimate_singletons if score == "singleton" else search.estimate_round)(0)[0]
        assert seen and all(seen) == (layout == "channels_last") and any(seen) == (layout == "channels_last")
    hook.remove()
    nchw, last = results["nchw"], results["channels_last"]
    assert nchw.n_evaluations == last.n_evaluations
    # not bit for bit (a rounding difference can move an activation across a quantization boundary), but far below
    # the sampling noise: the layouts differ much less than two batches do
    layout_gap = np.abs(last.contributions - nchw.contributions).mean()
    batch_gap = np.abs(nchw.contributions[0] - nchw.contributions[1]).mean()
    print(f"layout gap {layout_gap:.2e}, batch gap {batch_gap:.2e}")
    assert layout_gap < 0.05 * batch_gap
    for k, v in sn.state_dict().items():  # the supernet is NCHW again, values untouched (α: set by the search)
        assert v.is_contiguous() and (k == "alpha" or torch.equal(v, before[k])), k
    with pytest.raises(SearchError, match="layout must be one of nchw, channels_last"):
        SMPQConfig(**{**CFG, "layout": "nhwc"})


def test_stratified_images_weight_hits_and_statistics_and_count_the_screen(fp_checkpoint: Path, tmp_path: Path) -> None:
    sn = _supernet(fp_checkpoint, first_last_8bit=True)
    cfg = SMPQConfig(**{**CFG, "score": "singleton", "permutations": 2, "bn": "batch", "images": "stratified"})
    search = SMPQSearch(sn, load_dataset("digits", seed=0), cfg, tmp_path, torch.device("cpu"), None, {},
                        STATE_FILE, LOG_FILE)
    search._before_unit()
    res, _ = search.estimate_singletons(0)
    n, n_val = len(search.game_players), len(search.val_y)
    groups = len(np.unique(search.game_group))
    assert res.n_evaluations == 2 * (n + 1 - groups) + 2 * -(-n_val // cfg.val_batch_size)  # the screen counts
    # batch 1 measured directly: the strata's draw, hits and BatchNorm statistics weighted alike
    strata, _ = search._screen(torch.from_numpy(search.game_players))
    idx, w = strata.draw(np.random.default_rng([cfg.seed, 13, 0, 1]))
    x, y, weights = search.val_x[idx], search.val_y[idx], torch.from_numpy(w)
    w8a8 = sn.policy_mask(Policy.uniform(sn.layer_names, 8, 8, first_last_8bit=True))

    def acc(mask: torch.Tensor) -> float:
        with sn.masked(mask, "batch"):
            sn.set_image_weights(weights.float())
            return float(((sn(x).argmax(1) == y).double() * weights).sum())
    p = sn.players[int(search.game_players[0])]
    alone = w8a8.clone()
    alone[sn.player_index(p.layer, p.kind, 8)] = 0.0
    alone[int(search.game_players[0])] = 1.0
    assert res.full_values[1] == pytest.approx(acc(w8a8), abs=1e-12)
    assert res.contributions[1, 0] == pytest.approx(acc(alone) - acc(w8a8), abs=1e-12)
    np.testing.assert_array_equal(search.estimate_singletons(0)[0].contributions, res.contributions)  # seeded
    walks = SMPQSearch(sn, load_dataset("digits", seed=0), SMPQConfig(**{**CFG, "images": "stratified", "threshold": 0.0}),
                       tmp_path / "walks", torch.device("cpu"), None, {}, STATE_FILE, LOG_FILE)
    walks._before_unit()
    res = walks.estimate_round(0)[0]
    assert res.n_evaluations == 2 * (n + 1) + 2 * -(-n_val // cfg.val_batch_size)
    with pytest.raises(SearchError, match="images must be one of uniform, stratified"):
        SMPQConfig(**{**CFG, "images": "hard"})


def _close_but_for_a_step(got: torch.Tensor, want: torch.Tensor) -> None:
    """Logits equal up to float rounding on all but a few images, where the rounding moved a quantized
    activation by one step (the image-weighted statistics are summed in double, BatchNorm's own in float):
    at most 2% of the images differ by more than 1e-2, none by more than 0.2."""
    off = ((got - want).abs() > 1e-2).any(1)
    assert int(off.sum()) <= max(1, len(got) // 50), f"{int(off.sum())} of {len(got)} images differ"
    assert float((got - want).abs().max()) < 0.2


def test_batch_statistics_mode_normalises_by_the_evaluated_batch(fp_checkpoint: Path) -> None:
    sn = _supernet(fp_checkpoint, first_last_8bit=True)
    x, _ = next(iter(BatchLoader(load_dataset("digits", seed=0).val, load_dataset("digits", seed=0), 128)))
    bn = next(m for m in sn.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen: list[torch.Tensor] = []
    handle = bn.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    before = {k: v.clone() for k, v in sn.state_dict().items()}
    running = sn.eval_masked(x)
    with sn.masked(bn="batch"):
        batch = sn(x)
    handle.remove()
    # per channel over the batch, the normalised output has mean β and standard deviation |γ| — not so
    # with the running statistics
    out = seen[1].transpose(0, 1).flatten(1)
    torch.testing.assert_close(out.mean(1), bn.bias.detach(), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.var(1, unbiased=False).sqrt(), bn.weight.detach().abs(), atol=1e-3, rtol=1e-3)
    assert not torch.allclose(seen[0].transpose(0, 1).flatten(1).mean(1), bn.bias.detach(), atol=1e-3)
    assert not torch.equal(running, batch)
    assert all(torch.equal(v, before[k]) for k, v in sn.state_dict().items())  # nothing recorded
    assert all(m.training == sn.training and m.track_running_stats for m in sn.modules()
               if isinstance(m, torch.nn.BatchNorm2d))  # modes restored
    with pytest.raises(SearchError, match="BatchNorm mode"):
        with sn.masked(bn="frozen"):
            pass
    # image weights: statistics of the weighted images only (zero weight: left out), restored on exit; equal up
    # to float rounding, which a downstream quantizer may turn into one step
    half = torch.zeros(len(x))
    half[::2] = 2.0 / len(x)
    with sn.masked(bn="batch"):
        alone = sn(x[::2])
        sn.set_image_weights(half)
        _close_but_for_a_step(sn(x)[::2], alone)
        sn.set_image_weights(torch.full((len(x),), 1.0 / len(x)))
        _close_but_for_a_step(sn(x), batch)
        sn.set_image_weights(half[:3])
        with pytest.raises(SearchError, match="image weights cover 3 images, the batch has"):
            sn(x)
    assert sn.image_weights is None and all("forward" not in m.__dict__ for m in sn.modules())


def test_expected_cost_of_a_one_hot_mixture_equals_the_discrete_omega(fp_checkpoint: Path) -> None:
    sn = _supernet(fp_checkpoint)
    cost = mixture_cost_for(sn)
    w, a = mixture_probs(sn, cost)
    torch.testing.assert_close(w.sum(1), torch.ones(len(sn.layer_names)))
    torch.testing.assert_close(a.sum(1), torch.ones(len(sn.layer_names)))
    policy = sn.derive_policy(torch.randn(sn.num_players, generator=torch.Generator().manual_seed(1)))
    mask = sn.policy_mask(policy)
    w, a = mixture_probs(sn, cost, mask)
    discrete = omega(extract_graph(load_checkpoint(fp_checkpoint)[0]), policy)
    assert float(cost.bops(w, a).detach()) == pytest.approx(discrete.bops)
    limits = {"bops": discrete.bops / 2}
    assert _budget_overshoot(sn, cost, limits, mask) == pytest.approx(1.0)
    assert _budget_overshoot(sn, cost, {"bops": discrete.bops * 2}, mask) == 0.0


def test_tradeoff_value_needs_a_budget(fp_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(SearchError, match="budget"):
        run_smpq(_supernet(fp_checkpoint), load_dataset("digits", seed=0), SMPQConfig(**{**CFG, "value": "tradeoff"}),
                 tmp_path, device="cpu", budget=Budget(sram_bytes=1000))


def _kill_when_checkpointed(fp: Path, out: Path, timeout: float = 120.0) -> None:
    """Start the search in a subprocess and SIGKILL it as soon as its first checkpoint exists."""
    script = out.parent / f"{out.name}_driver.py"
    script.write_text(DRIVER.format(cfg=CFG))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(fp), str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not (out / STATE_FILE).is_file():
            if proc.poll() is not None:
                raise AssertionError(f"driver exited early: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("driver wrote no checkpoint in time")
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_tiny_search_is_deterministic_and_survives_sigkill(fp_checkpoint: Path, tmp_path: Path) -> None:
    ds = load_dataset("digits", seed=0)
    cfg = SMPQConfig(**CFG)
    a = run_smpq(_supernet(fp_checkpoint), ds, cfg, tmp_path / "a", device="cpu")
    assert [h["kind"] for h in a.history] == ["warmup", "round", "train", "round"]
    assert a.value_evaluations == sum(h["n_evaluations"] for h in a.history if h["kind"] == "round")
    assert set(a.scores) == set(a.policy) and all(a.policy[n].w_bits in a.scores[n]["w"] for n in a.policy)
    assert (tmp_path / "a" / SUPERNET_FILE).is_file()

    b = tmp_path / "b"
    _kill_when_checkpointed(fp_checkpoint, b)
    killed_at = torch.load(b / STATE_FILE, weights_only=True)["step"]
    assert 1 <= killed_at < len(a.history)  # it really died mid-search
    resumed = run_smpq(_supernet(fp_checkpoint), ds, cfg, b, device="cpu")
    assert resumed.policy == a.policy
    np.testing.assert_array_equal(resumed.alpha, a.alpha)
    steps = [json.loads(line)["step"] for line in (b / LOG_FILE).read_text().splitlines()]
    assert steps == list(range(len(a.history) + 1))  # header + one record per unit, none duplicated

    again = run_smpq(_supernet(fp_checkpoint), ds, cfg, b, device="cpu")  # finished: reloads, same answer
    np.testing.assert_array_equal(again.alpha, a.alpha)
    with pytest.raises(SearchError, match="different arguments"):
        run_smpq(_supernet(fp_checkpoint), ds, SMPQConfig(**{**CFG, "permutations": 3}), b, device="cpu")
