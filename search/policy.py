"""A mixed-precision policy: quantizable layer name → (weight bits, activation bits), in model order.

JSON form (``policy.json`` is this plus whatever the search adds)::

    {"layers": [{"name": "conv1", "w_bits": 8, "a_bits": 8, ...per-layer extras}, ...], ...top-level extras}

Extras (MACs, scores, Ω, budgets...) are kept verbatim in :attr:`Policy.layer_info` / :attr:`Policy.meta`
and written back by :meth:`Policy.to_dict`, so the search, deploy and the report share one file format.
The schema of the ``policy.json`` a search writes is :class:`PolicyFile` (documented in docs/policy-json.md).
"""
from __future__ import annotations

import json
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from search.budget import QUANTIZABLE
from search.errors import SearchError
from search.methods import METHODS
from search.nn.quantizers import ACT_BITS, WEIGHT_BITS


class LayerBits(NamedTuple):
    """Bit widths of one layer: its weight and its input activation."""

    w_bits: int
    a_bits: int


def _as_int(v: Any) -> int | None:
    """`v` as an int if it is an integer (numpy integers included, bools excluded), else None."""
    if isinstance(v, (bool, float, str)):
        return None
    try:
        return operator.index(v)
    except TypeError:
        return None


def layer_names(model_or_names: nn.Module | Sequence[str]) -> list[str]:
    """The quantizable layer names of a model (execution order), or the given names."""
    if isinstance(model_or_names, nn.Module):
        from search.nn.models import quantizable_layers

        return [n for n, _ in quantizable_layers(model_or_names)]
    return list(model_or_names)


