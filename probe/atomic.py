"""Writes that leave nothing half-written: a file or a directory is built beside its place, then renamed into it.

Every layer writes with these (data files, checkpoints, run states, traces, probes, SAEs, reports).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """An OSError of the writing names the place asked for, not the temporary file beside it."""
    try:
        yield
    except OSError as e:
        if e.errno is None:
            raise
        culprit = Path(e.filename) if e.filename else None
        why = e.strerror
        if culprit is not None and culprit in path.parents:
            why = _not_a_directory(culprit) if culprit.is_file() else f"{e.strerror} ({culprit})"
        raise type(e)(e.errno, why, str(path)) from None


def check_place(path: str | os.PathLike, *, directory: bool = False) -> None:
    """Refuse, before any work, a place that cannot be written: a directory given for a file, or a parent that
    is a file. Raises OSError naming path (the check the writers' own errors would otherwise make at the end)."""
    path = Path(path)
    if not directory and path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory; give a file name", str(path))
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, _not_a_directory(parent), str(path))
            return


def _not_a_directory(parent: Path) -> str:
    return f"{parent} is a file, not a directory"


def _mode(full: int) -> int:
    """full (0o666 for a file, 0o777 for a directory) less the process's umask, as open() and mkdir() give."""
    mask = os.umask(0)
    os.umask(mask)
    return full & ~mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to a temporary file beside path, then rename it into place.

    Raises OSError naming path when the system refuses it (a parent that is a file, no permission, ...).
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file name beside path, for a writer that takes a name (safetensors' save_file): renamed
    into place when the block ends well, removed when it fails. Raises OSError naming path when the system
    refuses it."""
    path = Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _mode(0o666))  # mkstemp makes it private; the file gets what open() would give it
        with _naming(path):
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """A temporary directory beside path, renamed into place when the block ends well and removed when it fails.

    With replace, an existing directory at path is swapped out; without, it is an error. Raises OSError
    naming path when the system refuses it.
    """
    path = Path(path)
    if path.exists() and not replace:
        raise FileExistsError(f"{path}: already exists; choose a new directory")
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp"))
    tmp.chmod(_mode(0o777))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
