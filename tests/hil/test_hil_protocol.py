"""Protocol conformance of the firmware on QEMU (docs/protocol.md), spoken over a plain socket.

Every command's reply ends with m-ready; infer prints exactly the documented lines in order; m-results
parses; malformed input gets e-[…] and the board keeps working; a command split across writes works.
"""
from __future__ import annotations

import re
import socket
import time
import zlib

import numpy as np
import pytest

from firmware_harness.hil.backends.qemu import QemuBoard

pytestmark = pytest.mark.hil


class Link:
    """A raw TCP connection to the board's UART."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = b""
        self.boot = self.read_reply()

    def read_reply(self) -> list[str]:
        """Lines up to and including m-ready."""
        lines: list[str] = []
        while True:
            while b"\n" not in self.pending:
                data = self.sock.recv(4096)
                assert data, "the board closed the connection"
                self.pending += data
            line, _, self.pending = self.pending.partition(b"\n")
            assert line.endswith(b"\r"), f"reply line without CR/LF: {line!r}"
            lines.append(line[:-1].decode("ascii"))
            if lines[-1] == "m-ready":
                return lines

    def ask(self, *parts: bytes, pause: float = 0.0) -> list[str]:
        for i, part in enumerate(parts):
            if i and pause:
                time.sleep(pause)
            self.sock.sendall(part)
        return self.read_reply()

    def cmd(self, text: str) -> list[str]:
        return self.ask(text.encode() + b"%")


@pytest.fixture(scope="module")
def link(resnet8_run):
    with QemuBoard(resnet8_run / "firmware.elf") as board:
        link = Link(board.port)
        yield link
        link.sock.close()


def _load(link: Link, data: bytes) -> list[list[str]]:
    replies = [link.cmd(f"db load {len(data)}")]
    for i in range(0, len(data), 31):
        replies.append(link.cmd("db " + data[i:i + 31].hex()))
    return replies


def test_boot_banner_ends_with_ready(link):
    assert link.boot[-1] == "m-ready"


def test_every_command_ends_with_ready_and_documented_lines(link, resnet8_graph):
    info = link.cmd("smpq-info")
    assert re.fullmatch(r"m-smpq-info-\[(\w+=[\w/.-]+,)*\w+=[\w/.-]+\]", info[0]) and info[1:] == ["m-ready"]
    fields = dict(kv.split("=") for kv in info[0][len("m-smpq-info-["):-1].split(","))
    n_in, n_out, n_ops = int(fields["input_bytes"]), int(fields["output_bytes"]), int(fields["n_ops"])
    assert (n_in, n_out) == (32 * 32 * 3, 10)
    assert link.cmd("name") == ["m-name-dut-[smpq-qemu-mps2-an500]", "m-ready"]
    assert link.cmd("profile") == ["m-profile-[ULPMark for tinyML Firmware V0.0.1]", "m-model-[ic01]", "m-ready"]
    ts = link.cmd("timestamp")
    assert re.fullmatch(r"m-lap-us-\d+", ts[0]) and ts[1:] == ["m-ready"]
    layers = link.cmd("smpq-layers")
    assert len(layers) == n_ops + 1 and layers[-1] == "m-ready"
    assert all(re.fullmatch(r"m-smpq-layer-\[\d+,[a-z_0-9]+,\d,\d\]", ln) for ln in layers[:-1])

    x = np.random.default_rng(0).integers(-128, 128, n_in).astype(np.int8).tobytes()
    replies = _load(link, x)
    assert replies[0] == [f"m-[Expecting {n_in} bytes]", "m-ready"]
    assert all(r == ["m-ready"] for r in replies[1:-1]) and replies[-1] == ["m-load-done", "m-ready"]
    assert link.cmd("smpq-crc") == [f"m-smpq-crc-[{zlib.crc32(x):08x},{n_in}]", "m-ready"]
    dump = link.cmd("db print i=0 l=40")
    assert "".join(ln[len("m-buffer-["):-1] for ln in dump[:-1]) == x[:40].hex() and dump[-1] == "m-ready"

    lines = link.cmd("infer 2 1")
    pattern = [r"m-warmup-start-1", r"m-warmup-done", r"m-infer-start-2", r"m-lap-us-(\d+)", r"m-lap-us-(\d+)",
               r"m-infer-done", r"m-results-\[(-?\d+\.\d{3}(,-?\d+\.\d{3})*)\]", r"m-ready"]
    assert len(lines) == len(pattern)
    matches = [re.fullmatch(p, ln) for p, ln in zip(pattern, lines)]
    assert all(matches), list(zip(pattern, lines))
    t0, t1 = int(matches[3].group(1)), int(matches[4].group(1))
    results = [float(v) for v in matches[6].group(1).split(",")]
    assert t1 > t0 and len(results) == n_out
    assert link.cmd("results") == [lines[6], "m-ready"]
    lap = link.cmd("smpq-lap")
    assert lap == [f"m-smpq-lap-[{t0},{t1}]-crc-[{zlib.crc32(f'{t0},{t1}'.encode()):08x}]", "m-ready"]
    raw = re.fullmatch(r"m-smpq-raw-\[([0-9a-f]+)\]-crc-\[([0-9a-f]{8})\]", link.cmd("smpq-raw")[0])
    out = bytes.fromhex(raw.group(1))
    assert len(out) == n_out and raw.group(2) == f"{zlib.crc32(out):08x}"
    from deploy.lower.reference import run as run_reference

    ref = run_reference(resnet8_graph, np.frombuffer(x, np.int8).reshape(1, 32, 32, 3))
    assert out == ref.astype(np.int8).tobytes()
    times = link.cmd("smpq-time")
    assert [re.fullmatch(r"m-smpq-time-\[(\d+),\d+\]", ln).group(1) for ln in times[:-1]] == \
        [str(i) for i in range(n_ops)] and times[-1] == "m-ready"


@pytest.mark.parametrize("bad, error", [
    (b"db zz%", r"e-\[bad hex.*\]"),
    (b"db 123%", r"e-\[bad hex.*\]"),
    (b"db load 999999%", r"e-\[db load 999999 exceeds the input buffer of 3072 bytes\]"),
    (b"bogus%", r"e-\[unknown command: bogus\]"),
    (b"x" * 100 + b"%", r"e-\[command longer than 80 characters\]"),
    (b"infer 0 0%", r"e-\[.*\]"),
    (b"%", r"e-\[.*\]"),
])
def test_malformed_input_is_an_error_and_the_board_keeps_working(link, bad, error):
    assert link.cmd("db load 10") == ["m-[Expecting 10 bytes]", "m-ready"]
    reply = link.ask(bad)
    assert len(reply) == 2 and re.fullmatch(error, reply[0]), reply
    assert reply[1] == "m-ready"
    assert link.cmd("name") == ["m-name-dut-[smpq-qemu-mps2-an500]", "m-ready"]


def test_command_split_across_writes_is_one_command(link):
    assert link.ask(b"na", b"m", b"e%", pause=0.05) == ["m-name-dut-[smpq-qemu-mps2-an500]", "m-ready"]
    assert link.ask(b"\r\n  name%") == ["m-name-dut-[smpq-qemu-mps2-an500]", "m-ready"]
