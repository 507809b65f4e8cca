"""Ethos-U through Arm's Vela (PyPI ethos-u-vela, run for real): the facts the design rests on, the
export, the per-layer cost model against Vela's summary of the compiled model, the CPU-op report."""
from __future__ import annotations

import argparse
import csv
import random

import numpy as np
import pytest
import torch
from torch import nn

from deploy.lower import reference
from deploy.devices.profiles import load_device
from deploy.errors import DeployError
from deploy.ethosu.cost import VelaCostModel, at_width, relative_error, requantize_codes
from deploy.ethosu.stage import (REPORT, STEM, export_ethosu, latency_section, policy_layers, report_section,
                                 search_cost_model, vela_target)
from deploy.ethosu.vela import VelaTarget, compile_tflite
from deploy.export.tflite import to_tflite
from deploy.lower.irbuild import IRBuilder, synthetic_graph
from deploy.lower.lower import lower
from search.nn.graph import extract_graph
from search.nn.models import build_model, quantizable_layers
from search.policy import Policy
from search.nn.qmodel import quantize_model
from search.nn.quantizers import weight_range

U55 = VelaTarget("ethos-u55-128", "Ethos_U55_High_End_Embedded", "Shared_Sram")
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
WIDTHS = (2, 3, 4, 5, 8)


