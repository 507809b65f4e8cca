"""A loopback TCP proxy that damages the serial link on purpose: flips, drops, duplicates and delays bytes.

    with QemuBoard(elf) as board, FaultProxy(board.port, WireFaults(flip=1e-3), seed=1) as proxy:
        client = DutClient(proxy.url)

Each byte passing through (either direction) independently gets at most one fault, drawn from a seeded
RNG per direction, so the faults are a function of the seed and of the byte's position in its stream.
:attr:`FaultProxy.counts` says how many of each it did. The proxy connects to the board when the
client connects to it and serves one client at a time.
"""
from __future__ import annotations

import random
import socket
import threading
import time
from dataclasses import dataclass

FAULTS = ("flip", "drop", "duplicate", "delay")


@dataclass(frozen=True)
class WireFaults:
    """Per-byte probabilities of each fault; `delay_s` is how long a delayed byte is held back."""

    flip: float = 0.0
    drop: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    delay_s: float = 0.02

    def __post_init__(self) -> None:
        if min(self.flip, self.drop, self.duplicate, self.delay) < 0 or \
                self.flip + self.drop + self.duplicate + self.delay > 1:
            raise ValueError("fault probabilities must be >= 0 and sum to at most 1")


class FaultProxy:
    """Listens on 127.0.0.1:<free port> (:attr:`url`) and forwards to 127.0.0.1:`target_port` with faults."""

    def __init__(self, target_port: int, faults: WireFaults, *, seed: int, target_host: str = "127.0.0.1") -> None:
        self.faults = faults
        self.seed = seed
        self._target = (target_host, target_port)
        self.counts = {name: 0 for name in FAULTS}
        self.bytes = {"to_board": 0, "to_host": 0}
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.url = f"socket://127.0.0.1:{self.port}"
        self._sockets: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="faultproxy", daemon=True)
        self._thread.start()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting and close every connection (idempotent)."""
        self._stop.set()
        for s in [self._server, *self._sockets]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
                upstream = socket.create_connection(self._target, timeout=10)
            except OSError:
                return
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(None)
            self._sockets += [client, upstream]
            pumps = [threading.Thread(target=self._pump, args=(client, upstream, "to_board", 0), daemon=True),
                     threading.Thread(target=self._pump, args=(upstream, client, "to_host", 1), daemon=True)]
            for p in pumps:
                p.start()
            for p in pumps:
                p.join()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str, stream: int) -> None:
        rng = random.Random(self.seed * 2 + stream)
        f = self.faults
        try:
            while True:
                data = src.recv(4096)
                if not data:
                    break
                out = bytearray()
                for byte in data:
                    r = rng.random()
                    if r < f.flip:
                        self._count("flip")
                        out.append(byte ^ (1 << rng.randrange(8)))
                    elif r < f.flip + f.drop:
                        self._count("drop")
                    elif r < f.flip + f.drop + f.duplicate:
                        self._count("duplicate")
                        out += bytes((byte, byte))
                    elif r < f.flip + f.drop + f.duplicate + f.delay:
                        self._count("delay")
                        dst.sendall(out)
                        out.clear()
                        time.sleep(f.delay_s)
                        out.append(byte)
                    else:
                        out.append(byte)
                with self._lock:
                    self.bytes[direction] += len(data)
                dst.sendall(out)
        except OSError:
            pass
        finally:
            for s in (src, dst):  # one side gone: end the other direction too
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1
