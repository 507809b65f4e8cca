"""The figures of a run folder, computed once: ``report.json``, the terminal summary and ``report.html``
all render the dict :func:`build_report` returns (so they cannot disagree).

Sources, all in the run folder: ``policy.json`` (bits, Ω, budget, argmax policy, accuracies),
``smpq_log.jsonl`` (ψ and α of every Shapley round), ``model.smpq`` (the deployed flash and arena),
``board.json`` (on-board accuracy and per-op times, when the board stage wrote it; read defensively),
the FP checkpoint (the graph for the per-op latency the device's cost model predicts), plus the host
verification and stage timings the caller passes in.
"""
from __future__ import annotations

import ast
import json
import platform
import shlex
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console

REPORT_FILE = "report.json"
HTML_FILE = "report.html"
BOARD_FILE = "board.json"
SHAPLEY_LOG = "smpq_log.jsonl"
BUDGET_KEYS = ("flash_bytes", "sram_bytes", "latency_s", "bops")
ARTIFACT_SUFFIXES = (".onnx", ".tflite", ".smpq", ".c", ".h", ".pt", ".elf", ".bin", ".hex")
PACKAGES = ("smpq-deploy", "torch", "numpy", "onnx", "onnxruntime", "ai-edge-litert", "tflite-micro", "matplotlib")
TOOLS = {"arm-none-eabi-gcc": ["arm-none-eabi-gcc", "--version"], "gcc": ["gcc", "--version"],
         "qemu-system-arm": ["qemu-system-arm", "--version"]}
NOT_MEASURED = "not measured"
#: Column headers of the summary tables (:func:`summary_rows`), shared by the terminal and the HTML page.
TABLE_HEADERS = {"accuracy": ("", "top-1", "measured on"),
                 "budget": ("budget", "chosen (Ω)", "argmax (Ω)", "model.smpq", "limit", ""),
                 "layers": ("layer", "type", "w", "a", "", "BOPs", "flash"),
                 "artifacts": ("file", "size"), "verification": ("host verification", ""), "latency": ("latency", ""),
                 "ethos_u": ("Ethos-U (estimated by Vela)", "value", "budget")}


# ------------------------------------------------------------------------------------------ formatting
def fmt(key: str, value: Any) -> str:
    """One figure as both renderers show it (bytes in KB, seconds in ms, BOPs in G, fractions in %)."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if key.endswith("bytes"):
        return f"{value / 1024:.1f} KB"
    if key.endswith("_s"):
        return f"{value * 1e3:.3f} ms"
    if key == "bops":
        return f"{value / 1e9:.3f} G"
    if key in ("accuracy", "fraction"):
        return f"{100 * value:.2f}%"
    return f"{value:.4g}" if isinstance(value, float) else f"{value:,}"


# ------------------------------------------------------------------------------------------ sources
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def versions() -> dict[str, str]:
    """Python, the packages that make the numbers, and the compilers/emulator on PATH ('absent' when missing)."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    for name, cmd in TOOLS.items():
        if shutil.which(cmd[0]) is None:
            out[name] = "absent"
            continue
        try:
            first = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
            out[name] = first[0] if first else "unknown"
        except (OSError, subprocess.SubprocessError):
            out[name] = "unknown"
    return out


def shapley_history(out: Path, score: str | None = None) -> dict[str, Any] | None:
    """ψ and α of every candidate after every Shapley round (from ``smpq_log.jsonl``) and the search's `score`
    (what ψ is: ``SMPQConfig.score``); None without the log."""
    path = out / SHAPLEY_LOG
    if not path.is_file():
        return None
    players: list[list[Any]] = []
    rounds: list[dict[str, Any]] = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("kind") == "players":
            players = rec["players"]
        elif rec.get("kind") == "round":
            rounds.append({"index": rec["index"], "psi": rec["psi"], "alpha": rec["alpha"],
                           "full_value": rec.get("full_value_mean")})
    if not players or not rounds:
        return None
    return {"players": players, "rounds": rounds, "score": score or "shapley"}


def _number(d: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for k in keys:
        v = d.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, dict):
            inner = _number(v, ("top1", "value", "accuracy"))
            if inner is not None:
                return inner
    return None


