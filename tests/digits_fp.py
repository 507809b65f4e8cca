"""A shared fixture: an FP ResNet-8 trained one epoch on scikit-learn digits, with its graph and W4A4 Ω."""
from __future__ import annotations

import pytest

from deploy.devices.cost import omega
from search.nn.data import load_dataset
from search.nn.graph import extract_graph
from search.nn.models import build_model
from search.policy import Policy
from search.nn.train import TrainConfig, fit, load_checkpoint


@pytest.fixture(scope="module")
def fp(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("fp")
    ds = load_dataset("digits", seed=0)
    model = build_model("resnet8", ds.input_shape, ds.num_classes)
    fit(model, ds, TrainConfig(epochs=1, batch_size=64, lr=0.05, progress=False), out, device="cpu", model_name="resnet8")
    m, _ = load_checkpoint(out / "fp.pt")
    graph = extract_graph(m)
    w4a4 = omega(graph, Policy.uniform(graph.layer_names(), 4, 4, first_last_8bit=True))
    return {"path": str(out / "fp.pt"), "dataset": ds, "graph": graph, "w4a4": w4a4}
