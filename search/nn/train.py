"""Full-precision training with exact resume; the QAT step reuses :func:`fit` with its own model.

``fit`` trains any ``nn.Module`` on a :class:`~search.nn.data.Dataset` with SGD (momentum, Nesterov),
a linear-warmup + cosine learning-rate schedule, weight decay (not on 1-D parameters: BatchNorm,
biases, quantizer step sizes) and optional label smoothing. After every epoch it writes
``<out>/train_state.pt`` atomically (model, optimizer, scheduler, epoch, RNG states, history); a run
that is killed and restarted resumes from the last completed epoch and ends with bit-identical
weights, because the batch order and augmentation of each epoch depend only on (seed, epoch).
At the end it writes ``<out>/fp.pt`` = {"state_dict", "meta"}, which :func:`load_checkpoint` reads.
"""
from __future__ import annotations

import copy
import os
import random
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from search import distributed
from search.atomic import atomic_path
from search.nn.data import BatchLoader, Dataset, Split
from search.errors import SearchError
from search.nn.models import build_model

STATE_FILE = "train_state.pt"
FP_FILE = "fp.pt"
DEVICES = ("cpu", "cuda", "auto")
# Fields that must match for a saved train_state.pt to be resumed exactly.
RESUME_KEYS = ("epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "warmup_epochs",
               "label_smoothing", "subset", "seed")


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (all of them are recorded in the checkpoint)."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    subset: int | None = None  # train on N training images (Split.subset; val/test capped at N too)
    seed: int = 0
    eval_batch_size: int = 500
    channels_last: bool = True  # NHWC memory layout for 4-D tensors: ~15% faster convolutions on CPU
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1 (got {self.epochs})"),
            (self.batch_size >= 1, f"batch size must be >= 1 (got {self.batch_size})"),
            (self.lr > 0, f"learning rate must be > 0 (got {self.lr})"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1) (got {self.momentum})"),
            (self.weight_decay >= 0, f"weight decay must be >= 0 (got {self.weight_decay})"),
            (0 <= self.warmup_epochs <= self.epochs, f"warmup epochs must be in [0, epochs] (got {self.warmup_epochs})"),
            (0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1) (got {self.label_smoothing})"),
            (self.subset is None or self.subset >= 1, f"subset must be >= 1 image (got {self.subset})"),
            (self.eval_batch_size >= 1, f"eval batch size must be >= 1 (got {self.eval_batch_size})"),
        ]
        for ok, message in checks:
            if not ok:
                raise SearchError(f"train: {message}")
        if self.nesterov and self.momentum == 0:
            raise SearchError("train: Nesterov momentum needs momentum > 0 (set nesterov false or momentum e.g. 0.9)")


class Evaluation(NamedTuple):
    """Top-1 accuracy (0..1) and mean cross-entropy over a loader."""

    accuracy: float
    loss: float


