"""The MLPerf Tiny IC model (imported from ../shared/models) on QEMU through `measure --mlperf`: the board's raw
outputs equal TFLite Micro's on 50 CIFAR-10 images, and the runner's performance mode uses its infer 20 5."""
from __future__ import annotations

import json

import pytest

from deploy.cli.main import main
from tests.hil.conftest import require_tools
from tests.tflite_fixtures import IC

pytestmark = pytest.mark.hil
N_IMAGES = 50


def test_imported_ic_on_qemu_is_bit_exact_with_tflm(tmp_path, cifar_test, capsys):
    require_tools()
    if not IC.is_file():
        pytest.skip(f"{IC} is missing")
    run = tmp_path / "mlperf-ic"
    assert main(["import", str(IC), "--output", str(run)]) == 0
    assert main(["measure", "--mlperf", "--run", str(run), "--device", "qemu-mps2-an500", "--samples", str(N_IMAGES),
                 "--data-dir", str(cifar_test.parent.parent), "--no-progress"]) == 0
    report = json.loads((run / "board.json").read_text())
    m = report["mlperf"]
    assert report["accuracy"]["samples"] == N_IMAGES and report["accuracy"]["bit_exact"] is True
    assert m["bit_exact_tflm"] is True and m["tflm_mismatched_values"] == 0
    assert m["runner"]["classes"] == 10 and 0.5 < m["runner"]["top1"] <= 1 and 0.5 < m["runner"]["auc"] <= 1
    lat = report["latency"]
    assert (lat["iterations"], lat["warmup"], len(lat["window_ticks"])) == (20, 5, 5)
    assert lat["unit"] == "instructions" and "ms" not in lat and 1e7 < lat["per_inference"] < 1e9
    assert "--mlperf" in report["command"]
