"""Stale BatchNorm statistics of a briefly trained FP model: found, re-estimated before calibration, and
the reason QAT of such a model no longer explodes (search.nn.train.refresh_stale_bn)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from search.nn.data import BatchLoader, load_dataset
from search.nn.models import build_model, quantizable_layers
from search.policy import Policy
from search.nn.qat import QATConfig, build_qat_model, finetune
from search.nn.qmodel import calibrate, quantize_model
from search.nn.train import TrainConfig, fit, load_checkpoint, refresh_stale_bn


@pytest.fixture(scope="module")
def brief(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """mbv2 after two SGD steps (256 digits, batch 128): its running statistics are still near their init."""
    out = tmp_path_factory.mktemp("brief")
    ds = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    model = build_model("mbv2", ds.input_shape, ds.num_classes)
    fit(model, ds, TrainConfig(epochs=1, batch_size=128, subset=256, progress=False), out, model_name="mbv2")
    fp, meta = load_checkpoint(out / "fp.pt")
    return {"fp": fp, "ds": ds, "out": out, "loader": BatchLoader(ds.train.subset(256), ds, 128, shuffle=True, seed=0)}


def _max_grad(model: nn.Module, loader: BatchLoader) -> float:
    model.train()
    x, y = next(iter(loader))
    nn.functional.cross_entropy(model(x), y).backward()
    return max(float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None)


def _w2a4(fp: nn.Module) -> Policy:
    return Policy.uniform([n for n, _ in quantizable_layers(fp)], 2, 4, True)


def test_stale_statistics_are_reestimated_on_a_copy(brief):
    fp = brief["fp"]
    before = {k: v.clone() for k, v in fp.state_dict().items()}
    fresh, note = refresh_stale_bn(fp, brief["loader"], 2)
    assert fresh is not fp and note is not None and "re-estimated on 2 training batch(es)" in note
    assert all(torch.equal(before[k], v) for k, v in fp.state_dict().items())  # the caller's model is untouched
    # parameters are the same; only BatchNorm statistics changed
    for k, v in fresh.state_dict().items():
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(v, before[k]), k
    again, note2 = refresh_stale_bn(fresh, brief["loader"], 2)  # consistent statistics are left alone
    assert again is fresh and note2 is None


def test_qat_of_a_briefly_trained_model_does_not_explode(brief):
    fp, ds, loader = brief["fp"], brief["ds"], brief["loader"]
    stale = quantize_model(fp, _w2a4(fp), True, seed=0)  # the old recipe: calibrate on the stale statistics
    calibrate(stale, loader, n_batches=2, seed=0)
    assert _max_grad(stale, loader) > 1e6
    cfg = QATConfig(epochs=1, subset=256, calib_batches=2, seed=0, progress=False)
    assert _max_grad(build_qat_model(fp, _w2a4(fp), ds, cfg), loader) < 1e3
    res = finetune(fp, _w2a4(fp), ds, cfg, brief["out"] / "qat", "mbv2", resume=False)  # finishes, finite weights
    assert res.meta["test_accuracy"] >= 0
