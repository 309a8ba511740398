"""Writes that leave nothing half-written: a file or a directory is built beside its place, then renamed into it.

Every layer writes with these (data files, checkpoints, run states, traces, probes, SAEs, reports). Three more
rules keep a run from losing work or giving a silent wrong answer:

- one writer per output: `claim` refuses, before any work, an output that another run is writing (an exclusive
  lock file beside it) or that exists and was not asked to be replaced;
- an interruption is an exception: under `interruptible`, SIGINT, SIGTERM and SIGHUP raise `Interrupted` where
  the program stands, so the writers' cleanup runs; the renames that put an output in place are not cut in two;
- a failed write names the output, not the temporary beside it (safetensors' own errors included).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence


class OutputRefused(ValueError):
    """An output that this run may not write: another run is writing it, it exists and was not to be replaced,
    or its place cannot be written. The message names the option and the path, and what to do."""


class Interrupted(KeyboardInterrupt):
    """A signal (SIGINT, SIGTERM, SIGHUP) raised as an exception by `interruptible`."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def name(self) -> str:
        """The signal's name, e.g. SIGTERM."""
        return signal.Signals(self.signum).name


# ----------------------------------------------------------------------------------------------- interruptions

INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_held = 0  # depth of `_uninterrupted` blocks
_pending: list[int] = []  # signals that arrived inside one, raised when the outermost ends
_raised = False  # an Interrupted is on its way: a signal held during its cleanup is not raised again


def _on_signal(signum: int, frame) -> None:
    global _raised
    if _held:
        _pending.append(signum)
        return
    _raised = True
    raise Interrupted(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """For the block (in the main thread): SIGINT, SIGTERM and SIGHUP raise `Interrupted` (a KeyboardInterrupt),
    so that the atomic writers remove what they had begun; a signal that comes while an output is being renamed
    into place, or while a temporary is being removed, waits for that to end. SIGXFSZ (a file-size
    limit, `ulimit -f`) is ignored, so that such a write fails with EFBIG instead of killing the process.
    Outside the main thread the block runs as it is."""
    global _raised
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is _on_signal:
        yield  # another thread, or inside an outer interruptible block, whose handlers stay
        return
    wanted = {s: _on_signal for s in INTERRUPTS} | {signal.SIGXFSZ: signal.SIG_IGN}
    previous = {s: signal.signal(s, h) for s, h in wanted.items()}
    _raised = False
    _pending.clear()
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _raised = False
        _pending.clear()


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """A block that an interruption must not cut in two (renaming an output into place): a signal that comes
    inside it is raised when it ends."""
    global _held, _raised
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _pending and not _raised:
            _raised = True
            raise Interrupted(_pending.pop(0))


# ----------------------------------------------------------------------------------------------- failed writes

_OS_ERROR = re.compile(r"os error (\d+)")
_HINTS = {errno.EFBIG: "the file-size limit (ulimit -f) is reached"}


def _strerror(e: OSError) -> str:
    why = e.strerror or str(e)
    hint = _HINTS.get(e.errno)
    return f"{why}: {hint}" if hint and hint not in why else why


def _output_error(e: BaseException, path: Path, tmp: Path | None) -> OSError | None:
    """The error of a failed write as an OSError naming path (the output), or None when e is no write error
    of it: an OSError about the temporary (or about no file) and safetensors' I/O errors, which carry only text."""
    if isinstance(e, OSError):
        if e.errno is None:
            return None
        culprit = Path(e.filename) if e.filename else None
        if culprit is not None and culprit in path.parents:
            why = _not_a_directory(culprit) if culprit.is_file() else f"{e.strerror} ({culprit})"
            return type(e)(e.errno, why, str(path))
        if culprit is None or culprit == path or (tmp is not None and (culprit == tmp or tmp in culprit.parents)):
            return type(e)(e.errno, _strerror(e), str(path))
        return None
    if type(e).__name__ == "SafetensorError" and (m := _OS_ERROR.search(str(e))):
        code = int(m.group(1))
        return OSError(code, _strerror(OSError(code, os.strerror(code))), str(path))
    return None


@contextmanager
def _naming(path: Path, tmp: Path | None = None) -> Iterator[None]:
    """A failed write in the block names the place asked for, not the temporary file beside it."""
    try:
        yield
    except Exception as e:
        named = _output_error(e, path, tmp)
        if named is None:
            raise
        raise named from None


# ----------------------------------------------------------------------------------------------- places

def check_place(path: str | os.PathLike, *, directory: bool = False) -> None:
    """Refuse, before any work, a place that cannot be written: a directory given for a file, a file given for
    a directory, a parent that is a file, or a first existing parent this process may not write in (by its
    permissions; `claim` also creates a file there, which a read-only file system or an immutable folder
    refuses even to root). Raises OSError naming path."""
    path = Path(path)
    if not directory and path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory; give a file name", str(path))
    if directory and path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "is a file, not a directory; give a directory name", str(path))
    for parent in Path(os.path.abspath(path)).parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, _not_a_directory(_as_given(path, parent)), str(path))
            if not os.access(parent, os.W_OK | os.X_OK):
                why = f"cannot write in {_as_given(path, parent)} ({os.strerror(errno.EACCES)})"
                raise PermissionError(errno.EACCES, why, str(path))
            return


