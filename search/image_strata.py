"""Stratified validation batches for the value game: fewer wasted images per evaluation, the same estimand.

A coalition's value is its accuracy over the search's validation images, estimated on one batch per walk (or
per singleton batch). Most images are classified the same way by every coalition; a marginal contribution is
decided by the few near the decision boundary, so a uniform batch spends most of its images where nothing can
change. Stratified sampling fixes that without bias: the images are split into strata before any batch is
drawn (by the margin of the empty coalition, uniform W8A8), each batch takes ``n_h`` images from stratum h
without replacement, and every image counts ``W_h / n_h`` (``W_h``: the stratum's share of all images). The
weighted hit rate is then an unbiased estimate of the accuracy over all images whatever the split and the
allocation; a good split only lowers its variance. The allocation follows Neyman (``n_h ∝ W_h σ_h``) with
``σ_h`` taken from a screen: how often the grand coalition and the empty one disagree about an image of the
stratum. Every stratum keeps a floor of images so that none is left out.

With BatchNorm by batch statistics the same weights weight the statistics (``Supernet.set_image_weights``),
which then estimate the statistics of all images as a uniform batch's do.

Measured on ResNet-8 (``bench/paper/estimator.py``, docs/results.md "Stratified image batches"): no gain with
running statistics (1.03× plain batches' efficiency for singleton scores) and a loss with batch statistics
(0.30× singletons, 0.42× walks): which images flip depends on the batch, not only on the image. Off by
default (``SMPQConfig.images = "uniform"``), kept so that the measurement can be repeated.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_STRATA = 8          # equal-count strata of |margin|
FLOOR = 1 / 32        # every stratum keeps at least this share of a batch


@dataclass(frozen=True)
class ImageStrata:
    """A split of N images into strata and the images each batch draws from each."""

    labels: np.ndarray      # (N,) stratum of each image
    allocation: np.ndarray  # (strata,) images per batch from each stratum

    @property
    def shares(self) -> np.ndarray:
        """W_h: each stratum's share of all images."""
        return np.bincount(self.labels, minlength=len(self.allocation)) / len(self.labels)

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One batch: sorted image indices and their weights W_h / n_h (summing to 1)."""
        idx, weights = [], []
        for h, (share, n_h) in enumerate(zip(self.shares, self.allocation)):
            members = np.flatnonzero(self.labels == h)
            idx.append(rng.choice(members, size=int(n_h), replace=False))
            weights.append(np.full(int(n_h), share / n_h))
        idx_all, w_all = np.concatenate(idx), np.concatenate(weights)
        order = np.argsort(idx_all)
        return idx_all[order], w_all[order]


def stratify(margin: np.ndarray, disagree: np.ndarray, batch: int, n_strata: int = N_STRATA) -> ImageStrata:
    """Strata of equal count by |margin| (the empty coalition's correct-class logit minus the best other one),
    and a batch of `batch` images allocated ∝ W_h σ_h with σ_h = sqrt(p_h (1 − p_h)), p_h the share of the
    stratum's images on which the screen coalitions disagree (`disagree`), each stratum at least ``FLOOR``."""
    n = len(margin)
    n_strata = max(1, min(n_strata, batch, n))
    order = np.argsort(np.abs(margin), kind="stable")
    labels = np.empty(n, dtype=np.int64)
    labels[order] = np.arange(n) * n_strata // n
    counts = np.bincount(labels, minlength=n_strata)
    p = np.array([disagree[labels == h].mean() for h in range(n_strata)])
    sigma = np.sqrt(p * (1 - p))
    target = counts * sigma
    target = target / target.sum() if target.sum() > 0 else counts / n
    target = np.maximum(target, FLOOR)
    return ImageStrata(labels, _apportion(target / target.sum(), batch, counts))


def _apportion(share: np.ndarray, total: int, caps: np.ndarray) -> np.ndarray:
    """Integers ≥ 1 and ≤ caps summing to `total` (≤ caps.sum()), close to share × total (largest remainder)."""
    total = min(total, int(caps.sum()))
    out = np.minimum(np.maximum(np.floor(share * total).astype(np.int64), 1), caps)
    while out.sum() > total:
        out[np.argmax(np.where(out > 1, out - share * total, -np.inf))] -= 1
    while out.sum() < total:
        room = np.where(out < caps, share * total - out, -np.inf)
        out[np.argmax(room)] += 1
    return out
