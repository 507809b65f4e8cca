"""The firmware on QEMU through the protocol client: bit-exact with the integer reference on CIFAR-10,
latency in instructions, per-layer ticks, and the flash / measure commands writing board.json."""
from __future__ import annotations

import json

import numpy as np
import pytest

from deploy.cli.main import main
from deploy.lower.reference import dequantize, run as run_reference, to_int8_input
from firmware_harness.hil import measure as hil
from firmware_harness import smpq_format
from firmware_harness.hil.backends.qemu import QemuBoard
from firmware_harness.hil.protocol import DutClient

pytestmark = pytest.mark.hil
N_IMAGES = 50


def test_raw_outputs_equal_the_integer_reference_on_50_cifar_images(resnet8_run, resnet8_graph, cifar_test):
    with np.load(cifar_test) as d:
        x, y = to_int8_input(d["x"][:N_IMAGES]), d["y"][:N_IMAGES]
    ref = run_reference(resnet8_graph, x).reshape(N_IMAGES, -1)
    with QemuBoard(resnet8_run / "firmware.elf") as board, DutClient(board.url) as client:
        info = client.info()
        acc = hil.accuracy_mode(client, x)
        unit = hil.TimerUnit.from_info(info)
        perf = hil.performance_mode(client, x[0], iterations=2, warmup=1, windows=3)
        last = client.infer(1, 0)
        layers = hil.layer_breakdown(client, unit)
    assert acc.raw.shape == ref.shape == (N_IMAGES, 10)
    assert hil.compare(acc.raw, ref, y)["mismatched_values"] == 0
    np.testing.assert_array_equal(acc.raw, ref)
    assert (ref != ref[:1]).any()  # not a constant model
    # m-results are the dequantised raw outputs, printed with %0.3f
    np.testing.assert_allclose(acc.results, dequantize(resnet8_graph, ref), atol=0.0005 + 1e-6)
    assert client.stats.retries == 0
    # latency: instructions from SysTick under -icount (ticks_per_instr = 2^3/40)
    assert info["timer"] == "instructions" and unit.per_tick == 5
    assert perf.lap_checked and len(perf.window_ticks) == 3
    assert max(perf.window_ticks) - min(perf.window_ticks) <= 4  # deterministic up to the tick's quantisation
    assert 1e6 < unit.convert(perf.per_inference_ticks) < 1e9
    # per-layer ticks: one per op of the blob, kinds and weight bits as in the blob, summing to the lap
    blob = smpq_format.parse((resnet8_run / "model.smpq").read_bytes())
    assert [(l["kind"], l["w_bits"]) for l in layers] == [(op.kind, op.w_bits) for op in blob.ops]
    assert 0.95 * last.ticks <= sum(l["ticks"] for l in layers) <= last.ticks


def test_flash_and_measure_commands_write_board_json(resnet8_run, cifar_test, capsys):
    data_dir = str(cifar_test.parent.parent)
    common = ["--run", str(resnet8_run), "--device", "qemu-mps2-an500", "--model", "resnet8", "--dataset", "cifar10",
              "--data-dir", data_dir]
    assert main(["flash", *common]) == 0
    assert "blob CRC" in capsys.readouterr().out
    assert main(["measure", *common, "--samples", "4", "--iterations", "1", "--warmup", "0", "--windows", "2",
                 "--no-progress"]) == 0
    report = json.loads((resnet8_run / "board.json").read_text())
    assert report["accuracy"]["bit_exact"] is True and report["accuracy"]["samples"] == 4
    assert report["latency"]["unit"] == "instructions" and report["latency"]["per_inference"] > 1e6
    assert "ms" not in report["latency"]
    assert len(report["layers"]) == int(report["board"]["n_ops"])
    assert report["transfer"]["payload_bytes_per_s"] > 0 and report["transfer"]["wall_s_per_image"] > 0
    assert report["command"].startswith("smpq-deploy measure --run")
    assert not list(resnet8_run.glob(".board.json.*"))  # the temporary file was renamed
    from deploy.pipeline.report import board_summary  # the report reads what measure wrote

    summary = board_summary(resnet8_run)
    assert summary["samples"] == 4 and summary["bit_exact"] is True and summary["accuracy"] is not None
    assert summary["layer_time_unit"] == "instructions" and len(summary["layer_times"]) == len(report["layers"])


def test_flash_detects_a_board_running_another_model(resnet8_run, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("model.ir.json", "model.ir.npz", "model_data.c", "model_data.h"):
        (other / name).write_bytes((resnet8_run / name).read_bytes())
    (other / "model.smpq").write_bytes(b"not the blob in the firmware")
    assert main(["flash", "--run", str(other), "--device", "qemu-mps2-an500"]) == 2
    assert "runs another model (blob CRC" in capsys.readouterr().err
