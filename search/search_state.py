"""The resumable engine the supernet searches (SMPQ, EdMIPS) share: checkpoints, RNG states, W training.

A search is a fixed list of units of work (:class:`SupernetSearch`). After each unit it writes its
whole state (weights, optimizers, α, counters, every RNG) with :func:`save_state`; a restarted search
with the same arguments loads it with :func:`load_state` and continues, so a run killed at any point
ends with the identical policy. Files hold only tensors and plain Python containers, so they load
with ``weights_only=True``. :class:`SupernetTrainer` is the one W-training loop of both methods
(SGD on everything but α, one cosine schedule, a :class:`TrainStream` that resumes mid-epoch).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from search import distributed
from search.atomic import atomic_write_text
from search.nn.data import BatchLoader, Dataset
from search.errors import SearchError
from search.policy import Policy
from search.supernet import Supernet
# atomic_save and the RNG capture are the training's own (one implementation; re-exported for the searches)
from search.nn.train import LRSchedule, atomic_save, capture_rng_states, param_groups, restore_rng_states

STATE_FILE = "search_state.pt"
SUPERNET_FILE = "supernet.pt"
Scores = dict[str, dict[str, dict[int, float]]]
FORMAT_VERSION = 1


def args_signature(args: dict[str, Any]) -> str:
    """A stable hash of the arguments that determine a search's result (JSON, sorted keys)."""
    text = json.dumps(args, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def generator_state(rng: np.random.Generator) -> dict[str, Any]:
    """A numpy Generator's state as plain containers (for a checkpoint)."""
    return json.loads(json.dumps(rng.bit_generator.state))


def restore_generator(state: dict[str, Any]) -> np.random.Generator:
    """A numpy Generator continuing exactly from a state saved by :func:`generator_state`."""
    bit_gen = getattr(np.random, state["bit_generator"])()
    bit_gen.state = state
    return np.random.Generator(bit_gen)


def save_state(path: str | Path, signature: str, state: dict[str, Any]) -> None:
    """Atomically write a search checkpoint (`state` plus the argument signature and the RNG states)."""
    atomic_save({"format": FORMAT_VERSION, "signature": signature, "rng": capture_rng_states(), **state}, path)


def load_state(path: str | Path, signature: str, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The checkpoint at `path` (RNG states restored), None when there is none.

    Raises SearchError when the checkpoint was written by a search with different arguments or is unreadable.
    In a distributed run rank 0 reads it and every rank gets its contents (and the error, if any).
    """
    state = distributed.on_main(lambda: _read_state(Path(path), signature, map_location))
    if state is not None:
        restore_rng_states(state["rng"])
    return state


def _read_state(path: Path, signature: str, map_location: str | torch.device) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise SearchError(f"cannot read search checkpoint '{path}' ({type(exc).__name__}): delete it to start the search afresh") from exc
    if state.get("format") != FORMAT_VERSION:
        raise SearchError(f"search checkpoint '{path}' has format {state.get('format')}, expected {FORMAT_VERSION}: delete it to start afresh")
    if state.get("signature") != signature:
        raise SearchError(f"search checkpoint '{path}' was written by a search with different arguments: "
                          f"rerun with the same arguments to resume, or delete it (or use a new run folder) to start afresh")
    return state


def tensors_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """A hash of a state dict's names and values (identifies the starting weights of a search)."""
    h = hashlib.sha256()
    for name, t in state_dict.items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class TrainStream:
    """An endless, resumable stream of training batches over a :class:`BatchLoader`.

    Its position is (epoch, batches taken in that epoch). Because a BatchLoader's order and
    augmentation depend only on (seed, epoch), a stream restored with :meth:`load_state_dict`
    yields exactly the batches the original would have yielded next.
    """

    def __init__(self, loader: BatchLoader) -> None:
        if len(loader) == 0:
            raise SearchError("the training split is empty (or smaller than one batch with drop_last): use more images or a smaller batch")
        self.loader = loader
        self.epoch = 0
        self.pos = 0
        self._it: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._it = None

    def _start(self) -> None:
        self.loader.set_epoch(self.epoch)
        self._it = iter(self.loader)
        for _ in range(self.pos):  # replay to the saved position (same RNG draws as the original)
            next(self._it)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch; a new epoch starts when the current one is exhausted."""
        if self._it is None:
            self._start()
        assert self._it is not None
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch, self.pos = self.epoch + 1, 0
            self._start()
            batch = next(self._it)
        self.pos += 1
        return batch


class JsonlLog:
    """A search's JSONL log (one record per unit of work, each with its `step`), consistent with the checkpoint;
    only rank 0 of a distributed run touches the file.

    Records are written before the checkpoint of their step; on resume, :meth:`truncate` drops the
    records of steps the checkpoint does not contain (they will be redone and logged again).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def truncate(self, steps_done: int) -> None:
        if not distributed.is_main() or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if int(rec.get("step", 0)) <= steps_done:
                kept.append(json.dumps(rec))
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def reset(self) -> None:
        if distributed.is_main():
            self.path.unlink(missing_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if not distributed.is_main():
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()


@dataclass
class SearchResult:
    """What a finished supernet search (SMPQ, EdMIPS) returns — the same on a resumed or already finished run."""

    method: str
    policy: Policy                  # argmax of α per layer and kind
    scores: Scores                  # layer → 'w'/'a' → bits → α
    alpha: np.ndarray               # over supernet.players
    players: list[tuple[str, str, int]]
    value_evaluations: int
    saved_by_truncation: int
    history: list[dict[str, Any]] = field(default_factory=list)
    supernet: Supernet | None = None
    details: dict[str, Any] = field(default_factory=dict)


class SupernetTrainer:
    """SGD (momentum, weight decay on kernels only) on the supernet's weights — never on α — over a
    resumable train stream, with one cosine learning-rate schedule across the whole search.

    In a distributed run `loader` is a :class:`~search.distributed.ShardedLoader` and every call of
    :meth:`train` wraps the supernet in DistributedDataParallel (over the parameters that require grad
    at that moment: EdMIPS' warm-up freezes α); the logged loss and accuracy are over the global batch.
    """

    def __init__(self, supernet: Supernet, loader: BatchLoader, lr: float, momentum: float, weight_decay: float,
                 total_steps: int, device: torch.device) -> None:
        self.supernet, self.device = supernet, device
        needs_grad = supernet.alpha.requires_grad
        supernet.alpha.requires_grad_(False)  # so the parameter groups leave α out
        self.optimizer = torch.optim.SGD(param_groups(supernet, weight_decay), lr=lr, momentum=momentum)
        supernet.alpha.requires_grad_(needs_grad)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, LRSchedule(max(total_steps, 1), 0))
        self.stream = TrainStream(loader)
        self.criterion = nn.CrossEntropyLoss()
        self.sum_criterion = nn.CrossEntropyLoss(reduction="sum")

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.stream.load_state_dict(state["stream"])

    def train(self, n_steps: int, extra_loss: Callable[[], torch.Tensor] | None = None,
              extra_optimizers: Sequence[torch.optim.Optimizer] = (), tick: Callable[[], None] | None = None) -> dict[str, float]:
        """`n_steps` steps of CE (+ `extra_loss()`); `extra_optimizers` (EdMIPS' α) step alongside W."""
        self.supernet.train()
        net = distributed.wrap_ddp(self.supernet)
        loss_sum = extra_sum = 0.0
        correct = seen = 0
        for _ in range(n_steps):
            x, y = self.stream.next()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            logits = net(x)
            if net is self.supernet:
                loss = self.criterion(logits, y)
            else:  # this rank's share of the global batch mean (DDP averages the gradients over ranks)
                ce_sum = self.sum_criterion(logits, y)
                loss = distributed.scaled_loss(ce_sum, self.stream.loader)
            extra = extra_loss() if extra_loss is not None else None
            total = loss if extra is None else loss + extra
            self.optimizer.zero_grad(set_to_none=True)
            for opt in extra_optimizers:
                opt.zero_grad(set_to_none=True)
            with distributed.collective("the gradient all-reduce of DDP"):
                total.backward()
            self.optimizer.step()
            for opt in extra_optimizers:
                opt.step()
            self.scheduler.step()
            if net is self.supernet:
                if not torch.isfinite(total.detach()):
                    raise SearchError(f"supernet training diverged (loss {float(total.detach())}): lower the learning rate")
                step = [float(loss.detach()) * len(y), float(extra.detach()) * len(y) if extra is not None else 0.0,
                        int((logits.argmax(1) == y).sum()), len(y)]
            else:  # global sums, the same on every rank, so every rank stops on divergence together
                step = distributed.all_sum([float(ce_sum.detach()), float(extra.detach()) * len(y) if extra is not None else 0.0,
                                            int((logits.argmax(1) == y).sum()), len(y)])
                if not np.isfinite(step[0] + step[1]):
                    raise SearchError(f"supernet training diverged (loss {step[0] / step[3] + step[1] / step[3]}): "
                                      f"lower the learning rate")
            loss_sum += step[0]
            extra_sum += step[1]
            correct += int(step[2])
            seen += int(step[3])
            if tick is not None:
                tick()
        n = max(seen, 1)
        return {"loss": loss_sum / n, "extra_loss": extra_sum / n, "accuracy": correct / n, "steps": n_steps,
                "lr": self.optimizer.param_groups[0]["lr"]}


def scores_of(supernet: Supernet, values: np.ndarray) -> Scores:
    """Flat per-player values → layer → 'w'/'a' → bits → value."""
    out: Scores = {n: {"w": {}, "a": {}} for n in supernet.layer_names}
    for p, v in zip(supernet.players, values.tolist()):
        out[p.layer][p.kind][p.bits] = float(v)
    return out


def save_supernet(path: Path, supernet: Supernet, alpha: np.ndarray, meta: dict[str, Any]) -> None:
    """``supernet.pt``: weights, per-player scores and the players (atomic)."""
    atomic_save({"state_dict": supernet.state_dict(), "alpha": torch.from_numpy(alpha.copy()),
                 "players": [list(p) for p in supernet.players], "meta": meta}, path)


@contextmanager
def progress_bar(enabled: bool, total: int, description: str) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr; yields ``advance(n=1, description=None)``."""
    if not enabled:
        yield lambda *_a, **_k: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(file=sys.stderr), transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1, description: str | None = None) -> None:
            bar.update(task, advance=n, **({"description": description} if description else {}))
        yield advance


# --------------------------------------------------------------------------------- the resumable search loop
class SupernetSearch:
    """A resumable supernet search: a fixed list of units (kind, index), a checkpoint and a log record after each.

    Subclasses set :attr:`method`, plan their units in :meth:`_plan` (the units, and per unit kind its
    progress ticks — W-training steps for the kinds in :attr:`train_kinds`), run one unit in
    :meth:`_unit` and add their own state. `cfg` needs: warmup_epochs, batch_size, lr, momentum,
    weight_decay, alpha_init_std, subset, seed, progress.
    """

    method = "search"
    train_kinds = ("warmup", "train")

    def __init__(self, supernet: Supernet, dataset: Dataset, cfg: Any, out: Path, dev: torch.device,
                 state_name: str, log_name: str, signature_extra: dict[str, Any]) -> None:
        self.supernet, self.cfg, self.out, self.dev = supernet, cfg, out, dev
        self.state_path, self.log = out / state_name, JsonlLog(out / log_name)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        initial_weights = tensors_digest(supernet.state_dict())
        supernet.to(dev)
        self.train_split = dataset.train.subset(cfg.subset)
        self.val_split = dataset.val.subset(cfg.subset)
        loader = distributed.sharded(BatchLoader(self.train_split, dataset, cfg.batch_size, shuffle=True,
                                                 augment=dataset.augment, seed=cfg.seed,
                                                 drop_last=len(self.train_split) > cfg.batch_size))
        self.steps_per_epoch = len(loader)
        self.units, self.work = self._plan()
        total = sum(self.work[k] for k, _ in self.units if k in self.train_kinds)
        self.trainer = SupernetTrainer(supernet, loader, cfg.lr, cfg.momentum, cfg.weight_decay, total, dev)
        self.alpha = np.random.default_rng([cfg.seed, 11]).normal(0.0, cfg.alpha_init_std, supernet.num_players)
        self.step, self.history = 0, []
        self.signature = args_signature({
            "method": self.method, "config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
            "dataset": dataset.name, "sizes": [len(self.train_split), len(self.val_split)],
            "players": [list(p) for p in supernet.players], "coefficient_mode": supernet.coefficient_mode,
            "weights": initial_weights, **signature_extra})

    # ---- to be provided by a method
    def _plan(self) -> tuple[list[tuple[str, int]], dict[str, int]]:
        raise NotImplementedError

    def _unit(self, kind: str, index: int, advance: Callable[..., None]) -> dict[str, Any]:
        raise NotImplementedError

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _restore_extra(self, state: dict[str, Any]) -> None:
        return None

    def _before_unit(self) -> None:
        return None

    def _details(self) -> dict[str, Any]:
        return {}

    # ---- shared
    def _train(self, kind: str, index: int, advance: Callable[..., None], **kwargs: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        stats = self.trainer.train(self.work[kind], tick=advance, **kwargs)
        return {"kind": kind, "index": index, **stats, "wall_s": time.perf_counter() - t0}

    def run(self) -> SearchResult:
        """Resume from the checkpoint if there is one, run the remaining units, return the result."""
        state = load_state(self.state_path, self.signature, map_location=self.dev)
        if state is not None:
            self.supernet.load_state_dict(state["supernet"])
            self.trainer.load_state_dict(state["trainer"])
            self.alpha = state["alpha"].cpu().numpy().copy()
            self.step, self.history = int(state["step"]), list(state["history"])
            self._restore_extra(state)
            self.log.truncate(self.step)
            if self.cfg.progress and self.step < len(self.units):
                print(f"{self.method}: resuming from '{self.state_path}' after unit {self.step}/{len(self.units)}",
                      file=sys.stderr)
        else:
            self.log.reset()
            self.log.write({"step": 0, "kind": "players", "players": [list(p) for p in self.supernet.players],
                            "alpha": self.alpha.tolist(), **self._details()})
        remaining = self.units[self.step:]
        with progress_bar(self.cfg.progress, sum(self.work[k] for k, _ in remaining), self.method) as advance:
            for kind, index in remaining:
                self._before_unit()
                advance(0, f"{self.method} {kind} {index + 1}")
                record = self._unit(kind, index, advance)
                distributed.broadcast_module(self.supernet)  # rank 0's BN statistics on every rank
                self.step += 1
                record = {"step": self.step, **record}
                self.history.append(record)
                self.log.write(record)  # before the checkpoint: a resume drops records of units it redoes
                save_state(self.state_path, self.signature,
                           {"step": self.step, "supernet": self.supernet.state_dict(), "trainer": self.trainer.state_dict(),
                            "alpha": torch.from_numpy(self.alpha.copy()), "history": self.history, **self._extra_state()})
        self._before_unit()
        return self._result()

    def _result(self) -> SearchResult:
        sn = self.supernet
        policy = sn.derive_policy(torch.from_numpy(self.alpha))
        details = self._details()
        save_supernet(self.out / SUPERNET_FILE, sn, self.alpha,
                      {"method": self.method, "config": asdict(self.cfg), "policy": policy.to_dict(), **details})
        return SearchResult(self.method, policy, scores_of(sn, self.alpha), self.alpha.copy(),
                            [tuple(p) for p in sn.players], int(details.get("value_evaluations", 0)),
                            int(details.get("saved_by_truncation", 0)), list(self.history), sn, details)