def board_summary(out: Path) -> dict[str, Any] | None:
    """What the report uses of ``board.json`` (written by the board stage with keys of its choosing):
    accuracy, samples, bit-exactness, and per-op times; None when there is no board.json."""
    board = _read_json(out / BOARD_FILE)
    if not isinstance(board, dict):
        return None
    layers = next((board[k] for k in ("layers", "per_layer", "ops", "layer_times") if isinstance(board.get(k), list)), [])
    times = []
    unit = None
    for i, row in enumerate(layers):
        if isinstance(row, (int, float)):
            times.append({"index": i, "name": None, "value": float(row)})
            continue
        if not isinstance(row, dict):
            continue
        for k in ("instructions", "cycles", "ticks", "us", "time_us", "latency_us"):
            if isinstance(row.get(k), (int, float)):
                unit = unit or k
                index = row.get("index", row.get("op", i))
                times.append({"index": index if isinstance(index, int) else i, "name": row.get("name") or row.get("kind"),
                              "value": float(row[k])})
                break
    return {"accuracy": _number(board, ("accuracy", "board_accuracy", "top1", "on_board_accuracy")),
            "samples": _number(board, ("samples", "n", "images")),
            "bit_exact": next((board[k] for k in ("bit_exact", "outputs_equal_reference", "matches_reference")
                               if isinstance(board.get(k), bool)), None),
            "status": next((board[k] for k in ("status", "board", "backend") if isinstance(board.get(k), str)), None),
            "latency": _number(board, ("latency",)) if not isinstance(board.get("latency"), dict)
            else _number(board["latency"], ("per_inference", "value")),
            "latency_unit": (board.get("latency") or {}).get("unit") if isinstance(board.get("latency"), dict) else None,
            "layer_times": times or None, "layer_time_unit": board.get("layer_time_unit") or unit}


def search_latency_model(policy: dict[str, Any]) -> Any:
    """The latency model the search used (``settings.latency_model`` of policy.json, the dataclass's repr of
    plain literals), so that the report's latency figures agree with the policy's Ω; None if absent."""
    from search.budget import LatencyModel

    text = (policy.get("settings") or {}).get("latency_model")
    try:
        call = ast.parse(str(text), mode="eval").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "LatencyModel"):
            return None
        return LatencyModel(**{k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg})
    except (SyntaxError, ValueError, TypeError):
        return None


def _graph_and_latency(policy: dict[str, Any], out: Path, device: str) -> tuple[Any, Any]:
    """The execution graph of the searched model and the latency model of its search (else the device's)."""
    from deploy.devices.profiles import latency_model, load_device
    from deploy.errors import USER_ERRORS
    from search.nn.graph import extract_graph
    from search.nn.train import load_checkpoint

    lm = search_latency_model(policy)
    try:
        lm = lm or latency_model(load_device(device))
    except USER_ERRORS:
        lm = None
    for path in (Path(policy.get("fp_checkpoint") or ""), out / "fp.pt"):
        if path.is_file():
            try:
                model, _ = load_checkpoint(path)
                return extract_graph(model), lm
            except USER_ERRORS:
                continue
    return None, lm


def deployed_figures(out: Path, budget: dict[str, Any]) -> dict[str, Any] | None:
    """Flash and SRAM of the exported blob itself, checked against the budget's limits (the search's Ω
    predicts them; this is what the board gets)."""
    from firmware_harness.smpq_format import parse

    if not (out / "model.smpq").is_file():
        return None
    blob = (out / "model.smpq").read_bytes()
    figures = {"flash_bytes": len(blob), "sram_bytes": parse(blob).arena_size}
    result: dict[str, Any] = {}
    for key, value in figures.items():
        limit = (budget.get(key) or {}).get("limit")
        result[key] = {"value": value, "limit": limit, "ok": limit is None or value <= limit}
    return result


def _per_layer(om: Any) -> dict[str, dict[str, float]]:
    """flash_bytes, latency_s and BOPs of each quantizable layer, summed over its runtime instances."""
    out: dict[str, dict[str, float]] = {}
    for r in om.layers:
        if r.w_bits is None:
            continue
        row = out.setdefault(r.name.split("#")[0], {"flash_bytes": 0.0, "latency_s": 0.0, "bops": 0.0})
        row["flash_bytes"] += r.flash_bytes
        row["latency_s"] += r.latency_s or 0.0
        row["bops"] += r.bops
    return out


