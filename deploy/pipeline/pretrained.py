"""The FP checkpoints shipped with the project, and which FP checkpoint a run starts from.

``checkpoints/<model>-<dataset>-fp.pt`` was made by ``smpq-deploy train`` (the command is recorded next
to it, ``<name>.md``); a run of that model on that dataset without ``model.checkpoint`` starts from it
instead of training (``--set model.pretrained=false`` trains anyway). A missing file just means training.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy.pipeline.validation import shipped_path

#: (model, dataset) → the shipped checkpoint's path inside the project.
SHIPPED = {("resnet8", "cifar10"): "checkpoints/resnet8-cifar10-fp.pt"}


def shipped_checkpoint(model: str, dataset: str) -> Path | None:
    """The shipped FP checkpoint of `model` on `dataset`, None when there is none (or it is not there yet)."""
    rel = SHIPPED.get((model, dataset))
    if rel is None:
        return None
    path = shipped_path(rel)
    return path if path.is_file() else None


def fp_checkpoint(cfg: Any, out: Path) -> Path:
    """The FP checkpoint of a run: ``model.checkpoint``; else the run folder's own ``fp.pt`` once trained;
    else the shipped one (``model.pretrained``); else ``<out>/fp.pt``, which FP training writes."""
    if cfg.model.checkpoint:
        return Path(cfg.model.checkpoint)
    own = out / "fp.pt"
    if own.is_file() or not getattr(cfg.model, "pretrained", True) or cfg.model.model_kwargs:
        return own
    return shipped_checkpoint(cfg.model.name, cfg.dataset.name) or own
