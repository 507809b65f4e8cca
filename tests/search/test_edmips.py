"""EdMIPS baseline: the complexity loss's gradient reaches α with the right sign, cd lowers E[BOPs], resume is exact."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import search.search_state as search_state
from search.nn.data import load_dataset
from search.edmips import EdMIPSConfig, complexity_loss, mixture_cost_for, run_edmips
from search.errors import SearchError
from search.nn.models import build_model
from search.supernet import Supernet

CFG = dict(epochs=2, batch_size=64, subset=256, arch_lr=0.05, seed=1, progress=False)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _supernet(ds, **kwargs) -> Supernet:
    torch.manual_seed(0)
    return Supernet(build_model("resnet8", ds.input_shape, ds.num_classes), seed=0, **kwargs)


def test_complexity_gradient_reaches_alpha_with_the_right_sign(digits) -> None:
    sn = _supernet(digits, first_last_8bit=False)
    cost = mixture_cost_for(sn)
    loss = complexity_loss(sn, cost)
    # α = 0: uniform mixture, so E[BOPs]/MAC = mean(w) · mean(a) over the candidates of every layer
    w = np.mean(cost.w_candidates)
    a = np.mean(cost.a_candidates)
    assert float(loss.detach()) == pytest.approx(w * a, rel=1e-5)
    loss.backward()
    grad = sn.alpha.grad
    assert grad is not None and torch.all(torch.isfinite(grad))
    for i, p in enumerate(sn.players):
        mean_bits = w if p.kind == "w" else a
        # raising a candidate above the group mean raises E[BOPs]; below it lowers it
        assert np.sign(float(grad[i])) == np.sign(p.bits - mean_bits), p
    with torch.no_grad():
        sn.alpha -= 0.5 * grad
    assert float(complexity_loss(sn, cost).detach()) < float(loss.detach())


def test_flash_complexity_moves_weights_only_and_is_64_at_w8a8(digits) -> None:
    from deploy.devices.cost import BlobCostModel

    sn = _supernet(digits, first_last_8bit=False)
    cost = mixture_cost_for(sn, BlobCostModel())
    with pytest.raises(SearchError, match="needs the deployment's cost model"):
        complexity_loss(sn, mixture_cost_for(sn), "flash")
    with torch.no_grad():  # every layer on its widest candidates: 64, as the BOPs term at W8A8
        sn.alpha.copy_(torch.tensor([50.0 if p.bits == 8 else 0.0 for p in sn.players]))
        assert float(complexity_loss(sn, cost, "flash")) == pytest.approx(64.0, rel=1e-4)
        sn.alpha.zero_()
    loss = complexity_loss(sn, cost, "flash")
    loss.backward()
    grad = sn.alpha.grad
    w = np.mean(cost.w_candidates)
    for i, p in enumerate(sn.players):
        if p.kind == "a":  # activations cost no flash
            assert abs(float(grad[i])) < 1e-6, p
        else:
            assert np.sign(float(grad[i])) == np.sign(p.bits - w), p
    with pytest.raises(SearchError, match="complexity must be one of"):
        EdMIPSConfig(complexity="sram")


def test_larger_cd_gives_lower_expected_bops(digits, tmp_path: Path) -> None:
    free = run_edmips(_supernet(digits), digits, EdMIPSConfig(**{**CFG, "cd": 0.0}), tmp_path / "cd0", device="cpu")
    tight = run_edmips(_supernet(digits), digits, EdMIPSConfig(**{**CFG, "cd": 0.05}), tmp_path / "cd1", device="cpu")
    assert tight.details["expected_bops"] < 0.8 * free.details["expected_bops"]
    bits = lambda r: sum(b.w_bits * b.a_bits for b in r.policy.values())  # noqa: E731
    assert bits(tight) < bits(free)
    assert [h["kind"] for h in free.history] == ["train", "train"]
    assert free.history[-1]["complexity_loss"] == 0.0 and tight.history[-1]["complexity_loss"] > 0


def test_crash_after_an_epoch_resumes_to_the_identical_alpha(digits, tmp_path: Path, monkeypatch) -> None:
    cfg = EdMIPSConfig(**{**CFG, "cd": 0.01, "warmup_epochs": 1, "epochs": 3})
    whole = run_edmips(_supernet(digits), digits, cfg, tmp_path / "whole", device="cpu")
    assert [h["kind"] for h in whole.history] == ["warmup", "train", "train"]
    init = np.random.default_rng([cfg.seed, 11]).normal(0.0, cfg.alpha_init_std, len(whole.alpha))
    np.testing.assert_array_equal(whole.history[0]["alpha"], init.astype(np.float32).astype(np.float64))  # warm-up: α frozen

    real_save = search_state.save_state
    calls = {"n": 0}

    def crash_after_two(*args, **kwargs):
        real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill after the second checkpoint")
    monkeypatch.setattr(search_state, "save_state", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_edmips(_supernet(digits), digits, cfg, tmp_path / "crashed", device="cpu")
    monkeypatch.setattr(search_state, "save_state", real_save)
    resumed = run_edmips(_supernet(digits), digits, cfg, tmp_path / "crashed", device="cpu")
    np.testing.assert_array_equal(resumed.alpha, whole.alpha)
    assert resumed.policy == whole.policy
    assert [h["step"] for h in resumed.history] == [1, 2, 3]


def test_normalized_coefficient_mode_is_rejected(digits, tmp_path: Path) -> None:
    with pytest.raises(SearchError, match="softmax"):
        run_edmips(_supernet(digits, coefficient_mode="normalized"), digits, EdMIPSConfig(**CFG), tmp_path, device="cpu")
