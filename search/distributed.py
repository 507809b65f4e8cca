"""torch.distributed for the search: joining the process group, rank helpers, sharded batches, rank-0 I/O.

Launch. ``smpq-deploy search … --nproc N`` re-runs the same command as N local workers under
``torch.distributed.run`` (torchrun, :func:`launch`); a plain ``torchrun --nproc_per_node N --nnodes K
-m deploy.cli.main search …`` is the same code path. A worker finds ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/
``MASTER_PORT`` (env:// rendezvous) in its environment and :func:`session` joins the group: gloo on the
CPU, NCCL with CUDA (one GPU per local rank). Without those variables everything runs in one process and
every helper here is a no-op.

What is shared how (docs/distributed.md has the whole picture):

* W training: DistributedDataParallel over :class:`ShardedLoader`, which cuts every *global* batch of
  the 1-process loader (same order, same augmentation) into contiguous per-rank chunks; the loss is
  scaled so that DDP's gradient average equals the gradient of the global batch mean.
* Shapley rounds: rank r walks the permutations p with p mod N = r; :func:`gather_rows` puts every
  permutation's row together on every rank without arithmetic, so ψ is bit-identical for any N.
* Files: only rank 0 writes (:func:`is_main`); checkpoints are read on rank 0 and broadcast
  (:func:`on_main`), so only rank 0 needs the run folder.
* Failures: a collective that fails (a peer died, or nothing arrived within ``SMPQ_DIST_TIMEOUT_S``)
  and the launcher's SIGTERM become one-line :class:`SearchError`s on every surviving rank.
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from search.errors import SearchError

T = TypeVar("T")
TIMEOUT_ENV = "SMPQ_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0
RESUME_HINT = "rerun the same command to resume from the last checkpoint"
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class CommStats:
    """Seconds this process spent inside collectives (transfer plus waiting for the slowest rank).

    The explicit collectives of this module always count. DDP's gradient all-reduce counts only when
    :attr:`time_gradients` is set (bench/distributed.py): it then runs synchronously in a comm hook,
    which gives up DDP's overlap of communication with the backward pass.
    """

    seconds: float = 0.0
    time_gradients: bool = False


@contextmanager
def _timed() -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        CommStats.seconds += time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ rank helpers
def is_active() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes files and prints."""
    return rank() == 0


def launched_world_size() -> int:
    """WORLD_SIZE set by a launcher (torchrun), 1 without one."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise SearchError(f"WORLD_SIZE='{os.environ['WORLD_SIZE']}' is not a number: launch with torchrun or --nproc") from None


def timeout_s() -> float:
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise SearchError(f"{TIMEOUT_ENV}='{text}' must be a number of seconds > 0")
    return value


# ------------------------------------------------------------------------------------------ the group
def _fail(what: str, exc: BaseException) -> SearchError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return SearchError(f"rank {rank()} of {world_size()}: {what} failed ({type(exc).__name__}: {first}): another process "
                       f"of the run died or did not answer within {timeout_s():g} s ({TIMEOUT_ENV}); {RESUME_HINT}")


@contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn a torch.distributed failure inside the block into a one-line SearchError naming this rank."""
    try:
        yield
    except dist.DistError as exc:
        raise _fail(what, exc) from None
    except RuntimeError as exc:  # gloo reports a closed peer connection as a plain RuntimeError
        text = str(exc)
        if is_active() and any(s in text for s in ("gloo", "Connection closed", "NCCL", "Timed out", "timed out")):
            raise _fail(what, exc) from None
        raise


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise SearchError(f"rank {rank()} of {world_size()}: stopped by the launcher because another process of the run "
                      f"failed; {RESUME_HINT}")


@contextmanager
def session(accelerator: str | torch.device = "cpu") -> Iterator[None]:
    """Join the process group the launcher's environment describes, for the duration of the block.

    Nothing happens without a launcher (WORLD_SIZE unset or 1) or when the group already exists (a
    caller that initialised it keeps ownership). gloo on the CPU; NCCL and ``cuda:LOCAL_RANK`` when the
    accelerator resolves to CUDA.
    """
    if launched_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        yield
        return
    missing = [k for k in LAUNCH_ENV if k not in os.environ]
    if missing:
        raise SearchError(f"WORLD_SIZE is set but {', '.join(missing)} not: launch with torchrun or `--nproc N`")
    use_cuda = str(accelerator).split(":")[0] in ("cuda", "auto") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://",
                                timeout=timedelta(seconds=timeout_s()))
    except (dist.DistError, RuntimeError, ValueError) as exc:
        raise SearchError(f"cannot join the process group of {os.environ['WORLD_SIZE']} processes at "
                          f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''})") from None
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
        with collective("the final barrier"):
            dist.barrier()
    finally:
        signal.signal(signal.SIGTERM, previous)
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ collectives
def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum over ranks of a few float64 numbers (the values themselves with one process)."""
    if not is_active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device())
    with collective("an all_reduce"), _timed():
        dist.all_reduce(t)
    return t.cpu().tolist()


def gather_rows(local: np.ndarray, owner: Callable[[int], int]) -> np.ndarray:
    """Every rank's `local` (same shape) gathered; row i is taken from rank ``owner(i)``. No arithmetic,
    so the result is bit-identical to computing every row in one process."""
    if not is_active():
        return local.copy()
    t = torch.from_numpy(np.ascontiguousarray(local)).to(_device())
    parts = [torch.empty_like(t) for _ in range(world_size())]
    with collective("an all_gather"), _timed():
        dist.all_gather(parts, t)
    arrays = [p.cpu().numpy() for p in parts]
    out = np.empty_like(local)
    for i in range(local.shape[0]):
        out[i] = arrays[owner(i)][i]
    return out


def broadcast_module(module: torch.nn.Module) -> None:
    """Overwrite every parameter and buffer with rank 0's (after DDP training every rank holds its own
    BatchNorm running statistics; the next Shapley round must see one model)."""
    if not is_active():
        return
    with collective("a broadcast of the model"), _timed(), torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def on_main(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0 (e.g. reading a checkpoint), its result — or its SearchError — on every rank."""
    if not is_active():
        return fn()
    box: list[Any] = [None]
    failure: Exception | None = None
    if is_main():
        try:
            box[0] = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - every rank must hear of it, not wait for a timeout
            failure = exc
            box[0] = ("error", str(exc) if isinstance(exc, SearchError) else f"rank 0 failed ({type(exc).__name__}: {exc})")
    with collective("a broadcast from rank 0"), _timed():
        dist.broadcast_object_list(box, src=0, device=_device())
    if failure is not None:
        raise failure
    kind, value = box[0]
    if kind == "error":
        raise SearchError(value)
    return value


