"""Board backends: QEMU leaves no process behind on any path and a killed QEMU is one clear error;
the real-board paths (STM32 ROM bootloader, pyOCD) run up to the missing board and name the port / probe."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import pytest

from deploy.cli.main import main
from firmware_harness.hil.backends import make_backend
from firmware_harness.hil.backends.qemu import QemuBoard
from firmware_harness.hil.backends.stm32uart import ACK, SYNC, Stm32UartBackend, bootloader_sync
from firmware_harness.errors import HarnessError
from firmware_harness.hil.protocol import BoardError, DutClient


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.hil
def test_killing_qemu_mid_inference_is_a_clear_error_and_leaves_no_process(resnet8_run):
    with QemuBoard(resnet8_run / "firmware.elf") as board:
        pid = board.pid
        with DutClient(board.url) as client:
            client.load(bytes(3072))
            killer = threading.Timer(0.5, os.kill, (pid, 9))
            killer.start()
            t0 = time.monotonic()
            with pytest.raises(BoardError, match=rf"lost the connection to the board at {board.url} during 'infer 40 0'"):
                client.infer(40, 0)  # ~10 s of emulation: killed long before it ends
            assert time.monotonic() - t0 < 10
            killer.join()
        assert "killed by signal 9" in board.exit_message()
    assert _gone(pid)


@pytest.mark.hil
def test_no_process_left_when_the_block_raises(resnet8_run):
    with pytest.raises(RuntimeError):
        with QemuBoard(resnet8_run / "firmware.elf") as board:
            pid = board.pid
            assert board.running
            raise RuntimeError("boom")
    assert _gone(pid) and not board.running


@pytest.mark.hil
def test_qemu_start_failures_are_one_line(tmp_path):
    with pytest.raises(HarnessError, match="does not exist"):
        QemuBoard(tmp_path / "missing.elf").open(tmp_path / "missing.elf")
    elf = tmp_path / "any.elf"
    elf.write_bytes(b"")
    board = QemuBoard(elf, machine="no-such-board")
    with pytest.raises(HarnessError, match=r"QEMU did not start on any.elf: qemu-system-arm: unsupported machine type") as e:
        board.open(elf)
    assert "\n" not in str(e.value) and not board.running


@pytest.mark.hil
@pytest.mark.parametrize("size, message", [(0, "qemu: fatal: Lockup"), (5 << 20, "Could not load kernel")])
def test_a_bad_image_is_reported_with_qemus_message(tmp_path, size, message):
    """Zeros lock the CPU up at reset; a file larger than the 4 MB code RAM does not load. QEMU starts
    listening first (wait=on), so both surface when the client connects."""
    image = tmp_path / "bad.elf"
    with image.open("wb") as f:
        f.truncate(size)
    with QemuBoard(image) as board:
        pid = board.pid
        with pytest.raises(BoardError, match=rf"the board at {board.url} closed the connection at start-up") as e:
            DutClient(board.url)
        err = board.explain(e.value)
        assert message in str(err) and "\n" not in str(err)
    assert _gone(pid)


@pytest.mark.hil
def test_two_boards_get_different_ports(resnet8_run):
    with QemuBoard(resnet8_run / "firmware.elf") as a, QemuBoard(resnet8_run / "firmware.elf") as b:
        assert a.port != b.port
        with DutClient(a.url) as ca, DutClient(b.url) as cb:
            assert ca.name() == cb.name() == "smpq-qemu-mps2-an500"


class SerialPeer:
    """The far end of a socket:// serial link: records what it gets, answers each byte with `answer` (None: silent)."""

    def __init__(self, answer: bytes | None) -> None:
        self.answer, self.got = answer, b""
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            while data := conn.recv(16):
                self.got += data
                if self.answer is not None:
                    conn.sendall(self.answer)

    def close(self) -> None:
        self.server.close()


@pytest.mark.parametrize("answer, error", [
    (None, r"no STM32 ROM bootloader answers on {url} \(sent 0x7F at 115200 baud 8E1, no reply within 0.3 s\)"),
    (b"?", r"the device on {url} is not an STM32 ROM bootloader \(answered 0x3f to 0x7F\)"),
    (bytes([ACK]), None),
])
def test_stm32_bootloader_sync_names_the_port(answer, error):
    peer = SerialPeer(answer)
    try:
        if error is None:
            bootloader_sync(peer.url, timeout=2)
        else:
            with pytest.raises(HarnessError, match=error.format(url=peer.url)):
                bootloader_sync(peer.url, timeout=0.3)
        time.sleep(0.05)
        assert peer.got == bytes([SYNC])
    finally:
        peer.close()
    with pytest.raises(HarnessError, match=r"cannot open the serial port /dev/ttyNOPE7"):
        bootloader_sync("/dev/ttyNOPE7")


def test_backend_selection_errors():
    with pytest.raises(HarnessError, match="needs the board's serial port"):
        make_backend("stm32-uart")
    with pytest.raises(HarnessError, match="names no pyOCD target"):
        make_backend("pyocd", port="/dev/ttyACM0")
    with pytest.raises(HarnessError, match="unknown flash backend 'jtag'"):
        make_backend("jtag")
    assert isinstance(make_backend("qemu"), QemuBoard)


@pytest.fixture(scope="module")
def h7_run(resnet8_run, tmp_path_factory):
    """A copy of the resnet8 run, so that building its stm32h7 firmware leaves the QEMU image alone."""
    run = tmp_path_factory.mktemp("h7")
    for p in resnet8_run.iterdir():
        if p.is_file():
            shutil.copy(p, run / p.name)
    return run


@pytest.mark.hil
def test_stm32h7_flash_paths_run_up_to_the_missing_board(h7_run, capsys):
    peer = SerialPeer(None)  # a serial line with nothing on it (ttys here refuse 8E1, so a socket:// line)
    try:
        assert main(["flash", "--run", str(h7_run), "--device", "stm32h7", "--backend", "stm32-uart",
                     "--port", peer.url]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: no STM32 ROM bootloader answers on {peer.url}") and "\n" not in err
    finally:
        peer.close()
    assert (h7_run / "firmware.bin").is_file()  # the stm32h7 image was built and linked on the way
    assert main(["flash", "--run", str(h7_run), "--device", "stm32h7", "--port", "/dev/ttyACM0", "--probe", "0669FF"]) == 2
    err = capsys.readouterr().err.strip()
    assert err in ("error: no debug probe found '0669FF' for target stm32h743zitx: connect the board's ST-LINK/CMSIS-DAP "
                   "over USB ('pyocd list' shows probes)",
                   "error: flashing through a debug probe (SWD) needs the Python package 'pyocd': "
                   "pip install 'smpq-deploy[hw]'")


def test_stm32_backend_checks_the_image_first(tmp_path):
    with pytest.raises(HarnessError, match="firmware.bin does not exist"):
        Stm32UartBackend("/dev/ttyUSB0").open(tmp_path / "firmware.elf")
