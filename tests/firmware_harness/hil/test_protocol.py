"""Unit tests of the protocol client (firmware_harness.hil.protocol) against a small fake board in this file.

The fake speaks docs/protocol.md over a loopback socket and can be told to misbehave once or always;
the real firmware is tested in tests/hil/.
"""
from __future__ import annotations

import socket
import threading
import zlib

import pytest

from firmware_harness.hil.protocol import DB_CHUNK, BoardError, DutClient, crc32_hex

OUT = bytes([3, 250, 17, 128, 0, 5, 9, 77, 200, 1])


class FakeDut:
    """A board on 127.0.0.1:<port> that answers the documented commands; `faults` maps a command name
    to how often (count, or -1 = always) its reply is spoiled, and how (`garble`, `error`, `silent`, `close`)."""

    def __init__(self, *, lap: bool = True, banner: bytes = b"m-timestamp-mode-performance\r\nm-ready\r\n") -> None:
        self.lap = lap
        self.banner = banner
        self.faults: dict[str, tuple[str, int]] = {}
        self.buffer = bytearray()
        self.expect = 0
        self.commands: list[str] = []
        self.flip_next_load = False
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self._srv.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._srv.close()

    def _serve(self) -> None:
        try:
            conn, _ = self._srv.accept()
        except OSError:
            return
        with conn:
            conn.sendall(self.banner)
            pending = b""
            while True:
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                pending += data
                while b"%" in pending:
                    cmd, _, pending = pending.partition(b"%")
                    text = cmd.decode("ascii", "replace").strip()
                    self.commands.append(text)
                    reply = self._reply(text)
                    if reply is None:
                        continue
                    if reply == "close":
                        return
                    conn.sendall(reply.encode())

    def _spoil(self, name: str) -> str | None:
        how, count = self.faults.get(name, ("", 0))
        if count == 0:
            return None
        self.faults[name] = (how, count - 1 if count > 0 else count)
        return how

    def _reply(self, text: str) -> str | None:
        words = text.split()
        name = " ".join(words[:2]) if words[:2] == ["db", "load"] else (words[0] if words else "")
        lines = self._lines(words)
        how = self._spoil(name)
        if how == "silent":
            return None
        if how == "close":
            return "close"
        if how == "error":
            lines = ["e-[spoiled]"]
        if how == "garble" and lines:
            first = lines[0]
            lines[0] = first[:-4] + ("0" if first[-4] != "0" else "1") + first[-3:]
        if how == "junk":
            lines = ["\x00\xffjunk"] + lines
        return "".join(f"{ln}\r\n" for ln in lines + ["m-ready"])

    def _lines(self, words: list[str]) -> list[str]:
        match words:
            case ["name"]:
                return ["m-name-dut-[smpq-fake]"]
            case ["profile"]:
                return ["m-profile-[ULPMark for tinyML Firmware V0.0.1]", "m-model-[ic01]"]
            case ["db", "load", n] if n.isdigit() and int(n) <= 64:
                self.expect, self.buffer = int(n), bytearray()
                return [f"m-[Expecting {n} bytes]"]
            case ["db", hexdigits] if len(hexdigits) % 2 == 0:
                self.buffer += bytes.fromhex(hexdigits)
                if self.flip_next_load and len(self.buffer) >= self.expect:
                    self.buffer[0] ^= 1
                    self.flip_next_load = False
                return ["m-load-done"] if len(self.buffer) >= self.expect else []
            case ["smpq-crc"]:
                return [f"m-smpq-crc-[{crc32_hex(bytes(self.buffer))},{len(self.buffer)}]"]
            case ["infer", n, w]:
                return [f"m-warmup-start-{w}", "m-warmup-done", f"m-infer-start-{n}", "m-lap-us-1000",
                        f"m-lap-us-{1000 + 4321 * int(n)}", "m-infer-done", self._results()]
            case ["results"]:
                return [self._results()]
            case ["smpq-raw"]:
                return [f"m-smpq-raw-[{self._out().hex()}]-crc-[{crc32_hex(self._out())}]"]
            case ["smpq-lap"] if self.lap:
                return [f"m-smpq-lap-[1000,5321]-crc-[{crc32_hex(b'1000,5321')}]"]
            case ["smpq-info"]:
                return [f"m-smpq-info-[board=fake,timer=instructions,blob_crc=1234abcd,output_bytes={len(OUT)},n_ops=2]"]
            case ["smpq-time"]:
                return ["m-smpq-time-[0,1200]", "m-smpq-time-[1,3000]"]
        return [f"e-[unknown command {' '.join(words)[:20]}]"]

    def _out(self) -> bytes:
        return bytes((b + sum(self.buffer)) & 0xFF for b in OUT)

    def _results(self) -> str:
        return "m-results-[" + ",".join(f"{((b ^ 0x80) - 128) * 0.125:0.3f}" for b in self._out()) + "]"


