"""The host side of the board's serial protocol (``docs/protocol.md``): MLPerf Tiny commands plus ``smpq-``.

:class:`DutClient` talks to a board through pyserial's ``serial_for_url`` (``/dev/ttyACM0``,
``socket://127.0.0.1:PORT`` for QEMU). Every read has a deadline; a reply that is late, malformed, or
carries garbage makes the client resynchronise (terminate any half-received command with ``%`` and
discard output until the line goes quiet) and retry the whole operation, at most ``retries`` times.
Nothing is accepted unchecked: loaded input is confirmed by the board's CRC32 (``smpq-crc``), raw
outputs carry a CRC32 (``smpq-raw``), lap timestamps are confirmed by ``smpq-lap`` when the board has it,
and replies without a CRC (name, info, results, per-layer times) are read twice and must agree.
A problem that outlives the retries is one :class:`BoardError` line naming the URL.
"""
from __future__ import annotations

import re
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import serial

from firmware_harness.errors import HarnessError

T = TypeVar("T")

READY = "m-ready"
#: Longest command the board accepts, including the final '%' (EE_CMD_SIZE).
MAX_COMMAND = 80
#: Bytes per `db <hex>%` line (62 hex digits keep the command within MAX_COMMAND).
DB_CHUNK = 31

_NAME = re.compile(r"m-name-dut-\[(.+)\]")
_PROFILE = re.compile(r"m-profile-\[(.+)\]")
_MODEL = re.compile(r"m-model-\[(.+)\]")
_EXPECTING = re.compile(r"m-\[Expecting (\d+) bytes\]")
_LAP = re.compile(r"m-lap-us-(\d+)")
_RESULTS = re.compile(r"m-results-\[([^\]]*)\]")
_FLOAT = re.compile(r"-?\d+(\.\d+)?")
_INFO = re.compile(r"m-smpq-info-\[([^\]]*)\]")
_CRC = re.compile(r"m-smpq-crc-\[([0-9a-fA-F]{8}),(\d+)\]")
_RAW = re.compile(r"m-smpq-raw-\[([0-9a-fA-F]*)\]-crc-\[([0-9a-fA-F]{8})\]")
_SMPQ_LAP = re.compile(r"m-smpq-lap-\[(\d+),(\d+)\]-crc-\[([0-9a-fA-F]{8})\]")
_TIME = re.compile(r"m-smpq-time-\[(\d+),(\d+)\]")
_LAYER = re.compile(r"m-smpq-layer-\[(\d+),([a-z0-9_]+),(\d+),(\d+)\]")


class BoardError(HarnessError):
    """The board did not answer, lost the connection, or kept answering wrongly after the retries."""


class _Garbled(Exception):
    """One exchange went wrong (late, malformed, CRC mismatch, `e-` reply): resync and retry."""


class _Disconnected(Exception):
    """The link itself is gone (socket closed, device unplugged): retrying cannot help."""


@dataclass(frozen=True)
class InferResult:
    """One ``infer N W`` exchange: the two lap timestamps and the dequantised outputs (``m-results``)."""

    iterations: int
    warmup: int
    t0: int
    t1: int
    results: tuple[float, ...]
    lap_checked: bool  # T0/T1 confirmed by the CRC of `smpq-lap` (False: the board lacks it, format checked only)

    @property
    def ticks(self) -> int:
        """Timer ticks of all `iterations` inferences together."""
        return self.t1 - self.t0


@dataclass
class ClientStats:
    """What the client did: exchanges on the wire, retried operations, resyncs, failures reported."""

    frames: int = 0
    retries: int = 0
    resyncs: int = 0
    failures: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def crc32_hex(data: bytes) -> str:
    """CRC-32 (IEEE 802.3, as zlib and the runtime's crc32.c) as 8 lower-case hex digits."""
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