def _budget_step(policy: dict[str, Any], graph: Any, lm: Any) -> dict[str, Any]:
    """What the budget step did: the argmax policy's Ω against the limits and the layers it changed."""
    from deploy.devices.cost import omega

    argmax = (policy.get("method_details") or {}).get("argmax_policy")
    selection = policy.get("selection") or {}
    result: dict[str, Any] = {"how": selection.get("how"), "argmax_omega": None, "argmax_over": [], "changed": [],
                              "guard": selection.get("guard")}
    if not argmax:
        return result
    for layer in policy["layers"]:
        before = argmax.get(layer["name"])
        if before and (before[0] != layer["w_bits"] or before[1] != layer["a_bits"]):
            result["changed"].append({"layer": layer["name"], "w_bits": [before[0], layer["w_bits"]],
                                      "a_bits": [before[1], layer["a_bits"]]})
    if graph is not None:
        packed = bool((policy.get("settings") or {}).get("packed_activations", False))
        om = omega(graph, {n: tuple(b) for n, b in argmax.items()}, lm, packed_activations=packed)
        chosen = omega(graph, {L["name"]: (L["w_bits"], L["a_bits"]) for L in policy["layers"]}, lm, packed_activations=packed)
        before, after = _per_layer(om), _per_layer(chosen)
        for c in result["changed"]:  # what each change did to the layer's own flash, latency and BOPs
            c["delta"] = {k: after[c["layer"]][k] - before[c["layer"]][k] for k in before[c["layer"]]}
        result["argmax_omega"] = {k: (None if getattr(om, k) is None else float(getattr(om, k))) for k in BUDGET_KEYS}
        for k in BUDGET_KEYS:
            limit = (policy.get("budget") or {}).get(k, {}).get("limit")
            value = result["argmax_omega"][k]
            if limit is not None and value is not None and value > limit:
                result["argmax_over"].append({"budget": k, "value": value, "limit": limit})
    return result


def forced_lines(step: dict[str, Any]) -> list[str]:
    """The budget step in words: which budgets the argmax policy broke, which layers changed bits and what
    that did to each layer's flash, latency and BOPs."""
    if step.get("how") in (None, "fixed"):
        return ["fixed policy (uniform): no budget step"]
    guard = step.get("guard") or {}
    said = guard_line(guard)
    if not step["changed"]:
        return ["the argmax policy met every budget: the budget step changed nothing"] + ([said] if said else [])
    over = "; ".join(f"{o['budget']} {fmt(o['budget'], o['value'])} > limit {fmt(o['budget'], o['limit'])}"
                     for o in step["argmax_over"]) or "a budget"
    if guard.get("kept") == "uniform":
        lines = [f"{said}; {len(step['changed'])} layer(s) differ from the argmax policy"]
    else:
        lines = [f"the argmax policy broke {over}: the knapsack changed {len(step['changed'])} layer(s)"]
    for c in step["changed"]:
        parts = [f"{kind} {c[key][0]}→{c[key][1]} bits" for kind, key in (("weights", "w_bits"), ("activations", "a_bits"))
                 if c[key][0] != c[key][1]]
        delta = c.get("delta") or {}
        effect = ", ".join(f"{k.split('_')[0]} {'+' if v > 0 else '−'}{fmt(k, abs(v))}" for k, v in delta.items() if v)
        lines.append(f"  {c['layer']}: {', '.join(parts)}" + (f" ({effect})" if effect else ""))
    return lines + ([said] if said and guard.get("kept") != "uniform" else [])


def guard_line(guard: dict[str, Any]) -> str | None:
    """The uniform guard's decision in words (search.runner.guard_uniform), None when it did not run."""
    if not guard.get("uniform"):
        return None
    values = (f"the searched policy is worth {guard['value_chosen']:.2%} in SMPQ's game, uniform "
              f"{guard['uniform'].upper()} {guard['value_uniform']:.2%} (± {guard['standard_error']:.2%})")
    if guard["kept"] == "uniform":
        return f"the uniform guard chose uniform {guard['uniform'].upper()}: {values}, not {guard['z']:g} standard errors more"
    return f"uniform guard: {values}; kept the searched policy"


