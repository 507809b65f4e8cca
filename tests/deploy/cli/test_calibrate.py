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

from deploy.cli.calibrate import calibrated_path, fit, kernels_hash, merged_tables, predict
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
    assert cal["cost_model"]["cycles_per_output"], "the fit found no per-output term"
    for op, table in cal["cost_model"]["cycles_per_output"].items():
        assert cm.cycles_per_output[op] == pytest.approx(table)
        assert profile.source_of(f"cost_model.cycles_per_output.{op}").startswith("measured by `smpq-deploy calibrate")
    assert cal["date"] in profile.source_of("cost_model.per_layer_overhead_cycles")


def test_the_held_out_policy_was_predicted():
    cal = yaml.safe_load(calibrated_path(DEVICE).read_text())
    for model, h in cal["held_out"].items():
        assert h["error"] == pytest.approx(h["predicted"] / h["measured"] - 1, abs=1e-3), model
        assert abs(h["error"]) < 0.5, (model, h)  # a fit this far off would be useless to the search


def test_fit_recovers_a_known_linear_model():
    import numpy as np

    rates = {("conv2d", 8): 1.5, ("conv2d", 4): 2.0, ("add", 8): 40.0, ("requantize", 8): 6.0}
    out_rates = {("conv2d", 8): 30.0, ("conv2d", 4): 12.0}
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(60):
        kind, bits = [("conv2d", 8), ("conv2d", 4), ("add", 8), ("requantize", 8)][int(rng.integers(4))]
        work = float(rng.integers(20_000, 100_000))
        outputs = work / float(rng.choice([9, 27, 144])) if kind == "conv2d" else work
        rows.append((kind, bits, work, outputs, 900.0 + work * rates[(kind, bits)] + outputs * out_rates.get((kind, bits), 0)))
    rows.append(("reshape", 8, 64.0, 64.0, 55.0))  # not priced: left out of the fit
    rows.append(("add", 8, 0.0, 0.0, 900.0))  # an op without work: the overhead
    rows.append(("max_pool", 8, 50.0, 10.0, 1000.0))  # too little work to price pooling: left to the device profile
    overhead, got, got_out = fit(rows)
    assert overhead == pytest.approx(900.0, rel=1e-6)
    assert got == pytest.approx(rates, rel=1e-6)  # no ("pool", 8)
    assert got_out == pytest.approx(out_rates, rel=1e-6)  # a per-output term for weighted ops only
    tables = merged_tables({"pool": {8: 7.0}, "conv2d": {8: 99.0}}, got)
    assert tables["pool"] == {8: 7.0} and tables["conv2d"] == {4: 2.0, 8: 1.5}
    assert predict(rows[:3], overhead, tables, merged_tables({}, got_out)) == pytest.approx(sum(r[4] for r in rows[:3]), rel=1e-9)


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
