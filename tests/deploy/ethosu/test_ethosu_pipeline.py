"""`smpq-deploy --device ethos-u55-128 --model mbv2` through the whole pipeline (search → QAT → export → Vela →
host verification → report) at toy scale: the configuration that diverged before the stale-BatchNorm
refresh (mbv2 trained on 256 images, no supernet warm-up). Board figures are Vela's estimates."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ARGS = ["--device", "ethos-u55-128", "--model", "mbv2", "--subset", "256", "--no-progress",
        "--set", "train.epochs=1", "--set", "search.epochs=1", "--set", "search.warmup_epochs=0",
        "--set", "qat.epochs=1", "--set", "search.w_bits=[2,4,8]", "--set", "search.shapley.permutations=1",
        "--set", "deploy.formats=[smpq]", "--set", "harness.samples=20"]


@pytest.mark.slow
def test_mbv2_on_ethos_u55_reports_vela_estimates(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "deploy.cli.main", *ARGS, "--output", str(out)], env=env,
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "BatchNorm statistics of the FP model are stale" in proc.stderr  # what made this run diverge before
    report = json.loads((out / "report.json").read_text())
    e = report["ethos_u"]
    assert report["board_run"].startswith("estimated by Vela") and e["board"].startswith("estimated by Vela")
    c = e["compiled"]
    assert c["cycles_total"] > 0 and c["weights_area_bytes"] > c["encoded_weight_bytes"] > 0 and c["cpu_ops"] == []
    assert max(abs(v) for v in e["relative_error"].values()) <= 0.02  # the cost model vs Vela's summary
    assert e["budget"]["flash_bytes"]["ok"] and e["budget"]["flash_bytes"]["value"] == c["weights_area_bytes"]
    assert report["latency"]["unit"] == "cycles (estimated by Vela)"
    assert report["latency"]["predicted_total"] == c["cycles_total"]
    assert report["host_verification"]["ethosu_tflite_tflm_bit_exact"] is True
    for f in ("model_ethosu_vela.tflite", "model_ethosu_per-layer.csv", "vela.json", "report.html"):
        assert (out / f).stat().st_size > 0, f
    html = (out / "report.html").read_text()
    assert 'id="table-ethos_u"' in html and "estimated by Vela" in html and "every operation runs on the NPU" in html
    policy = json.loads((out / "policy.json").read_text())
    assert {L["a_bits"] for L in policy["layers"]} == {8} and policy["model"] == "mbv2"
