"""Stratified validation batches: exact sizes, weights that make the value unbiased, less variance where the
strata separate the images that can change."""
from __future__ import annotations

import numpy as np
import pytest

from search.image_strata import FLOOR, _apportion, stratify


def _images(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Margins, a screen's disagreement and per-image values where only small margins can flip."""
    rng = np.random.default_rng(seed)
    margin = rng.normal(0, 4, n)
    fragile = np.abs(margin) < 1.0
    disagree = fragile & (rng.random(n) < 0.5)
    value = np.where(fragile, rng.integers(0, 2, n), 1.0).astype(float)  # a hit of some coalition
    return margin, disagree, value


def test_strata_have_equal_counts_and_the_batch_is_allocated_exactly() -> None:
    margin, disagree, _ = _images()
    s = stratify(margin, disagree, 256, n_strata=8)
    assert np.bincount(s.labels).tolist() == [250] * 8
    assert s.allocation.sum() == 256 and s.allocation.min() >= 1
    assert s.allocation[0] == s.allocation.max()               # the smallest margins disagree most
    assert s.allocation.min() >= int(np.floor(FLOOR / (1 + 8 * FLOOR) * 256))  # the floor keeps every stratum
    # |margin| orders the strata
    assert np.abs(margin[s.labels == 0]).max() <= np.abs(margin[s.labels == 1]).min()


def test_a_batch_is_unbiased_for_the_mean_over_all_images_and_less_variable_than_a_uniform_one() -> None:
    margin, disagree, value = _images()
    s = stratify(margin, disagree, 128)
    rng = np.random.default_rng(1)
    draws, uniform = [], []
    for _ in range(3000):
        idx, w = s.draw(rng)
        assert len(np.unique(idx)) == len(idx) == 128 and w.sum() == pytest.approx(1.0)
        assert np.all(np.diff(idx) > 0)
        draws.append(float(w @ value[idx]))
        uniform.append(float(value[rng.choice(len(value), 128, replace=False)].mean()))
    draws_a = np.array(draws)
    assert abs(draws_a.mean() - value.mean()) < 4 * draws_a.std() / np.sqrt(len(draws_a))
    assert draws_a.var() < 0.5 * np.var(uniform)


def test_without_a_signal_the_allocation_is_proportional_and_small_sets_are_capped() -> None:
    margin = np.linspace(-3, 3, 100)
    s = stratify(margin, np.zeros(100, dtype=bool), 40, n_strata=4)
    assert s.allocation.tolist() == [10, 10, 10, 10]
    s = stratify(margin[:10], np.ones(10, dtype=bool), 64, n_strata=4)  # fewer images than a batch: all of them
    assert s.allocation.sum() == 10 and np.all(s.allocation == np.bincount(s.labels))
    assert _apportion(np.array([0.98, 0.01, 0.01]), 10, np.array([100, 100, 100])).tolist() == [8, 1, 1]
