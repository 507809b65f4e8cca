"""What made each artifact of a run folder: stages keyed by their settings and inputs.

``smpq-deploy run`` keys every stage by a hash of the settings it depends on and of the bytes of its
input artifacts, and records it in ``RUN/stages.json`` ({stage: {key, done, outputs}}) next to
``run.json`` (the run's settings, for people). A stage whose recorded key equals the new one, that
finished and whose outputs exist, is skipped; otherwise it runs. Its outputs are inputs of the next
stage, so a rerun stage changes the keys downstream and they rerun too. A stage whose key changed
first deletes its resume state (``train_state.pt``, ``search_state*.pt``, ...): that state belongs to
other settings. A stage with the same key that did not finish (a killed run) keeps its state and
resumes from it. The report therefore always describes exactly the artifacts beside it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

from deploy.errors import DeployError
from search.atomic import atomic_write_text

IDENTITY_FILE = "run.json"
STAGES_FILE = "stages.json"
#: The pipeline's keyed stages in order (host verification and the report always run at the end).
STAGES = ("train", "search", "export", "firmware", "board")
#: Resume state a stage leaves behind (globs in the run folder); deleted when the stage's key changes.
STATE_FILES = {"train": ("train_state.pt",),
               "search": ("search_state*.pt", "supernet.pt", "qat_state_*.pt", "smpq_log.jsonl", "edmips_log.jsonl",
                          "hawq_log.jsonl")}


def identity(cfg: Any) -> dict[str, Any]:
    """The settings of a run (what `run.json` records)."""
    return {"model": cfg.model.name, "model_kwargs": cfg.model.model_kwargs, "dataset": cfg.dataset.name,
            "device": cfg.device, "seed": cfg.seed, "budget": asdict(cfg.budget())}


def record(out: Path, cfg: Any) -> None:
    """Write `run.json` for the settings the folder's artifacts are now made with."""
    atomic_write_text(out / IDENTITY_FILE, json.dumps(identity(cfg), indent=1) + "\n")


def read_json(path: Path, made_by: str) -> dict[str, Any]:
    """A JSON object from `path`; unreadable or malformed is a one-line DeployError naming the file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DeployError(f"'{path}' is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}): delete it "
                          f"and rerun {made_by}, or use --force") from None
    except UnicodeDecodeError:
        raise DeployError(f"'{path}' is not UTF-8 JSON text: delete it and rerun {made_by}, or use --force") from None
    if not isinstance(doc, dict):
        raise DeployError(f"'{path}' holds a JSON {type(doc).__name__}, not an object: delete it and rerun {made_by}")
    return doc


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes ("missing" when it does not exist)."""
    if not path.is_file():
        return "missing"
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stage_key(settings: dict[str, Any], inputs: Iterable[Path]) -> str:
    """Hash of a stage's settings and of the bytes of its input files."""
    doc = {"settings": settings, "inputs": {p.name: file_digest(p) for p in inputs}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]


def stage_range(first: str | None, last: str | None) -> list[str]:
    """The stages from `first` to `last` (both included, default: all); unknown names are a DeployError."""
    for flag, name in (("--from", first), ("--to", last)):
        if name is not None and name not in STAGES:
            raise DeployError(f"{flag} {name}: no such stage; stages: {', '.join(STAGES)}")
    lo = STAGES.index(first) if first else 0
    hi = STAGES.index(last) if last else len(STAGES) - 1
    if lo > hi:
        raise DeployError(f"--from {first} comes after --to {last}; stages in order: {', '.join(STAGES)}")
    return list(STAGES[lo:hi + 1])


class StageBook:
    """``stages.json`` of a run folder: each stage's key, whether it finished, and its outputs."""

    def __init__(self, out: Path) -> None:
        self.out = out
        path = out / STAGES_FILE
        self.doc: dict[str, Any] = read_json(path, "smpq-deploy run") if path.is_file() else {}

    def _save(self) -> None:
        atomic_write_text(self.out / STAGES_FILE, json.dumps(self.doc, indent=1, sort_keys=True) + "\n")

    def fresh(self, name: str, key: str, outputs: Iterable[str]) -> bool:
        """Whether stage `name` finished with this key and its outputs are all there."""
        rec = self.doc.get(name) or {}
        return rec.get("key") == key and bool(rec.get("done")) and all((self.out / f).is_file() for f in outputs)

    def unfinished(self) -> list[str]:
        """Stages that started and did not finish (a killed run)."""
        return [n for n in STAGES if n in self.doc and not self.doc[n].get("done")]

    def start(self, name: str, key: str, restart: bool = False) -> None:
        """Record that stage `name` runs with `key`; state of another key (or any, with `restart`) is deleted."""
        rec = self.doc.get(name) or {}
        if restart or rec.get("key") != key:
            for pattern in STATE_FILES.get(name, ()):
                for path in self.out.glob(pattern):
                    path.unlink()
        self.doc[name] = {"key": key, "done": False}
        self._save()

    def finish(self, name: str, key: str, outputs: Iterable[str], **extra: Any) -> None:
        """Record that stage `name` finished with `key` and wrote `outputs`."""
        self.doc[name] = {"key": key, "done": True, "outputs": sorted(outputs), **extra}
        self._save()

    def drop(self, name: str) -> None:
        """Forget a stage that does not apply to these settings and delete the outputs it recorded."""
        rec = self.doc.pop(name, None)
        if rec is None:
            return
        for f in rec.get("outputs", []):
            (self.out / f).unlink(missing_ok=True)
        self._save()

    def note(self, name: str) -> str | None:
        """The `status` a finished stage recorded, if any."""
        return (self.doc.get(name) or {}).get("status")