def barrier() -> None:
    if is_active():
        with collective("a barrier"):
            dist.barrier()


# ------------------------------------------------------------------------------------------ DDP and data
def wrap_ddp(module: torch.nn.Module) -> torch.nn.Module:
    """DistributedDataParallel around `module` (its parameters that require grad now), or `module` itself.

    Buffers are synced from rank 0 when it is built, not before every step (``forward_sync_buffers=False``):
    every rank keeps BatchNorm running statistics of its own shard until :func:`broadcast_module` makes
    rank 0's the common ones.
    """
    if not is_active():
        return module
    import warnings

    from torch.nn.parallel import DistributedDataParallel

    # 1×1 kernels in channels_last: the same memory order under two stride conventions; harmless
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

    dev = _device()
    with collective("wrapping the model in DistributedDataParallel"), _timed():
        ddp = DistributedDataParallel(module, device_ids=[dev.index] if dev.type == "cuda" else None,
                                      forward_sync_buffers=False, gradient_as_bucket_view=True)
    if CommStats.time_gradients:
        ddp.register_comm_hook(None, _timed_allreduce)
    return ddp


def _timed_allreduce(state, bucket):  # type: ignore[no-untyped-def]  # DDP rejects string annotations here
    """DDP comm hook: the default gradient average, run synchronously so that its time can be measured."""
    buf = bucket.buffer()
    with _timed():
        dist.all_reduce(buf)
    buf.div_(world_size())
    fut: torch.futures.Future = torch.futures.Future()
    fut.set_result(buf)
    return fut


class ShardedLoader:
    """This rank's share of every batch of a 1-process loader (a DistributedSampler for the project's loader).

    Each global batch — the same images, order and augmentation as one process sees — is cut into
    `world` contiguous chunks (sizes differ by at most one); rank `rank` gets chunk `rank`.
    :attr:`global_size` is the size of the global batch last yielded, for scaling the loss. A global
    batch with fewer images than ranks (a short last batch) is skipped on every rank.
    """

    def __init__(self, loader: Any, rank_: int | None = None, world: int | None = None) -> None:
        self.loader = loader
        self.rank = rank() if rank_ is None else rank_
        self.world = world_size() if world is None else world
        self.global_size = 0
        self.y = loader.y

    def __len__(self) -> int:
        n, b = len(self.loader.y), self.loader.batch_size
        full, rest = divmod(n, b)
        return full + (1 if rest >= self.world and not self.loader.drop_last else 0)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            if len(y) < self.world:
                continue
            self.global_size = len(y)
            yield torch.tensor_split(x, self.world)[self.rank], torch.tensor_split(y, self.world)[self.rank]


def sharded(loader: Any) -> Any:
    """`loader` itself with one process, else its :class:`ShardedLoader`."""
    return ShardedLoader(loader) if is_active() else loader


def scaled_loss(loss_sum: torch.Tensor, loader: Any) -> torch.Tensor:
    """Σ per-sample losses of this rank's chunk → the term whose DDP gradient average is ∇(global batch mean)."""
    return loss_sum * (world_size() / loader.global_size)


# ------------------------------------------------------------------------------------------ launcher
def launch(nproc: int, module: str, argv: Sequence[str]) -> int:
    """Run ``python -m <module> <argv>`` as `nproc` local workers under torch.distributed.run (--standalone).

    Returns 0 when every worker succeeded and 2 when one failed: a worker that stopped with a user error
    has printed it already; a crash or a kill becomes a SearchError naming the rank and how it ended.
    """
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if nproc < 1:
        raise SearchError(f"--nproc must be >= 1, got {nproc}")
    if launched_world_size() > 1:
        raise SearchError("--nproc inside a torchrun launch: give the process count to torchrun only")
    cores = os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    args = parse_args(["--standalone", f"--nproc_per_node={nproc}", "--monitor_interval=0.5", "--module", module, *argv])
    try:
        run(args)
    except ChildFailedError as exc:
        first_rank, failure = exc.get_first_failure()
        if failure.exitcode == 2:
            return 2
        how = (f"was killed by {failure.signal_name()}" if failure.exitcode < 0
               else f"exited with code {failure.exitcode}")
        raise SearchError(f"the run of {nproc} processes failed: rank {first_rank} (pid {failure.pid}) {how}; "
                          f"{RESUME_HINT}") from None
    return 0
