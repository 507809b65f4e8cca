"""`smpq-deploy calibrate`: measure a device's latency model on the board, through the harness.

    smpq-deploy calibrate --device qemu-mps2-an500 [--kernels cortex_m_dsp] [--models resnet20,mbv2:width_mult=0.75] [--seed 0]
                          [--icount-shift 5] [--out devices/calibrated/<device>.yaml]

Micro-benchmarks: each model (random weights, calibrated on CIFAR-10 test images or seeded noise) is lowered
at uniform weights of every width the device allows (8-bit activations: the runtime's activations are int8
containers, so activation bits do not change its work), exported, built into the firmware with the chosen
kernel set (firmware_harness.build) and run once on the board (QEMU for the emulated board) over the serial
protocol; the board times every op. The fit (:func:`fit`, NNLS) gives, per weighted op type (conv2d,
conv2d_unaligned: K % 4 != 0, depthwise_conv2d, fully_connected) and weight width, instructions (or cycles) per
MAC, per output element and per input value gathered into patches — the work quantities of
search.budget.weighted_work, the same function Ω prices with —, per element for add, requantize and pooling,
and one per-op overhead.
The micro-benchmark models are not the ones bench/cost_accuracy.py predicts with the fit. The
models at a mixed policy (weights 1..8 bits) are held out and predicted with the fit: the error is written
with the profile. The result, with its provenance (command, date, seed, firmware and kernel hashes), goes to
``devices/calibrated/<device>.yaml``; deploy/devices/profiles.py takes its cost model for that device when present.
tests/deploy/cli/test_calibrate.py fails when the kernels changed since (re-run this command then).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

from deploy.errors import DeployError

HELP = "measure the device's latency model on the board (micro-benchmarks through the harness) and write it"

#: runtime op kind (firmware) → (cost-model op type, what its work is counted in)
OP_WORK = {"conv2d": ("conv2d", "macs"), "depthwise_conv2d": ("depthwise_conv2d", "macs"),
           "fully_connected": ("fully_connected", "macs"), "add": ("add", "elements"),
           "requantize": ("requantize", "elements"), "avg_pool": ("pool", "elements"), "max_pool": ("pool", "elements")}
WEIGHTED = ("conv2d", "depthwise_conv2d", "fully_connected")
#: an op type and width is calibrated only with at least this much work measured (MACs or elements, all runs
#: together); below that its ops are mostly overhead (resnet8's 1x1 normalise "depthwise" op, its 640-MAC fully
#: connected layer) and the device profile keeps its own figure
MIN_WORK = 100_000
#: micro-benchmark models: every op type the zoo's models use (conv 3x3 and 1x1, depthwise, add, pooling, fully
#: connected), at shapes other than resnet8's and mbv2's, which bench/cost_accuracy.py predicts with the fit
DEFAULT_MODELS = "resnet20,mbv2:width_mult=0.75"


def calibrated_path(device: str) -> Path:
    from deploy.devices.profiles import devices_dir

    return devices_dir() / "calibrated" / f"{device}.yaml"


def kernels_hash(kernels: str) -> str:
    """sha256 of the kernel sources the set `kernels` compiles (its folders of firmware_harness/runtime)."""
    from firmware_harness.build import KERNEL_SETS, RUNTIME

    h = hashlib.sha256()
    for folder in KERNEL_SETS[kernels]:
        for src in sorted((RUNTIME / folder).glob("*.[ch]")):
            h.update(f"{folder}/{src.name}\0".encode() + src.read_bytes())
    return h.hexdigest()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from firmware_harness.build import KERNEL_SETS

    parser.add_argument("--kernels", default="cortex_m_dsp", choices=sorted(KERNEL_SETS),
                        help="kernel set the firmware is built with (default: cortex_m_dsp)")
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help=f"micro-benchmark models, comma-separated, each name[:key=number] (default: {DEFAULT_MODELS}; "
                             "models other than those bench/cost_accuracy.py predicts, so that check is held out)")
    parser.add_argument("--icount-shift", type=int, default=5, help="QEMU -icount shift (default 5)")
    parser.add_argument("--out", type=Path, default=None, help="output profile (default devices/calibrated/<device>.yaml)")


def model_spec(spec: str) -> tuple[str, dict[str, float]]:
    """'mbv2:width_mult=0.75' → ('mbv2', {'width_mult': 0.75}): a zoo model with keyword arguments."""
    name, _, rest = spec.partition(":")
    kwargs = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        try:
            kwargs[key.strip()] = float(value)
        except ValueError:
            eq = ""
        if not eq:
            raise DeployError(f"model '{spec}': write extra arguments as name:key=number (e.g. mbv2:width_mult=0.75)")
    return name.strip(), kwargs


def random_ir(model: str, w_bits: list[int], a_bits: list[int], images: np.ndarray, seed: int):
    """Integer IR of a randomly initialised `model` (a :func:`model_spec`), layer i at (w_bits[i % len],
    a_bits[i % len]), calibrated on `images`."""
    import torch

    from deploy.lower.lower import lower
    from search.nn.data import CIFAR10_MEAN, CIFAR10_STD
    from search.nn.models import build_model, quantizable_layers
    from search.policy import Policy
    from search.nn.qmodel import calibrate, quantize_model

    torch.manual_seed(seed)
    name, kwargs = model_spec(model)
    m = build_model(name, (3, *images.shape[1:3]), 10, **kwargs)
    names = [n for n, _ in quantizable_layers(m)]
    pol = Policy([(n, (w_bits[i % len(w_bits)], a_bits[i % len(a_bits)])) for i, n in enumerate(names)])
    q = quantize_model(m, pol, method="lsq", seed=seed)
    mean, std = torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD)
    x = ((torch.from_numpy(images).float() / 255 - mean) / std).permute(0, 3, 1, 2).contiguous()
    calibrate(q, [x], n_batches=1, method="lsq", seed=seed)
    return lower(q.eval(), CIFAR10_MEAN, CIFAR10_STD, x, name=name)


Row = tuple  # (firmware op kind, weight bits, MACs or elements, output elements, output channels, instructions)


def op_work(blob: bytes) -> list[tuple[str, int, float, float, int]]:
    """(firmware op kind, weight bits, work: MACs or elements, output elements, output channels) of every op of a
    .smpq blob, in order."""
    from firmware_harness import smpq_format as fmt

    p = fmt.parse(blob)
    out = []
    for op in p.ops:
        t_in, t_out = p.tensors[op.inputs[0]], p.tensors[op.output]
        if op.kind in WEIGHTED:
            pixels = t_out.size // t_out.dims[3] if op.kind != "fully_connected" else 1
            out.append((op.kind, op.w_bits, float(p.codes(op) * pixels), float(t_out.size), int(t_out.dims[3])))
        elif op.kind in ("avg_pool", "max_pool"):
            out.append((op.kind, 8, float(t_in.size), float(t_out.size), int(t_out.dims[3])))
        else:
            out.append((op.kind, 8, float(t_out.size), float(t_out.size), int(t_out.dims[3])))
    return out


def measure(graph, work_dir: Path, board: str, kernels: str, icount_shift: int, x: np.ndarray):
    """Build `graph`'s firmware and run one inference on QEMU: ([(kind, bits, work, outputs, channels, instructions)],
    fw_hash, unit)."""
    from deploy.export.smpq import build_smpq, export_c
    from firmware_harness.hil.backends.qemu import QemuBoard
    from firmware_harness.build import build_firmware
    from firmware_harness.hil.measure import TimerUnit
    from firmware_harness.hil.protocol import DutClient

    export_c(graph, work_dir)
    image = build_firmware(work_dir, board, work_dir / "fw", kernels=kernels)
    with QemuBoard(image.elf, icount_shift=icount_shift) as qemu, DutClient(qemu.url) as client:
        unit = TimerUnit.from_info(client.info())
        client.load(np.ascontiguousarray(x, np.int8).tobytes())
        client.infer(1, 0)
        kinds, ticks = client.layers(), client.layer_times()
    work = op_work(build_smpq(graph))
    if len(work) != len(ticks) or any(k != w[0] for (_, k, _, _), w in zip(kinds, work)):
        raise DeployError("the board's op list does not match the blob's; rebuild the firmware")
    return [(*w, unit.convert(t)) for w, t in zip(work, ticks)], image.fw_hash, unit.unit


def features(row: Row) -> tuple[str, int, dict[str, float]]:
    """(cost-model op type, weight bits it is priced at, work quantities) of one measured op: weighted ops by
    search.budget.weighted_work (the same function Ω prices with), the others their elements as MACs."""
    from search.budget import weighted_work

    kind, bits, work, outputs, channels = row[:5]
    if kind in WEIGHTED:
        op_type, quantities = weighted_work(kind, work, outputs, channels)
        return op_type, bits, quantities
    return OP_WORK[kind][0], 8, {"macs": work}


Rates = dict[tuple[str, int], float]


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    return nnls(a, b)[0]


def fit(rows: list[Row]) -> tuple[float, dict[str, Rates]]:
    """instructions ≈ overhead + Σ_term rate[term][op type, bits] · work[term] over every priced op, the work
    quantities by :func:`features` (search.budget.weighted_work).

    overhead: the cost of an op without work — the median of the ops measured with none, else the cheapest op.
    Per op type and bits (with at least MIN_WORK MACs measured): non-negative least squares (NNLS) on the
    relative error of each op. A term whose ratio to the MACs varies less than 1.5x over the group's ops cannot
    be told apart from the MACs and is left out (rate 0); the MAC rate is at least 1e-3. Returns (overhead,
    {term: {(op type, bits): rate}}), a term's rates only where positive."""
    from search.budget import WORK_TERMS

    rows = [r for r in rows if r[0] in OP_WORK]
    idle = [r[-1] for r in rows if r[2] <= 0]
    overhead = float(np.median(idle)) if idle else min((r[-1] for r in rows), default=0.0)
    groups: dict[tuple[str, int], list[tuple[dict[str, float], float]]] = {}
    for r in rows:
        if r[2] > 0:
            op_type, bits, quantities = features(r)
            groups.setdefault((op_type, bits), []).append((quantities, r[-1] - overhead))
    rates: dict[str, Rates] = {t: {} for t in WORK_TERMS}
    for key in sorted(groups):
        g = groups[key]
        macs = np.array([q["macs"] for q, _ in g])
        if macs.sum() < MIN_WORK:
            continue
        terms = ["macs"]
        for t in WORK_TERMS[1:]:
            col = np.array([q.get(t, 0.0) for q, _ in g])
            ratio = col / macs
            if col.any() and (not ratio.all() or ratio.max() > 1.5 * ratio.min()):
                terms.append(t)
        a = np.array([[q.get(t, 0.0) for t in terms] for q, _ in g])
        y = np.array([v for _, v in g])
        w = 1.0 / np.maximum(y, 1.0)
        x = _nnls(a * w[:, None], y * w)
        for t, v in zip(terms, x):
            if t == "macs" or v > 1e-6:
                rates[t][key] = max(float(v), 1e-3) if t == "macs" else float(v)
    return overhead, rates


