"""Fixed-policy QAT models: module swapping on every zoo model, policies, signedness, calibration."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import numpy as np

from search.nn.data import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, BatchLoader, Dataset, Split, default_data_root
from search.errors import SearchError
from search.nn.models import build_model, quantizable_layers
from search.policy import Policy
from search.nn.qmodel import (QuantConv2d, QuantLayer, QuantLinear, calibrate, layer_quant_params, policy_of,
                           quantize_model)

SHAPE = (3, 32, 32)


def _random_policy(names: list[str], seed: int) -> Policy:
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(1, 9, (len(names),), generator=g).tolist()
    a = torch.randint(2, 9, (len(names),), generator=g).tolist()
    return Policy(zip(names, zip(w, a)))


@pytest.fixture(scope="module")
def fp_models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: build_model(name, SHAPE, 10).eval() for name in ("resnet8", "resnet20", "mbv2")}


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "mbv2"])
def test_quantize_model_swaps_every_layer(fp_models, name):
    fp = fp_models[name]
    names = [n for n, _ in quantizable_layers(fp)]
    policy = _random_policy(names[1:-1], seed=len(names))  # first/last omitted: held at 8 bits
    q = quantize_model(fp, policy, first_last_8bit=True)
    layers = quantizable_layers(q)
    assert [n for n, _ in layers] == names  # same names, same execution order
    for n, m in layers:
        assert isinstance(m, QuantConv2d if isinstance(fp.get_submodule(n), nn.Conv2d) else QuantLinear)
        assert m.weight is not fp.get_submodule(n).weight  # a copy: the FP model is untouched
        torch.testing.assert_close(m.weight, fp.get_submodule(n).weight)
    got = policy_of(q)
    assert got[names[0]] == (8, 8) and got[names[-1]] == (8, 8)  # first/last held at 8 bits
    for n in names[1:-1]:
        assert got[n] == policy[n]
    assert not any(isinstance(m, QuantLayer) for m in fp.modules())
    x = torch.randn(2, *SHAPE)
    y = q.eval()(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    assert not torch.equal(y, fp(x))  # quantization changes the function


def test_first_last_searched_when_setting_is_off(fp_models):
    fp = fp_models["resnet8"]
    q = quantize_model(fp, Policy.uniform(fp, 2, 3))
    assert set(policy_of(q).values()) == {(2, 3)}


def test_policy_mismatch_is_a_one_line_error(fp_models):
    fp = fp_models["resnet8"]
    names = [n for n, _ in quantizable_layers(fp)]
    full = Policy.uniform(names, 4, 4)
    missing = Policy([(n, b) for n, b in full.items() if n != names[3]])
    with pytest.raises(SearchError) as e:
        quantize_model(fp, missing)
    assert names[3] in str(e.value) and "\n" not in str(e.value)
    extra = Policy([*full.items(), ("layers.9.conv1", (4, 4))])
    with pytest.raises(SearchError, match="layers.9.conv1"):
        quantize_model(fp, extra)
    with pytest.raises(SearchError, match=f"'{names[0]}'.*first_last_8bit"):
        quantize_model(fp, full, first_last_8bit=True)
    # first/last may be omitted when they are held at 8 bits
    partial = Policy([(n, (4, 4)) for n in names[1:-1]])
    assert policy_of(quantize_model(fp, partial, first_last_8bit=True))[names[0]] == (8, 8)
    with pytest.raises(SearchError, match=f"'{names[1]}'.*w_bits"):
        Policy([(names[1], (9, 4))])
    with pytest.raises(SearchError, match="a_bits"):
        Policy([(names[1], (4, 1))])


def test_policy_json_round_trip_keeps_extras(tmp_path):
    p = Policy([("a", (4, 8)), ("b", (2, 3))], meta={"omega": {"flash_bytes": 123}},
               layer_info={"b": {"macs": 99, "score": 0.5}})
    p.save(tmp_path / "policy.json")
    q = Policy.load(tmp_path / "policy.json")
    assert q == p and list(q) == ["a", "b"]
    assert q.meta == {"omega": {"flash_bytes": 123}} and q.layer_info == {"b": {"macs": 99, "score": 0.5}}
    assert q.to_dict()["layers"][1] == {"name": "b", "w_bits": 2, "a_bits": 3, "macs": 99, "score": 0.5}
    with pytest.raises(SearchError, match="layers\\[0\\]"):
        Policy.from_dict({"layers": [{"name": "a", "w_bits": 4}]})
    with pytest.raises(SearchError, match="does not exist"):
        Policy.load(tmp_path / "nope.json")


def test_activation_signedness_follows_the_graph(fp_models):
    # network input (normalised) → signed; after ReLU / ReLU6 → unsigned; after a linear bottleneck → signed
    q = quantize_model(fp_models["mbv2"], Policy.uniform(fp_models["mbv2"], 4, 4))
    signed = {n: m.a_quant.signed for n, m in quantizable_layers(q)}
    assert signed["features.0.0"]                      # the image
    assert not signed["features.1.conv.0.0"]           # depthwise conv after the stem's ReLU6
    assert not signed["features.1.conv.1"]             # 1×1 projection fed by the depthwise ReLU6
    assert signed["features.2.conv.0.0"]               # expansion fed by the linear bottleneck of block 1
    assert not signed["classifier.0"]                  # pooled ReLU6 output
    r = quantize_model(fp_models["resnet8"], Policy.uniform(fp_models["resnet8"], 4, 4))
    rs = {n: m.a_quant.signed for n, m in quantizable_layers(r)}
    assert rs["conv1"] and not any(v for n, v in rs.items() if n != "conv1")


def test_calibration_sets_steps_from_data_and_keeps_bn(fp_models):
    with np.load(default_data_root() / "cifar10" / "test.npz") as d:  # 96 real CIFAR-10 images
        part = Split(d["x"][:96], d["y"][:96].astype(np.int64))
    ds = Dataset("cifar10", part, part, part, list(CIFAR10_CLASSES), CIFAR10_MEAN, CIFAR10_STD)
    fp = build_model("resnet8", ds.input_shape, ds.num_classes)
    q = quantize_model(fp, Policy.uniform(fp, 4, 4))
    bn_before = {k: v.clone() for k, v in q.state_dict().items() if "running" in k or "num_batches" in k}
    steps_before = {n: m.a_quant.step.item() for n, m in quantizable_layers(q)}
    q.train()
    loader = BatchLoader(ds.train, ds, batch_size=32)
    assert calibrate(q, loader, n_batches=3) == 3
    assert q.training  # mode restored
    for k, v in bn_before.items():
        assert torch.equal(q.state_dict()[k], v), k
    after = {n: m.a_quant.step.item() for n, m in quantizable_layers(q)}
    assert any(abs(after[n] - steps_before[n]) > 1e-6 for n in after)
    # deterministic
    q2 = quantize_model(fp, Policy.uniform(fp, 4, 4))
    calibrate(q2, loader, n_batches=3)
    for (n, a), (_, b) in zip(quantizable_layers(q), quantizable_layers(q2)):
        assert torch.equal(a.a_quant.step, b.a_quant.step) and torch.equal(a.w_quant.step, b.w_quant.step), n
    with pytest.raises(SearchError, match="at least one batch"):
        calibrate(q, loader, n_batches=0)


def test_layer_params_codes_and_state_dict_round_trip(fp_models):
    fp = fp_models["resnet8"]
    names = [n for n, _ in quantizable_layers(fp)]
    policy = _random_policy(names, seed=1)
    q = quantize_model(fp, policy, seed=3).eval()
    params = layer_quant_params(q)
    assert list(params) == names
    for n, m in quantizable_layers(q):
        p = params[n]
        assert (p.w_bits, p.a_bits) == policy[n]
        assert p.w_scale.shape == (m.weight.shape[0],) and p.a_signed == m.a_quant.signed
        codes, scale = m.w_quant.codes(m.weight)
        assert codes.dtype == torch.int32 and int(codes.min()) >= p.w_qmin and int(codes.max()) <= p.w_qmax
        shape = (-1,) + (1,) * (m.weight.dim() - 1)
        assert torch.equal(codes.float() * scale.view(shape), m.w_quant(m.weight).detach())
    # a fresh quantize_model of the FP model + load_state_dict reproduces the QAT model exactly
    fresh = quantize_model(fp, policy, seed=99).eval()
    fresh.load_state_dict(q.state_dict())
    x = torch.randn(3, *SHAPE)
    assert torch.equal(fresh(x), q(x))


def test_qat_gradients_reach_weights_and_steps(fp_models):
    q = quantize_model(fp_models["resnet8"], Policy.uniform(fp_models["resnet8"], 4, 4)).train()
    q(torch.randn(4, *SHAPE)).square().mean().backward()
    for n, m in quantizable_layers(q):
        assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0, n
        assert m.w_quant.step.grad is not None and m.a_quant.step.grad is not None, n


def test_fold_batchnorm_is_deploy_faithful_copy():
    """BN folded into the weight scale and the bias rounded to the int32 grid: BN modules become Identity,
    the original model is untouched, and outputs move only by the bias rounding (no requantizer given)."""
    from search.nn.qmodel import bias_codes, fold_batchnorm, fold_layer

    torch.manual_seed(3)
    model = build_model("resnet8", SHAPE, 10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1.5, 1.5)
    q = quantize_model(model, Policy([(n, (4, 8)) for n, _ in quantizable_layers(model)])).eval()
    f = fold_batchnorm(q)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in f.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    assert set(f.state_dict()) <= set(q.state_dict())  # the folded buffers are not persistent
    x = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = q(x), f(x).float()
    assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.75
    assert (a - b).abs().mean() < 0.1 * (a.max() - a.min())
    codes, scale, bias = fold_layer(q.conv1, q.bn1)
    assert (scale > 0).all() and np.abs(codes).max() <= 7
    step = np.float64(np.float32(q.conv1.a_quant.scale())) * scale.astype(np.float64)
    np.testing.assert_array_equal(f.conv1.deployed_bias.numpy(), bias_codes(bias, q.conv1.a_quant.scale(), scale))
    assert np.abs(bias_codes(bias, q.conv1.a_quant.scale(), scale) * step - bias).max() <= step.max() / 2 + 1e-12
