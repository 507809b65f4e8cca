"""The packed C runtime on the host vs TFLite Micro's host interpreter (figures only, never pass/fail).

    .venv/bin/python bench/runtime_host.py [--model resnet8] [--repeats 30] [--seed 0]

Models are randomly initialised, calibrated QAT models lowered to the integer IR (speed and sizes do
not depend on accuracy). Prints, in one run:

(a) weight bytes in the .smpq blob (each layer's packed weights once) vs Σ params·bits/8 over the
    layers (mixed policy using every width 1..8);
(b) our arena (activations + scratch, planned by search/planner.py) vs TFLM's arena, same int8 model;
(c) median time of one inference: our host build vs TFLite Micro's host interpreter (PyPI
    tflite-micro), same int8 model, and the ratio;
(d) median time per inference at uniform 2-, 4- and 8-bit weights (8-bit activations).

Each time is the median over --repeats rounds of one invoke alone (input already in the arena);
every round calls all timed runtimes in turn, so load changes on a shared machine hit them alike.
Compare figures from one run only.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.export.smpq import build_smpq  # noqa: E402
from deploy.lower.ir import Graph  # noqa: E402
from deploy.lower.lower import lower  # noqa: E402
from deploy.lower.reference import to_int8_input  # noqa: E402
from firmware_harness import smpq_format as fmt  # noqa: E402
from firmware_harness.host import HostRuntime  # noqa: E402
from search.nn.data import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from search.nn.models import build_model, quantizable_layers  # noqa: E402
from search.policy import Policy  # noqa: E402
from search.nn.qmodel import calibrate, quantize_model  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10" / "test.npz"
PolicyFn = Callable[[int, str], tuple[int, int]]  # (layer index, name) -> (w_bits, a_bits)


def cifar_images(n: int, path: Path = DATA) -> np.ndarray:
    """The first `n` CIFAR-10 test images (uint8 NHWC); seeded noise when the data folder is absent."""
    if path.exists():
        with np.load(path) as d:
            return d["x"][:n]
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def random_qat_ir(model: str, policy: PolicyFn, images: np.ndarray, seed: int = 0) -> Graph:
    """IR of a randomly initialised `model` quantized by `policy`, calibrated on `images` (uint8 NHWC)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        m = build_model(model, (3, *images.shape[1:3]), 10)
        names = [n for n, _ in quantizable_layers(m)]
        q = quantize_model(m, Policy([(n, policy(i, n)) for i, n in enumerate(names)]), method="lsq", seed=seed)
        mean, std = torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD)
        x = ((torch.from_numpy(images).float() / 255 - mean) / std).permute(0, 3, 1, 2).contiguous()
        calibrate(q, [x], n_batches=1, method="lsq", seed=seed)
        return lower(q.eval(), CIFAR10_MEAN, CIFAR10_STD, x, name=model)
    finally:
        torch.set_num_threads(threads)


def uniform(w: int, a: int = 8) -> PolicyFn:
    return lambda i, n: (w, a)


def every_width(i: int, n: str) -> tuple[int, int]:
    """Mixed policy cycling weights through 1..8 bits and activations through 2..8 bits."""
    return 1 + i % 8, 2 + i % 7


POLICIES: dict[str, PolicyFn] = {"w8a8": uniform(8), "w4a8": uniform(4), "w2a8": uniform(2), "w1a4": uniform(1, 4),
                                  "mixed": every_width, "mixed_rev": lambda i, n: (8 - i % 8, 8 - i % 7)}


@functools.lru_cache(maxsize=None)
def cached_ir(model: str, policy: str, n_calib: int = 8, seed: int = 0) -> Graph:
    """:func:`random_qat_ir` for a named policy of :data:`POLICIES`, calibrated on the first `n_calib` images (cached)."""
    return random_qat_ir(model, POLICIES[policy], cifar_images(n_calib), seed)


def weight_stats(blob: bytes) -> tuple[int, float]:
    """(packed weight bytes in the blob, Σ params·bits/8) over its layers: each packed weights region
    once (the instances of a layer share theirs), without the padding to 4 bytes."""
    p = fmt.parse(blob)
    ops = list(p.weight_regions().values())
    return (sum(fmt.weight_bytes(p.codes(op), op.w_bits) for op in ops),
            sum(p.codes(op) * op.w_bits / 8 for op in ops))


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function over `repeats` rounds; every round calls each function once,
    in turn, so a change in the machine's load affects all of them alike (two warm-up rounds)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats + 2):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r >= 2:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def ours(g: Graph, x: np.ndarray) -> HostRuntime:
    """Our host runtime loaded with `g`'s blob, input `x` written."""
    rt = HostRuntime(build_smpq(g))
    rt.set_input(x)
    return rt


def tflm(g: Graph, x: np.ndarray) -> tuple[Callable[[], object], int]:
    """(one invoke of TFLite Micro's host interpreter on the IR's TFLite export, TFLM's arena bytes)."""
    from tflite_micro.python.tflite_micro import runtime

    from deploy.export.tflite import to_tflite
    from deploy.export.tflm import DEFAULT_ARENA, tflm_arena_bytes

    model = to_tflite(g)
    interp = runtime.Interpreter.from_bytes(model, arena_size=DEFAULT_ARENA)
    interp.set_input(x[None], 0)
    return interp.invoke, tflm_arena_bytes(model, x)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet8", help="zoo model (default resnet8)")
    ap.add_argument("--repeats", type=int, default=30, help="timed invokes per figure (median)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    images = cifar_images(64)
    x = to_int8_input(images[0])

    mixed = build_smpq(random_qat_ir(args.model, every_width, images, args.seed))
    wb, ideal = weight_stats(mixed)
    print(f"model {args.model}; host: gcc -O3 build of firmware_harness/runtime")
    print(f"(a) weight bytes, mixed 1..8-bit policy: blob {wb} vs sum(params*bits/8) {ideal:.0f} "
          f"-> {wb / ideal:.4f}x (goal <= 1.01x); whole blob {len(mixed)} bytes")

    graphs = {w: random_qat_ir(args.model, uniform(w), images, args.seed) for w in (2, 4, 8)}
    rts = {w: ours(g, x) for w, g in graphs.items()}
    tflm_invoke, arena_tflm = tflm(graphs[8], x)
    t = interleaved_medians({"tflm": tflm_invoke, **{f"w{w}": rt.invoke for w, rt in rts.items()}}, args.repeats)
    print(f"(b) arena, int8 model: ours {rts[8].arena_size} bytes vs TFLM {arena_tflm} bytes "
          f"-> {rts[8].arena_size / arena_tflm:.3f}x")
    print(f"(c) inference, int8 model: ours {t['w8'] * 1e3:.3f} ms vs TFLM {t['tflm'] * 1e3:.3f} ms "
          f"-> ours {t['tflm'] / t['w8']:.2f}x faster (goal >= 2x)")
    print("(d) time per inference by weight width (8-bit activations):")
    for w in (2, 4, 8):
        print(f"    w{w}a8: {t[f'w{w}'] * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
