"""QAT fine-tuning of a final discrete policy (LSQ), the SAME recipe for every search method.

Start point: the FP checkpoint (``fp.pt``), never a method's supernet. Every method (SMPQ, EdMIPS,
uniform) then starts from identical weights — uniform has no supernet at all, and the SMPQ and
EdMIPS supernets are trained with different objectives — so the policy is the only difference
between the compared models. Steps are initialised by :func:`search.nn.qmodel.calibrate` on training
batches (MSE-optimal), then weights, BN and LSQ steps are trained by :func:`search.nn.train.fit`
(the one training loop: progress bars, a checkpoint per epoch, bit-identical resume).

Files in the run folder: ``qat_state_<policy hash>.pt`` (per-epoch resume state; the hash keeps a
state of another policy from being resumed) and ``qat.pt`` = {"state_dict", "meta"} with
``meta["first_last_8bit"]``, ``meta["qat"]`` and the policy: stored once, in the run's ``policy.json``,
which ``meta["policy_file"]`` names and ``meta["policy_hash"]`` (:func:`policy_hash`) pins; without a
policy file (a standalone fine-tuning, or a run written before) the policy's JSON form is
``meta["policy"]``. :func:`load_qat` rebuilds the quantized model from it (what the deploy lowering reads).
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from search import distributed
from search.nn.data import BatchLoader, Dataset
from search.errors import SearchError
from search.nn.models import build_model
from search.policy import POLICY_FILE, Policy
from search.nn.qmodel import calibrate, quantize_model
from search.nn.train import TrainConfig, TrainResult, atomic_save, evaluate, fit, read_checkpoint, refresh_stale_bn

QAT_FILE = "qat.pt"


@dataclass
class QATConfig:
    """The QAT recipe (identical for every method; recorded in qat.pt and policy.json)."""

    epochs: int = 10                    # 0: no training, the calibrated model is written as qat.pt
    batch_size: int = 128
    lr: float = 0.01
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    calib_batches: int = 8
    subset: int | None = None
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.calib_batches < 1:
            raise SearchError(f"qat: epochs must be >= 0 and calibration batches >= 1 (got {self.epochs}, {self.calib_batches})")

    def train_config(self) -> TrainConfig:
        """The :class:`TrainConfig` that :func:`search.nn.train.fit` runs (SGD, Nesterov, cosine)."""
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                           warmup_epochs=self.warmup_epochs, subset=self.subset, seed=self.seed, progress=self.progress)


def policy_hash(policy: Policy) -> str:
    """A short stable hash of the bit widths (not the extras) of `policy`."""
    text = json.dumps([[n, b.w_bits, b.a_bits] for n, b in policy.items()])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def build_qat_model(fp_model: nn.Module, policy: Policy, dataset: Dataset, cfg: QATConfig,
                    first_last_8bit: bool = True) -> nn.Module:
    """The LSQ model of `policy` on a copy of `fp_model` (stale BatchNorm statistics re-estimated first:
    :func:`search.nn.train.refresh_stale_bn`), steps calibrated on training batches."""
    loader = BatchLoader(dataset.train.subset(cfg.subset), dataset, cfg.batch_size, shuffle=True, seed=cfg.seed)
    fp_model, note = refresh_stale_bn(fp_model, loader, cfg.calib_batches)
    if note and distributed.is_main():
        print(f"qat: {note}", file=sys.stderr, flush=True)
    model = quantize_model(fp_model, policy, first_last_8bit, seed=cfg.seed)
    calibrate(model, loader, n_batches=cfg.calib_batches, seed=cfg.seed)
    return model


def finetune(fp_model: nn.Module, policy: Policy, dataset: Dataset, cfg: QATConfig, out_dir: str | Path,
             model_name: str, device: str = "cpu", first_last_8bit: bool = True,
             extra_meta: dict[str, Any] | None = None, resume: bool = True,
             model_kwargs: dict[str, Any] | None = None, policy_file: str | None = None) -> TrainResult:
    """QAT of `policy` from the FP weights; writes ``<out_dir>/qat.pt`` and returns fit's result.

    `policy_file`: the policy.json in `out_dir` that holds `policy` (qat.pt then references it by hash
    instead of storing a copy; :func:`load_qat` checks the hash)."""
    resolved = policy.resolve(fp_model, first_last_8bit)
    model = build_qat_model(fp_model, resolved, dataset, cfg, first_last_8bit)
    ref = {"policy_file": policy_file, "policy_hash": policy_hash(resolved)} if policy_file is not None \
        else {"policy": Policy(resolved.items()).to_dict()}
    meta = {**ref, "first_last_8bit": first_last_8bit,
            "qat": {**asdict(cfg), "start": "fp"}, "quantized": True, **(extra_meta or {})}
    if cfg.epochs == 0:
        return _calibrated_only(model, dataset, cfg, Path(out_dir), model_name, model_kwargs, meta)
    return fit(model, dataset, cfg.train_config(), out_dir, device=device, model_name=model_name, model_kwargs=model_kwargs,
               final_name=QAT_FILE, state_name=f"qat_state_{policy_hash(resolved)}.pt", resume=resume,
               extra_meta=meta)


def _calibrated_only(model: nn.Module, dataset: Dataset, cfg: QATConfig, out: Path, model_name: str,
                     model_kwargs: dict[str, Any] | None, meta: dict[str, Any]) -> TrainResult:
    """epochs = 0: no training, the calibrated (post-training quantized) model is written as qat.pt."""
    out.mkdir(parents=True, exist_ok=True)
    val = BatchLoader(dataset.val.subset(cfg.subset), dataset, 500)
    test = BatchLoader(dataset.test.subset(cfg.subset), dataset, 500)
    model.eval()
    full = {"model": model_name, "model_kwargs": dict(model_kwargs or {}), "dataset": dataset.name, "input_shape": list(dataset.input_shape),
            "classes": list(dataset.classes), "mean": list(dataset.mean), "std": list(dataset.std),
            "val_accuracy": evaluate(model, val).accuracy if len(val.y) else None,
            "test_accuracy": evaluate(model, test).accuracy, "epochs": 0, "seed": cfg.seed, "subset": cfg.subset, **meta}
    atomic_save({"state_dict": model.state_dict(), "meta": full}, out / QAT_FILE)
    return TrainResult(model, full, [])


def qat_policy(path: Path, meta: dict[str, Any]) -> Policy:
    """The policy a qat.pt at `path` was trained for: its policy file (checked against the hash) or, in a
    checkpoint that stores it inline, ``meta["policy"]``."""
    if "policy_hash" not in meta:
        return Policy.from_dict(meta["policy"])
    pfile = path.parent / str(meta.get("policy_file") or POLICY_FILE)
    if not pfile.is_file():
        raise SearchError(f"'{path}' keeps its policy in '{pfile}', which is missing: keep qat.pt and {pfile.name} "
                          f"together (or rerun `smpq-deploy search`)")
    policy = Policy.load(pfile)
    if policy_hash(policy) != meta["policy_hash"]:
        raise SearchError(f"'{pfile}' (policy {policy_hash(policy)}) is not the policy '{path}' was trained for "
                          f"({meta['policy_hash']}): restore that policy.json or rerun QAT for this one")
    return policy


def load_qat(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the quantized model saved by :func:`finetune` (CPU, eval mode); returns (model, meta)."""
    path = Path(path)
    ckpt = read_checkpoint(path, "QAT checkpoint", weights_only=True, made_by="smpq-deploy search")
    meta = ckpt.get("meta")
    if not isinstance(meta, dict) or not ({"policy", "policy_hash"} & set(meta)) or "state_dict" not in ckpt:
        raise SearchError(f"'{path}' is not a QAT checkpoint (no policy in its meta): run `smpq-deploy search` to write qat.pt")
    model = build_model(meta["model"], tuple(meta["input_shape"]), len(meta["classes"]), **(meta.get("model_kwargs") or {}))
    qmodel = quantize_model(model, qat_policy(path, meta), bool(meta.get("first_last_8bit", False)))
    try:
        qmodel.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise SearchError(f"QAT checkpoint '{path}' does not match its policy/model ({first}): run the search again") from None
    return qmodel.eval(), meta
