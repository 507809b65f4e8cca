"""Data sets by name: shapes/dtypes, deterministic splits, augmentation, one-line errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from search.nn.data import BatchLoader, Split, _split_train_val, default_data_root, load_dataset, mixed_batches
from search.errors import SearchError

DATA = default_data_root()
CIFAR = DATA / "cifar10"
IMAGEFOLDER = CIFAR / "imagefolder-sample"
needs_cifar = pytest.mark.skipif(not (CIFAR / "train.npz").is_file(), reason=f"CIFAR-10 copy not at {CIFAR}")
needs_imagefolder = pytest.mark.skipif(not IMAGEFOLDER.is_dir(), reason=f"no image folder sample at {IMAGEFOLDER}")


def _check_splits(ds, shape: tuple[int, int, int], num_classes: int) -> None:
    c, h, w = shape
    assert ds.input_shape == shape
    assert ds.num_classes == num_classes == len(ds.classes)
    assert len(ds.mean) == len(ds.std) == c
    assert all(s > 0 for s in ds.std)
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == np.uint8 and split.x.shape[1:] == (h, w, c)
        assert split.y.dtype == np.int64 and split.y.shape == (len(split.x),)
        assert split.y.min() >= 0 and split.y.max() < num_classes
        assert len(split) > 0
    # every class in every split (the splits are stratified)
    assert set(np.unique(ds.train.y)) == set(range(num_classes))
    assert set(np.unique(ds.val.y)) == set(range(num_classes))


def _check_batches(ds, batch_size: int = 16) -> None:
    loader = BatchLoader(ds.train, ds, batch_size, shuffle=True, augment=ds.augment, seed=1)
    x, y = next(iter(loader))
    assert x.dtype == torch.float32 and x.shape == (batch_size, *ds.input_shape)
    assert y.dtype == torch.int64 and y.shape == (batch_size,)
    assert torch.isfinite(x).all()


@needs_cifar
def test_cifar10_shapes_and_sizes() -> None:
    ds = load_dataset("cifar10", DATA, seed=0)
    _check_splits(ds, (3, 32, 32), 10)
    assert len(ds.train) + len(ds.val) == 50000 and len(ds.test) == 10000
    assert len(ds.val) == 5000 and np.bincount(ds.val.y).tolist() == [500] * 10
    assert ds.classes[0] == "airplane" and ds.classes[-1] == "truck"
    _check_batches(ds)


@needs_cifar
def test_cifar10_normalisation_is_roughly_standard() -> None:
    ds = load_dataset("cifar10", CIFAR, seed=0)  # the cifar10 folder itself is accepted too
    x, _ = next(iter(BatchLoader(ds.test, ds, 2000, shuffle=True, seed=0)))  # test.npz is sorted by class
    per_channel_mean = x.mean(dim=(0, 2, 3))
    per_channel_std = x.std(dim=(0, 2, 3))
    assert torch.all(per_channel_mean.abs() < 0.1), per_channel_mean
    assert torch.all((per_channel_std - 1).abs() < 0.1), per_channel_std


@pytest.fixture(scope="module")
def mnist5k():
    return load_dataset("mnist5k", seed=0)


def test_mnist5k_shapes(mnist5k) -> None:
    ds = mnist5k
    _check_splits(ds, (1, 28, 28), 10)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 5000
    assert not ds.augment  # flipping digits changes their meaning
    _check_batches(ds)


def test_digits_shapes() -> None:
    ds = load_dataset("digits", seed=0)
    _check_splits(ds, (1, 8, 8), 10)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797
    assert ds.train.x.max() == 255  # 0..16 rescaled to the full uint8 range
    _check_batches(ds)


@needs_imagefolder
def test_imagefolder_sample() -> None:
    ds = load_dataset("imagefolder", IMAGEFOLDER, seed=0)
    _check_splits(ds, (3, 32, 32), 10)
    assert ds.classes == sorted(p.name for p in (IMAGEFOLDER / "test").iterdir() if p.is_dir())
    assert len(ds.train) + len(ds.val) + len(ds.test) == sum(1 for _ in IMAGEFOLDER.rglob("*.jpg"))
    _check_batches(ds)


def _rows(split: Split) -> set[bytes]:
    return {row.tobytes() for row in split.x.reshape(len(split.x), -1)}


def test_same_seed_same_split_other_seed_other_split() -> None:
    a, b, c = (load_dataset("digits", seed=s) for s in (3, 3, 4))
    for name in ("train", "val", "test"):
        assert np.array_equal(getattr(a, name).x, getattr(b, name).x)
        assert np.array_equal(getattr(a, name).y, getattr(b, name).y)
    assert not np.array_equal(a.val.x, c.val.x)
    assert _rows(a.val) != _rows(c.val)


def test_train_and_val_are_disjoint() -> None:
    # unique "images" (their own index) make disjointness exact
    n = 1000
    x = np.arange(n, dtype=np.int64).reshape(n, 1, 1, 1)
    y = np.arange(n) % 10
    train, val = _split_train_val(x, y, 0.1, seed=5)
    tr, va = set(train.x.ravel().tolist()), set(val.x.ravel().tolist())
    assert not tr & va
    assert tr | va == set(range(n))
    assert len(va) == 100 and np.bincount(val.y).tolist() == [10] * 10
    assert np.array_equal(y[train.x.ravel()], train.y) and np.array_equal(y[val.x.ravel()], val.y)


def test_real_train_val_test_do_not_overlap(mnist5k) -> None:
    train, val, test = _rows(mnist5k.train), _rows(mnist5k.val), _rows(mnist5k.test)
    assert not train & val and not train & test and not val & test


def _epoch(loader: BatchLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def test_augmentation_keeps_shape_and_is_deterministic_per_seed_and_epoch() -> None:
    ds = load_dataset("digits", seed=0)
    split = ds.train.subset(64)

    def make(seed: int) -> BatchLoader:
        return BatchLoader(split, ds, 16, shuffle=True, augment=True, seed=seed)

    first, again, next_epoch, other_seed = _epoch(make(0), 1), _epoch(make(0), 1), _epoch(make(0), 2), _epoch(make(1), 1)
    assert all(x.shape == (16, *ds.input_shape) for x, _ in first)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, next_epoch))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other_seed))
    # one epoch sees every sample exactly once
    labels = torch.cat([y for _, y in first]).sort().values
    assert torch.equal(labels, torch.from_numpy(split.y).sort().values)


def test_augmentation_is_a_padded_crop_or_its_mirror() -> None:
    ds = load_dataset("digits", seed=0)
    split = ds.train.subset(32)
    loader = BatchLoader(split, ds, 32, shuffle=False, augment=True, seed=7)
    loader.set_epoch(3)
    x_aug, _ = next(iter(loader))
    raw = torch.from_numpy(split.x.transpose(0, 3, 1, 2).copy())
    zero = loader.normalize(torch.zeros(1, 1, 1, 1, dtype=torch.uint8))  # a zero pixel after normalisation
    padded = torch.nn.functional.pad(loader.normalize(raw), (4, 4, 4, 4), value=float(zero))
    h, w = ds.input_shape[1:]
    flips = 0
    for i in range(len(x_aug)):
        found = None
        for dy in range(9):
            for dx in range(9):
                crop = padded[i, :, dy:dy + h, dx:dx + w]
                if torch.equal(crop, x_aug[i]):
                    found = "plain"
                elif torch.equal(crop.flip(-1), x_aug[i]):
                    found = found or "flip"
        assert found is not None, f"sample {i} is not a crop of its padded image"
        flips += found == "flip"
    assert 0 < flips < len(x_aug)  # both branches of the coin are taken


def test_no_augmentation_returns_the_normalised_pixels() -> None:
    ds = load_dataset("digits", seed=0)
    loader = BatchLoader(ds.test, ds, 50, shuffle=False, augment=False)
    x, y = next(iter(loader))
    expected = (torch.from_numpy(ds.test.x[:50].transpose(0, 3, 1, 2)).float() / 255 - ds.mean[0]) / ds.std[0]
    assert torch.allclose(x, expected) and torch.equal(y, torch.from_numpy(ds.test.y[:50]))
    assert len(loader) == -(-len(ds.test) // 50)


def test_missing_cifar_folder_names_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(SearchError) as err:
        load_dataset("cifar10", tmp_path / "nowhere")
    message = str(err.value)
    assert "\n" not in message
    assert "nowhere" in message and "download=True" in message and "--data-dir" in message


def test_missing_imagefolder_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(SearchError, match="--data-dir") as err:
        load_dataset("imagefolder", tmp_path / "missing")
    assert "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SearchError, match="class folders"):
        load_dataset("imagefolder", tmp_path / "empty")


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(SearchError, match="cifar10.*digits"):
        load_dataset("imagenet")


def test_subset_is_spread_over_the_split() -> None:
    y = np.repeat(np.arange(10), 100)  # class-sorted, like CIFAR-10's test.npz
    split = Split(np.zeros((1000, 1, 1, 1), np.uint8), y)
    small = split.subset(50)
    assert len(small) == 50 and np.bincount(small.y).tolist() == [5] * 10
    assert split.subset(None) is split and split.subset(5000) is split
    almost = split.subset(999)
    assert len(almost) == 999 and np.all(np.diff(almost.y) >= 0)  # distinct samples, order kept


@needs_cifar
def test_cifar10_test_subset_holds_every_class() -> None:
    ds = load_dataset("cifar10", DATA, seed=0)
    assert np.bincount(ds.test.subset(200).y, minlength=10).tolist() == [20] * 10
    assert set(np.unique(ds.val.subset(100).y)) == set(range(10))


def test_mixed_batches_mix_a_class_ordered_split_the_same_way_every_pass() -> None:
    ds = load_dataset("digits", seed=0)
    y = np.repeat(np.arange(10), 50)  # stored in class order, like CIFAR-10's val and test splits
    split = Split(np.random.default_rng(0).integers(0, 255, (500, 8, 8, 1), dtype=np.uint8), y)
    plain = [len(np.unique(b[1].numpy())) for b in BatchLoader(split, ds, 100)]
    mixed = list(mixed_batches(split, ds, 100))
    assert max(plain) <= 2 and min(len(np.unique(b[1].numpy())) for b in mixed) >= 8
    assert sorted(torch.cat([b[1] for b in mixed]).tolist()) == sorted(y.tolist())  # every sample once
    assert all(torch.equal(a[0], b[0]) for a, b in zip(mixed, mixed_batches(split, ds, 100)))
