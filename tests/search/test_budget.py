"""The latency cost model (search.budget): its work quantities (weighted_work), its table look-up, and one set of
features for Ω (deploy.devices.cost.omega) and the calibration's fit (deploy/cli/calibrate.py)."""
from __future__ import annotations

import math

import pytest

from search.budget import OP_TYPES, TERM_TABLES, WORK_TERMS, LatencyModel, weighted_work


def test_an_unaligned_conv_is_its_own_op_type():
    # the 3-channel stem: K = 3*3*3 = 27, 16 output channels over 32x32 pixels
    op_type, work = weighted_work("conv2d", 1024 * 16 * 27, 1024 * 16, 16)
    assert op_type == "conv2d_unaligned" and "conv2d_unaligned" in OP_TYPES
    assert work == {"macs": 1024 * 16 * 27, "outputs": 1024 * 16, "gathered": 1024 * 27}
    assert weighted_work("conv2d", 1024 * 16 * 144, 1024 * 16, 16)[0] == "conv2d"  # K = 144
    assert weighted_work("conv2d", 1024 * 16 * 20, 1024 * 16, 16)[0] == "conv2d"  # K = 20: whole groups of 4
    assert weighted_work("depthwise_conv2d", 1024 * 16 * 9, 1024 * 16, 16)[0] == "depthwise_conv2d"  # K = 9
    assert weighted_work("fully_connected", 64 * 10, 10, 10)[0] == "fully_connected"
    with pytest.raises(ValueError, match="add"):
        weighted_work("add", 10, 10, 1)


@pytest.mark.parametrize("k", [8, 20, 24, 144])
def test_gathered_values_of_a_conv(k):
    """Each output pixel gathers one patch of K input values, whatever the number of output channels."""
    pixels, channels = 64, 32
    _, work = weighted_work("conv2d", pixels * channels * k, pixels * channels, channels)
    assert work["gathered"] == pixels * k and work["macs"] == work["gathered"] * channels


def test_gathered_values_of_each_weighted_op():
    assert weighted_work("fully_connected", 640 * 10, 10, 10)[1]["gathered"] == 640  # one patch: the input
    _, dw = weighted_work("depthwise_conv2d", 256 * 96 * 9, 256 * 96, 96)
    assert dw["gathered"] == 0  # a depthwise op's gathering is its MACs


def _model(**tables) -> LatencyModel:
    return LatencyModel(clock_hz=1.0, per_layer_overhead_cycles=100.0, **tables)


def test_term_tables_are_read_at_the_width_the_mac_table_resolves_to():
    """A depthwise op at 2 bits is not charged the 8-bit per-output term (its MAC rate already holds its outputs)."""
    m = _model(cycles_per_mac={"conv2d": {8: 1.0}, "depthwise_conv2d": {2: 8.0, 4: 8.0, 8: 6.0}},
               cycles_per_output={"depthwise_conv2d": {8: 12.0}})
    assert m.term_cost("outputs", "depthwise_conv2d", 8) == 12.0
    assert m.term_cost("outputs", "depthwise_conv2d", 2) == 0.0
    assert m.term_cost("outputs", "depthwise_conv2d", 3) == 0.0  # resolves to 4, which has no per-output term
    assert m.mac_cost("depthwise_conv2d", 3) == 8.0
    assert m.layer_cycles("depthwise_conv2d", 900, 2, outputs=100) == pytest.approx(100 + 900 * 8.0)
    assert m.layer_cycles("depthwise_conv2d", 900, 8, outputs=100) == pytest.approx(100 + 900 * 6.0 + 100 * 12.0)


def test_every_term_is_priced_and_unaligned_falls_back_to_conv2d():
    tables = {"cycles_per_mac": {"conv2d": {2: 2.0, 8: 1.0}, "conv2d_unaligned": {8: 11.0}},
              "cycles_per_output": {"conv2d": {2: 50.0}}, "cycles_per_gathered": {"conv2d": {2: 5.0, 8: 4.0}}}
    assert set(TERM_TABLES) == set(WORK_TERMS) and set(TERM_TABLES.values()) == set(tables)
    m = _model(**tables)
    work = {"macs": 1000.0, "outputs": 10.0, "gathered": 20.0}
    assert m.work_cycles("conv2d", work, 2) == pytest.approx(100 + 2000 + 500 + 100)
    assert m.work_cycles("conv2d", work, 8) == pytest.approx(100 + 1000 + 80)  # no 8-bit output term
    assert m.work_cycles("conv2d_unaligned", work, 2) == pytest.approx(100 + 11000)  # its own table: no other terms
    no_unaligned = _model(**{**tables, "cycles_per_mac": {"conv2d": {2: 2.0, 8: 1.0}}})
    assert no_unaligned.work_cycles("conv2d_unaligned", work, 2) == m.work_cycles("conv2d", work, 2)
    assert no_unaligned.mac_cost("fully_connected", 5) == 1.0  # other op types: conv2d's table, nearest width above


def test_omega_and_the_calibration_price_the_same_work():
    """Ω prices a deployed model's ops with the features calibrate fits on (one weighted_work): per weighted op,
    the cycles of Ω's row equal calibrate's prediction from the blob's op records."""
    import numpy as np

    from deploy.cli.calibrate import WEIGHTED, latency_model_of, op_work, predict_op, random_ir
    from deploy.devices.cost import omega
    from deploy.export.smpq import build_smpq
    from search.nn.graph import extract_graph
    from search.nn.models import build_model, quantizable_layers

    rates = {"macs": {("conv2d", b): 1.0 + b / 10 for b in range(1, 9)} | {("conv2d_unaligned", 2): 11.0,
             ("depthwise_conv2d", 8): 6.0, ("fully_connected", 8): 5.0, ("add", 8): 20.0, ("requantize", 8): 12.0,
             ("pool", 8): 9.0},
             "outputs": {("conv2d", 2): 40.0, ("conv2d", 8): 20.0, ("depthwise_conv2d", 8): 11.0},
             "gathered": {("conv2d", 2): 9.0, ("conv2d_unaligned", 2): 3.0, ("fully_connected", 8): 2.0}}
    model = latency_model_of(500.0, rates)
    w_bits = [2, 1, 8]
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    net = build_model("resnet8", (3, 32, 32), 10)
    names = [n for n, _ in quantizable_layers(net)]
    policy = {n: (w_bits[i % len(w_bits)], 8) for i, n in enumerate(names)}
    om = omega(extract_graph(net, (3, 32, 32)), policy, model)
    blob_ops = [r for r in op_work(build_smpq(random_ir("resnet8", w_bits, [8], images, 0))) if r[0] in WEIGHTED]
    rows = [r for r in om.layers if r.op_type in WEIGHTED or r.op_type == "normalise"]
    assert len(rows) == len(blob_ops)
    kinds = {op[0] for op in blob_ops}
    assert {"conv2d", "fully_connected"} <= kinds
    priced = [(r.cycles, predict_op((*op, 0.0), model)) for r, op in zip(rows, blob_ops)]
    assert all(math.isclose(a, b, rel_tol=1e-9) for a, b in priced), priced
    # the stem is unaligned (K = 27): its own op type in Ω too
    assert any(weighted_work(op[0], op[2], op[3], op[4])[0] == "conv2d_unaligned" for op in blob_ops)
