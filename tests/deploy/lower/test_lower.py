"""Lowering QAT models (search/nn/qmodel.py) to the IR: fidelity to fake-quant PyTorch, runtimes bit-exact,
one-line errors for bad input. Trained-model accuracy checks are marked slow."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from torch import nn

from deploy.lower import reference
from deploy.lower.ir import IRError
from deploy.lower.lower import faithful_model, lower
from search.errors import SearchError
from search.nn.models import build_model, quantizable_layers
from search.policy import Policy
from search.nn.qmodel import quantize_model

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
BITS = (2, 3, 4, 5, 8)


def mixed_policy(model: nn.Module) -> Policy:
    """First/last layers w8a8, the others cycle through 2/3/4/5/8-bit weights and activations."""
    names = [n for n, _ in quantizable_layers(model)]
    return Policy([(n, (8, 8) if i in (0, len(names) - 1) else (BITS[i % 5], max(2, BITS[(i + 2) % 5])))
                   for i, n in enumerate(names)])


def normalise(pixels: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(pixels.transpose(0, 3, 1, 2).astype(np.float32)) / 255
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def random_bn_qat(name: str, seed: int = 0) -> nn.Module:
    """A mixed-policy QAT model with non-trivial BatchNorm statistics (no training: fast)."""
    torch.manual_seed(seed)
    model = build_model(name, (3, 32, 32), 10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1.5, 1.5)  # negative gammas exercise the sign flip of folded codes
            m.bias.data.uniform_(-0.3, 0.3)
    q = quantize_model(model, mixed_policy(model), True)
    return q.eval()


@pytest.fixture(scope="module")
def resnet8_lowered():
    q = random_bn_qat("resnet8")
    rng = np.random.default_rng(0)
    calib = normalise(rng.integers(0, 256, (64, 32, 32, 3)).astype(np.uint8))
    g = lower(q, MEAN, STD, calib)
    return q, g


def test_resnet8_integer_matches_fake_quant(resnet8_lowered):
    q, g = resnet8_lowered
    pixels = np.random.default_rng(5).integers(0, 256, (64, 32, 32, 3)).astype(np.uint8)
    codes = reference.run(g, reference.to_int8_input(pixels))
    with torch.no_grad():
        fq = q(normalise(pixels)).numpy()
    deq = reference.dequantize(g, codes)
    assert (deq.argmax(1) == fq.argmax(1)).mean() >= 0.95
    spread = fq.max() - fq.min()
    assert np.abs(deq - fq).mean() < 0.05 * spread


def _faithful_codes(f: nn.Module, g, pixels: np.ndarray) -> np.ndarray:
    """The deploy-faithful fake-quant model's output, as codes of the IR's output tensor."""
    t = g.tensors[g.outputs[0]]
    with torch.no_grad():
        out = f(normalise(pixels)).numpy()
    return np.round(out / np.float32(t.scale)).astype(np.int64) + t.zero_point


@pytest.mark.parametrize("name", ["resnet8", "mbv2"])
def test_faithful_fake_quant_equals_integer_reference(name, resnet8_lowered):
    """BN folded, int32 biases, TFLite requantisation and the graph's calibrated grids: the fake-quant model
    reproduces the integer reference's output codes (the unfolded QAT model does not, at 2–5 bits)."""
    if name == "resnet8":
        q, g = resnet8_lowered
    else:
        q = random_bn_qat(name)
        g = lower(q, MEAN, STD, normalise(np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3)).astype(np.uint8)))
    pixels = np.random.default_rng(11).integers(0, 256, (24, 32, 32, 3)).astype(np.uint8)
    codes = reference.run(g, reference.to_int8_input(pixels)).astype(np.int64)
    mine = _faithful_codes(faithful_model(q, g), g, pixels)
    assert (mine == codes).mean() >= 0.99 and np.abs(mine - codes).max() <= 1
    assert (mine.argmax(1) == codes.argmax(1)).all()
    with torch.no_grad():  # the original model is left as it was (BN modules and all)
        assert any(isinstance(m, nn.BatchNorm2d) for m in q.modules())


