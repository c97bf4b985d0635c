"""A run directory holds one run, written by one process at a time.

- `open_run_directory` takes an exclusive lock (`fcntl.flock` on `.fastvae.lock`) for the life
  of the run. The operating system drops it when the process ends in any way, SIGKILL included,
  so a killed run never leaves a stale lock in the way of `--resume`; a second process that
  wants the same directory is refused while the first one lives.
- A fresh run refuses a directory that already holds a run (any of fastvae's own files) unless
  asked to overwrite it, and then removes only fastvae's own files. Resuming needs one.
"""
from __future__ import annotations

import errno
import fcntl
import glob
import os
import socket

LOCK_NAME = ".fastvae.lock"
# every file the trainer writes into a run directory (checkpoint temporaries start with .tmp-)
RUN_FILES = ("last.pt", "best.pt", "best_pretrain.pt", "config.json", "metrics.jsonl", "training.png")


class RunDirectoryError(ValueError):
    """A run directory that cannot be used as asked (a user error: one clear line, no traceback)."""


def run_files(path: str) -> list[str]:
    """fastvae's own files in `path`, by name."""
    return [name for name in RUN_FILES if os.path.lexists(os.path.join(path, name))]


class RunLock:
    """The exclusive lock of one run directory; `release()` (or process exit) gives it up."""

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        lock_path = os.path.join(self.path, LOCK_NAME)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirectoryError(
                    f"run directory {self.path!r} is in use by another fastvae process{holder}: wait for it to "
                    f"finish, or give another --out") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""
    return f" ({text})" if text else ""


def _make_directory(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunDirectoryError(f"run directory {path!r} is a file, not a directory: give another --out")
    try:
        os.makedirs(path, exist_ok=True)
    except (NotADirectoryError, FileExistsError):
        raise RunDirectoryError(f"cannot create run directory {path!r}: a part of that path is a file") from None
    except PermissionError:
        raise RunDirectoryError(f"cannot create run directory {path!r}: permission denied") from None


def open_run_directory(path: str, *, resume: bool, overwrite: bool = False) -> RunLock:
    """Creates `path` if needed, locks it, and checks it fits the run; returns the held lock.

    A fresh run (`resume=False`) needs a directory without a run in it, or `overwrite=True`, which
    deletes fastvae's own files (and nothing else) first."""
    _make_directory(path)
    lock = RunLock(path).acquire()
    try:
        existing = run_files(path)
        if not resume and existing:
            if not overwrite:
                raise RunDirectoryError(
                    f"run directory {path!r} already holds a run ({', '.join(existing)}): continue it with "
                    f"--resume {path}, replace it with --overwrite, or give another --out")
            for name in existing:
                os.unlink(os.path.join(path, name))
            for leftover in glob.glob(os.path.join(path, ".tmp-*")):
                os.unlink(leftover)
    except BaseException:
        lock.release()
        raise
    return lock
