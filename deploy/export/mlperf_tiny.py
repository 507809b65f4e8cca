"""The MLPerf Tiny benchmarks as this project runs them: models, inputs, the runner's settings and scores.

One place for what the importer tests, ``smpq-deploy measure --mlperf`` and ``bench/mlperf_tiny.py`` share:

* :data:`BENCHMARKS`: per benchmark its reference ``.tflite`` (in ``../shared/models/mlperf-tiny``), the
  MLCommons runner's performance-mode ``infer I W`` (tests_performance.yaml: 5 loops of download + infer;
  IC 20 5, KWS 70 10, VWW 20 5; accuracy mode is ``infer 1 0`` per input) and the published board latency
  for orientation (MLPerf Tiny v1.1, STM32H7A3 @ 280 MHz, X-CUBE-AI).
* :func:`inputs`: int8 inputs for a benchmark. IC: CIFAR-10 test images (the JPEG copy in ../shared/data),
  n taken class by class in turn (:func:`round_robin`: the split is sorted by class), quantised with the
  model's input scale/zero point; VWW: the same images enlarged 3× (32 → 96, nearest neighbour), quantised
  likewise (there is no VWW data here); KWS: seeded synthetic feature maps (no speech
  data here): half uniform over int8, half normal around the input zero point (σ 20 codes).
* :func:`runner_scores`: top-1 and the "simplified" ROC AUC the way the EEMBC/MLCommons runner scores a
  file: outputs normalised to sum 1, per class TPR/FPR at thresholds 0.00…1.00 (step 0.01, strictly
  greater), trapezoids, mean over classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy.errors import DeployError
from deploy.export.import_tflite import quantize_input
from deploy.lower.ir import Graph

MODELS_DIR = Path(__file__).resolve().parents[3] / "shared" / "models" / "mlperf-tiny"
KWS_SIGMA = 20


@dataclass(frozen=True)
class Benchmark:
    name: str              # ic, kws, vww
    tflite: str            # file in MODELS_DIR
    iterations: int        # performance mode: infer I W
    warmup: int
    published_ms: float    # MLPerf Tiny v1.1, STM32H7A3 @ 280 MHz, X-CUBE-AI (orientation only)
    inputs: str            # how :func:`inputs` makes this benchmark's inputs


BENCHMARKS = {b.name: b for b in (
    Benchmark("ic", "ic_resnet8_int8.tflite", 20, 5, 51.9,
              "CIFAR-10 test images (JPEG copy in ../shared/data), class by class in turn, quantised with the model's "
              "input scale/zero point"),
    Benchmark("kws", "kws_dscnn_int8.tflite", 70, 10, 15.4,
              f"seeded synthetic features: half uniform int8, half normal around the input zero point (sigma {KWS_SIGMA})"),
    Benchmark("vww", "vww_mobilenetv1_int8.tflite", 20, 5, 29.6,
              "CIFAR-10 test images (class by class in turn) enlarged 3x (nearest) to 96x96, quantised with the "
              "model's input scale/zero point"),
)}
PERFORMANCE_WINDOWS = 5
PUBLISHED_SOURCE = "MLPerf Tiny v1.1 results, STM32H7A3 @ 280 MHz, X-CUBE-AI (published, not measured here)"


def benchmark_of(g: Graph) -> Benchmark:
    """The benchmark an imported graph belongs to (by its source file name: ic_*, kws_*, vww_*)."""
    source = str(g.meta.get("source_file") or g.meta.get("name") or "")
    for b in BENCHMARKS.values():
        if source.startswith(b.name):
            return b
    raise DeployError(f"the run's model ('{source or 'unnamed'}') is not an imported MLPerf Tiny model (ic_*, kws_*, "
                      f"vww_*.tflite): --mlperf needs one ('smpq-deploy import …/mlperf-tiny/ic_resnet8_int8.tflite')")


def round_robin(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of n images taken class by class in turn (the 1st of each class, then the 2nd, …), in file order
    within a class: balanced for any n (the test split here is sorted by class)."""
    labels = np.asarray(labels)
    rank = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    return np.lexsort((labels, rank))[:n]


def _cifar_test(data_dir: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    path = data_dir / "cifar10" / "test.npz"
    if not path.is_file():
        raise DeployError(f"CIFAR-10 test images not found at '{path}' (set --data-dir or $SMPQ_DATA_DIR)")
    with np.load(path) as d:
        y = d["y"].astype(np.int64)
        idx = round_robin(y, n)
        return d["x"][idx], y[idx]


def inputs(bench: Benchmark, g: Graph, n: int, data_dir: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """(int8 inputs (n, …), labels or None) for a benchmark; see the module docstring."""
    t = g.tensors[g.inputs[0]]
    if bench.name in ("ic", "vww"):
        x, y = _cifar_test(data_dir, n)
        if bench.name == "vww":
            x = np.repeat(np.repeat(x, 3, axis=1), 3, axis=2)
        if tuple(x.shape[1:]) != tuple(t.shape[1:]):
            raise DeployError(f"the model input is {t.shape[1:]}, the images {list(x.shape[1:])}")
        real = x.astype(np.float64) * (1.0 if t.scale > 0.5 else 1.0 / 255)  # IC: pixels; VWW: pixels / 255
        return quantize_input(g, real), (y if bench.name == "ic" else None)
    rng = np.random.default_rng(seed)
    half = n // 2
    uniform = rng.integers(-128, 128, (half, *t.shape[1:]))
    normal = np.rint(rng.normal(t.zero_point, KWS_SIGMA, (n - half, *t.shape[1:])))
    return np.clip(np.concatenate([uniform, normal]), -128, 127).astype(np.int8), None


def runner_scores(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 and the runner's simplified mean ROC AUC over the classes present in `labels`."""
    p = np.asarray(probabilities, np.float64)
    p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
    labels = np.asarray(labels)
    thresholds = np.round(np.arange(0, 101) * 0.01, 2)
    aucs = []
    for c in np.unique(labels):
        pos = labels == c
        above = p[:, c][None, :] > thresholds[:, None]           # (T, N)
        tpr = (above & pos).sum(1) / max(pos.sum(), 1)
        fpr = (above & ~pos).sum(1) / max((~pos).sum(), 1)
        tpr[0] = fpr[0] = 1.0
        aucs.append(float(np.sum(0.5 * (tpr[:-1] + tpr[1:]) * (fpr[:-1] - fpr[1:]))))
    return {"top1": float((p.argmax(1) == labels).mean()), "auc": float(np.mean(aucs)), "classes": int(len(aucs))}
