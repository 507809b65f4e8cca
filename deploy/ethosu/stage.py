"""The Ethos-U stages of the pipeline: the search's Vela cost model and the export through Vela.

* :func:`search_cost_model` — for a device with ``npu: {kind: ethos-u}``: the FP model lowered at
  w8a8 (weights only matter: calibration is a seeded random batch), then :class:`VelaCostModel`
  measured with the search's weight candidates; the compilations are cached in ``<run>/vela_cache``.
* :func:`export_ethosu` — the run's integer IR as int8-valued TFLite (``model_ethosu.tflite``),
  compiled by Vela (``model_ethosu_vela.tflite``, ``model_ethosu_summary_<system>.csv``,
  ``model_ethosu_per-layer.csv``, ``model_ethosu_debug.xml``), and ``vela.json``: Vela's figures, the
  cost model's prediction for the same weights next to them, and the operations left to the CPU.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deploy.devices.profiles import DeviceProfile
from deploy.errors import DeployError
from deploy.ethosu.cost import VelaCostModel, layer_of, relative_error
from deploy.ethosu.vela import VelaTarget, compile_tflite, vela_version
from deploy.export.tflite import to_tflite
from deploy.lower.ir import Graph
from search.atomic import atomic_write_text

STEM = "model_ethosu"
REPORT = "vela.json"
CACHE = "vela_cache"
BOARD_LABEL = "estimated by Vela (Arm's performance model; no Ethos-U was run)"
FILES = [f"{STEM}.tflite", f"{STEM}_vela.tflite", REPORT]


def vela_target(profile: DeviceProfile) -> VelaTarget:
    """The Vela target of an Ethos-U profile; a one-line error for any other device."""
    if profile.npu is None or profile.npu.kind != "ethos-u":
        raise DeployError(f"device '{profile.name}' has no Ethos-U NPU ('npu: {{kind: ethos-u, ...}}' in its profile)")
    n = profile.npu
    return VelaTarget(n.accelerator_config, n.system_config, n.memory_mode, n.config_file)


def is_ethos_u(profile: DeviceProfile | None) -> bool:
    return profile is not None and profile.npu is not None and profile.npu.kind == "ethos-u"


def topology_ir(fp_model: torch.nn.Module, seed: int = 0) -> Graph:
    """The FP model lowered at w8a8 with seeded random calibration: the network Vela compiles for the
    cost model (its weights are the FP weights; activation scales do not change Vela's figures)."""
    from deploy.lower.lower import lower
    from search.nn.models import quantizable_layers
    from search.policy import Policy
    from search.nn.qmodel import quantize_model

    shape = tuple(fp_model.input_shape)
    names = [n for n, _ in quantizable_layers(fp_model, shape)]
    q = quantize_model(fp_model, Policy.uniform(names, 8, 8), seed=seed).eval()
    calib = torch.randn((16, *shape), generator=torch.Generator().manual_seed(seed))
    c = shape[0]
    return lower(q, (0.5,) * c, (0.25,) * c, calib, name="vela-cost")


def search_cost_model(fp_model: torch.nn.Module, profile: DeviceProfile, w_bits: list[int] | tuple[int, ...],
                      cache_dir: str | Path, seed: int = 0) -> VelaCostModel:
    """The search's cost model on an Ethos-U device (see the module docstring)."""
    from search.nn.graph import extract_graph

    target = vela_target(profile)
    layers = extract_graph(fp_model).layer_names()
    return VelaCostModel.measure(topology_ir(fp_model, seed), layers, w_bits, target, cache_dir)


def policy_layers(g: Graph) -> dict[str, int]:
    """Layer → w_bits of a lowered model (its weighted ops, instances folded; the input normalisation is not a layer)."""
    out: dict[str, int] = {}
    for op in g.ops:
        if "weights" in op.arrays and layer_of(op.name) != "normalise":
            out.setdefault(layer_of(op.name), int(op.attrs["w_bits"]))
    return out


def export_ethosu(g: Graph, run_dir: str | Path, profile: DeviceProfile) -> dict[str, Any]:
    """Compile the run's IR for the profile's Ethos-U; write the artifacts and ``vela.json``; return its content."""
    out = Path(run_dir)
    target = vela_target(profile)
    origin: list[str] = []
    tflite = to_tflite(g, int8_weights=True, op_origin=origin)
    res = compile_tflite(tflite, target, out, STEM, origin)
    bits = policy_layers(g)
    model = VelaCostModel.measure(g, list(bits), sorted(set(bits.values())), target, out / CACHE)
    pred = model.predict(bits)
    compiled = res.as_dict()
    report = {
        "board": BOARD_LABEL, "vela_version": vela_version(),
        "target": {"accelerator_config": target.accelerator, "system_config": target.system_config,
                   "memory_mode": target.memory_mode, "config_file": target.config_file},
        "compiled": compiled,
        "predicted": {"encoded_weight_bytes": pred.encoded_weight_bytes, "weights_area_bytes": pred.flash_bytes,
                      "cycles_total": pred.cycles, "inference_time_s": pred.latency_s,
                      "how": "Σ per-layer Vela costs at each layer's width (deploy/ethosu/cost.py), same weights"},
        "relative_error": {
            "encoded_weight_bytes": relative_error(pred.encoded_weight_bytes, res.encoded_weight_bytes),
            "weights_area_bytes": relative_error(pred.flash_bytes, res.weights_area_bytes),
            "cycles_total": relative_error(pred.cycles, res.cycles_total)},
        "cpu_ops": compiled["cpu_ops"],
        "per_layer": _per_layer_rows(res.ops, bits),
    }
    atomic_write_text(out / REPORT, json.dumps(report, indent=1))
    return report


def _per_layer_rows(ops: list, bits: dict[str, int]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for op in ops:
        key = op.ir_op or op.name
        r = rows.setdefault(key, {"ir_op": key, "layer": layer_of(key) if layer_of(key) in bits else None,
                                  "w_bits": bits.get(layer_of(key)), "target": op.target, "cycles": 0.0,
                                  "weight_bytes": 0, "tflite_ops": []})
        r["cycles"] += op.op_cycles
        r["weight_bytes"] += op.weight_bytes
        if op.target != "NPU":
            r["target"] = op.target
        if op.tflite_op not in r["tflite_ops"]:
            r["tflite_ops"].append(op.tflite_op)
    return list(rows.values())


def check_tflite_bit_exact(g: Graph, run_dir: str | Path, x: np.ndarray) -> bool:
    """Whether ``model_ethosu.tflite`` (the model Vela compiled) gives the integer reference's outputs in TFLite Micro."""
    from deploy.lower import reference
    from deploy.export.tflm import run_tflm

    got = run_tflm((Path(run_dir) / f"{STEM}.tflite").read_bytes(), x)
    ref = reference.run(g, x)
    return bool(np.array_equal(got.reshape(ref.shape), ref))


def report_section(run_dir: str | Path, budget: dict[str, Any]) -> dict[str, Any] | None:
    """The report's Ethos-U part from ``vela.json`` (None without one): Vela's figures ("estimated by
    Vela"), the cost model's prediction for them, the CPU ops, and flash / latency against the budget."""
    path = Path(run_dir) / REPORT
    try:
        data = json.loads(path.read_text())
        c = data["compiled"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    checks = {}
    for key, value in (("flash_bytes", c.get("weights_area_bytes")), ("latency_s", c.get("inference_time_s"))):
        limit = (budget.get(key) or {}).get("limit")
        checks[key] = {"value": value, "limit": limit, "ok": limit is None or (value is not None and value <= limit),
                       "what": "Vela's weights-area bytes" if key == "flash_bytes" else "Vela's inference time"}
    return {"board": data.get("board", BOARD_LABEL), "vela_version": data.get("vela_version"),
            "target": data.get("target"), "compiled": c, "predicted": data.get("predicted"),
            "relative_error": data.get("relative_error"), "cpu_ops": data.get("cpu_ops", []), "budget": checks}


def latency_section(run_dir: str | Path) -> dict[str, Any] | None:
    """The report's per-op latency for an Ethos-U run (Vela's per-operation cycles, its clock), in the
    shape of the MCU report's latency section; None without ``vela.json``."""
    try:
        data = json.loads((Path(run_dir) / REPORT).read_text())
        c, rows = data["compiled"], data["per_layer"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ops = [{"op": r["ir_op"], "type": "+".join(r["tflite_ops"]) + ("" if r["target"] == "NPU" else " (CPU)"),
            "w_bits": r["w_bits"], "predicted": r["cycles"], "measured": None} for r in rows]
    return {"unit": "cycles (estimated by Vela)", "clock_hz": c["clock_hz"], "predicted_total": c["cycles_total"],
            "measured_unit": None, "ops": ops}
