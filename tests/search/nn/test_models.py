"""Model zoo: every model runs on every dataset shape; quantizable layers come in execution order."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from search.errors import SearchError
from search.nn.models import MODELS, build_model, quantizable_layers

SHAPES = {"cifar10": (3, 32, 32), "mnist": (1, 28, 28), "digits": (1, 8, 8)}


@pytest.mark.parametrize("shape_name", sorted(SHAPES))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_gives_one_logit_per_class(name: str, shape_name: str) -> None:
    torch.manual_seed(0)
    shape = SHAPES[shape_name]
    num_classes = 7  # not 10, so a hard-coded head would show
    model = build_model(name, shape, num_classes)
    assert model.input_shape == shape
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    # different inputs give different logits (the network is not degenerate)
    assert not torch.equal(out[0], out[1])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_train_mode_backward_reaches_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, SHAPES["digits"], 10)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def _expected_order(model: nn.Module, shape: tuple[int, int, int]) -> list[nn.Module]:
    """Conv/Linear modules in the order autograd sees their outputs: traced independently by forward hooks."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return order


@pytest.mark.parametrize("name", sorted(MODELS))
def test_quantizable_layers_in_execution_order(name: str) -> None:
    shape = SHAPES["cifar10"]
    model = build_model(name, shape, 10)
    layers = quantizable_layers(model)
    modules = [m for _, m in layers]
    every = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(modules) == len(every) and set(map(id, modules)) == set(map(id, every))
    assert modules == _expected_order(model, shape)
    first, last = modules[0], modules[-1]
    assert isinstance(first, nn.Conv2d) and first.in_channels == 3  # the stem sees the image
    assert isinstance(last, nn.Linear) and last.out_features == 10  # the classifier
    names = dict(model.named_modules())
    assert all(names[n] is m for n, m in layers)
    assert model.training  # the helper restores the mode it found


def test_quantizable_layers_needs_an_input_shape() -> None:
    model = build_model("resnet8", SHAPES["digits"], 10)
    del model.input_shape
    with pytest.raises(SearchError, match="input shape"):
        quantizable_layers(model)
    assert len(quantizable_layers(model, SHAPES["digits"])) == 10


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet8_matches_mlperf_tiny_size() -> None:
    model = build_model("resnet8", SHAPES["cifar10"], 10)
    # MLPerf Tiny IC ResNet-8: 78,042 trainable parameters including BatchNorm's gamma/beta
    assert abs(_params(model) - 78_042) <= 0.01 * 78_042
    convs = [m for _, m in quantizable_layers(model)]
    assert [m.out_channels for m in convs[:-1]] == [16, 16, 16, 32, 32, 32, 64, 64, 64]
    # ≈12.5 M multiply-accumulates for one 32×32 image
    macs = 0
    hooks = []
    for m in convs:
        def count(mod: nn.Module, inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
            nonlocal macs
            per_output = mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            macs += out.numel() * per_output
        hooks.append(m.register_forward_hook(count))
    with torch.no_grad():
        model.eval()(torch.zeros(1, *SHAPES["cifar10"]))
    assert 12.0e6 < macs < 13.0e6


def test_relative_sizes() -> None:
    sizes = {name: _params(build_model(name, SHAPES["cifar10"], 10)) for name in MODELS}
    assert sizes["resnet8"] < sizes["resnet20"]
    assert 0.25e6 < sizes["resnet20"] < 0.30e6  # He et al.: 0.27 M
    mbv2_full_head = _params(build_model("mbv2", SHAPES["cifar10"], 10, last_channel=None))
    assert mbv2_full_head > sizes["mbv2"]  # the narrower head is what last_channel is for


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(SearchError, match="mbv2.*resnet20.*resnet8"):
        build_model("vgg16", SHAPES["cifar10"], 10)


def test_same_seed_same_initial_weights() -> None:
    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return build_model("resnet8", SHAPES["digits"], 10)

    a, b, c = build(1), build(1), build(2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