def test_faithful_model_uses_lowering_bias_codes(resnet8_lowered):
    """One implementation: the IR's int32 biases are exactly the deploy-faithful layers' bias codes."""
    from search.nn.qmodel import quant_layers

    q, g = resnet8_lowered
    f = faithful_model(q, g)
    ops = {op.name: op for op in g.ops}
    for name, layer in quant_layers(f):
        np.testing.assert_array_equal(g.const(ops[name], "bias").astype(np.float64), layer.deployed_bias.numpy())


def test_resnet8_ir_contents(resnet8_lowered):
    q, g = resnet8_lowered
    kinds = [op.kind for op in g.ops]
    assert kinds[0] == "depthwise_conv2d" and g.ops[0].name == "normalise"
    adds = {op.name.split("#")[0] for op in g.ops if op.kind == "add"}
    assert len(adds) == 3 and "avg_pool" in kinds and kinds[-1] == "fully_connected"
    ops = {op.name: op for op in g.ops}
    for op in g.ops:  # extra instances of a layer (other output grids) share its constants
        if "#" in op.name and "weights" in op.arrays:
            assert op.arrays["weights"] == ops[op.name.split("#")[0]].arrays["weights"]
    w_bits = {op.name: op.attrs["w_bits"] for op in g.ops if "weights" in op.arrays}
    layers = dict(quantizable_layers(q))
    for name, bits in q.qpolicy.items():
        assert w_bits[name] == bits.w_bits
        t = g.tensors[ops[name].inputs[0]]  # every layer reads its input in its own quantizer's grid
        a = layers[name].a_quant
        assert (t.bits, t.scale, t.zero_point == 0) == (bits.a_bits, float(np.float32(a.scale())), a.signed)
        codes = g.consts[f"{name}.weights"]
        lim = 1 if bits.w_bits == 1 else 2 ** (bits.w_bits - 1) - 1
        assert np.abs(codes).max() <= lim
    assert "arena_bytes" not in g.meta  # one arena plan: the runtime exporter's


def test_normalise_reproduces_fake_quant_input_codes(resnet8_lowered):
    """The pixel → first-layer-input mapping equals the QAT model's float32 normalise + quantize for
    (almost) every one of the 256 values per channel (a value within ~1/2^r of a tie can be lost to
    TFLite's double rounding)."""
    from deploy.lower.lower import _torch_input_codes

    q, g = resnet8_lowered
    pixels = np.broadcast_to(np.arange(256, dtype=np.uint8).reshape(256, 1, 1, 1), (256, 32, 32, 3))
    vals = reference.run(g, reference.to_int8_input(pixels), keep=True)
    out = g.tensors[g.ops[0].outputs[0]]
    mine = vals[g.ops[0].outputs[0]][:, 0, 0, :].astype(np.int64) - out.zero_point
    want = _torch_input_codes(q.conv1, np.array(MEAN), np.array(STD), (3, 32, 32))
    assert (mine != want).sum() <= 3
    assert np.abs(mine - want).max() <= 1


