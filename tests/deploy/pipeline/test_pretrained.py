"""The FP checkpoint shipped in checkpoints/: the accuracy recorded in it holds on the CIFAR-10 copy, and a
resnet8/cifar10 run starts from it."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from deploy.pipeline.pretrained import SHIPPED, fp_checkpoint, shipped_checkpoint
from search.nn.data import BatchLoader, default_data_root, load_dataset
from search.nn.train import evaluate, load_checkpoint


def test_every_shipped_checkpoint_is_in_the_repository():
    for (model, dataset), rel in SHIPPED.items():
        assert shipped_checkpoint(model, dataset) is not None, f"{rel} is missing"


def test_resnet8_checkpoint_reaches_80_percent_on_the_test_split(tmp_path):
    path = shipped_checkpoint("resnet8", "cifar10")
    model, meta = load_checkpoint(path)
    assert (meta["model"], meta["dataset"], meta["epochs"]) == ("resnet8", "cifar10", 20)
    data_dir = default_data_root()
    if not (data_dir / "cifar10").exists():
        pytest.fail(f"the CIFAR-10 copy is not at {data_dir / 'cifar10'} (../shared/data); set $SMPQ_DATA_DIR")
    ds = load_dataset("cifar10", data_dir, seed=meta["seed"])
    acc = evaluate(model, BatchLoader(ds.test, ds, 500)).accuracy
    assert acc >= 0.80
    assert acc == pytest.approx(meta["test_accuracy"], abs=0.002)  # what checkpoints/*.md records
    cfg = SimpleNamespace(model=SimpleNamespace(checkpoint=None, pretrained=True, name="resnet8", model_kwargs={}),
                          dataset=SimpleNamespace(name="cifar10"))
    assert fp_checkpoint(cfg, tmp_path) == path
