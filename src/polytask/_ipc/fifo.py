"""Named pipes (FIFOs) between unrelated processes: ``pt.Fifo``.

A FIFO is a path anyone with write permission on it can write into, so what a
reader receives is only as trustworthy as the FIFO's writers. Two rules follow:

- **Whose FIFO.** ``Fifo(path)`` creates the FIFO (mode 0600) unless it exists.
  An existing one must be a FIFO (a symbolic link is not followed), owned by
  this user and not writable by group or others; otherwise PermissionError
  names its owner and mode (``trust_existing=True`` accepts it anyway). The
  same is checked again on each descriptor opened (``fstat``, after an open
  with ``O_NOFOLLOW``), so the FIFO read from is the FIFO checked, even if the
  path was swapped in between.
- **What a message is.** ``format=`` says it, and nothing is unpickled unless
  asked for:

  ``"bytes"`` (the default)
      a byte stream, as shell tools write and read it: ``send(data)`` writes
      the bytes; ``recv()`` returns the bytes there now (``echo hello > fifo``
      gives ``b"hello\\n"``, perhaps in more than one piece; where one write
      ends is not kept).
  ``"lines"``
      UTF-8 text, one message per line: ``send("hello")`` writes ``hello\\n``;
      ``recv()`` returns ``"hello"``. A line that is not UTF-8, longer than
      ``max_frame``, or cut off by the end of the stream raises ValueError.
  ``"pickle"``
      any picklable object, framed (below). Unpickling runs code chosen by
      whoever wrote the frame: use it only between your own processes.

Framing of ``"pickle"`` (for writers in other languages)::

    [ length: u32 big-endian | type: u8 (0: raw bytes, 1: a pickle) | payload: length bytes ]

A frame longer than ``max_frame`` (16 MiB by default), of an unknown type, or
cut off by the end of the stream is an error (ValueError), raised at once and
never skipped: ``echo hello > fifo`` into a pickle reader reports a foreign
frame. Writes of up to ``PIPE_BUF`` (4 KiB) bytes are atomic; a polytask
writer sending more takes an ``flock`` on the FIFO first, so messages of
concurrent polytask writers never interleave.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import stat
import struct
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from .._core.errors import ChannelClosed, SerializationError, WaitTimeout
from .._core.task import sleep as _cancellable_sleep
from .._core.task import wait_cancellable
from .._core.timeouts import check_timeout, poll_ms
from .._os import proc as _proc
from .codec import dumps, loads

__all__ = ["DEFAULT_MAX_FRAME", "FORMATS", "Fifo", "FifoReader", "FifoWriter"]

#: The formats ``Fifo(format=)`` takes.
FORMATS = ("bytes", "lines", "pickle")
#: The default ``max_frame``: the longest pickle frame or line, in bytes.
DEFAULT_MAX_FRAME = 16 * 1024 * 1024

_FRAME = struct.Struct(">IB")  # payload length, type
_RAW, _PICKLED = 0, 1
_MAX_FRAME_LIMIT = 0xFFFFFFFF  # what the 4-byte length can say
_READ_SIZE = 1 << 20  # one read: at most what a (resized) pipe buffer holds
_BYTES_TYPES = (bytes, bytearray, memoryview)


class Fifo:
    """A named pipe (FIFO) for unrelated processes, with a stated message format.

    ``pt.Fifo(path, format="bytes")`` creates the FIFO (``mode`` 0600) unless it
    exists, and refuses a path that is not a FIFO, a FIFO another user owns,
    and one group or others can write to (see the module docstring).
    ``open("w", timeout=)`` waits for a reader and returns a
    :class:`FifoWriter`; ``open("r")`` returns a :class:`FifoReader` at once,
    whose ``recv`` waits for messages and whose iteration stops when every
    writer has closed. The FIFO this call created is removed by
    :meth:`unlink`, by leaving a ``with`` block, or when this process exits
    (even if it is killed). A Fifo passes to other processes by pickle (its
    path and settings; the other side checks the FIFO again).

    Args:
        path: where the FIFO is (a newline in it is refused: ValueError).
        format: ``"bytes"`` (a byte stream, what ``echo``/``cat`` read and
            write), ``"lines"`` (UTF-8 text lines) or ``"pickle"`` (framed
            Python objects; only between processes you trust).
        create: create the FIFO if it does not exist (else FileNotFoundError).
        mode: the permissions of a FIFO this call creates.
        max_frame: the longest line or pickle frame, in bytes, that a reader
            accepts and a writer sends (ValueError beyond); in ``"bytes"``
            format, the most one ``recv()`` returns.
        trust_existing: accept a FIFO that another user owns, or that group or
            others may write to (and a ``mode`` that allows it). Whoever can
            write to it can feed your reader anything; with ``"pickle"``, run
            code as you.

    Raises:
        FileExistsError: the path exists and is not a FIFO (or is a symlink).
        PermissionError: the FIFO belongs to another user or group/others can
            write to it (and ``trust_existing`` is false).

    Example::

        with pt.Fifo("/tmp/jobs", format="lines") as fifo:
            for line in fifo.open("r"):  # `echo job-1 > /tmp/jobs` elsewhere
                print(line)              # job-1
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        format: str = "bytes",
        create: bool = True,
        mode: int = 0o600,
        max_frame: int = DEFAULT_MAX_FRAME,
        trust_existing: bool = False,
    ):
        self.path = os.fspath(path)
        if not isinstance(self.path, str):
            raise TypeError(f"path must be a str or os.PathLike[str], got {self.path!r}")
        if format not in FORMATS:
            raise ValueError(
                f"format must be one of {', '.join(map(repr, FORMATS))}, got {format!r}"
            )
        if (
            not isinstance(max_frame, int)
            or isinstance(max_frame, bool)
            or not 1 <= max_frame <= _MAX_FRAME_LIMIT
        ):
            raise ValueError(
                f"max_frame must be an int from 1 to {_MAX_FRAME_LIMIT}, got {max_frame!r}"
            )
        if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
            raise ValueError(f"mode must be permission bits from 0 to 0o777, got {mode!r}")
        if mode & 0o022 and not trust_existing:
            raise ValueError(
                f"mode {mode:#o} would let {_who_writes(mode)} write into the FIFO, and so "
                "into whatever reads it; use 0o600 (or 0o640/0o644), or pass "
                "trust_existing=True if you trust them"
            )
        # The guardian takes the paths it removes one per line.
        self._abspath = os.path.abspath(self.path)
        if "\n" in self._abspath:
            raise ValueError(f"a FIFO path must not contain a newline: {self._abspath!r}")
        self.format = format
        self.max_frame = max_frame
        self.trust_existing = trust_existing
        self.created = False
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            if not create:
                raise FileNotFoundError(
                    errno.ENOENT, "no FIFO at this path (create=False)", self.path
                ) from None
            try:
                os.mkfifo(self.path, mode)
            except FileExistsError:  # made by someone else meanwhile: check it below
                st = os.lstat(self.path)
            else:
                self.created = True
                _proc.guard_path(self._abspath)
                try:
                    self._set_mode(mode)
                except BaseException:
                    self.unlink()
                    raise
                return
        _check(st, self.path, trust_existing)

    def _set_mode(self, mode: int) -> None:
        """Give the FIFO just made exactly ``mode`` (the umask may have taken bits away)."""
        # Through a descriptor of the FIFO itself (O_PATH: opening it does not
        # count as a reader or writer), never through the path, which could
        # have been swapped for a symlink to another file of ours.
        fd = os.open(self.path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.geteuid():
                raise PermissionError(
                    errno.EPERM, "the FIFO was replaced while it was being created", self.path
                )
            if stat.S_IMODE(st.st_mode) != mode:
                os.chmod(f"/proc/self/fd/{fd}", mode)
        finally:
            os.close(fd)

    def open(
        self, mode: str, *, timeout: float | None = None, keep_open: bool = False
    ) -> FifoReader | FifoWriter:
        """``"r"``: a :class:`FifoReader` (at once); ``"w"``: a :class:`FifoWriter` once a reader is there.

        A reader sees the end (iteration stops) whenever no writer has the FIFO
        open; with ``keep_open=True`` it holds a write end itself, so it keeps
        serving writers that come and go (stop it with ``recv(timeout=)`` or
        ``close()``). ``timeout``: how long ``"w"`` waits for a reader
        (:class:`WaitTimeout`, a ``TimeoutError``, after it).
        """
        timeout = check_timeout(timeout)
        if mode == "r":
            return FifoReader(self, keep_open=keep_open)
        if mode == "w":
            return FifoWriter(self, timeout)
        raise ValueError(f"mode must be 'r' or 'w', got {mode!r}")

    def unlink(self) -> None:
        """Remove the FIFO (readers and writers already open keep working)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self.created:
            _proc.unguard_path(self._abspath)
            self.created = False

    def __enter__(self) -> Fifo:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.created:
            self.unlink()

    def __reduce__(self) -> Any:
        return (_fifo_attach, (self.path, self.format, self.max_frame, self.trust_existing))

    def __repr__(self) -> str:
        return f"<Fifo {self.path!r} format={self.format!r}>"


def _fifo_attach(path: str, format: str, max_frame: int, trust_existing: bool) -> Fifo:
    return Fifo(
        path, format=format, create=False, max_frame=max_frame, trust_existing=trust_existing
    )


# --------------------------------------------------------------------------- checks


def _poll(poller: select.poll, timeout: float | None) -> list[tuple[int, int]]:
    """``poller.poll`` for ``timeout`` seconds (None: no limit; a positive wait
    lasts at least a millisecond, so a short one never spins; one longer than
    poll() takes returns early, empty, and the caller waits again)."""
    if timeout is None:
        return poller.poll(None)
    return poller.poll(poll_ms(max(1, int(timeout * 1000))) if timeout > 0 else 0)


def _who_writes(mode: int) -> str:
    return " and ".join(
        who
        for who, bit in (("its group", stat.S_IWGRP), ("every user", stat.S_IWOTH))
        if mode & bit
    )


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _describe_mode(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link, which pt.Fifo does not follow: give the FIFO's own path"
    return "not a FIFO"


def _check(st: os.stat_result, path: str, trust_existing: bool) -> None:
    """Refuse what is not a FIFO, and (unless trusted) a FIFO others can write into."""
    if not stat.S_ISFIFO(st.st_mode):
        raise FileExistsError(
            errno.EEXIST,
            f"the path exists and is not a FIFO (it is {_describe_mode(st.st_mode)}); "
            "remove it or choose another path",
            path,
        )
    if trust_existing:
        return
    me = os.geteuid()
    if st.st_uid != me:
        raise PermissionError(
            errno.EPERM,
            f"the FIFO belongs to {_user(st.st_uid)}, not to you ({_user(me)}): its owner "
            "can write into it (and read from it) whatever your side expects. Remove it, "
            "or choose another path, and let pt.Fifo create it; or pass "
            "trust_existing=True if you trust that user",
            path,
        )
    if st.st_mode & 0o022:
        raise PermissionError(
            errno.EPERM,
            f"the FIFO's mode {stat.S_IMODE(st.st_mode):#o} lets {_who_writes(st.st_mode)} "
            f"write into it. Run `chmod go-w {path}` (or remove it and let pt.Fifo create "
            "it, mode 0600); or pass trust_existing=True if you trust them",
            path,
        )


def _open_checked(path: str, flags: int, trust_existing: bool) -> int:
    """Open the FIFO without following a symlink, and check what was opened (fstat)."""
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise FileExistsError(
                errno.EEXIST, f"the path is {_describe_mode(stat.S_IFLNK)}", path
            ) from None
        raise
    try:
        _check(os.fstat(fd), path, trust_existing)
    except BaseException:
        os.close(fd)
        raise
    return fd


# --------------------------------------------------------------------------- writer


class FifoWriter:
    """The writing end of a :class:`Fifo`: ``send(message)``, ``close()``.

    What ``send`` takes depends on the Fifo's format: bytes (``"bytes"``), one
    line of text (``"lines"``), any picklable object (``"pickle"``).
    """

    def __init__(self, fifo: Fifo, timeout: float | None) -> None:
        self.path = fifo.path
        self.format = fifo.format
        self.max_frame = fifo.max_frame
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                # Non-blocking: a blocking open would wait for a reader with no timeout.
                self._fd: int | None = _open_checked(self.path, os.O_WRONLY, fifo.trust_existing)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise WaitTimeout(f"no reader opened the FIFO {self.path!r} within {timeout} s")
            # pt.sleep: a cancellation point of a thread task (as every wait here).
            _cancellable_sleep(delay if deadline is None else min(delay, deadline - now))
            delay = min(delay * 2, 0.05)

    def send(self, message: Any, timeout: float | None = None) -> None:
        """Send one message (see the class docstring); wait up to ``timeout`` s for room."""
        fmt = self.format
        if fmt == "bytes":
            if not isinstance(message, _BYTES_TYPES):
                raise TypeError(
                    f"a Fifo with format='bytes' sends bytes, not {type(message).__qualname__}: "
                    "encode text (or use format='lines'); for objects, format='pickle'"
                )
            self._write(bytes(message), timeout)
        elif fmt == "lines":
            if not isinstance(message, str):
                raise TypeError(
                    f"a Fifo with format='lines' sends str, not {type(message).__qualname__}"
                )
            if "\n" in message:
                raise ValueError(
                    "a line sent through a Fifo with format='lines' must not contain a "
                    "newline (the reader would get two lines): send each line on its own"
                )
            data = message.encode("utf-8") + b"\n"
            if len(data) - 1 > self.max_frame:
                raise ValueError(
                    f"a line of {len(data) - 1} bytes is longer than max_frame ({self.max_frame})"
                )
            self._write(data, timeout)
        elif isinstance(message, _BYTES_TYPES):
            self._send_frame(_RAW, bytes(message), timeout)
        else:
            try:
                data = dumps(message)
            except Exception as exc:
                raise SerializationError(
                    f"cannot send {type(message).__qualname__} through a FIFO: {exc}"
                ) from exc
            self._send_frame(_PICKLED, data, timeout)

    def send_bytes(self, data: bytes, timeout: float | None = None) -> None:
        """Send ``data`` as raw bytes: ``send`` in ``"bytes"`` format, one raw frame in ``"pickle"``."""
        if not isinstance(data, _BYTES_TYPES):
            raise TypeError(f"send_bytes() takes bytes, not {type(data).__qualname__}")
        if self.format == "lines":
            raise TypeError("a Fifo with format='lines' sends text: use send(str)")
        if self.format == "bytes":
            self._write(bytes(data), timeout)
        else:
            self._send_frame(_RAW, bytes(data), timeout)

    def _send_frame(self, kind: int, data: bytes, timeout: float | None) -> None:
        if len(data) > self.max_frame:
            raise ValueError(
                f"a message of {len(data)} bytes is longer than max_frame ({self.max_frame}); "
                "raise max_frame on both sides, or send it in parts"
            )
        self._write(_FRAME.pack(len(data), kind) + data, timeout)

    def _write(self, data: bytes, timeout: float | None) -> None:
        fd = self._fd
        if fd is None:
            raise ChannelClosed(f"send() on a closed FIFO writer ({self.path})")
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        frame = memoryview(data)
        big = len(frame) > select.PIPE_BUF
        if big:
            # Writes up to PIPE_BUF are atomic; a bigger message must not interleave
            # with another writer's, so writers take turns.
            self._flock(fd, deadline)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            while frame:
                try:
                    n = os.write(fd, frame)
                    frame = frame[n:]
                    continue
                except BlockingIOError:
                    pass
                except BrokenPipeError as exc:
                    raise ChannelClosed(f"the reader of the FIFO {self.path!r} went away") from exc
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise WaitTimeout(f"the FIFO {self.path!r} stayed full for {timeout} s")
                wait_cancellable(lambda t: _poll(poller, t), left)
        finally:
            if big:
                fcntl.flock(fd, fcntl.LOCK_UN)

    @staticmethod
    def _flock(fd: int, deadline: float | None) -> None:
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout("another writer held the FIFO too long") from None
                _cancellable_sleep(delay)
                delay = min(delay * 2, 0.02)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> FifoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- reader


class FifoReader:
    """The reading end of a :class:`Fifo`: ``recv(timeout=None)``, iteration, ``close()``.

    ``recv`` returns ``bytes`` (format ``"bytes"``: what is there now), ``str``
    (``"lines"``: one line, without its newline) or the object sent
    (``"pickle"``). A malformed message raises ValueError, and its bytes are
    dropped with it. A line reader goes on at the next line. A pickle reader
    cannot tell where the next frame starts: until every writer has closed
    (the end of that stream), each ``recv`` drops what came and raises
    ValueError again, so nothing is read out of step; reopen it to go on.
    """

    def __init__(self, fifo: Fifo, *, keep_open: bool = False) -> None:
        self.path = fifo.path
        self.format = fifo.format
        self.max_frame = fifo.max_frame
        self._fd: int | None = _open_checked(self.path, os.O_RDONLY, fifo.trust_existing)
        self._keep: int | None = None
        if keep_open:
            try:
                keep = _open_checked(self.path, os.O_WRONLY, fifo.trust_existing)
                a, b = os.fstat(self._fd), os.fstat(keep)
                self._keep = keep
                if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
                    raise PermissionError(
                        errno.EPERM, "the FIFO was replaced while it was being opened", self.path
                    )
            except BaseException:
                self.close()
                raise
        self._buf = bytearray()
        self._scanned = 0  # "lines": bytes of _buf known to hold no newline
        self._skip_line = False  # "lines": dropping the rest of a line too long
        self._out_of_step: str | None = None  # "pickle": why frames cannot be found
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        fmt = self.format
        self._read_size = min(self.max_frame, _READ_SIZE) if fmt == "bytes" else _READ_SIZE

    def recv(self, timeout: float | None = None) -> Any:
        """The next message. :class:`WaitTimeout` after ``timeout`` s; ``EOFError`` once
        every writer closed (after at least one had opened) and nothing is left;
        ValueError for a malformed one (see the module docstring)."""
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            msg = self._parse()
            if msg is not _NOTHING:
                return msg
            fd = self._fd
            if fd is None:
                raise ChannelClosed("recv() on a closed FIFO reader")
            if self._out_of_step is not None:
                data = self._drop_until_the_end(fd)
            else:
                try:
                    data = os.read(fd, self._read_size)
                except BlockingIOError:
                    data = None
            if data == b"":
                self._skip_line = False  # the stream ended: the next one starts afresh
                if self._buf:
                    self._truncated()
                # EOF now, or nobody opened it for writing yet (Linux: poll then waits).
                if not self._wait(deadline, timeout, eof_ok=True):
                    raise EOFError(f"every writer of the FIFO {self.path!r} closed it")
                continue
            if data:
                if self.format == "bytes":
                    return data
                self._buf += data
                continue
            self._wait(deadline, timeout, eof_ok=False)

    def _wait(self, deadline: float | None, timeout: float | None, *, eof_ok: bool) -> bool:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise WaitTimeout(f"no message on the FIFO {self.path!r} within {timeout} s")
        events = wait_cancellable(lambda t: _poll(self._poll, t), left)
        if not events:
            if deadline is not None and deadline > time.monotonic():
                return True  # a wait longer than poll() takes: the caller reads and comes back
            raise WaitTimeout(f"no message on the FIFO {self.path!r} within {timeout} s")
        hangup = all(ev & select.POLLHUP and not ev & select.POLLIN for _, ev in events)
        return not (eof_ok and hangup)

    def _parse(self) -> Any:
        if self.format == "lines":
            return self._parse_line()
        if self.format == "pickle":
            return self._parse_frame()
        return _NOTHING

    def _parse_line(self) -> Any:
        buf = self._buf
        end = buf.find(b"\n", self._scanned)
        if self._skip_line:  # the rest of a line already reported as too long
            if end < 0:
                buf.clear()
                return _NOTHING
            del buf[: end + 1]
            self._skip_line = False
            end = buf.find(b"\n")
        if end < 0:
            self._scanned = len(buf)
            if len(buf) > self.max_frame:
                self._skip_line = True
                self._bad(f"a line longer than max_frame ({self.max_frame} bytes) came")
            return _NOTHING
        line = bytes(buf[:end])
        del buf[: end + 1]
        self._scanned = 0
        if end > self.max_frame:
            raise ValueError(
                f"a line of {end} bytes came through the FIFO {self.path!r}, longer than "
                f"max_frame ({self.max_frame}); it was dropped"
            )
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"a line from the FIFO {self.path!r} is not UTF-8 text ({exc}): "
                f"{line[:60]!r}; it was dropped (read binary data with format='bytes')"
            ) from None

    def _parse_frame(self) -> Any:
        buf = self._buf
        if len(buf) < _FRAME.size:
            return _NOTHING
        n, kind = _FRAME.unpack_from(buf)
        if n > self.max_frame or kind not in (_RAW, _PICKLED):
            what = (
                f"announces {n} bytes, more than max_frame ({self.max_frame})"
                if n > self.max_frame
                else f"has type {kind}, neither 0 (bytes) nor 1 (pickle)"
            )
            self._out_of_step = f"a frame header that {what}"
            self._bad(
                f"a frame header {what}: the writer does not use pt.Fifo's pickle framing "
                "(a shell's `echo` writes a byte stream: read it with format='bytes' or "
                "'lines')"
            )
        end = _FRAME.size + n
        if len(buf) < end:
            return _NOTHING
        data = bytes(buf[_FRAME.size : end])
        del buf[:end]
        if kind == _RAW:
            return data
        try:
            return loads(data)
        except Exception as exc:
            raise SerializationError(
                f"a message from the FIFO {self.path!r} could not be unpickled: {exc}"
            ) from exc

    def _drop_until_the_end(self, fd: int) -> bytes:
        """Out of step: drop what the writers send until they all close (b"", and back in step)."""
        while True:
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                break
            if not data:
                self._out_of_step = None
                return data
        raise ValueError(
            f"the FIFO {self.path!r} is out of step since {self._out_of_step}: where its next "
            "frame starts is unknown, so what came was dropped; this goes on until every "
            "writer has closed it (or open a new reader)"
        )

    def _bad(self, what: str) -> None:
        """Raise ValueError for malformed input, dropping what the buffer holds."""
        head = bytes(self._buf[:40])
        self._buf.clear()
        self._scanned = 0
        raise ValueError(f"the FIFO {self.path!r}: {what}; dropped what came (it began {head!r})")

    def _truncated(self) -> None:
        if self.format == "lines":
            self._bad("the stream ended inside a line (every line must end with a newline)")
        n = _FRAME.unpack_from(self._buf)[0] if len(self._buf) >= _FRAME.size else None
        self._bad(
            "the stream ended inside a frame "
            + (f"({len(self._buf) - _FRAME.size} of {n} bytes came)" if n is not None else "")
            + ": a writer died half-way, or does not use pt.Fifo's pickle framing"
        )

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                yield self.recv()
            except EOFError:
                return

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        keep, self._keep = self._keep, None
        if keep is not None:
            os.close(keep)

    def __enter__(self) -> FifoReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_NOTHING: Any = object()
