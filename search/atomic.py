"""Atomic artifact writes: a temporary file in the same folder, fsync, then ``os.replace``.

A reader (or a run killed half-way) sees either the old complete file or the new complete file,
never a partial one. Every artifact writer of the project goes through :func:`atomic_path`
(it lives in ``search`` because ``search`` may not import ``deploy``; ``deploy`` uses it too).

    with atomic_path(run / "model.onnx") as tmp:
        onnx.save(model, str(tmp))          # any writer that takes a path
    atomic_write_bytes(run / "model.smpq", blob)

Temporary names start with ``.`` and end with ``.tmp<pid>``: hidden, and never an artifact name.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TMP_MARK = ".tmp"


def temp_name(path: Path) -> Path:
    """The temporary sibling a write of `path` goes through."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on a clean exit it is fsynced and renamed onto `path`.

    On an exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))
