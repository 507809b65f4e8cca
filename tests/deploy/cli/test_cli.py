"""The smpq-deploy CLI frame: subcommand discovery and routing, common options, one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import deploy.cli.main as cli
from deploy.devices.profiles import list_devices

ROOT = Path(__file__).resolve().parents[3]


def smpq(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m deploy.cli.main ARGS` in a fresh interpreter, as the console script runs it."""
    return subprocess.run([sys.executable, "-m", "deploy.cli.main", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_devices_subprocess_prints_every_profile() -> None:
    result = smpq("devices")
    assert result.returncode == 0, result.stderr
    for name in list_devices():
        assert name in result.stdout
    assert "0.862 /cycle" in result.stdout  # 1 / 1.16 cycles per MAC: the Cortex-M7 int8 conv figure
    assert "MLPerf Tiny v1.1" in result.stdout and "estimate" in result.stdout


def test_user_error_exits_2_with_one_stderr_line_and_no_traceback() -> None:
    result = smpq("--device", "stm32h9", "--model", "mbv2")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("error: 'device': unknown device 'stm32h9'; known devices:")
    assert "stm32h7" in lines[0]


def test_devices_detail_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["devices", "stm32h7"]) == 0
    out = capsys.readouterr().out
    assert "axi_sram" in out and "0x24000000" in out and "480 MHz" in out and "sources" in out
    assert cli.main(["--device", "max78000", "devices"]) == 0  # common option before the command
    assert "1,2,4,8" in capsys.readouterr().out


def test_usage_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["devices", "--bogus"]) == 2
    assert cli.main(["--seed", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert "--bogus" in err[0] and "--seed" in err[1]


def test_unknown_device_for_devices_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["devices", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unknown device 'nope'; known devices:")


def test_config_errors_reach_the_user_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("search:\n  methd: smpq\n")
    assert cli.main(["run", "--config", str(bad)]) == 2
    assert capsys.readouterr().err == f"error: unknown key 'search.methd' in {bad}:2; did you mean 'search.method'?\n"
    assert cli.main(["--set", "budgets.flash_bytes=-1MB"]) == 2
    assert capsys.readouterr().err.startswith("error: 'budgets.flash_bytes' must be a positive byte size")


def test_discovery_reads_help_without_importing() -> None:
    commands = cli.discover_commands()
    assert {"devices", "run"} <= set(commands)
    import deploy.cli.devices as cmd_devices

    assert commands["devices"].help == cmd_devices.HELP
    assert commands["devices"].load() is cmd_devices


@pytest.mark.parametrize("argv, expected", [
    ([], ["run"]),
    (["--device", "stm32h7", "--model", "mbv2"], ["run", "--device", "stm32h7", "--model", "mbv2"]),
    (["devices", "stm32h7"], ["devices", "stm32h7"]),
    (["--device", "devices", "devices"], ["devices", "--device", "devices"]),  # an option's value is not a command
    (["--set", "seed=1", "devices"], ["devices", "--set", "seed=1"]),
    (["--help"], ["--help"]),
    (["--device", "x", "--help"], ["run", "--device", "x", "--help"]),
])
def test_route(argv: list[str], expected: list[str]) -> None:
    assert cli.route(argv, {"devices": None, "run": None}) == expected


@pytest.fixture
def fake_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real command module written to disk, whose run() raises what the test asks for."""
    (tmp_path / "smpq_cli_probe.py").write_text(textwrap.dedent('''
        from deploy.errors import DeployError
        HELP = "probe"
        def add_arguments(parser):
            parser.add_argument("what")
        def run(args):
            if args.what == "interrupt":
                raise KeyboardInterrupt
            if args.what == "multiline":
                raise DeployError("first\\nsecond")
            return 7
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "discover_commands", lambda: {"probe": cli.Command("probe", "smpq_cli_probe", "probe")})


def test_interrupt_exits_130(fake_command, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["probe", "interrupt"]) == 130
    assert capsys.readouterr().err == "smpq-deploy: interrupted\n"


def test_run_status_and_multiline_errors(fake_command, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.main(["probe", "ok"]) == 7
    assert cli.main(["probe", "multiline"]) == 2
    assert capsys.readouterr().err == "error: first second\n"
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    from deploy.errors import DeployError

    with pytest.raises(DeployError):
        cli.main(["probe", "multiline"])
