"""`smpq-deploy devices [NAME]`: the device profiles in a table, or one profile in detail."""
from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from deploy.devices.profiles import DeviceProfile, list_devices, load_device
from deploy.pipeline.validation import format_bytes

HELP = "list the device profiles (devices/*.yaml), or show one in detail"
CONV8 = "cost_model.cycles_per_mac.conv2d.8"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", default=None, help="a device to show in detail (default: --device, else all)")


def _console() -> Console:
    """Rich console; when not on a terminal (pipes, logs, tests) wide enough that tables are not folded."""
    console = Console()
    return console if console.is_terminal else Console(width=200, soft_wrap=False)


def _bits(bits: list[int]) -> str:
    return ",".join(str(b) for b in bits)


def _mac_per_cycle(p: DeviceProfile) -> str:
    per_mac = p.cost_model.cycles_per_mac["conv2d"]
    cost = per_mac.get(8, per_mac[max(per_mac)])
    unit = "instr" if p.cost_model.latency_unit == "instructions" else "cycle"
    return f"{1 / cost:.3g} /{unit}"


def _clock(hz: float) -> str:
    return f"{hz / 1e6:g} MHz"


def overview(console: Console) -> None:
    """One row per shipped profile."""
    table = Table(title="device profiles (devices/*.yaml)", title_justify="left")
    table.add_column("name", no_wrap=True, style="bold", min_width=16)
    table.add_column("core", no_wrap=True, max_width=22, overflow="ellipsis")
    table.add_column("clock", justify="right", no_wrap=True)
    table.add_column("SRAM (arena)", justify="right", no_wrap=True)
    table.add_column("flash (model)", justify="right", no_wrap=True)
    table.add_column("w bits", no_wrap=True)
    table.add_column("a bits", no_wrap=True)
    table.add_column("MAC/cycle conv int8", justify="right", no_wrap=True)
    table.add_column("source of that figure", max_width=60, overflow="ellipsis", no_wrap=True)
    for name in list_devices():
        p = load_device(name)
        table.add_row(p.name, p.core, _clock(p.clock_hz), format_bytes(p.sram_bytes), format_bytes(p.model_flash_bytes),
                      _bits(p.allowed_bits.weight), _bits(p.allowed_bits.activation), _mac_per_cycle(p),
                      p.source_of(CONV8))
    console.print(table)
    console.print("figures marked 'estimate' are not measured; `smpq-deploy devices NAME` shows every source")


def detail(p: DeviceProfile, console: Console) -> None:
    """Everything in one profile, with the source of every figure."""
    console.print(f"[bold]{p.name}[/bold]: {p.description}")
    facts = Table.grid(padding=(0, 2))
    facts.add_row("core", p.core)
    facts.add_row("clock", _clock(p.clock_hz))
    where = f"region '{p.arena_region}'" if p.arena_region else "the accelerator's memory"
    facts.add_row("SRAM for the arena", f"{format_bytes(p.sram_bytes)} ({p.sram_bytes} B) in {where}")
    facts.add_row("flash", f"{format_bytes(p.flash_bytes)}, of which {format_bytes(p.model_flash_bytes)} for the model")
    facts.add_row("weight bits", _bits(p.allowed_bits.weight))
    facts.add_row("activation bits", _bits(p.allowed_bits.activation))
    flash = p.flash
    how = ", ".join(f"{k} {v}" for k, v in (("target", flash.target), ("machine", flash.machine), ("cpu", flash.cpu))
                    if v)
    facts.add_row("flashing", f"{flash.backend}, {flash.baud} baud" + (f", {how}" if how else ""))
    if flash.notes:
        facts.add_row("", flash.notes)
    console.print(facts)

    memory = Table(title="memory map", title_justify="left")
    for col in ("region", "origin", "length"):
        memory.add_column(col, justify="left" if col == "region" else "right")
    for region, r in p.memory.items():
        memory.add_row(region, f"0x{r.origin:08X}", format_bytes(r.length))
    console.print(memory)

    cm = p.cost_model
    unit = "instructions" if cm.latency_unit == "instructions" else "cycles"
    costs = Table(title=f"cost model: {unit} per MAC by weight bits (+{cm.per_layer_overhead_cycles:g} {unit} per layer)",
                  title_justify="left")
    costs.add_column("op")
    widths = sorted({b for t in cm.cycles_per_mac.values() for b in t})
    for b in widths:
        costs.add_column(f"w{b}", justify="right")
    for op, t in cm.cycles_per_mac.items():
        costs.add_row(op, *(f"{t[b]:g}" if b in t else "" for b in widths))
    console.print(costs)
    if cm.act_bits_factor:
        console.print("activation-bits factor: " + ", ".join(f"a{b}: {f:g}" for b, f in sorted(cm.act_bits_factor.items())))

    sources = Table(title="sources", title_justify="left", show_lines=False)
    sources.add_column("figure", no_wrap=True)
    sources.add_column("where it came from")
    for figure, text in p.sources.items():
        sources.add_row(figure, " ".join(text.split()))
    console.print(sources)


def run(args: argparse.Namespace) -> int:
    """Print the overview, or one profile when a name (or --device) is given."""
    if getattr(args, "config", None) or getattr(args, "set", None):  # given, so they must be valid
        from deploy.pipeline.config import config_from_args

        config_from_args(args)
    console = _console()
    name = args.name or getattr(args, "device", None)
    if name:
        detail(load_device(name), console)
    else:
        overview(console)
    return 0