def _latency(policy: dict[str, Any], graph: Any, lm: Any, device: str, board: dict[str, Any] | None) -> dict[str, Any] | None:
    """Per runtime op: the cost model's predicted cycles (instructions on QEMU) and the board's measured time."""
    from deploy.devices.profiles import load_device
    from deploy.devices.cost import omega

    if graph is None or lm is None:
        return None
    pol = {L["name"]: (L["w_bits"], L["a_bits"]) for L in policy["layers"]}
    om = omega(graph, pol, lm)
    unit = load_device(device).cost_model.latency_unit
    measured = (board or {}).get("layer_times")
    ops = [{"op": r.name, "type": r.op_type, "w_bits": r.w_bits, "predicted": r.cycles, "measured": None} for r in om.layers]
    if measured and len(measured) == len(ops):
        for op, m in zip(ops, measured):
            op["measured"] = m["value"]
    return {"unit": unit, "clock_hz": lm.clock_hz, "predicted_total": sum(o["predicted"] for o in ops),
            "measured_unit": (board or {}).get("layer_time_unit"), "ops": ops}


def build_report(out: Path, device: str, verification: dict[str, Any], timings: dict[str, float],
                 command: str, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every figure of the run folder `out` (see the module docstring); `previous` fills what this call lacks."""
    previous = previous or {}
    policy = json.loads((out / "policy.json").read_text())
    graph, lm = _graph_and_latency(policy, out, device)
    board = board_summary(out)
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.suffix in ARTIFACT_SUFFIXES and p.is_file()}
    acc = policy.get("accuracy") or {}
    v = verification or {}
    accuracies = {
        "fp": {"value": acc.get("fp_test"), "where": "PyTorch FP, test split"},
        "qat": {"value": acc.get("qat_test"), "where": "PyTorch fake-quant after QAT, test split"},
        "integer_reference": {"value": v.get("reference_accuracy"),
                              "where": f"integer reference (numpy), first {v.get('samples')} test images"},
        "on_board": {"value": (board or {}).get("accuracy"),
                     "where": (f"on the board, {int(board['samples'])} test images" if board and board.get("samples")
                               else "on the board") + ("" if board.get("bit_exact") is None else
                                                       f" (outputs = integer reference: {'yes' if board['bit_exact'] else 'NO'})")
                     if board and board.get("accuracy") is not None else NOT_MEASURED},
    }
    layers = [{k: L[k] for k in ("name", "type", "w_bits", "a_bits", "held_8bit", "macs", "params", "bops", "flash_bytes")}
              for L in policy["layers"]]
    from deploy.ethosu.stage import latency_section, report_section

    ethos_u = report_section(out, policy.get("budget") or {})  # Vela's estimates for an Ethos-U device, else None
    return {
        "device": device, "model": policy["model"], "dataset": policy["dataset"], "seed": policy["seed"],
        "method": policy.get("method"), "command": command or previous.get("command"), "versions": versions(),
        "budget": policy.get("budget"), "omega": policy.get("omega"),
        "deployed": deployed_figures(out, policy.get("budget") or {}), "accuracy": acc, "accuracies": accuracies,
        "layers": layers, "budget_step": _budget_step(policy, graph, lm),
        "shapley": shapley_history(out, (policy.get("method_details") or {}).get("score")),
        "latency": latency_section(out) if ethos_u else _latency(policy, graph, lm, device, board),
        "host_verification": v, "artifact_bytes": sizes, "stage_seconds": timings,
        "board": board,
        "board_run": (board.get("status") or "measured (board.json)") if board else (ethos_u["board"] if ethos_u else previous.get("board_run",
                     "not run: the firmware build and the board (QEMU) stage are not part of this version")),
        "ethos_u": ethos_u,
    }


def write_report(out: Path, report: dict[str, Any], console: Console | None = None) -> tuple[Path, Path]:
    """report.json and report.html (atomic), then the terminal summary; returns both paths."""
    from deploy.pipeline.report_html import render_html
    from search.atomic import atomic_write_text

    atomic_write_text(out / REPORT_FILE, json.dumps(report, indent=1))
    atomic_write_text(out / HTML_FILE, render_html(report))
    if console is not None:
        print_summary(console, report)
    return out / REPORT_FILE, out / HTML_FILE


def run_command(argv: list[str]) -> str:
    """The command line that reproduces a run, as one shell-quoted string."""
    return shlex.join(["smpq-deploy", *argv])


# ------------------------------------------------------------------------------------------ terminal
def summary_rows(report: dict[str, Any]) -> dict[str, list[tuple[str, ...]]]:
    """The tables of the summary as strings: the terminal and the HTML page print these same rows."""
    rows: dict[str, list[tuple[str, ...]]] = {}
    rows["accuracy"] = [(name.replace("_", " "), fmt("accuracy", a["value"]) if a["value"] is not None else NOT_MEASURED,
                         a["where"]) for name, a in report["accuracies"].items()]
    step = report.get("budget_step") or {}
    argmax = step.get("argmax_omega") or {}
    deployed = report.get("deployed") or {}
    rows["budget"] = []
    for k in BUDGET_KEYS:
        e = (report.get("budget") or {}).get(k) or {}
        limit = e.get("limit")
        rows["budget"].append((k, fmt(k, e.get("value")), fmt(k, argmax.get(k)),
                               fmt(k, (deployed.get(k) or {}).get("value")), "none" if limit is None else fmt(k, limit),
                               "ok" if e.get("ok", True) else "OVER"))
    rows["layers"] = [(L["name"], L["type"], str(L["w_bits"]), str(L["a_bits"]), "held" if L["held_8bit"] else "",
                       fmt("bops", L["bops"]), fmt("flash_bytes", L["flash_bytes"])) for L in report["layers"]]
    rows["artifacts"] = [(name, f"{size:,} B") for name, size in report["artifact_bytes"].items()]
    v = report.get("host_verification") or {}
    rows["verification"] = [(k, f"{x:.4f}" if isinstance(x, float) else str(x)) for k, x in v.items()]
    lat = report.get("latency")
    if lat:
        rows["latency"] = [("predicted total", f"{lat['predicted_total']:,.0f} {lat['unit']}"
                            f" ({fmt('latency_s', lat['predicted_total'] / lat['clock_hz'])} at {lat['clock_hz'] / 1e6:g} MHz)")]
        measured = [o["measured"] for o in lat["ops"] if o["measured"] is not None]
        board = report.get("board") or {}
        total = board.get("latency") if board.get("latency") is not None else (sum(measured) if measured else None)
        unit = board.get("latency_unit") or lat["measured_unit"]
        rows["latency"].append(("measured total", f"{total:,.0f} {unit} (board)" if total is not None else NOT_MEASURED))
    if report.get("ethos_u"):
        rows["ethos_u"] = ethos_u_rows(report["ethos_u"])
    return rows


def ethos_u_rows(e: dict[str, Any]) -> list[tuple[str, ...]]:
    """Vela's figures of the compiled model (estimates, not measurements), the budget checks, the cost
    model's error and the operations Vela left on the CPU, one per row."""
    c, b, err = e.get("compiled") or {}, e.get("budget") or {}, e.get("relative_error") or {}

    def check(key: str) -> str:
        x = b.get(key) or {}
        return "none" if x.get("limit") is None else f"{fmt(key, x['limit'])} {'ok' if x.get('ok') else 'OVER'}"

    cpu = c.get("cpu_ops") or []
    clock = c.get("clock_hz") or 0
    return [("figures", str(e.get("board")), ""),
            (f"weights area ({c.get('weights_area')})", f"{c.get('weights_area_bytes', 0):,} B", check("flash_bytes")),
            ("encoded weights", f"{c.get('encoded_weight_bytes', 0):,} B", ""),
            ("SRAM used", fmt("sram_bytes", c.get("sram_bytes")), ""),
            ("cycles (NPU)", f"{c.get('cycles_total', 0):,.0f} ({c.get('cycles_npu', 0):,.0f})", ""),
            (f"inference time at {clock / 1e6:g} MHz", fmt("latency_s", c.get("inference_time_s")), check("latency_s")),
            ("cost model vs Vela", ", ".join(f"{k} {100 * v:.2f}%" for k, v in err.items() if v is not None), ""),
            ("operations on the CPU", "; ".join(f"{o['tflite_op']} ({o.get('ir_op') or o['name']})" for o in cpu)
             if cpu else "none: every operation runs on the NPU", "")]


def print_summary(console: Console, report: dict[str, Any]) -> None:
    """The terminal summary of a report (the same rows the HTML page shows)."""
    from rich.table import Table

    rows = summary_rows(report)
    titles = {"accuracy": f"{report['model']} on {report['device']} ({report['method']})", "budget": "budgets",
              "layers": "bit widths per layer", "artifacts": "artifacts", "verification": None, "latency": None,
              "ethos_u": None}
    for name, body in rows.items():
        t = Table(title=titles[name])
        for h in TABLE_HEADERS[name]:
            t.add_column(h)
        for r in body:
            t.add_row(*r)
        console.print(t)
    for line in forced_lines(report.get("budget_step") or {}):
        console.print(f"budget step: {line}" if not line.startswith("  ") else line)