class DutClient:
    """A connection to a device under test that speaks ``docs/protocol.md``; a context manager.

    `timeout` bounds every ordinary exchange; `infer_timeout` bounds an ``infer`` (which runs the model
    `warmup + iterations` times); `retries` bounds the attempts after the first for each operation;
    `quiet` is how long the line must stay silent for a resync to end.
    """

    def __init__(self, url: str, *, timeout: float = 5.0, infer_timeout: float = 300.0, retries: int = 3,
                 baud: int = 115200, quiet: float = 0.15) -> None:
        self.url = url
        self.timeout = timeout
        self.infer_timeout = infer_timeout
        self.retries = retries
        self.quiet = quiet
        self.stats = ClientStats()
        self._buffer = bytearray()
        self._has_lap: bool | None = None
        self._info: dict[str, str] | None = None
        try:
            self._port = serial.serial_for_url(url, baudrate=baud, timeout=0.05, write_timeout=timeout)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise BoardError(f"cannot open the board's port {url}: {' '.join(str(exc).split())}") from None
        self._start()

    @property
    def has_lap(self) -> bool | None:
        """Whether the board answers ``smpq-lap`` (None: not asked yet)."""
        return self._has_lap

    # -- context manager -------------------------------------------------------------------------------
    def __enter__(self) -> "DutClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the port (idempotent)."""
        try:
            self._port.close()
        except Exception:  # closing a dead socket/device must not hide the error that brought us here
            pass

    # -- wire level ------------------------------------------------------------------------------------
    def _read_some(self) -> bytes:
        try:
            data = self._port.read(max(1, self._port.in_waiting))
        except serial.SerialException as exc:
            raise _Disconnected(str(exc)) from None
        except OSError as exc:
            raise _Disconnected(str(exc)) from None
        self.stats.bytes_received += len(data)
        return data

    def _write(self, data: bytes) -> None:
        try:
            self._port.write(data)
            self._port.flush()
        except (serial.SerialException, OSError) as exc:
            raise _Disconnected(str(exc)) from None
        self.stats.bytes_sent += len(data)

    def _read_line(self, deadline: float) -> str:
        """The next line without its CR/LF; raises _Garbled at the deadline."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                raw = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                return raw.replace(b"\r", b"").decode("ascii", errors="replace").strip()
            if time.monotonic() > deadline:
                raise _Garbled("timeout")
            self._buffer += self._read_some()

    def _start(self) -> None:
        """Drop a boot banner (or whatever an earlier session left) and end any half-received command."""
        try:
            self._drain()
        except _Disconnected as exc:
            raise BoardError(f"the board at {self.url} closed the connection at start-up ({exc})") from None

    def resync(self) -> None:
        """End any half-received command on the board and drop everything it sends until the line is quiet."""
        self.stats.resyncs += 1
        self._drain()

    def _drain(self) -> None:
        self._buffer.clear()
        self._write(b"%")
        deadline = time.monotonic() + max(self.timeout, 4 * self.quiet)
        last = time.monotonic()
        while time.monotonic() < deadline:
            data = self._read_some()
            if data:
                last = time.monotonic()
            elif time.monotonic() - last > self.quiet:
                break
        self._buffer.clear()

    def _exchange(self, command: str, timeout: float | None = None) -> list[str]:
        """Send one command (without '%') and return its reply lines before `m-ready` (one frame, no retry).

        Raises _Garbled for a late or error reply or a line that is not `m-…`."""
        if len(command) + 1 > MAX_COMMAND:
            raise ValueError(f"command longer than {MAX_COMMAND - 1} characters: {command[:20]}…")
        self.stats.frames += 1
        self._write(command.encode("ascii") + b"%")
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        lines: list[str] = []
        while True:
            line = self._read_line(deadline)
            if not line:
                continue
            if line == READY:
                break
            lines.append(line)
        errors = [ln for ln in lines if ln.startswith("e-")]
        if errors:
            raise _Garbled(f"board error {errors[0]}")
        if any(not ln.startswith("m-") for ln in lines):
            raise _Garbled("garbage in the reply")
        return lines

    def _attempt(self, what: str, operation: Callable[[], T]) -> T:
        """Run `operation` with resync-and-retry; one BoardError line when the retries are spent."""
        reason = last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
                self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1
                try:
                    self.resync()
                except _Disconnected as exc:
                    raise self._lost(what, exc) from None
            try:
                return operation()
            except _Garbled as exc:
                last = str(exc)
                reason = "board error" if last.startswith("board error") else last
            except _Disconnected as exc:
                raise self._lost(what, exc) from None
        self.stats.failures += 1
        if last == "timeout" and self.stats.bytes_received == 0:
            raise BoardError(f"no board answers at {self.url}: no reply to '{what}' within {self.timeout:g} s "
                             f"(is it powered, flashed, and on this port?)")
        raise BoardError(f"the board at {self.url} kept failing '{what}' after {self.retries} retries ({last})")

    def _lost(self, what: str, exc: Exception) -> BoardError:
        self.stats.failures += 1
        return BoardError(f"lost the connection to the board at {self.url} during '{what}' ({exc})")

    def _twice(self, command: str, parse: Callable[[list[str]], T]) -> T:
        """A reply without a CRC: read it twice, parse both, accept only when they agree."""
        def op() -> T:
            first = parse(self._exchange(command))
            if parse(self._exchange(command)) != first:
                raise _Garbled("two readings differ")
            return first
        return self._attempt(command, op)

    # -- MLPerf Tiny commands --------------------------------------------------------------------------
    def name(self) -> str:
        """The DUT name, e.g. ``smpq-qemu-mps2-an500``."""
        return self._twice("name", lambda lines: _one(lines, _NAME)[0])

    def profile(self) -> tuple[str, str]:
        """(profile string, model id) of ``profile%``."""
        def parse(lines: list[str]) -> tuple[str, str]:
            if len(lines) != 2:
                raise _Garbled("profile reply is not two lines")
            return _one(lines[:1], _PROFILE)[0], _one(lines[1:], _MODEL)[0]
        return self._twice("profile", parse)

    def load(self, data: bytes) -> None:
        """Load the input buffer (``db load N`` + ``db <hex>`` lines), confirmed by the board's CRC32."""
        if not data:
            raise ValueError("nothing to load")

        def op() -> None:
            got = _one(self._exchange(f"db load {len(data)}"), _EXPECTING)
            if int(got[0]) != len(data):
                raise _Garbled("db load length echoed wrongly")
            for i in range(0, len(data), DB_CHUNK):
                lines = self._exchange("db " + data[i:i + DB_CHUNK].hex())
                last = i + DB_CHUNK >= len(data)
                if lines != (["m-load-done"] if last else []):
                    raise _Garbled("unexpected reply to db")
            crc, n = _one(self._exchange("smpq-crc"), _CRC)
            if int(n) != len(data) or crc.lower() != crc32_hex(data):
                raise _Garbled("input CRC mismatch")
        self._attempt(f"db load {len(data)}", op)

    def infer(self, iterations: int = 1, warmup: int = 0) -> InferResult:
        """``infer N W``: its lines exactly as documented, the results confirmed by ``results%``, the lap
        timestamps by ``smpq-lap`` (when the board has it)."""
        if iterations < 1 or warmup < 0:
            raise ValueError("infer needs iterations >= 1 and warmup >= 0")

        def op() -> InferResult:
            lines = self._exchange(f"infer {iterations} {warmup}", timeout=self.infer_timeout)
            expected = [f"m-warmup-start-{warmup}", "m-warmup-done", f"m-infer-start-{iterations}"]
            if len(lines) != 7 or lines[:3] != expected or lines[5] != "m-infer-done":
                raise _Garbled("infer reply is not the documented sequence")
            t0, t1 = (int(_one([ln], _LAP)[0]) for ln in lines[3:5])
            if t1 < t0:
                raise _Garbled("lap timestamps go backwards")
            results = _results(lines[6:])
            if _results(self._exchange("results")) != results:
                raise _Garbled("results% differs from infer's m-results")
            checked = self._check_lap(t0, t1)
            return InferResult(iterations, warmup, t0, t1, results, checked)
        return self._attempt(f"infer {iterations} {warmup}", op)

    def _check_lap(self, t0: int, t1: int) -> bool:
        if self._has_lap is False:
            return False
        try:
            lines = self._exchange("smpq-lap")
        except _Garbled as exc:
            if self._has_lap is None and str(exc).startswith("board error") and "unknown" in str(exc).lower():
                self._has_lap = False  # an older firmware: format checks only
                return False
            raise
        a, b, crc = _one(lines, _SMPQ_LAP)
        if crc32_hex(f"{a},{b}".encode()) != crc.lower():
            raise _Garbled("smpq-lap CRC mismatch")
        if (int(a), int(b)) != (t0, t1):
            raise _Garbled("lap timestamps differ from smpq-lap")
        self._has_lap = True
        return True

    # -- smpq- extensions ------------------------------------------------------------------------------
    def info(self) -> dict[str, str]:
        """``smpq-info``: board, timer unit, blob CRC, arena, input/output sizes, op count, firmware hash."""
        def parse(lines: list[str]) -> dict[str, str]:
            body = _one(lines, _INFO)[0]
            pairs = [item.split("=", 1) for item in body.split(",") if item]
            if any(len(p) != 2 or not p[0] for p in pairs):
                raise _Garbled("malformed smpq-info")
            return {k: v for k, v in pairs}
        self._info = self._twice("smpq-info", parse)
        return self._info

    def raw_output(self) -> bytes:
        """The last inference's raw int8 outputs, CRC-checked (``smpq-raw``)."""
        def op() -> bytes:
            hexdigits, crc = _one(self._exchange("smpq-raw"), _RAW)
            if len(hexdigits) % 2:
                raise _Garbled("odd hex in smpq-raw")
            data = bytes.fromhex(hexdigits)
            if crc32_hex(data) != crc.lower():
                raise _Garbled("raw output CRC mismatch")
            want = self._info and self._info.get("output_bytes")
            if want and want.isdigit() and int(want) != len(data):
                raise _Garbled("raw output has the wrong length")
            return data
        return self._attempt("smpq-raw", op)

    def layer_times(self) -> list[int]:
        """Timer ticks of each op of the last inference (``smpq-time``), op 0 first."""
        def parse(lines: list[str]) -> tuple[int, ...]:
            pairs = [tuple(int(v) for v in _one([ln], _TIME)) for ln in lines]
            if [p[0] for p in pairs] != list(range(len(pairs))):
                raise _Garbled("smpq-time ops out of order")
            return tuple(p[1] for p in pairs)
        return list(self._twice("smpq-time", parse))

    def layers(self) -> list[tuple[int, str, int, int]]:
        """(index, kind, w_bits, a_bits) of each op (``smpq-layers``)."""
        def parse(lines: list[str]) -> tuple[tuple[int, str, int, int], ...]:
            rows = [_one([ln], _LAYER) for ln in lines]
            return tuple((int(i), k, int(w), int(a)) for i, k, w, a in rows)
        return list(self._twice("smpq-layers", parse))


def _one(lines: list[str], pattern: re.Pattern[str]) -> tuple[str, ...]:
    """The groups of the single reply line, which must match `pattern` in full."""
    if len(lines) != 1:
        raise _Garbled(f"expected one line, got {len(lines)}")
    m = pattern.fullmatch(lines[0])
    if not m:
        raise _Garbled("malformed reply line")
    return m.groups() if pattern.groups else (m.group(0),)


def _results(lines: list[str]) -> tuple[float, ...]:
    body = _one(lines, _RESULTS)[0]
    values = body.split(",") if body else []
    if not values or any(not _FLOAT.fullmatch(v.strip()) for v in values):
        raise _Garbled("malformed m-results")
    return tuple(float(v) for v in values)