class _TwoStem(nn.Module):
    """Two first layers reading the input in different grids (8-bit and 4-bit)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.ba = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.b, self.bb = nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.ba(self.a(x)) + self.bb(self.b(x)))
        return self.fc(torch.flatten(self.pool(y), 1))


def test_one_normalise_op_per_input_grid():
    """Each input grid gets its own normalise op (own name and constants), and the deploy-faithful model
    follows each one."""
    from deploy.lower.lower import _torch_input_codes

    from deploy.export.smpq import build_smpq
    from deploy.devices.cost import omega
    from search.nn.graph import extract_graph

    torch.manual_seed(0)
    fp = _TwoStem().eval()
    q = quantize_model(fp, Policy([("a", (8, 8)), ("b", (4, 4)), ("fc", (8, 8))]), input_shape=(3, 32, 32)).eval()
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3)).astype(np.uint8)
    g = lower(q, MEAN, STD, normalise(pixels))
    norms = [op for op in g.ops if op.name.split("#")[0] == "normalise"]
    assert [op.name for op in norms] == ["normalise", "normalise#1"]
    assert norms[0].arrays["multiplier"] != norms[1].arrays["multiplier"]
    ramp = np.broadcast_to(np.arange(256, dtype=np.uint8).reshape(256, 1, 1, 1), (256, 32, 32, 3))
    vals = reference.run(g, reference.to_int8_input(ramp), keep=True)
    for op, layer in zip(norms, (q.a, q.b)):
        out = g.tensors[op.outputs[0]]
        mine = vals[op.outputs[0]][:, 0, 0, :].astype(np.int64) - out.zero_point
        want = _torch_input_codes(layer, np.array(MEAN), np.array(STD), (3, 32, 32))
        assert (mine != want).sum() <= 3 and np.abs(mine - want).max() <= 1
    codes = reference.run(g, reference.to_int8_input(pixels)).astype(np.int64)
    mine = _faithful_codes(faithful_model(q, g), g, pixels)
    assert (mine == codes).mean() >= 0.99 and (mine.argmax(1) == codes.argmax(1)).all()
    assert omega(extract_graph(fp, (3, 32, 32)), q.qpolicy).flash_bytes == len(build_smpq(g))  # Ω counts both


def test_resnet8_tflm_and_litert_bit_exact(resnet8_lowered):
    from deploy.export.tflite import to_tflite
    from deploy.export.tflm import run_litert, run_tflm

    _, g = resnet8_lowered
    x = reference.to_int8_input(np.random.default_rng(7).integers(0, 256, (24, 32, 32, 3)).astype(np.uint8))
    ref = reference.run(g, x)
    model = to_tflite(g)
    np.testing.assert_array_equal(run_tflm(model, x), ref)
    np.testing.assert_array_equal(run_litert(model, x), ref)


def test_bn_folded_into_scale_exactly():
    """conv (4-bit) + BN with a negative gamma: folded integer layer equals fake-quant within 1 LSB."""
    torch.manual_seed(1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(6)
            self.relu = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.flat = nn.Flatten()
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            return self.fc(self.flat(self.pool(self.relu(self.bn(self.conv(x))))))

    net = Net()
    net.bn.weight.data = torch.tensor([1.0, -0.5, 2.0, -1.5, 0.7, 1.2])
    net.bn.running_mean.uniform_(-0.1, 0.1)
    net.bn.running_var.uniform_(0.5, 1.5)
    net.input_shape = (3, 8, 8)
    q = quantize_model(net, Policy([("conv", (4, 8)), ("fc", (8, 6))])).eval()
    pixels = np.random.default_rng(2).integers(0, 256, (32, 8, 8, 3)).astype(np.uint8)
    g = lower(q, MEAN, STD, normalise(pixels))
    vals = reference.run(g, reference.to_int8_input(pixels), keep=True)
    conv_op = next(op for op in g.ops if op.name == "conv")
    t = g.tensors[conv_op.outputs[0]]
    with torch.no_grad():
        y = q.relu(q.bn(q.conv(normalise(pixels)))).numpy().transpose(0, 2, 3, 1)
    real = (vals[conv_op.outputs[0]].astype(np.float64) - t.zero_point) * t.scale
    err = np.abs(real - y)
    # output rounding (≤ ½ LSB) plus rare 1-LSB flips of the 8-bit input grid at near-ties
    assert err.max() <= 2 * t.scale and err.mean() <= 0.3 * t.scale


def test_unsupported_module_is_one_line_error():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.act = nn.Sigmoid()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.flat = nn.Flatten()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.flat(self.pool(self.act(self.conv(x)))))

    net = Net()
    net.input_shape = (3, 8, 8)
    q = quantize_model(net, Policy([("conv", (8, 8)), ("fc", (8, 8))])).eval()
    with pytest.raises(IRError, match="Sigmoid") as e:
        lower(q, MEAN, STD, torch.randn(4, 3, 8, 8))
    assert "\n" not in str(e.value)


def test_bad_normalisation_and_unquantized_model():
    q = random_bn_qat("resnet8")
    with pytest.raises(IRError, match="mean/std"):
        lower(q, (0.5,), (0.25,), torch.randn(2, 3, 32, 32))
    fp = build_model("resnet8", (3, 32, 32), 10)
    with pytest.raises(IRError, match="not quantized"):
        lower(fp, MEAN, STD, torch.randn(2, 3, 32, 32))


def _write_run(tmp_path, q: nn.Module, policy: Policy) -> None:
    meta = {"model": "resnet8", "model_kwargs": {}, "dataset": "cifar10", "input_shape": [3, 32, 32],
            "classes": [str(i) for i in range(10)], "mean": list(MEAN), "std": list(STD), "seed": 0,
            "policy": policy.to_dict(), "first_last_8bit": True}
    torch.save({"state_dict": q.state_dict(), "meta": meta}, tmp_path / "qat.pt")
    policy.save(tmp_path / "policy.json")


def test_cmd_export_writes_all_formats(tmp_path):
    from deploy.cli import export as cmd_export

    q = random_bn_qat("resnet8")
    _write_run(tmp_path, q, q.qpolicy)
    args = argparse.Namespace(output=str(tmp_path), formats="onnx,onnx-int,tflite", opset=None, calib_batches=1,
                              data_dir=None)
    assert cmd_export.run(args) == 0
    for f in ("model.ir.json", "model.ir.npz", "model.onnx", "model.int.onnx", "model.tflite"):
        assert (tmp_path / f).stat().st_size > 0
    # the packed lower bound is below both files (they hold int8 / int4 containers and graph metadata)
    from deploy.lower.ir import Graph

    g = Graph.load(tmp_path / "model")
    bound = cmd_export.packed_weight_bytes(g)
    assert bound < (tmp_path / "model.tflite").stat().st_size
    assert bound < (tmp_path / "model.onnx").stat().st_size
    assert bound < (tmp_path / "model.int.onnx").stat().st_size


def test_cmd_export_bad_inputs(tmp_path):
    from deploy.cli import export as cmd_export
    from deploy.errors import DeployError

    q = random_bn_qat("resnet8")
    policy = q.qpolicy
    other = Policy([(n, (8, 8) if i else (4, 4)) for i, n in enumerate(policy)])
    _write_run(tmp_path, q, policy)
    other.save(tmp_path / "policy.json")
    args = argparse.Namespace(output=str(tmp_path), formats="tflite", opset=None, calib_batches=1, data_dir=None)
    with pytest.raises(SearchError, match="does not match"):
        cmd_export.run(args)
    (tmp_path / "qat.pt").write_bytes(b"garbage, not a checkpoint")
    with pytest.raises(SearchError, match="corrupt"):
        cmd_export.run(args)
    with pytest.raises(DeployError, match="unknown export format"):
        cmd_export.parse_formats("onnx,pdf")


# ---------------------------------------------------------------------------------------------
# trained models (slow): accuracy of the integer model vs fake-quant PyTorch, runtimes bit-exact


def _trained_qat(name: str, epochs: int, subset: int):
    from search.nn.data import BatchLoader, load_dataset
    from search.nn.qmodel import calibrate

    ds = load_dataset("cifar10", seed=0)
    torch.manual_seed(0)
    model = build_model(name, ds.input_shape, ds.num_classes)
    loader = BatchLoader(ds.train.subset(subset), ds, 128, shuffle=True, augment=True, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        model.train()
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    q = quantize_model(model, mixed_policy(model), True)
    calibrate(q, BatchLoader(ds.train.subset(2048), ds, 128, shuffle=True, seed=1), n_batches=8)
    opt = torch.optim.SGD(q.parameters(), lr=0.01, momentum=0.9)
    q.train()
    for x, y in BatchLoader(ds.train.subset(subset), ds, 128, shuffle=True, seed=2):
        opt.zero_grad()
        nn.functional.cross_entropy(q(x), y).backward()
        opt.step()
    return q.eval(), ds


@pytest.fixture(scope="module", params=[("resnet8", 2, 8000), ("mbv2", 4, 8000)], ids=["resnet8", "mbv2"])
def trained(request):
    """(QAT model, dataset, IR, int8 codes of the reference on 1000 test images)."""
    from search.nn.data import BatchLoader

    name, epochs, subset = request.param
    q, ds = _trained_qat(name, epochs, subset)
    calib = [x for x, _ in BatchLoader(ds.train.subset(512), ds, 128, shuffle=True, seed=3)]
    g = lower(q, ds.mean, ds.std, calib, name=name)
    test = ds.test.subset(1000)
    return q, ds, g, test, reference.run(g, reference.to_int8_input(test.x))


@pytest.mark.slow
def test_trained_model_runtimes_bit_exact(trained):
    """TFLite Micro, LiteRT (200 images) and ONNX Runtime on the integer-style ONNX (1000 images) = the reference."""
    from deploy.export.onnx import run_onnxruntime, to_onnx
    from deploy.export.tflite import to_tflite
    from deploy.export.tflm import run_litert, run_tflm

    _, _, g, test, codes = trained
    x = reference.to_int8_input(test.x[:200])
    model = to_tflite(g)
    np.testing.assert_array_equal(run_tflm(model, x), codes[:200])
    np.testing.assert_array_equal(run_litert(model, x), codes[:200])
    np.testing.assert_array_equal(run_onnxruntime(to_onnx(g, 21, "integer"), reference.to_int8_input(test.x)), codes)


QDQ_FLOORS = {"resnet8": (0.93, 0.8), "mbv2": (0.6, 0.05)}  # regression floors of the float-QDQ figures


@pytest.mark.slow
def test_trained_model_onnx_qdq_agreement(trained):
    """The QDQ ONNX (float rounding) in ONNX Runtime vs the reference on 1000 test images: the figures are
    printed; the floors guard against regressions (they are not the bit-exact integer style's 100 %)."""
    from deploy.export.onnx import run_onnxruntime, to_onnx

    _, _, g, test, codes = trained
    out = run_onnxruntime(to_onnx(g, 21, "qdq"), reference.to_int8_input(test.x)).astype(np.int64)
    top1 = (out.argmax(1) == codes.argmax(1)).mean()
    within = (np.abs(out - codes) <= 1).mean()
    print(f"{g.meta.get('name')}: QDQ top-1 agreement {top1:.4f}, outputs within 1 LSB {within:.4f}")
    # measured: resnet8 0.968 / 0.888; mbv2 (17 blocks, 2-3-bit activations) 0.700 / 0.090 (docs/onnx.md)
    floor_top1, floor_within = QDQ_FLOORS[g.meta.get("name", "")]
    assert top1 >= floor_top1 and within >= floor_within


@pytest.mark.slow
def test_trained_model_integer_fidelity(trained):
    """Integer reference vs the deploy-faithful fake-quant model (deploy.lower.lower.faithful_model) on 1000 test
    images: ≥ 99 % top-1 agreement, accuracies within 0.3 pp. (The unfolded QAT model agrees only ~95 %:
    TFLite's double-rounding requantisation, int32 biases and the calibrated 8-bit residual/pool/logit grids.)"""
    from search.nn.data import BatchLoader

    q, ds, g, test, codes = trained
    f = faithful_model(q, g)
    with torch.no_grad():
        fq = torch.cat([f(x) for x, _ in BatchLoader(test, ds, 250)]).numpy()
    pred_int, pred_fq = codes.argmax(1), fq.argmax(1)
    acc_int, acc_fq = (pred_int == test.y).mean(), (pred_fq == test.y).mean()
    print(f"{g.meta.get('name')}: integer {acc_int:.4f}, deploy-faithful fake-quant {acc_fq:.4f}, "
          f"top-1 agreement {(pred_int == pred_fq).mean():.4f}")
    assert acc_fq > 0.3, "the briefly trained model should beat chance clearly"
    assert (pred_int == pred_fq).mean() >= 0.99
    assert abs(acc_int - acc_fq) <= 0.003 + 1e-9


@pytest.mark.parametrize("name", ["resnet8", "mbv2"])
def test_dead_batchnorm_channel_lowers_and_stays_faithful(name):
    """A BatchNorm channel with γ ≈ 0 leaves a weight scale too small for its bias in int32: the channel gets
    zero weight codes and the smallest scale that holds its bias (search.nn.qmodel.fit_bias), in the IR and in
    the deploy-faithful model alike, instead of stopping the export."""
    q = random_bn_qat(name, seed=3)
    bns = [m for m in q.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in (bns[1], bns[2]):  # mbv2: bns[1] follows a depthwise conv
        bn.weight.data[0] = 1e-30
        bn.bias.data[0] = 0.25
    g = lower(q, MEAN, STD, normalise(np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3)).astype(np.uint8)))
    assert all(np.abs(g.const(op, "bias")).max() <= 2**31 - 1 for op in g.ops if op.kind in
               ("conv2d", "depthwise_conv2d", "fully_connected"))
    pixels = np.random.default_rng(7).integers(0, 256, (16, 32, 32, 3)).astype(np.uint8)
    codes = reference.run(g, reference.to_int8_input(pixels)).astype(np.int64)
    mine = _faithful_codes(faithful_model(q, g), g, pixels)
    assert (mine == codes).mean() >= 0.99 and np.abs(mine - codes).max() <= 1