@dataclass
class TrainResult:
    """The trained model (on CPU), the meta written to the final checkpoint and the per-epoch history."""

    model: nn.Module
    meta: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'cuda' or 'auto' use the accelerator when one is available; everything else runs on the CPU."""
    name = str(device or "cpu")
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise SearchError(f"unknown training device '{name}': use one of {', '.join(DEVICES)}")
    if kind in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device(name if kind == "cuda" else "cuda")
    if kind == "cuda":
        print("train: CUDA requested but not available; training on the CPU", file=sys.stderr)
    return torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, device: str | torch.device = "cpu") -> Evaluation:
    """Accuracy and loss of `model` (in eval mode) over every batch of `loader`."""
    dev = torch.device(device)
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    try:
        for x, y in loader:
            x, y = x.to(dev), y.to(dev)
            logits = model(x)
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
    finally:
        model.train(was_training)
    if n == 0:
        raise SearchError("evaluate: the loader yields no samples (empty split?)")
    return Evaluation(correct / n, loss_sum / n)


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup from 1/warmup_steps to 1, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + float(np.cos(np.pi * min(1.0, progress))))


class LRSchedule:
    """The LR factor of :func:`lr_factor` as a picklable ``LambdaLR`` callable (its state_dict round-trips)."""

    def __init__(self, total_steps: int, warmup_steps: int) -> None:
        self.total_steps, self.warmup_steps = total_steps, warmup_steps

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.warmup_steps)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """SGD parameter groups: `weight_decay` on trainable weight matrices / kernels, none on 1-D
    parameters (BN, biases, quantizer step sizes)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def capture_rng_states() -> dict[str, Any]:
    """The global RNG states of python, numpy, torch (CPU and every CUDA device).

    Only tensors and plain containers, so a checkpoint holding them loads with ``weights_only=True``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": [list(s) if isinstance(s, tuple) else s for s in random.getstate()],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Restore the states captured by :func:`capture_rng_states`."""
    py = states["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = states["numpy"]
    if isinstance(n, tuple):  # a train_state.pt written before the states were plain containers
        np.random.set_state(n)
    else:
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def deterministic_mode(device: torch.device) -> Iterator[None]:
    """Deterministic kernels (warn-only) for the duration of a training run or search; the previous setting is restored."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through :func:`search.atomic.atomic_path` (never a half-written file); in a distributed
    run only rank 0 writes."""
    if not distributed.is_main():
        return
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def check_finite_weights(model: nn.Module, when: str, lr: float) -> None:
    """Refuse to save diverged weights: every floating-point parameter and buffer must be finite (the loss
    check alone misses the last optimizer step)."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise SearchError(f"training diverged: {len(bad)} weight tensor(s) hold inf/NaN {when} (first '{bad[0]}'); "
                          f"nothing was saved: lower --lr (now {lr})")


#: A BatchNorm's running variance counts as stale when the median over its channels of (variance of its
#: input in a training-mode pass) / (running variance) is outside [1/BN_STALE_FACTOR, BN_STALE_FACTOR].
BN_STALE_FACTOR = 4.0


@torch.no_grad()
def refresh_stale_bn(model: nn.Module, loader: Iterable[Any], n_batches: int = 8) -> tuple[nn.Module, str | None]:
    """`model` itself when its BatchNorm running statistics match its weights, else a copy whose statistics
    are re-estimated (cumulative average over `n_batches` of `loader`, training-mode BatchNorm, no gradient),
    with a one-line note naming the stalest layer.

    Why: a briefly trained FP model (a few steps of momentum-0.1 averages) keeps running statistics near
    their initial values while its real activations are orders of magnitude smaller. Quantizers are
    calibrated in eval mode (running statistics) but QAT and the supernet train in training mode (batch
    statistics): activations then clip to constants, BatchNorm divides near-zero variances by √ε, and the
    gradients explode (mbv2 after one epoch on 256 images: 2e16; 1.3 after this refresh). A trained model's
    statistics pass the check and are left alone. Only BatchNorm modules run in training mode (no dropout,
    no random numbers drawn), so results stay seeded.
    """
    from itertools import islice

    from torch.nn.modules.batchnorm import _BatchNorm

    batches = [b[0] if isinstance(b, (tuple, list)) else b for b in islice(loader, n_batches)]
    if not batches or not any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules()):
        return model, None
    probe = copy.deepcopy(model).eval()
    dev = next(probe.parameters()).device
    bns = [(n, m) for n, m in probe.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    ratios: dict[str, float] = {}

    def measure(name: str, bn: _BatchNorm):
        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].double()
            var = x.var(dim=[d for d in range(x.dim()) if d != 1], unbiased=False)
            ratios[name] = float(((var + bn.eps) / (bn.running_var.double() + bn.eps)).median())
        return hook

    handles = [bn.register_forward_pre_hook(measure(n, bn)) for n, bn in bns]
    momenta = [bn.momentum for _, bn in bns]
    for _, bn in bns:  # training-mode normalisation with the running statistics left as they are
        bn.train()
        bn.momentum = 0.0
    probe(batches[0].to(dev))
    for h in handles:
        h.remove()
    worst = max(ratios, key=lambda n: abs(np.log(ratios[n])))
    if 1 / BN_STALE_FACTOR <= ratios[worst] <= BN_STALE_FACTOR:
        return model, None
    for _, bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
    for x in batches:
        probe(x.to(dev))
    for (_, bn), momentum in zip(bns, momenta):
        bn.momentum = momentum
    probe.train(model.training)
    note = (f"BatchNorm statistics of the FP model are stale ('{worst}': batch / running variance "
            f"{ratios[worst]:.2g}): re-estimated on {len(batches)} training batch(es) before calibration")
    return probe, note


def read_checkpoint(path: Path, what: str, weights_only: bool, made_by: str = "smpq-deploy train") -> dict[str, Any]:
    """The dict saved at `path` (torch.load on the CPU); one-line SearchErrors, naming it `what` and the
    command that writes it (`made_by`), when the file is missing, a folder, unreadable or not a dict."""
    path = Path(path)
    if path.is_dir():
        raise SearchError(f"{what} '{path}' is a folder, not a checkpoint file: pass the file "
                          f"(e.g. '{path / 'fp.pt'}')")
    if not path.is_file():
        raise SearchError(f"{what} '{path}' not found: it is written by `{made_by} --output {path.parent}`; "
                          f"run that first or pass the right path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise SearchError(f"{what} '{path}' is corrupt or not a torch checkpoint ({type(exc).__name__}): delete it and "
                          f"rerun `{made_by}`") from None
    if not isinstance(obj, dict):
        raise SearchError(f"{what} '{path}' is not a checkpoint dict: delete it and rerun `{made_by}`")
    return obj


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the zoo model saved in `path` (an fp.pt / qat.pt written by :func:`fit`); returns (model, meta)."""
    path = Path(path)
    ckpt = read_checkpoint(path, "checkpoint", weights_only=True)
    meta = ckpt.get("meta")
    if "state_dict" not in ckpt or not isinstance(meta, dict) or not {"model", "input_shape", "classes"} <= meta.keys():
        raise SearchError(f"checkpoint '{path}' lacks 'state_dict' or meta (model, input_shape, classes): write it with search.nn.train.fit")
    model = build_model(meta["model"], tuple(meta["input_shape"]), len(meta["classes"]), **(meta.get("model_kwargs") or {}))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise SearchError(f"checkpoint '{path}' does not match model '{meta['model']}' ({first}): retrain or fix meta.model_kwargs") from None
    model.eval()
    return model, meta


def _loaders(dataset: Dataset, cfg: TrainConfig) -> tuple[BatchLoader, BatchLoader, BatchLoader]:
    def cap(split: Split) -> Split:
        return split.subset(cfg.subset)

    train = BatchLoader(cap(dataset.train), dataset, cfg.batch_size, shuffle=True, augment=dataset.augment,
                        seed=cfg.seed, drop_last=len(cap(dataset.train)) > cfg.batch_size)
    val = BatchLoader(cap(dataset.val), dataset, cfg.eval_batch_size)
    test = BatchLoader(cap(dataset.test), dataset, cfg.eval_batch_size)
    return train, val, test


def _progress(loader: BatchLoader, cfg: TrainConfig, epoch: int):
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                leave=False, mininterval=2.0, dynamic_ncols=True, file=sys.stderr)