def merged_tables(base: dict[str, dict[int, float]], rates: Rates) -> dict[str, dict[int, float]]:
    """The cost model's tables once calibrated: an op type measured replaces its table, the others keep `base`'s."""
    measured: dict[str, dict[int, float]] = {}
    for (op, bits), v in rates.items():
        measured.setdefault(op, {})[bits] = round(v, 4)
    return {**{op: dict(t) for op, t in base.items()}, **measured}


def latency_model_of(overhead: float, rates: dict[str, Rates], base_macs: dict[str, dict[int, float]] | None = None):
    """The search.budget.LatencyModel of a fit (clock 1 Hz: its cycles are the counts measured); MAC tables of op
    types not measured from `base_macs` (the device profile's)."""
    from search.budget import TERM_TABLES, LatencyModel

    return LatencyModel(clock_hz=1.0, per_layer_overhead_cycles=overhead,
                        cycles_per_mac=merged_tables(base_macs or {}, rates["macs"]),
                        **{TERM_TABLES[t]: merged_tables({}, r) for t, r in rates.items() if t != "macs"})


def predict_op(row: Row, model) -> float:
    """Instructions the cost model `model` (search.budget.LatencyModel) predicts for one measured op."""
    op_type, bits, quantities = features(row)
    return model.work_cycles(op_type, quantities, bits, 8)