def test_uniform_w8a8_runs_every_layer_once():
    """Issue 12 item 5: a value read at two grids (conv1 and the adds of resnet8) is requantised into the
    second grid, not recomputed; the IR follows the cost model's schedule op for op (Ω = blob, SRAM = arena)."""
    from deploy.devices.cost import omega
    from deploy.export.onnx import to_onnx
    from deploy.export.smpq import build_smpq
    from firmware_harness import smpq_format as fmt
    from search.nn.graph import extract_graph, runtime_schedule

    torch.manual_seed(0)
    fp = build_model("resnet8", (3, 32, 32), 10)
    q = quantize_model(fp, Policy.uniform(fp, 8, 8)).eval()
    g = lower(q, MEAN, STD, normalise(np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)))
    weighted = [op for op in g.ops if "weights" in op.arrays and op.name != "normalise"]
    assert sorted(op.name for op in weighted) == sorted(n for n, _ in quantizable_layers(q))  # each layer once
    assert sum(op.kind == "requantize" for op in g.ops) == 6  # conv1 → layers.0.conv1, 2 per add_k, pool → fc
    as_ir = {"normalise": "depthwise_conv2d", "pool": "avg_pool"}
    sched = runtime_schedule(extract_graph(fp))
    assert [op.kind for op in g.ops if op.kind != "reshape"] == [as_ir.get(op.kind, op.kind) for op in sched.ops]
    o, blob = omega(extract_graph(fp), q.qpolicy), build_smpq(g)
    assert (o.flash_bytes, o.sram_bytes) == (len(blob), fmt.parse(blob).arena_size)
    to_onnx(g, 21, "qdq")  # tensor names stay unique with two 8-bit readers of one value
