"""``FileLock(path)``: a lock between unrelated processes, by ``flock``."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from typing import Any

from .._core import debug as _dbg
from .._core.errors import WaitTimeout
from .._core.task import CANCEL_SLICE, cancellable_task
from .._core.timeouts import acquire_timeout, check_timeout
from .._core.timeouts import deadline as _deadline

__all__ = ["FileLock"]


class FileLock:
    """An advisory lock on a file, for unrelated processes (``flock``).

    ``pt.FileLock(path, timeout=None)``: ``acquire(blocking=True,
    timeout=None) -> bool``, ``release()``, ``locked()``; ``with lock:`` waits
    up to the lock's ``timeout`` and raises ``WaitTimeout`` (a ``TimeoutError``) after it. The
    kernel releases it when its holder dies, however it dies. It is not
    re-entrant; threads of one process exclude each other too. The lock file
    is created (mode 0600) and never removed: removing it while another
    process waits would let two processes hold "the" lock.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, timeout: float | None = None, mode: int = 0o600
    ):
        self.path = os.fspath(path)
        self.timeout = check_timeout(timeout)
        self.mode = mode
        self._fd: int | None = None
        self._key = ("FileLock", os.path.abspath(self.path))
        self._label = f"FileLock {self.path!r}"

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self.mode)
        except FileNotFoundError:
            raise FileNotFoundError(
                errno.ENOENT,
                f"cannot create lock file: directory {os.path.dirname(self.path)!r} does not exist",
                self.path,
            ) from None
        except IsADirectoryError:
            raise IsADirectoryError(
                errno.EISDIR, "a FileLock needs a file path, not a directory", self.path
            ) from None

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        deadline = _deadline(acquire_timeout(blocking, timeout))
        if _dbg.enabled:
            _dbg.before_acquire(self._key, self._label, blocking)
        fd = self._open()
        delay = 0.001
        me = None
        looked = False  # for the current task: only once it must wait
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not looked:
                        me, looked = cancellable_task(), True
                    if me is not None:
                        me.raise_if_cancelled()
                    now = time.monotonic()
                    if deadline is not None and now >= deadline:
                        os.close(fd)
                        return False
                    # flock has no timeout: poll, backing off to CANCEL_SLICE (50 ms).
                    time.sleep(delay if deadline is None else min(delay, deadline - now))
                    delay = min(delay * 2, CANCEL_SLICE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if _dbg.enabled:
            _dbg.after_acquire(self._key)
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            raise RuntimeError(f"release() of {self._label}, which this object does not hold")
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        if _dbg.enabled:
            _dbg.on_release(self._key)

    def locked(self) -> bool:
        """Whether anyone (this object or another process) holds the lock now."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def __enter__(self) -> FileLock:
        if not self.acquire(timeout=self.timeout):
            raise WaitTimeout(
                f"could not lock {self.path!r} within {self.timeout} s: another process holds it"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        # Dropped while held, nobody could release it: close the descriptor, which
        # releases the lock as the holder's death would, instead of leaking both.
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def __reduce__(self) -> Any:
        return (_filelock, (self.path, self.timeout, self.mode))

    def __repr__(self) -> str:
        return f"<FileLock {self.path!r} {'held' if self._fd is not None else 'not held'}>"


def _filelock(path: str, timeout: float | None, mode: int) -> FileLock:
    return FileLock(path, timeout=timeout, mode=mode)