def predict(rows: list[Row], model) -> float:
    """Instructions the cost model `model` predicts for the priced ops of `rows`."""
    return sum(predict_op(r, model) for r in rows if r[0] in OP_WORK)


def run(args: argparse.Namespace) -> int:
    import yaml

    from deploy.devices.profiles import devices_dir, load_device
    from search.budget import TERM_TABLES
    from deploy.lower.reference import to_int8_input
    from deploy.pipeline.validation import read_yaml

    profile = load_device(args.device)
    if profile.flash.backend != "qemu":
        raise DeployError(f"calibrate builds and runs one firmware per micro-benchmark, so it needs a board it can "
                          f"start itself; '{profile.name}' uses the '{profile.flash.backend}' backend (only qemu for now)")
    if args.icount_shift < 0 or args.icount_shift > 10:
        raise DeployError("--icount-shift must be in 0..10")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        model_spec(m)
    if not models:
        raise DeployError("--models needs at least one model")
    seed = int(getattr(args, "seed", 0) or 0)
    images = _images(8, seed)
    x = to_int8_input(images[:1])[0]
    widths = list(profile.allowed_bits.weight)
    tmp = tempfile.TemporaryDirectory(prefix="smpq-calibrate-")
    work = Path(tmp.name)
    train: list[tuple[str, int, float, float, float]] = []
    runs: list[dict[str, object]] = []
    held_out: dict[str, tuple[float, float]] = {}
    fw_hashes = set()
    unit = "instructions"
    for model in models:
        for w in widths:
            print(f"calibrate: {model} at w{w}a8 on {profile.name} ({args.kernels})", file=sys.stderr)
            rows, fw, unit = measure(random_ir(model, [w], [8], images, seed), work / model, profile.name,
                                     args.kernels, args.icount_shift, x)
            train += rows
            fw_hashes.add(fw)
            runs.append({"model": model, "policy": f"w{w}a8", "ops": _records(rows)})
    overhead, rates = fit(train)
    shipped, _ = read_yaml(devices_dir() / f"{profile.name}.yaml")
    fitted = latency_model_of(overhead, rates, shipped["cost_model"]["cycles_per_mac"])
    for model in models:
        rows, fw, _ = measure(random_ir(model, list(range(1, 9)), [8, 7, 6, 5, 4, 3, 2], images, seed),
                              work / model, profile.name, args.kernels, args.icount_shift, x)
        held_out[model] = (predict(rows, fitted), sum(r[-1] for r in rows if r[0] in OP_WORK))
        runs.append({"model": model, "policy": "mixed (held out)", "ops": _records(rows)})
    command = "smpq-deploy calibrate " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else \
        f"smpq-deploy calibrate --device {profile.name}"
    out = {
        "device": profile.name, "kernels": args.kernels, "kernels_hash": kernels_hash(args.kernels),
        "firmware_hashes": sorted(fw_hashes), "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "seed": seed,
        "icount_shift": args.icount_shift, "models": models,
        "cost_model": {"latency_unit": "instructions" if unit == "instructions" else "cycles",
                       "per_layer_overhead_cycles": round(overhead, 1),
                       **{TERM_TABLES[t]: merged_tables({}, r) for t, r in rates.items()}},
        "held_out": {m: {"policy": "weights 1..8 bits by layer", "predicted": round(p), "measured": round(meas),
                         "error": round(p / meas - 1, 4)} for m, (p, meas) in held_out.items()},
        "measurements": runs,  # per run, per op: [firmware op kind, weight bits, MACs or elements, outputs, output channels, instructions]
    }
    tmp.cleanup()
    path = Path(args.out or calibrated_path(profile.name))
    path.parent.mkdir(parents=True, exist_ok=True)
    from search.atomic import atomic_write_text

    atomic_write_text(path, "# Written by smpq-deploy calibrate; do not edit (re-run the command instead).\n"
                      + yaml.safe_dump(out, sort_keys=False))
    for m, (p, meas) in held_out.items():
        print(f"{m} mixed policy: predicted {p:,.0f}, measured {meas:,.0f} {unit} ({p / meas - 1:+.1%})")
    print(f"calibrated cost model of {profile.name} ({args.kernels}) written to {path}")
    return 0


def _records(rows: list[Row]) -> list[list]:
    """Measured ops as the calibrated profile stores them (see `measurements`)."""
    return [[k, b, int(n), int(o), int(c), round(t)] for k, b, n, o, c, t in rows]


def _images(n: int, seed: int) -> np.ndarray:
    """The first `n` CIFAR-10 test images (uint8 NHWC) from the shared data folder, else seeded noise."""
    data = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10" / "test.npz"
    if data.is_file():
        with np.load(data) as d:
            return d["x"][:n]
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