class Policy(Mapping[str, LayerBits]):
    """Ordered, immutable mapping layer name → :class:`LayerBits`, plus optional extras."""

    def __init__(self, layers: Mapping[str, Sequence[int]] | Iterable[tuple[str, Sequence[int]]],
                 meta: Mapping[str, Any] | None = None, layer_info: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        items = layers.items() if isinstance(layers, Mapping) else layers
        self._layers: dict[str, LayerBits] = {}
        for name, bits in items:
            if len(bits) != 2:
                raise SearchError(f"policy layer '{name}': expected (w_bits, a_bits), got {tuple(bits)!r}")
            w, a = _as_int(bits[0]), _as_int(bits[1])
            if w not in WEIGHT_BITS:
                raise SearchError(f"policy layer '{name}': w_bits must be an integer in 1..8, got {bits[0]!r}")
            if a not in ACT_BITS:
                raise SearchError(f"policy layer '{name}': a_bits must be an integer in 2..8, got {bits[1]!r}")
            self._layers[str(name)] = LayerBits(w, a)
        self.meta: dict[str, Any] = dict(meta or {})
        self.layer_info: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (layer_info or {}).items()}

    # Mapping interface
    def __getitem__(self, name: str) -> LayerBits:
        return self._layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and list(self._layers.items()) == list(other._layers.items())

    def __repr__(self) -> str:
        body = ", ".join(f"{n}: w{b.w_bits}a{b.a_bits}" for n, b in self._layers.items())
        return f"Policy({body})"

    @classmethod
    def uniform(cls, model_or_names: nn.Module | Sequence[str], w_bits: int, a_bits: int,
                first_last_8bit: bool = False) -> "Policy":
        """Every layer at (w_bits, a_bits); first and last layers at (8, 8) if `first_last_8bit`."""
        names = layer_names(model_or_names)
        fixed = {names[0], names[-1]} if first_last_8bit and names else set()
        return cls([(n, (8, 8) if n in fixed else (w_bits, a_bits)) for n in names])

    def validate(self, model_or_names: nn.Module | Sequence[str], first_last_8bit: bool = False) -> None:
        """Raise a one-line SearchError naming the first layer where this policy and the model disagree.

        Every model layer must be present (with `first_last_8bit`, the first and last layers may be
        omitted and, if present, must be (8, 8)); the policy must not name layers the model lacks.
        """
        self.resolve(model_or_names, first_last_8bit)

    def resolve(self, model_or_names: nn.Module | Sequence[str], first_last_8bit: bool = False) -> "Policy":
        """This policy validated and completed for the model, in the model's layer order."""
        names = layer_names(model_or_names)
        extra = [n for n in self._layers if n not in set(names)]
        if extra:  # first: a layer the model lacks says most about what went wrong
            raise SearchError(
                f"policy does not match model: layer '{extra[0]}' is not a quantizable layer of the model "
                f"(first of {len(extra)} unknown); was the policy made for another model?")
        held = {names[0], names[-1]} if first_last_8bit and names else set()
        out: list[tuple[str, LayerBits]] = []
        for i, n in enumerate(names):
            bits = self._layers.get(n)
            if n in held:
                if bits is not None and bits != (8, 8):
                    raise SearchError(
                        f"policy does not match model: layer '{n}' is held at w8/a8 (first_last_8bit) but the policy "
                        f"gives w{bits.w_bits}/a{bits.a_bits}; set it to 8/8 or disable first_last_8bit")
                bits = LayerBits(8, 8)
            elif bits is None:
                raise SearchError(
                    f"policy does not match model: layer '{n}' (quantizable layer #{i}) is missing from the policy; "
                    f"the policy must list every layer of the model")
            out.append((n, bits))
        return Policy(out, self.meta, self.layer_info)

    # JSON round trip
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (see the module docstring)."""
        layers = [{"name": n, "w_bits": b.w_bits, "a_bits": b.a_bits, **self.layer_info.get(n, {})}
                  for n, b in self._layers.items()]
        return {**self.meta, "layers": layers}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Policy":
        """Inverse of :meth:`to_dict`; extras are kept."""
        if not isinstance(d, Mapping) or not isinstance(d.get("layers"), list):
            raise SearchError("policy JSON must be an object with a 'layers' list of {name, w_bits, a_bits}")
        layers, info = [], {}
        for i, entry in enumerate(d["layers"]):
            if not isinstance(entry, Mapping) or not {"name", "w_bits", "a_bits"} <= set(entry):
                raise SearchError(f"policy JSON: layers[{i}] must have 'name', 'w_bits' and 'a_bits'")
            layers.append((entry["name"], (entry["w_bits"], entry["a_bits"])))
            rest = {k: v for k, v in entry.items() if k not in ("name", "w_bits", "a_bits")}
            if rest:
                info[entry["name"]] = rest
        return cls(layers, {k: v for k, v in d.items() if k != "layers"}, info)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Policy":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise SearchError(f"policy JSON is not valid JSON: {e}") from None

    def save(self, path: str | Path) -> None:
        from search.atomic import atomic_write_text

        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        """Read a policy.json; every problem is a one-line SearchError that names the file."""
        p = Path(path)
        if p.is_dir():
            raise SearchError(f"policy file '{p}' is a folder: pass the policy.json inside it")
        if not p.is_file():
            raise SearchError(f"policy file '{p}' does not exist: run the search first or pass an existing policy.json")
        try:
            return cls.from_json(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise SearchError(f"policy file '{p}' is not UTF-8 JSON text: pass a policy.json written by the search") from None
        except SearchError as exc:
            raise SearchError(f"policy file '{p}': {exc}") from None


POLICY_FILE = "policy.json"
FORMAT = "smpq-policy"
FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------ policy.json schema
class LayerEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    type: Literal[QUANTIZABLE]  # type: ignore[valid-type]
    w_bits: int = Field(ge=1, le=8)
    a_bits: int = Field(ge=2, le=8)
    macs: int = Field(ge=0)
    params: int = Field(ge=0)
    bops: float = Field(ge=0)
    flash_bytes: int = Field(ge=0)
    held_8bit: bool
    scores: dict[Literal["w", "a"], dict[str, float]] | None
    normalized_scores: dict[Literal["w", "a"], dict[str, float]] | None


class BudgetEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: float | None
    limit: float | None
    ok: bool


class PolicyFile(BaseModel):
    """The schema of policy.json (docs/policy-json.md documents every field)."""

    model_config = ConfigDict(extra="forbid")
    format: Literal[FORMAT]  # type: ignore[valid-type]
    version: Literal[FORMAT_VERSION]  # type: ignore[valid-type]
    method: Literal[METHODS]  # type: ignore[valid-type]
    model: str
    dataset: str
    input_shape: list[int]
    num_classes: int
    seed: int
    fp_checkpoint: str
    candidate_bits: dict[Literal["w", "a"], list[int]]
    first_last_8bit: bool
    layers: list[LayerEntry]
    omega: dict[Literal["bops", "flash_bytes", "sram_bytes", "latency_s", "macs", "params"], float | None]
    budget: dict[Literal["bops", "flash_bytes", "sram_bytes", "latency_s"], BudgetEntry]
    selection: dict[str, Any]
    method_details: dict[str, Any]
    value_evaluations: int = Field(ge=0)
    settings: dict[str, Any]
    timings_s: dict[str, float]
    accuracy: dict[str, float | None]
    files: dict[str, str | None]


def validate_policy_file(data: dict[str, Any] | str | Path) -> PolicyFile:
    """Parse and validate a policy.json (dict, JSON text or path); a problem is a one-line SearchError."""
    if isinstance(data, Path) or (isinstance(data, str) and not data.lstrip().startswith("{")):
        data = Path(data).read_text()
    if isinstance(data, str):
        data = json.loads(data)
    try:
        return PolicyFile.model_validate(data)
    except Exception as exc:  # pydantic.ValidationError → one line
        errs = getattr(exc, "errors", lambda: [])()
        first = errs[0] if errs else {"loc": (), "msg": str(exc)}
        where = ".".join(str(p) for p in first["loc"])
        raise SearchError(f"policy.json does not match the schema (docs/policy-json.md): {where}: {first['msg']}") from None
