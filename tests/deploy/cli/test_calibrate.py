"""`smpq-deploy calibrate` (deploy/cli/calibrate.py) and the calibrated profile of the emulated board.

The calibrated profile (devices/calibrated/qemu-mps2-an500.yaml) was measured with one version of the
kernels; when they change, test_calibrated_profile_matches_the_kernels fails until the command is re-run.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.cli.calibrate import calibrated_path, fit, kernels_hash, latency_model_of, merged_tables, predict, predict_op
from deploy.devices.profiles import load_device

ROOT = Path(__file__).resolve().parents[3]
DEVICE = "qemu-mps2-an500"


def test_calibrated_profile_matches_the_kernels():
    cal = yaml.safe_load(calibrated_path(DEVICE).read_text())
    assert cal["kernels_hash"] == kernels_hash(cal["kernels"]), (
        f"the {cal['kernels']} kernels changed since {calibrated_path(DEVICE).name} was measured; re-run "
        f"`{cal['command']}`")


def test_the_device_takes_the_calibrated_cost_model():
    cal = yaml.safe_load(calibrated_path(DEVICE).read_text())
    profile = load_device(DEVICE)
    cm = profile.cost_model
    assert cm.latency_unit == "instructions"
    assert cm.per_layer_overhead_cycles == pytest.approx(cal["cost_model"]["per_layer_overhead_cycles"])
    for op, table in cal["cost_model"]["cycles_per_mac"].items():
        assert cm.cycles_per_mac[op] == pytest.approx(table)
        assert profile.source_of(f"cost_model.cycles_per_mac.{op}").startswith("measured by `smpq-deploy calibrate")
    for kind in ("cycles_per_output", "cycles_per_gathered"):
        assert cal["cost_model"][kind], f"the fit found no {kind} term"
        for op, table in cal["cost_model"][kind].items():
            assert getattr(cm, kind)[op] == pytest.approx(table)
            assert profile.source_of(f"cost_model.{kind}.{op}").startswith("measured by `smpq-deploy calibrate")
    assert "conv2d_unaligned" in cal["cost_model"]["cycles_per_mac"], "the 3-channel stems were not priced apart"
    assert cal["date"] in profile.source_of("cost_model.per_layer_overhead_cycles")


def test_the_held_out_policy_was_predicted():
    cal = yaml.safe_load(calibrated_path(DEVICE).read_text())
    for model, h in cal["held_out"].items():
        assert h["error"] == pytest.approx(h["predicted"] / h["measured"] - 1, abs=1e-3), model
        assert abs(h["error"]) < 0.5, (model, h)  # a fit this far off would be useless to the search


def test_fit_recovers_a_known_linear_model():
    """Ops generated from known rates of every work term (search.budget.weighted_work's features) are fitted back."""
    import numpy as np

    from search.budget import weighted_work

    truth = {"macs": {("conv2d", 8): 1.5, ("conv2d", 2): 2.0, ("conv2d_unaligned", 2): 11.0, ("add", 8): 40.0,
                      ("requantize", 8): 6.0},
             "outputs": {("conv2d", 8): 30.0, ("conv2d", 2): 12.0},
             "gathered": {("conv2d", 8): 4.0, ("conv2d", 2): 9.0}}
    model = latency_model_of(900.0, truth)
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(80):
        kind, bits = [("conv2d", 8), ("conv2d", 2), ("add", 8), ("requantize", 8)][int(rng.integers(4))]
        channels = int(rng.choice([8, 16, 24, 64]))
        k = int(rng.choice([24, 36, 144] + [27] * (bits == 2))) if kind == "conv2d" else 1  # 27: conv2d_unaligned
        pixels = float(rng.integers(16, 1024))
        row = (kind, bits, pixels * channels * k, pixels * channels, channels)
        rows.append((*row, predict_op((*row, 0.0), model)))
    assert any(weighted_work(r[0], r[2], r[3], r[4])[0] == "conv2d_unaligned" for r in rows if r[0] == "conv2d")
    rows.append(("reshape", 8, 64.0, 64.0, 64, 55.0))  # not priced: left out of the fit
    rows.append(("add", 8, 0.0, 0.0, 1, 900.0))  # an op without work: the overhead
    rows.append(("max_pool", 8, 50.0, 10.0, 10, 1000.0))  # too little work to price pooling: left to the device profile
    overhead, got = fit(rows)
    assert overhead == pytest.approx(900.0, rel=1e-6)
    for term, rates in truth.items():
        assert got[term] == pytest.approx(rates, rel=1e-4), term  # no ("pool", 8)
    tables = merged_tables({"pool": {8: 7.0}, "conv2d": {8: 99.0}}, got["macs"])
    assert tables["pool"] == {8: 7.0} and tables["conv2d"] == {2: 2.0, 8: 1.5}
    fitted = latency_model_of(overhead, got)
    assert predict(rows, fitted) == pytest.approx(sum(r[-1] for r in rows if r[0] != "reshape"), rel=1e-6)


def test_a_model_spec_takes_keyword_arguments():
    from deploy.cli.calibrate import model_spec
    from deploy.errors import DeployError

    assert model_spec("mbv2:width_mult=0.75") == ("mbv2", {"width_mult": 0.75})
    assert model_spec("resnet20") == ("resnet20", {})
    with pytest.raises(DeployError, match="key=number"):
        model_spec("mbv2:width_mult")


def test_calibrate_refuses_a_board_it_cannot_start():
    env = {k: v for k, v in os.environ.items() if k != "SMPQ_TRACEBACK"}
    proc = subprocess.run([sys.executable, "-m", "deploy.cli.main", "calibrate", "--device", "stm32h7"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "stm32h7" in lines[0], proc.stderr