def fit(
    model: nn.Module,
    dataset: Dataset,
    cfg: TrainConfig,
    out_dir: str | Path,
    device: str | torch.device = "cpu",
    model_name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    final_name: str = FP_FILE,
    state_name: str = STATE_FILE,
    resume: bool = True,
    extra_meta: dict[str, Any] | None = None,
) -> TrainResult:
    """Train `model` on `dataset` (train split), checkpoint every epoch, write ``<out_dir>/<final_name>``.

    With `resume` an existing ``<out_dir>/<state_name>`` from a run with the same config is continued
    from its last completed epoch; the result is bit-identical to an uninterrupted run.
    `model_name`/`model_kwargs` (the zoo entry) go into the meta so :func:`load_checkpoint` can rebuild it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    if len(dataset.train) == 0:
        raise SearchError(f"dataset '{dataset.name}' has an empty train split")
    with deterministic_mode(dev):
        return _fit(model, dataset, cfg, out, dev, model_name, model_kwargs, final_name, state_name, resume, extra_meta)


def _fit(model: nn.Module, dataset: Dataset, cfg: TrainConfig, out: Path, dev: torch.device,
         model_name: str | None, model_kwargs: dict[str, Any] | None, final_name: str, state_name: str,
         resume: bool, extra_meta: dict[str, Any] | None) -> TrainResult:
    _seed_everything(cfg.seed)
    train_loader, val_loader, test_loader = _loaders(dataset, cfg)
    train_loader = distributed.sharded(train_loader)  # this rank's share of every global batch
    steps_per_epoch = len(train_loader)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(dev, memory_format=fmt)
    optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
                                nesterov=cfg.nesterov)
    schedule = LRSchedule(cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    sum_criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction="sum")
    history: list[dict[str, float]] = []
    start_epoch = 0
    state_path = out / state_name
    state = distributed.on_main(lambda: read_checkpoint(state_path, "training state", weights_only=False)
                                if resume and state_path.is_file() else None)
    if state is not None:
        saved = state.get("config", {})
        diff = [f"{k}: saved {saved.get(k)!r} vs now {getattr(cfg, k)!r}" for k in RESUME_KEYS if saved.get(k) != getattr(cfg, k)]
        if diff:
            raise SearchError(f"'{state_path}' was written with other settings ({'; '.join(diff)}): "
                              f"use another --output folder or delete it to start over")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise SearchError(f"'{state_path}' does not fit this model ({type(exc).__name__}): use another --output folder or delete it") from None
        restore_rng_states(state["rng"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        if distributed.is_main():
            print(f"train: resuming from '{state_path}' after epoch {start_epoch}/{cfg.epochs}", file=sys.stderr)

    net = distributed.wrap_ddp(model)  # the model itself with one process
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        train_loader.set_epoch(epoch)
        bar = _progress(train_loader, cfg, epoch)
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in train_loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if x.ndim == 4:
                x = x.contiguous(memory_format=fmt)
            logits = net(x)
            if net is model:
                loss = criterion(logits, y)
            else:  # this rank's share of the global batch mean (DDP averages the gradients over ranks)
                ce_sum = sum_criterion(logits, y)
                loss = distributed.scaled_loss(ce_sum, train_loader)
            optimizer.zero_grad(set_to_none=True)
            with distributed.collective("the gradient all-reduce of DDP"):
                loss.backward()
            optimizer.step()
            scheduler.step()
            if net is model:
                step = [float(loss.detach()) * len(y), int((logits.argmax(1) == y).sum()), len(y)]
            else:  # global sums: every rank sees the same loss and stops on divergence together
                step = distributed.all_sum([float(ce_sum.detach()), int((logits.argmax(1) == y).sum()), len(y)])
            loss_value = step[0] / step[2]
            if not np.isfinite(loss_value):
                raise SearchError(f"training diverged (loss {loss_value}) in epoch {epoch + 1}: lower --lr (now {cfg.lr})")
            loss_sum += step[0]
            correct += int(step[1])
            seen += int(step[2])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        if bar is not None:
            bar.close()
        distributed.broadcast_module(model)  # rank 0's BatchNorm statistics on every rank
        val = evaluate(model, val_loader, dev) if len(val_loader.y) else Evaluation(float("nan"), float("nan"))
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                  "val_loss": val.loss, "val_accuracy": val.accuracy, "lr": optimizer.param_groups[0]["lr"],
                  "seconds": time.perf_counter() - t0}
        history.append(record)
        if cfg.progress:
            print(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f} "
                  f"val_loss {val.loss:.4f} val_acc {val.accuracy:.4f} ({record['seconds']:.1f} s)", file=sys.stderr, flush=True)
        check_finite_weights(model, f"after epoch {epoch + 1}", cfg.lr)
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "epoch": epoch + 1, "rng": capture_rng_states(), "history": history, "config": asdict(cfg)}, state_path)

    val = evaluate(model, val_loader, dev) if len(val_loader.y) else Evaluation(float("nan"), float("nan"))
    test = evaluate(model, test_loader, dev)
    model.to("cpu", memory_format=torch.contiguous_format).eval()
    meta = {
        "model": model_name, "model_kwargs": dict(model_kwargs or {}), "dataset": dataset.name,
        "input_shape": list(dataset.input_shape), "classes": list(dataset.classes),
        "mean": list(dataset.mean), "std": list(dataset.std),
        "test_accuracy": test.accuracy, "val_accuracy": val.accuracy, "test_loss": test.loss,
        "epochs": cfg.epochs, "seed": cfg.seed, "subset": cfg.subset, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "torch": str(torch.__version__), **(extra_meta or {}),
    }
    check_finite_weights(model, "at the end", cfg.lr)
    atomic_save({"state_dict": model.state_dict(), "meta": meta}, out / final_name)
    return TrainResult(model, meta, history)
