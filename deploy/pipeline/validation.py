"""Shared by pipeline.yaml and device profiles: YAML with line numbers, human units, one-line errors.

Units: byte sizes are binary, as in microcontroller datasheets (``512KB`` = ``512KiB`` = 524288 B,
``2MB`` = 2097152 B); counts take SI suffixes (``1.5G`` BOPs = 1.5e9); durations take ``us``, ``ms``
or ``s``. Every problem becomes one :class:`DeployError` line that names the key, what was wrong,
and where the value came from (``file:line`` or the command line).
"""
from __future__ import annotations

import difflib
import math
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml
from pydantic import BaseModel, ValidationError

from deploy.errors import DeployError

Key = tuple[str, ...]

_BYTE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
               "g": 1024**3, "gb": 1024**3, "gib": 1024**3}
_COUNT_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_TIME_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_NUMBER_UNIT = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def _number_and_unit(value: Any, what: str) -> tuple[float, str]:
    """Split 512KB / '2 MB' / 3e6 into (number, lower-case unit); bools and other types are errors."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be {what}, got {show(value)}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"must be {what}, got {show(value)}")
        return float(value), ""
    m = _NUMBER_UNIT.match(value)
    if not m:
        raise ValueError(f"must be {what}, got {show(value)}")
    return float(m.group(1)), m.group(2).lower()


def prepare_output(folder: Path, what: str = "--output") -> Path:
    """Create the run folder `folder` if needed and check that files can be written in it; a path that is a
    file, lies under a file, or sits on a read-only or pseudo file system is a one-line DeployError."""
    folder = Path(folder)
    for parent in (folder, *folder.parents):
        if parent.exists() and not parent.is_dir():
            raise DeployError(f"{what} '{folder}': '{parent}' is a file, not a folder; choose another {what}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".smpq-write-test.tmp{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DeployError(f"{what} '{folder}' cannot hold files ({exc.strerror or type(exc).__name__}): "
                          f"choose a writable folder") from None
    return folder


def shipped_path(name: str) -> Path:
    """A file or folder shipped with the project (``pipeline.yaml``, ``devices``): the checkout's, or
    where a wheel install puts it (``<prefix>/share/smpq-deploy/``, pyproject's data-files)."""
    checkout = Path(__file__).resolve().parents[2] / name
    installed = Path(sys.prefix) / "share" / "smpq-deploy" / name
    return checkout if checkout.exists() or not installed.exists() else installed


def parse_bytes(value: Any, allow_zero: bool = False) -> int:
    """A positive byte count from an int or a string such as '512KB', '2MB', '1.5 MiB' (binary units)."""
    what = f"a {'non-negative' if allow_zero else 'positive'} byte size such as 524288, 512KB or 2MB"
    number, unit = _number_and_unit(value, what)
    if unit not in _BYTE_UNITS:
        raise ValueError(f"must be {what} (units B, KB, MB, GB), got {show(value)}")
    size = number * _BYTE_UNITS[unit]
    if size < 0 or (size == 0 and not allow_zero) or size != int(size):
        raise ValueError(f"must be {what}, got {show(value)}")
    return int(size)


def parse_count(value: Any) -> float:
    """A positive count from a number or a string with an SI suffix: '300M', '1.5G'."""
    what = "a positive number such as 3e8, 300M or 1.5G"
    number, unit = _number_and_unit(value, what)
    if unit not in _COUNT_UNITS or number <= 0:
        raise ValueError(f"must be {what}, got {show(value)}")
    return number * _COUNT_UNITS[unit]


def parse_duration_ms(value: Any, default_unit: str = "ms") -> float:
    """A positive duration in milliseconds from a number (in `default_unit`) or '20ms', '0.5s', '800us'."""
    what = "a positive duration such as 20, 20ms, 0.5s or 800us"
    number, unit = _number_and_unit(value, what)
    unit = unit or default_unit
    if unit not in _TIME_UNITS_MS or number <= 0:
        raise ValueError(f"must be {what}, got {show(value)}")
    return number * _TIME_UNITS_MS[unit]


def format_bytes(n: float) -> str:
    """Bytes for people, binary units: 524288 -> '512 KiB', 2031616 -> '1.94 MiB'."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def show(value: Any) -> str:
    """A value as an error message quotes it: strings in quotes, YAML null as null."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def key_source(lines: dict[Key, int], key: Key, shown: str) -> str:
    """``file:line`` of `key` (or of its nearest enclosing key) in a file read by :func:`read_yaml`; the file
    alone when neither is written there (a default)."""
    for n in range(len(key), 0, -1):
        if key[:n] in lines:
            return f"{shown}:{lines[key[:n]]}"
    return shown


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[Key, int]]:
    """A YAML mapping and the 1-based line of every key in it; malformed YAML is a file:line:col error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DeployError(f"config file '{path}' does not exist; pass --config with an existing YAML file") from None
    except OSError as exc:
        raise DeployError(f"cannot read '{path}': {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise DeployError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise DeployError(f"{where}: malformed YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise DeployError(f"{path}: malformed YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise DeployError(f"{path}:1:1: expected a mapping of keys (like 'device: stm32h7'), got a {type(data).__name__}")
    lines: dict[Key, int] = {}
    _key_lines(node, (), lines, path)
    return data, lines


def _key_lines(node: yaml.Node, prefix: Key, out: dict[Key, int], path: Path) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        key = prefix + (str(key_node.value),)
        line = key_node.start_mark.line + 1
        if key in out:
            raise DeployError(f"{path}:{line}: duplicate key '{'.'.join(key)}' (first at line {out[key]}); keep one")
        out[key] = line
        _key_lines(value_node, key, out, path)


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `Sub`, `Sub | None`, `Annotated[Sub, ...]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_class(arg)
            if found is not None:
                return found
    return None


def dotted_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every valid dotted key of a schema (aliases as users write them), sections included."""
    keys: list[str] = []
    for name, info in model.model_fields.items():
        key = prefix + (info.alias or name)
        keys.append(key)
        sub = _model_class(info.annotation)
        if sub is not None:
            keys.extend(dotted_keys(sub, key + "."))
    return keys


