"""Faults on the wire, short: a few hundred frames through the byte-damaging proxy, 0 wrong results accepted.
The long run (≥ 10,000 frames) is bench/wire_faults.py."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from firmware_harness.hil.faultproxy import FAULTS, WireFaults

pytestmark = pytest.mark.hil
BENCH = Path(__file__).resolve().parents[2] / "bench" / "wire_faults.py"


def _bench():
    if "smpq_wire_faults_bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location("smpq_wire_faults_bench", BENCH)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return sys.modules["smpq_wire_faults_bench"]


def test_no_wrong_result_is_accepted_through_a_faulty_wire(tmp_path, capsys):
    bench = _bench()
    elf, graph = bench.firmware(tmp_path)
    faults = WireFaults(flip=1e-3, drop=5e-4, duplicate=5e-4, delay=5e-4)
    c = bench.campaign(elf, graph, frames=300, faults=faults, seed=3, n_inputs=4)
    bench.print_table(c, faults)
    print(capsys.readouterr().out)
    assert c.frames >= 300
    assert all(c.faults[k] > 0 for k in FAULTS), c.faults
    assert c.outcomes["ok first try"] > 0 and c.outcomes["retried ok"] > 0
    assert c.wrong == 0
    assert c.lap_checked


def test_proxy_faults_are_seeded():
    """The same seed and stream give the same faults: the RNG decides per byte position, not per timing."""
    import socket
    import threading

    def run(seed: int) -> tuple[bytes, dict[str, int]]:
        echo = socket.create_server(("127.0.0.1", 0))

        def serve() -> None:
            conn, _ = echo.accept()
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)
        threading.Thread(target=serve, daemon=True).start()
        from firmware_harness.hil.faultproxy import FaultProxy

        with FaultProxy(echo.getsockname()[1], WireFaults(flip=0.01, drop=0.01, duplicate=0.01), seed=seed) as p:
            s = socket.create_connection(("127.0.0.1", p.port))
            payload = bytes(range(256)) * 20
            for i in range(0, len(payload), 100):
                s.sendall(payload[i:i + 100])
            s.settimeout(1.0)  # read until the link has been quiet for a second
            got = b""
            try:
                while data := s.recv(4096):
                    got += data
            except TimeoutError:
                pass
            s.close()
            counts = dict(p.counts)
        echo.close()
        return got, counts

    a, b, c = run(7), run(7), run(8)
    assert a == b and a[0] != c[0]
    assert min(a[1]["flip"], a[1]["drop"], a[1]["duplicate"]) > 0 and a[1]["delay"] == 0
    assert a[0] != bytes(range(256)) * 20 and abs(len(a[0]) - 5120) < 500
