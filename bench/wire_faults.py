"""Faults on the serial link: the protocol client through a byte-damaging proxy to the firmware on QEMU.

    .venv/bin/python bench/wire_faults.py [--frames 10000] [--seed 0] [--flip 4e-4] [--drop 2e-4]
                                          [--duplicate 2e-4] [--delay 2e-4]

The firmware runs a small random integer model (deploy.lower.irbuild.synthetic_graph: every op kind, 8×8×3
input) so that the run is about the wire, not the model. firmware_harness.hil.faultproxy sits between the
client and QEMU and flips, drops, duplicates and delays bytes (each byte, either direction, with the
given probabilities; seeded). The client runs operations in the order a measurement does — per input:
load it, then rounds of ``name``, ``smpq-info``, ``infer 1 0`` and ``smpq-raw`` — until it has sent
--frames frames (a frame is one command/reply exchange, retries and resyncs included).

Each operation's outcome: ok first try, retried ok, reported failure (a one-line BoardError), or WRONG
RESULT ACCEPTED — a returned value that differs from the truth (the name, the info of a fault-free
reading, the integer reference's raw outputs, the dequantised results of a fault-free run). The last
must be 0. Prints the count of each fault and each outcome. tests/hil/test_wire_faults.py runs a short one.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy.export.smpq import export_c  # noqa: E402
from deploy.lower.irbuild import synthetic_graph  # noqa: E402
from deploy.lower.reference import run as run_reference  # noqa: E402
from firmware_harness.hil.backends.qemu import QemuBoard  # noqa: E402
from firmware_harness.build import build_firmware  # noqa: E402
from firmware_harness.hil.faultproxy import FAULTS, FaultProxy, WireFaults  # noqa: E402
from firmware_harness.hil.protocol import BoardError, DutClient  # noqa: E402

OUTCOMES = ("ok first try", "retried ok", "reported failure", "WRONG RESULT ACCEPTED")
ROUNDS_PER_INPUT = 4
CLIENT = {"timeout": 1.0, "infer_timeout": 2.0, "quiet": 0.05, "retries": 3}


@dataclass
class Campaign:
    frames: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    outcomes: Counter = field(default_factory=Counter)          # outcome → count
    by_operation: dict[str, Counter] = field(default_factory=dict)
    reconnects: int = 0
    lap_checked: bool = True
    seconds: float = 0.0

    @property
    def wrong(self) -> int:
        return self.outcomes["WRONG RESULT ACCEPTED"]


def firmware(out: Path, seed: int = 2) -> tuple[Path, object]:
    """(ELF, graph) of the synthetic model's QEMU firmware, built in `out` (incremental)."""
    g = synthetic_graph(seed)
    out.mkdir(parents=True, exist_ok=True)
    export_c(g, out)
    return build_firmware(out, "qemu-mps2-an500", out).elf, g


def campaign(elf: Path, graph, frames: int, faults: WireFaults, seed: int, n_inputs: int = 16) -> Campaign:
    """Run operations through a FaultProxy until `frames` frames went over the wire."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (n_inputs, *graph.tensors[graph.inputs[0]].shape[1:])).astype(np.int8)
    ref = run_reference(graph, x).reshape(n_inputs, -1)
    result = Campaign()
    start = time.perf_counter()
    with QemuBoard(elf) as board:
        truth = _fault_free_truth(board.url, x)
        with FaultProxy(board.port, faults, seed=seed) as proxy:
            client = DutClient(proxy.url, **CLIENT)
            sent = 0
            try:
                i = 0
                while sent + client.stats.frames < frames:
                    k = i % n_inputs
                    ops = [("load", lambda: client.load(x[k].tobytes()), None)]
                    for _ in range(ROUNDS_PER_INPUT):
                        ops += [("name", lambda: client.name(), truth["name"]), ("info", lambda: client.info(), truth["info"]),
                                ("infer", lambda: client.infer(1, 0).results, truth["results"][k]),
                                ("raw", lambda: np.frombuffer(client.raw_output(), np.int8).tolist(), ref[k].tolist())]
                    for op, call, want in ops:
                        outcome, lost = _run(client, call, want)
                        result.outcomes[outcome] += 1
                        result.by_operation.setdefault(op, Counter())[outcome] += 1
                        if lost:  # the proxy dropped the connection: start a new one, as a user would
                            sent += client.stats.frames
                            client.close()
                            client = DutClient(proxy.url, **CLIENT)
                            result.reconnects += 1
                        if outcome == "reported failure" and op in ("load", "infer"):
                            break  # this input's later results would not be comparable: next input
                    i += 1
                result.lap_checked = client.has_lap is not False
            finally:
                client.close()
                result.frames = sent + client.stats.frames
            result.faults = dict(proxy.counts)
    result.seconds = time.perf_counter() - start
    return result


def _fault_free_truth(url: str, x: np.ndarray) -> dict:
    """Name, info and the dequantised results of every input, read without the proxy."""
    with DutClient(url, **CLIENT) as c:
        truth = {"name": c.name(), "info": c.info(), "results": []}
        for codes in x:
            c.load(codes.tobytes())
            truth["results"].append(c.infer(1, 0).results)
        return truth


def _run(client: DutClient, call, want) -> tuple[str, bool]:
    """(outcome, connection lost) of one operation."""
    retries = client.stats.retries
    try:
        got = call()
    except BoardError as exc:
        return "reported failure", "lost the connection" in str(exc)
    if want is not None and got != want:
        return "WRONG RESULT ACCEPTED", False
    return ("ok first try" if client.stats.retries == retries else "retried ok"), False


def print_table(c: Campaign, faults: WireFaults) -> None:
    print(f"frames: {c.frames} (command/reply exchanges, retries included), {c.seconds:.0f} s, "
          f"reconnects {c.reconnects}, lap timestamps CRC-checked: {'yes' if c.lap_checked else 'no'}")
    print("faults injected (per-byte probabilities "
          + ", ".join(f"{k} {getattr(faults, k):g}" for k in FAULTS) + "):")
    for k in FAULTS:
        print(f"  {k:<10} {c.faults.get(k, 0):>8}")
    ops = sorted(c.by_operation)
    print(f"outcomes      {'total':>8} " + " ".join(f"{op:>8}" for op in ops))
    for o in OUTCOMES:
        print(f"  {o:<22} {c.outcomes[o]:>8} " + " ".join(f"{c.by_operation[op][o]:>8}" for op in ops))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flip", type=float, default=4e-4)
    ap.add_argument("--drop", type=float, default=2e-4)
    ap.add_argument("--duplicate", type=float, default=2e-4)
    ap.add_argument("--delay", type=float, default=2e-4)
    ap.add_argument("--build", type=Path, default=ROOT / "build" / "wire_faults", help="firmware build folder")
    args = ap.parse_args()
    faults = WireFaults(flip=args.flip, drop=args.drop, duplicate=args.duplicate, delay=args.delay)
    elf, graph = firmware(args.build)
    c = campaign(elf, graph, args.frames, faults, args.seed)
    print_table(c, faults)
    return 1 if c.wrong else 0


if __name__ == "__main__":
    sys.exit(main())