_TYPE_WORDS = {
    "int_parsing": "must be an integer", "int_type": "must be an integer", "int_from_float": "must be a whole number",
    "float_parsing": "must be a number", "float_type": "must be a number",
    "bool_parsing": "must be true or false", "bool_type": "must be true or false",
    "string_type": "must be a string", "path_type": "must be a path", "list_type": "must be a list like [2, 4, 8]",
    "dict_type": "must be a mapping of keys", "model_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys", "missing": "is required",
}


def one_line_error(exc: ValidationError, source: Callable[[Key], str], valid_keys: list[str], what: str) -> DeployError:
    """The first validation problem as one actionable line; `source(key)` says where the key came from."""
    errors = exc.errors()
    err = errors[0]
    key = tuple(str(p) for p in err["loc"] if not isinstance(p, int))
    dotted = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")  # formats[1]
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    if err["type"] == "extra_forbidden":
        close = closest_key(dotted, valid_keys)
        hint = f"; did you mean '{close}'?" if close else ""
        return DeployError(f"unknown key '{dotted}' in {source(key)}{hint}{more}")
    msg = _TYPE_WORDS.get(err["type"]) or _reword(err["msg"])
    if err["loc"][-1:] == ("[key]",):  # a mapping key of the wrong kind: 'cycles_per_mac' has 'matmul'
        section = ".".join(str(p) for p in err["loc"][:-2])
        return DeployError(f"'{section}' has an unknown entry {show(err.get('input'))}: keys {msg} "
                           f"({source(key[:-2])}){more}")
    if not dotted:
        return DeployError(f"{what}: {msg}{more}")
    value = err.get("input")
    if isinstance(value, dict) and err["type"] == "value_error":  # a check across a section's keys
        return DeployError(f"'{dotted}': {msg} ({source(key)}){more}")
    got = "" if err["type"] == "missing" or "got " in msg or isinstance(value, (dict, list)) else f", got {show(value)}"
    return DeployError(f"'{dotted}' {msg}{got} ({source(key)}){more}")


def closest_key(key: str, valid_keys: list[str]) -> str | None:
    """The valid key a misspelt or misplaced `key` most likely meant, or None."""
    section, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in valid_keys if k.rpartition(".")[0] == section}
    close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
    if close:
        return siblings[close[0]]
    moved = [k for k in valid_keys if k.rpartition(".")[2] == leaf]
    if moved:
        return moved[0]
    close = difflib.get_close_matches(key, valid_keys, n=1, cutoff=0.6)
    return close[0] if close else None


def _reword(msg: str) -> str:
    """Pydantic's 'Input should be …' / 'Value error, …' messages in this project's voice."""
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if msg.startswith("Input should be "):
        msg = "must be " + msg[len("Input should be "):]
    return msg


def merge_dotted(data: dict[str, Any], key: str, value: Any, shorthands: Mapping[str, str] | None = None) -> None:
    """Set `data[a][b][c] = value` for key 'a.b.c', creating sections; `shorthands` expands scalar sections.

    A section written as a scalar (``model: mbv2``) becomes ``{shorthands[section]: scalar}`` before a
    dotted key descends into it.
    """
    parts = key.split(".")
    if not all(parts):
        raise DeployError(f"'{key}' is not a valid key: use dotted names like search.method")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            section = ".".join(parts[: i + 1])
            if shorthands and section in shorthands:
                child = node[part] = {shorthands[section]: child}
            else:
                raise DeployError(f"cannot set '{key}': '{section}' is {show(child)}, not a section")
        node = child
    node[parts[-1]] = value