def _as_given(path: Path, parent: Path) -> Path:
    """parent (an absolute parent of path) as the user spelled path, where it is one of its written parents."""
    for p in path.parents:
        if Path(os.path.abspath(p)) == parent:
            return p
    return parent


def _not_a_directory(parent: Path) -> str:
    return f"{parent} is a file, not a directory"


def _mode(full: int) -> int:
    """full (0o666 for a file, 0o777 for a directory) less the process's umask, as open() and mkdir() give."""
    mask = os.umask(0)
    os.umask(mask)
    return full & ~mask


# ----------------------------------------------------------------------------------------------- writers

def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to a temporary file beside path, then rename it into place.

    Raises OSError naming path when the system refuses it (a parent that is a file, no permission, a full disk).
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file name beside path, for a writer that takes a name (safetensors' save_file): renamed
    into place when the block ends well, removed when it fails or is interrupted. A missing parent is created.
    Raises OSError naming path when the system refuses it (safetensors' write errors included)."""
    path = Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    try:
        with _naming(path, Path(tmp)):
            yield Path(tmp)
            os.chmod(tmp, _mode(0o666))  # mkstemp makes it private; the file gets what open() would give it
            with _uninterrupted():
                os.replace(tmp, path)
    except BaseException:
        with _uninterrupted():
            Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """A temporary directory beside path, renamed into place when the block ends well and removed when it fails
    or is interrupted. A missing parent is created.

    With replace, an existing directory at path is swapped out (it stays whole until the new one is in place,
    and is put back if the swap is cut short); without, it is an error. Raises OSError naming path when the
    system refuses it (safetensors' write errors included).
    """
    path = Path(path)
    if path.exists() and not replace:
        raise FileExistsError(errno.EEXIST, "already exists; choose a new directory", str(path))
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp"))
    tmp.chmod(_mode(0o777))
    try:
        with _naming(path, tmp):
            yield tmp
            with _uninterrupted():
                replace_directory(tmp, path)
    except BaseException:
        with _uninterrupted():
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_directory(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename the directory source to path (on one file system), swapping out what path holds: the old output
    stays whole until the new one is in place and is put back if the second rename fails. Signals wait until
    the swap is done."""
    source, path = Path(source), Path(path)
    with _uninterrupted():
        if not (path.exists() or path.is_symlink()):
            source.rename(path)
            return
        old = path.with_name(f".{path.name}.old")
        _remove(old)
        path.rename(old)
        try:
            source.rename(path)
        except BaseException:
            old.rename(path)
            raise
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def remove_directory(path: str | os.PathLike) -> None:
    """Remove a directory whole: renamed to a hidden name first, so that it is never half removed under its own
    name; signals wait until it is gone."""
    path = Path(path)
    gone = path.with_name(f".{path.name}.removing")
    with _uninterrupted():
        _remove(gone)
        path.rename(gone)
        shutil.rmtree(gone, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- claims

def lock_file(path: str | os.PathLike) -> Path:
    """The lock file of an output: `.NAME.lock` beside it."""
    path = Path(os.path.abspath(path))
    return path.with_name(f".{path.name}.lock")


def _stat(path: Path) -> tuple | None:
    try:
        s = path.stat()
    except OSError:
        return None
    return (s.st_ino, s.st_dev, s.st_mtime_ns, s.st_size)


@dataclass
class Claim:
    """This run's hold on one output (see `claim`): what the output was when the run began, to say afterwards
    what became of it."""

    path: Path
    option: str
    before: tuple | None  # the output's stat when claimed (None: absent)
    kept: Callable[[], str] | None = None  # what the output keeps after a failure, said by its command
    created: list[Path] = field(default_factory=list)  # parents this claim made

    def outcome(self) -> str:
        """What became of the output, for a run that ends by an error or an interruption."""
        if self.kept is not None:
            return self.kept()
        now = _stat(self.path)
        if now is None and self.before is None:
            return "nothing was written"
        if now == self.before:
            return "it is as it was before the run"
        return "it was written before that"

    def covers(self, file: str | os.PathLike) -> bool:
        """Whether file is the output or inside it (or its temporary, its lock)."""
        file = Path(os.path.abspath(file))
        mine = Path(os.path.abspath(self.path))
        return file == mine or mine in file.parents or (file.parent == mine.parent and
                                                         file.name.startswith(f".{mine.name}."))


@contextmanager
def claim(
    path: str | os.PathLike, *, option: str = "--out", overwrite: bool = False, directory: bool = False,
    markers: Sequence[str] = (), existing: bool = False, kept: Callable[[], str] | None = None,
) -> Iterator[Claim]:
    """Hold an output for one run, from before any work to its end; refuse, with OutputRefused naming option and
    path, an output this run may not write:

    - a place that cannot be written (`check_place`; a missing parent that cannot be created; a folder in which
      the lock file cannot be made: read-only, immutable, no permission);
    - an output another run is writing: an exclusive, non-blocking flock on `.NAME.lock` beside it (the lock
      file holds the writer's pid and is removed at the end; the system releases a killed run's lock);
    - an existing output, unless overwrite, or existing (an output that this run continues, as a training run
      its directory); with markers (the files its command writes), overwrite replaces only an empty directory or
      one that holds them all: never another thing.

    Missing parents are created here, up front, and removed again if the run leaves nothing in them.
    kept says what the output keeps after a failure, when `Claim.outcome`'s words do not fit."""
    given = Path(path)
    try:
        check_place(given, directory=directory)
    except OSError as e:
        raise OutputRefused(f"{option} {given}: {e.strerror}") from None
    absolute = Path(os.path.abspath(given))
    created = _make_parents(absolute.parent, option, given)
    held = Claim(given, option, None, kept, created)
    fd = None
    try:
        fd = _lock(absolute, option, given)
        if not existing and given.exists():
            _may_replace(given, option, overwrite, directory, markers)
        held.before = _stat(given)
        yield held
    finally:
        if fd is not None:
            lock_file(absolute).unlink(missing_ok=True)
            os.close(fd)
        for p in reversed(created):
            try:
                p.rmdir()  # only when empty: the run wrote nothing there
            except OSError:
                break


def _make_parents(parent: Path, option: str, given: Path) -> list[Path]:
    missing = []
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    made = []
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            for q in reversed(made):
                q.rmdir()
            raise OutputRefused(f"{option} {given}: cannot create its folder {_as_given(given, p)} "
                                f"({e.strerror})") from None
        made.append(p)
    return made


def _lock(absolute: Path, option: str, given: Path) -> int:
    """An exclusive lock on the output's lock file (our pid written in it); OutputRefused when another run holds
    it or the folder refuses the file."""
    lock = lock_file(absolute)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputRefused(f"{option} {given}: cannot write in {_as_given(given, absolute.parent)} "
                                f"({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputRefused(f"{option} {given}: another run is writing it (pid {pid}); wait for it to end, "
                                f"or choose another path") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its last holder removed while we opened it
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


def _may_replace(path: Path, option: str, overwrite: bool, directory: bool, markers: Sequence[str]) -> None:
    if not overwrite:
        raise OutputRefused(f"{option} {path}: already exists; pass --overwrite to replace it, or choose another path")
    if directory and markers and any(path.iterdir()) and not all((path / m).exists() for m in markers):
        missing = ", ".join(m for m in markers if not (path / m).exists())
        raise OutputRefused(f"{option} {path}: holds something else (no {missing}); --overwrite replaces only an "
                            f"output of this command: choose another path")
