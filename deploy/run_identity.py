"""What a run folder was made for, so that a report describes exactly the artifacts beside it.

``run.json`` in a run folder records the settings that made its artifacts (model and its kwargs,
dataset, device, seed, the resolved budget); ``smpq-deploy run`` writes it and, before it skips a
finished stage, compares it with the current settings. A folder made by the single commands (no
``run.json``) is checked against what its artifacts record themselves: ``fp.pt``'s meta and
``policy.json``. A difference is a one-line error naming the artifact, the setting and both values.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deploy.errors import DeployError
from search.atomic import atomic_write_text

IDENTITY_FILE = "run.json"
FORCE_HINT = "use another --output folder, or --force to rebuild this one"


def identity(cfg: Any) -> dict[str, Any]:
    """The settings a run folder's artifacts depend on (what `run.json` records)."""
    return {"model": cfg.model.name, "model_kwargs": cfg.model.model_kwargs, "dataset": cfg.dataset.name,
            "device": cfg.device, "seed": cfg.seed, "budget": asdict(cfg.budget())}


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


def _differences(path: Path, recorded: dict[str, Any], now: dict[str, Any]) -> None:
    for key, value in now.items():
        if key in recorded and recorded[key] != value:
            raise DeployError(f"run folder '{path.parent}' was made for {key} {_show(recorded[key])}, not "
                              f"{_show(value)} (recorded in '{path.name}'): {FORCE_HINT}")


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items() if v is not None) + "}"
    return str(value)


def check_folder(out: Path, cfg: Any) -> None:
    """Refuse a run folder whose artifacts were made with other settings than `cfg`'s."""
    now = identity(cfg)
    manifest = out / IDENTITY_FILE
    if manifest.is_file():
        _differences(manifest, read_json(manifest, "smpq-deploy run"), now)
    policy = out / "policy.json"
    if policy.is_file():
        doc = read_json(policy, "smpq-deploy search")
        recorded = {k: doc.get(k) for k in ("model", "dataset", "seed") if doc.get(k) is not None}
        budget = (doc.get("settings") or {}).get("budget")
        if isinstance(budget, dict):
            recorded["budget"] = budget
        _differences(policy, recorded, {k: now[k] for k in recorded})
    fp = out / "fp.pt"
    if fp.is_file() and not cfg.model.checkpoint:
        from search.train import read_checkpoint

        meta = read_checkpoint(fp, "FP checkpoint", weights_only=True).get("meta") or {}
        recorded = {k: meta.get(k) for k in ("model", "dataset", "seed") if meta.get(k) is not None}
        if "model_kwargs" in meta:
            recorded["model_kwargs"] = meta["model_kwargs"] or {}
        _differences(fp, recorded, {k: now[k] for k in recorded})


def record(out: Path, cfg: Any) -> None:
    """Write `run.json` for the settings the folder's artifacts are now made with."""
    atomic_write_text(out / IDENTITY_FILE, json.dumps(identity(cfg), indent=1) + "\n")
