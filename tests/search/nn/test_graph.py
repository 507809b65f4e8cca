"""Execution-graph extraction with torch.fx: zoo models, hand-sized graphs, lifetimes, errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from search.errors import SearchError
from search.nn.graph import extract_graph
from search.nn.models import build_model, quantizable_layers

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def zoo() -> dict:
    torch.manual_seed(0)
    return {name: build_model(name, SHAPE, 10) for name in ("resnet8", "resnet20", "mbv2")}


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "mbv2"])
def test_zoo_layer_order_matches_quantizable_layers(zoo: dict, name: str) -> None:
    model = zoo[name]
    g = extract_graph(model)
    assert g.layer_names() == [n for n, _ in quantizable_layers(model)]
    conv_like = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert g.params == sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0) for m in conv_like)
    # every node's tensors are consistent: inputs are produced before they are read
    for n in g.nodes:
        for t in n.inputs:
            assert g.tensors[t].first_use <= n.index <= g.tensors[t].last_use


def test_resnet8_matches_mlperf_tiny_figures(zoo: dict) -> None:
    g = extract_graph(zoo["resnet8"])
    assert abs(g.macs - 12.5e6) / 12.5e6 < 0.01       # MLPerf Tiny IC: ≈ 12.5 M MACs
    assert abs(g.params - 78e3) / 78e3 < 0.02          # ≈ 78 k parameters
    assert [n.op_type for n in g.nodes].count("add") == 3
    assert g.nodes[-1].op_type == "fully_connected" and g.nodes[-1].out_shape == (10,)


def test_resnet8_residual_tensor_lives_until_its_add(zoo: dict) -> None:
    g = extract_graph(zoo["resnet8"])
    first_add = next(n for n in g.nodes if n.op_type == "add")
    block_in = g.tensors[g.node("layers.0.conv1").inputs[0]]   # the stem's output: read by conv1 and the add
    assert block_in.id in first_add.inputs
    assert block_in.last_use == first_add.index
    conv2_out = g.node("layers.0.conv2").output
    assert set(first_add.inputs) == {block_in.id, conv2_out}


def test_mbv2_depthwise_and_residual_adds(zoo: dict) -> None:
    model = zoo["mbv2"]
    g = extract_graph(model)
    dw = [n for n in g.nodes if n.op_type == "depthwise_conv2d"]
    dw_modules = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(dw) == len(dw_modules) > 0
    residual_blocks = sum(1 for m in model.modules() if getattr(m, "use_res_connect", False))
    assert [n.op_type for n in g.nodes].count("add") == residual_blocks > 0
    for n in dw:
        c = n.attrs["in_channels"]
        assert n.macs == n.out_shape[0] * n.out_shape[1] * n.out_shape[2] * 9 and n.out_shape[0] == c


class Tiny(nn.Module):
    """conv3x3 → BN → ReLU → conv1x1(+bias) ; add(residual) → mean pool → flatten → FC."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.conv1(x)))
        z = self.conv2(y) + y
        z = z.mean((2, 3))
        return self.fc(z.view(z.size(0), -1))


def test_hand_sized_graph() -> None:
    g = extract_graph(Tiny(), (2, 6, 6))
    assert [n.op_type for n in g.nodes] == ["conv2d", "bn", "relu", "conv2d", "add", "pool", "reshape", "fully_connected"]
    c1, c2, fc = g.layers()
    assert (c1.macs, c1.weight_params, c1.bias_params, c1.out_channels) == (4 * 6 * 6 * 2 * 9, 72, 0, 4)
    assert (c2.macs, c2.weight_params, c2.bias_params) == (4 * 6 * 6 * 4, 16, 4)
    assert (fc.macs, fc.params, fc.out_channels) == (12, 15, 3)
    # BN and ReLU work in place on conv1's output, which stays alive until the add (step 4)
    t1 = g.tensors[c1.output]
    assert g.nodes[1].output == g.nodes[2].output == c1.output
    assert (t1.first_use, t1.last_use, t1.shape) == (0, 4, (4, 6, 6))
    assert g.tensors[g.inputs[0]].last_use == 0
    assert g.tensors[g.outputs[0]].shape == (3,)


def test_relu_on_a_shared_tensor_gets_its_own_buffer() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return torch.relu(y) + y   # y is read by the relu and by the add: relu cannot overwrite it

    g = extract_graph(Shared(), (1, 4, 4))
    relu = next(n for n in g.nodes if n.op_type == "relu")
    assert relu.output != relu.inputs[0]


def test_extraction_leaves_the_model_untouched() -> None:
    model = build_model("resnet8", SHAPE, 10).train()
    before = model.bn1.running_mean.clone()
    extract_graph(model)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model.bn1.running_mean, before)


@pytest.mark.parametrize("module, match", [
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sigmoid()), "module '1' of type Sigmoid"),
    (nn.Sequential(nn.Conv2d(4, 8, 3, groups=2)), "grouped convolution"),
])
def test_unsupported_modules_are_named(module: nn.Module, match: str) -> None:
    with pytest.raises(SearchError, match=match):
        extract_graph(module, (3 if "Sigmoid" in match else 4, 8, 8))


def test_unsupported_function_and_tracing_errors() -> None:
    class Cat(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, x], 1)

    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.fc(x))

    with pytest.raises(SearchError, match="'cat'"):
        extract_graph(Cat(), (2, 4, 4))
    with pytest.raises(SearchError, match="cannot trace Branchy"):
        extract_graph(Branchy(), (2, 4, 4))
    with pytest.raises(SearchError, match="'fc' is called more than once"):
        extract_graph(Reused(), (4,))
    with pytest.raises(SearchError, match="input shape"):
        extract_graph(nn.Sequential(nn.Linear(4, 2)))


def test_quantized_wrappers_are_leaves() -> None:
    """QAT layers (subclasses of Conv2d/Linear with quantizers inside) give the same graph as the FP model."""
    from search.policy import Policy
    from search.nn.qmodel import quantize_model

    torch.manual_seed(0)
    model = build_model("resnet8", SHAPE, 10)
    fp = extract_graph(model)
    q = extract_graph(quantize_model(model, Policy.uniform(fp.layer_names(), 4, 4)))
    assert [(n.name, n.op_type, n.macs, n.params) for n in q.nodes] == [(n.name, n.op_type, n.macs, n.params) for n in fp.nodes]