@pytest.fixture
def dut():
    board = FakeDut()
    yield board
    board.close()


def _client(url: str, **kw) -> DutClient:
    kw.setdefault("timeout", 0.5)
    kw.setdefault("quiet", 0.05)
    return DutClient(url, **kw)


def test_happy_path(dut: FakeDut) -> None:
    with _client(dut.url) as c:
        assert c.name() == "smpq-fake"
        assert c.profile() == ("ULPMark for tinyML Firmware V0.0.1", "ic01")
        assert c.info()["timer"] == "instructions"
        data = bytes(range(40))
        c.load(data)
        assert bytes(dut.buffer) == data
        r = c.infer(1, 0)
        assert (r.ticks, r.lap_checked, len(r.results)) == (4321, True, len(OUT))
        assert c.raw_output() == dut._out()
        assert c.layer_times() == [1200, 3000]
        assert c.stats.retries == 0 and c.stats.failures == 0
    # 40 bytes = two db lines of at most DB_CHUNK bytes
    assert [x for x in dut.commands if x.startswith("db ") and "load" not in x] == \
        ["db " + data[:DB_CHUNK].hex(), "db " + data[DB_CHUNK:].hex()]


@pytest.mark.parametrize("command,how", [("smpq-raw", "garble"), ("smpq-raw", "junk"), ("infer", "garble"),
                                         ("smpq-lap", "garble"), ("results", "error"), ("smpq-crc", "silent"),
                                         ("name", "garble"), ("db load", "error")])
def test_a_spoiled_reply_is_retried_never_accepted(dut: FakeDut, command: str, how: str) -> None:
    dut.faults[command] = (how, 1)
    with _client(dut.url) as c:
        c.info()
        c.load(b"\x01\x02\x03")
        r = c.infer(1, 0)
        raw = c.raw_output()
        assert c.name() == "smpq-fake"
        assert (r.t0, r.t1) == (1000, 5321)
        assert raw == dut._out()
        assert c.stats.retries == 1 and c.stats.resyncs == 1


def test_a_corrupted_load_is_caught_by_the_input_crc(dut: FakeDut) -> None:
    dut.flip_next_load = True
    with _client(dut.url) as c:
        c.load(b"\x10\x20\x30")
        assert bytes(dut.buffer) == b"\x10\x20\x30"
        assert c.stats.retries == 1 and c.stats.reasons == {"input CRC mismatch": 1}


def test_always_wrong_is_reported_after_bounded_retries(dut: FakeDut) -> None:
    dut.faults["smpq-raw"] = ("garble", -1)
    with _client(dut.url, retries=2) as c:
        with pytest.raises(BoardError, match=r"kept failing 'smpq-raw' after 2 retries \(raw output CRC mismatch\)") as e:
            c.raw_output()
        assert dut.url in str(e.value) and "\n" not in str(e.value)
        assert c.stats.failures == 1 and c.stats.retries == 2


def test_board_without_smpq_lap_is_format_checked_only() -> None:
    board = FakeDut(lap=False)
    try:
        with _client(board.url) as c:
            assert c.infer(2, 1).lap_checked is False
            assert c.infer(2, 1).ticks == 2 * 4321
    finally:
        board.close()


def test_silent_board_is_one_line_naming_the_url() -> None:
    board = FakeDut(banner=b"")
    board.faults["name"] = ("silent", -1)
    board.faults[""] = ("silent", -1)  # the resync's bare '%'
    try:
        with _client(board.url, retries=1, timeout=0.3) as c:
            with pytest.raises(BoardError, match=rf"no board answers at {board.url}: no reply to 'name'"):
                c.name()
    finally:
        board.close()


def test_closed_connection_is_reported_not_retried(dut: FakeDut) -> None:
    dut.faults["infer"] = ("close", 1)
    with _client(dut.url) as c:
        with pytest.raises(BoardError, match=r"lost the connection to the board at socket://.* during 'infer 1 0'"):
            c.infer(1, 0)
        assert c.stats.retries == 0


def test_nothing_listening_is_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with pytest.raises(BoardError, match=rf"cannot open the board's port socket://127.0.0.1:{port}"):
        DutClient(f"socket://127.0.0.1:{port}")
    with pytest.raises(BoardError, match=r"cannot open the board's port /dev/ttyNOPE0"):
        DutClient("/dev/ttyNOPE0")


def test_crc_matches_zlib() -> None:
    assert crc32_hex(b"123456789") == "cbf43926" == f"{zlib.crc32(b'123456789'):08x}"