def trained_like(model: nn.Module, seed: int) -> nn.Module:
    """Weights with the heavy-tailed (Laplacian) shape of trained conv weights, and non-trivial BN: Vela's
    compression depends on the values' distribution, and uniform random init compresses unlike trained weights."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            u = torch.rand(m.weight.shape, generator=g) - 0.5
            m.weight.data = (-torch.sign(u) * torch.log1p(-2 * u.abs())) * (0.7 / fan_in ** 0.5)  # Laplace(0, b)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.uniform_(-0.3, 0.3, generator=g)
    return model


def mixed_a8(model: nn.Module) -> Policy:
    """First/last layer 8-bit, the others cycling through 2/3/4/5/8-bit weights; 8-bit activations."""
    names = [n for n, _ in quantizable_layers(model)]
    return Policy([(n, (8 if i in (0, len(names) - 1) else WIDTHS[i % 5], 8)) for i, n in enumerate(names)])


def lowered(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = trained_like(build_model(name, (3, 32, 32), 10), seed).eval()
    q = quantize_model(model, mixed_a8(model), True).eval()
    calib = torch.randn((32, 3, 32, 32), generator=torch.Generator().manual_seed(seed))
    return model, q, lower(q, MEAN, STD, calib, name=name)


@pytest.fixture(scope="module")
def resnet8():
    return lowered("resnet8")


def conv_stack(codes_of) -> "object":
    """input 16×16×64 → three 3×3 64→64 convolutions (110,592 weights), codes from codes_of(shape)."""
    b = IRBuilder()
    x = b.tensor("input", [1, 16, 16, 64], 0.05)
    b.g.inputs = [x]
    for i in range(3):
        w, bits = codes_of((64, 3, 3, 64))
        y = b.tensor(f"conv{i}", [1, 16, 16, 64], 0.05)
        b.weighted("conv2d", f"conv{i}", x, y, w, np.full(64, 0.01, np.float32), np.zeros(64, np.int32), bits,
                   padding=(1, 1, 1, 1))
        x = y
    return b.finish([b.g.inputs[0]], [x])


# ---------------------------------------------------------------------------------------- Vela's facts
def test_int4_filters_crash_vela_int8_values_compile(tmp_path):
    g = synthetic_graph(seed=0)  # 2-5-bit filters: INT4-packed by default
    with pytest.raises(DeployError, match="Vela .* failed"):
        compile_tflite(to_tflite(g), U55, tmp_path / "int4", "m")
    res = compile_tflite(to_tflite(g, int8_weights=True), U55, tmp_path / "int8", "m")
    assert res.cycles_total > 0 and not res.cpu_ops()


def test_compression_follows_the_number_of_levels(tmp_path):
    rng = np.random.default_rng(0)
    n = 3 * 64 * 9 * 64
    sizes = {}
    for bits in (8, 4, 2, 1):
        lo, hi = weight_range(bits)

        def uniform(shape, bits=bits, lo=lo, hi=hi):
            w = rng.integers(lo, hi + 1, shape)
            return (np.where(w == 0, 1, w) if bits == 1 else w).astype(np.int8), bits

        sizes[bits] = compile_tflite(to_tflite(conv_stack(uniform), int8_weights=True), U55, tmp_path / str(bits),
                                     "m").encoded_weight_bytes
    levels = {8: 255, 4: 15, 2: 3, 1: 2}
    for bits, size in sizes.items():  # uniform codes: about log2(levels) bits per weight, a little more
        assert np.log2(levels[bits]) / 8 * n * 0.97 <= size <= max(np.log2(levels[bits]), 1) / 8 * n * 1.10, (bits, size)
    # the values matter, not only the count of levels: trained-like 8-bit codes (mostly small) compress
    lap = lambda shape: (np.clip(np.round(rng.laplace(0, 12, shape)), -127, 127).astype(np.int8), 8)  # noqa: E731
    peaked = compile_tflite(to_tflite(conv_stack(lap), int8_weights=True), U55, tmp_path / "lap", "m")
    assert peaked.encoded_weight_bytes < 0.9 * sizes[8]


def test_summary_and_per_layer_csv(tmp_path, resnet8):
    _, _, g = resnet8
    origin: list[str] = []
    res = compile_tflite(to_tflite(g, int8_weights=True, op_origin=origin), U55, tmp_path, "m", origin)
    header = next(csv.reader(res.files["summary"].open()))
    for col in ("cycles_npu", "cycles_total", "inference_time", "total_npu_encoded_weights", "sram_memory_used",
                "off_chip_flash_memory_used"):
        assert col in header
    assert res.files["summary"].name == "m_summary_Ethos_U55_High_End_Embedded.csv"
    assert res.files["vela_tflite"].stat().st_size > 0
    per = list(csv.DictReader(res.files["per_layer"].open()))
    assert len(per) == len(res.ops) and sum(float(r["Op Cycles"]) for r in per) == res.cycles_total
    assert res.weights_area == "Off-chip Flash" and res.weights_area_bytes > res.encoded_weight_bytes
    convs = {op.ir_op for op in res.ops if op.weight_bytes}
    assert {"conv1", "layers.0.conv1", "fc"} <= convs  # every weighted op traced back to its IR op


def test_cpu_ops_reported_per_op(tmp_path):
    g = synthetic_graph(seed=0)
    origin: list[str] = []
    res = compile_tflite(to_tflite(g, int8_weights=True, op_origin=origin), U55, tmp_path, "m", origin,
                         ("--ignore-ops", "ADD,MAX_POOL_2D"))
    cpu = res.cpu_ops()
    assert sorted((op.tflite_op, op.ir_op) for op in cpu) == [("Add", "add"), ("MaxPool", "maxpool")]
    assert [c["ir_op"] for c in res.as_dict()["cpu_ops"]] == [op.ir_op for op in cpu]


# ---------------------------------------------------------------------------------------- cost model
@pytest.fixture(scope="module")
def resnet8_cost(resnet8, tmp_path_factory):
    _, _, g = resnet8
    bits = policy_layers(g)
    return VelaCostModel.measure(g, list(bits), WIDTHS, U55, tmp_path_factory.mktemp("cache")), bits


def test_mixed_resnet8_prediction_equals_vela_within_2_percent(resnet8, resnet8_cost, tmp_path):
    _, _, g = resnet8
    model, bits = resnet8_cost
    assert len(set(bits.values())) >= 4
    res = compile_tflite(to_tflite(g, int8_weights=True), U55, tmp_path, "m")
    p = model.predict(bits)
    assert relative_error(p.encoded_weight_bytes, res.encoded_weight_bytes) <= 0.02
    assert relative_error(p.flash_bytes, res.weights_area_bytes) <= 0.02
    assert relative_error(p.cycles, res.cycles_total) <= 0.02


def test_cost_model_is_additive_for_the_knapsack(resnet8, resnet8_cost):
    fp, _, _ = resnet8
    model, bits = resnet8_cost
    graph = extract_graph(fp)
    table = model.layer_options(graph, WIDTHS, (8,))
    rnd = random.Random(0)
    for _ in range(5):
        pol = {n: (rnd.choice(WIDTHS), 8) for n in graph.layer_names()}
        om = model.omega(graph, pol)
        chosen = [next(c for c in lo.options if c.w_bits == pol[lo.name][0]) for lo in table]
        for key in ("flash_bytes", "latency_s", "bops"):
            total = table.fixed[key] + sum(c.costs[key] for c in chosen)
            assert total == pytest.approx(getattr(om, key), rel=1e-9), key
    with pytest.raises(Exception, match="8-bit activations only"):
        model.layer_options(graph, WIDTHS, (4, 8))


def test_requantized_codes_use_their_levels():
    real = np.random.default_rng(0).laplace(0, 0.1, (8, 3, 3, 4))
    for bits in (1, 2, 3, 5):
        codes = requantize_codes(real, "conv2d", bits)
        lo, hi = weight_range(bits)
        assert codes.dtype == np.int8 and codes.min() >= lo and codes.max() <= hi
        assert len(np.unique(codes)) <= (2 if bits == 1 else hi - lo + 1)
    dw = requantize_codes(real.reshape(1, 3, 3, 32), "depthwise_conv2d", 4)
    assert dw.shape == (1, 3, 3, 32)


def test_at_width_keeps_codes_at_their_own_width(resnet8):
    _, _, g = resnet8
    bits = policy_layers(g)
    g4 = at_width(g, list(bits), 4)
    for op, op4 in zip(g.ops, g4.ops):
        if "weights" in op.arrays and op.name in bits:
            assert op4.attrs["w_bits"] == 4
            same = np.array_equal(g.const(op, "weights"), g4.const(op4, "weights"))
            assert same == (op.attrs["w_bits"] == 4), op.name


def test_search_cost_model_from_fp_weights(resnet8, tmp_path):
    fp, _, _ = resnet8
    model = search_cost_model(fp, load_device("ethos-u55-128"), [2, 8], tmp_path / "cache")
    names = extract_graph(fp).layer_names()
    assert set(model.table) == set(names) and all(set(row) == {2, 8} for row in model.table.values())
    for n in names:
        assert model.table[n][2].weight_bytes < model.table[n][8].weight_bytes
    mixed = {n: (2 if 0 < i < len(names) - 1 else 8) for i, n in enumerate(names)}
    assert model.predict({n: 8 for n in names}).encoded_weight_bytes > 2 * model.predict(mixed).encoded_weight_bytes
    again = search_cost_model(fp, load_device("ethos-u55-128"), [2, 8], tmp_path / "cache")  # from the cache
    assert again.as_dict() == model.as_dict() and len(list((tmp_path / "cache").glob("*.json"))) == 2


# ---------------------------------------------------------------------------------------- profiles, export
def test_ethos_u_profiles():
    for name, acc in (("ethos-u55-128", "ethos-u55-128"), ("ethos-u65-256", "ethos-u65-256")):
        p = load_device(name)
        t = vela_target(p)
        assert t.accelerator == acc and p.allowed_bits.activation == [8] and p.flash.backend == "none"
        assert p.source_of("npu")
    with pytest.raises(DeployError, match="no Ethos-U"):
        vela_target(load_device("stm32h7"))


def test_export_ethosu_writes_vela_artifacts_and_report(resnet8, tmp_path):
    _, _, g = resnet8
    rep = export_ethosu(g, tmp_path, load_device("ethos-u55-128"))
    for f in (f"{STEM}.tflite", f"{STEM}_vela.tflite", f"{STEM}_summary_Ethos_U55_High_End_Embedded.csv",
              f"{STEM}_per-layer.csv", REPORT):
        assert (tmp_path / f).stat().st_size > 0, f
    assert rep["board"].startswith("estimated by Vela") and rep["cpu_ops"] == []
    assert max(rep["relative_error"].values()) <= 0.02
    x = np.random.default_rng(1).integers(-128, 128, (3, 32, 32, 3)).astype(np.int8)
    from deploy.export.tflm import run_tflm

    got = run_tflm((tmp_path / f"{STEM}.tflite").read_bytes(), x)  # what Vela compiled is the same integer model
    np.testing.assert_array_equal(got.reshape(-1), reference.run(g, x).reshape(-1))
    section = report_section(tmp_path, {"flash_bytes": {"limit": 1}})
    assert section["budget"]["flash_bytes"]["ok"] is False and "estimated by Vela" in section["board"]
    lat = latency_section(tmp_path)  # the report's per-op latency: Vela's cycles, adding up to its total
    assert lat["predicted_total"] == rep["compiled"]["cycles_total"] == sum(o["predicted"] for o in lat["ops"])


def test_cmd_export_ethos_u_format(tmp_path):
    from deploy.cli import export as cmd_export

    torch.manual_seed(0)
    model = trained_like(build_model("resnet8", (3, 32, 32), 10), 0)
    q = quantize_model(model, mixed_a8(model), True).eval()
    meta = {"model": "resnet8", "model_kwargs": {}, "dataset": "cifar10", "input_shape": [3, 32, 32],
            "classes": [str(i) for i in range(10)], "mean": list(MEAN), "std": list(STD), "seed": 0,
            "policy": q.qpolicy.to_dict(), "first_last_8bit": True}
    torch.save({"state_dict": q.state_dict(), "meta": meta}, tmp_path / "qat.pt")
    q.qpolicy.save(tmp_path / "policy.json")
    args = argparse.Namespace(output=str(tmp_path), formats="ethos-u", opset=None, calib_batches=1, data_dir=None,
                              device="ethos-u55-128", config=None, model=None, dataset=None, seed=None, set=None)
    assert cmd_export.run(args) == 0
    assert (tmp_path / f"{STEM}_vela.tflite").is_file() and (tmp_path / REPORT).is_file()


def test_vela_failure_is_one_line(tmp_path):
    with pytest.raises(DeployError) as exc:
        compile_tflite(b"TFL3 not a model" * 8, U55, tmp_path, "bad")
    assert "\n" not in str(exc.value) and "Vela" in str(exc.value)

