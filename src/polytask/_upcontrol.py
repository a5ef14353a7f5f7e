"""The control socket of ``polytask up``: the server (in up's process) and the client (``ctl``).

::

    polytask ctl ── connect ──> FOLDER/.polytask.sock (0600; FOLDER: the Procfile's folder)
                                  │ accept thread (one per up)
                                  └─> a thread per connection: lines ─> _control.parse_request
                                        ─> Supervisor.status / start_program / stop_program /
                                           restart_program / wait_ready / _read_log: each waits
                                           with a timeout while the Supervisor's loop thread acts
                                           (its command queue); the loop never waits on a client
                                        <── _control.encode(reply) lines

The socket is claimed without a window where another user could reach it or
two ``up`` could both think they own it: it is bound in a fresh 0700 folder,
made 0600, then hard-linked to its name (``link`` fails if the name exists).
An existing socket that accepts a connection belongs to a live ``up``
(:class:`ControlBusy`); one that refuses is left by an ``up`` that was
SIGKILLed and is taken over. Paths go through ``/proc/self/fd/N/`` of the
folder, so a folder deeper than ``sun_path``'s 108 bytes works too.
"""

from __future__ import annotations

import os
import secrets
import select
import socket
import stat
import threading
import time
from collections.abc import Iterator
from typing import Any, Final

from ._control import (
    MAX_REPLY,
    MAX_REQUEST,
    SOCKET_NAME,
    ControlProtocolError,
    LineBuffer,
    Request,
    encode,
    log_message,
    parse_reply,
    parse_request,
    reply,
)
from ._core.errors import PolytaskError, TaskTimeout
from ._supervisor import ProcessStatus, Supervisor

__all__ = ["ControlBusy", "ControlError", "ControlServer", "request", "socket_path"]

#: Seconds a connection may stay silent before the server drops it (a follower is
#: not silent: it waits for lines the server sends).
_IDLE: Final = 60.0
#: The most a send to a client may take (a client that stopped reading is dropped).
_SEND: Final = 10.0
#: While following, a tick after this much silence (the client's read timeout is longer).
_TICK: Final = 5.0
FOLLOW_READ_TIMEOUT: Final = 30.0
#: Connections served at once; more are refused with an error reply.
_MAX_CONNECTIONS: Final = 32
#: The longest a socket timeout can be (Python's limit is near 292 years in ns):
#: a longer ``--timeout`` waits this long, for ever in practice.
_LONGEST: Final = 1e9
#: The server's bound on an operation when the request gives none.
DEFAULT_TIMEOUT: Final = 60.0


class ControlError(PolytaskError):
    """The control socket cannot be claimed or reached (``polytask up`` / ``polytask ctl``)."""


class ControlBusy(ControlError):
    """Another ``polytask up`` is running in the folder (its socket answers)."""


def socket_path(folder: str, name: str = SOCKET_NAME) -> str:
    """Where the control socket ``name`` (see :func:`socket_name`) of an ``up`` in
    ``folder`` lives."""
    return os.path.join(folder, name)


def _open_folder(folder: str) -> int:
    return os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _via(dirfd: int, name: str) -> str:
    # A short path whatever the folder's length (sun_path holds 108 bytes).
    return f"/proc/self/fd/{dirfd}/{name}"


def _probe(dirfd: int, folder: str, name: str) -> os.stat_result | None:
    """The existing socket's stat if it is stale (nobody listens); None if it vanished.
    Raises ControlBusy when a live ``up`` answers, ControlError for anything else there."""
    path = socket_path(folder, name)
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"{path} exists and is not a socket: move it away")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(_via(dirfd, name))
        except ConnectionRefusedError:
            return st
        except FileNotFoundError:
            return None
        except PermissionError:
            raise ControlBusy(
                f"{path} belongs to another user's polytask up (permission denied)"
            ) from None
        except OSError:
            pass  # a full backlog times out: someone is listening
    raise ControlBusy(
        f"another polytask up is running in {folder} (its control socket {path} answers); "
        "stop it first, or control it with 'polytask ctl'"
    )


class ControlServer:
    """Serves ``polytask ctl`` requests for ``sup`` on ``FOLDER/.polytask.sock``.

    :meth:`claim` takes the socket (before the programs start, so that a second
    ``up`` is refused before it starts anything); :meth:`start` serves;
    :meth:`close` stops serving and removes the socket.
    """

    def __init__(self, sup: Supervisor, folder: str, name: str = SOCKET_NAME) -> None:
        self.sup = sup
        self.folder = os.path.abspath(folder)
        self.name = name
        self.path = socket_path(self.folder, name)
        self._dirfd = -1
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conn_threads: list[threading.Thread] = []
        self._conn_lock = threading.Lock()

    # ------------------------------------------------------------------ lifetime

    def claim(self) -> ControlServer:
        """Create the socket (0600), or take over a stale one; ControlBusy if an ``up``
        answers there, ControlError or OSError if it cannot be made."""
        self._dirfd = _open_folder(self.folder)
        try:
            self._sock = self._bind()
        except BaseException:
            os.close(self._dirfd)
            self._dirfd = -1
            raise
        return self

    def _bind(self) -> socket.socket:
        private = f"{self.name}.{secrets.token_hex(6)}"
        os.mkdir(private, 0o700, dir_fd=self._dirfd)
        tmpfd = os.open(private, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._dirfd)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(_via(tmpfd, "s"))
            os.chmod("s", 0o600, dir_fd=tmpfd)
            sock.listen(16)
            for _ in range(5):
                try:
                    os.link("s", self.name, src_dir_fd=tmpfd, dst_dir_fd=self._dirfd)
                    break
                except FileExistsError:
                    stale = _probe(self._dirfd, self.folder, self.name)
                    if stale is not None:
                        self._unlink_if(stale)
            else:
                raise ControlError(f"cannot create {self.path}: it keeps coming back")
            st = os.stat("s", dir_fd=tmpfd)
            self._inode = (st.st_dev, st.st_ino)
            sock.settimeout(0.25)  # accept() looks at the closing flag this often
            return sock
        except BaseException:
            sock.close()
            raise
        finally:
            try:
                os.unlink("s", dir_fd=tmpfd)
            except OSError:
                pass
            os.close(tmpfd)
            try:
                os.rmdir(private, dir_fd=self._dirfd)
            except OSError:
                pass

    def _unlink_if(self, st: os.stat_result) -> None:
        """Remove the socket's name if it is still the file ``st`` describes."""
        try:
            now = os.stat(self.name, dir_fd=self._dirfd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(self.name, dir_fd=self._dirfd)
        except FileNotFoundError:
            pass

    def start(self) -> None:
        assert self._sock is not None, "claim() first"
        self._thread = threading.Thread(
            target=self._accept_loop, name="polytask-control", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving, end every connection, remove the socket (if it is still ours)."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(5.0)
        with self._conn_lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            threads = list(self._conn_threads)
        for t in threads:
            t.join(2.0)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._dirfd >= 0:
            try:
                st = os.stat(self.name, dir_fd=self._dirfd, follow_symlinks=False)
                if (st.st_dev, st.st_ino) == self._inode:
                    os.unlink(self.name, dir_fd=self._dirfd)
            except OSError:
                pass
            os.close(self._dirfd)
            self._dirfd = -1

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ serving

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closing.is_set():
                    return
                time.sleep(0.1)  # out of descriptors, say: try again
                continue
            with self._conn_lock:
                self._conn_threads = [t for t in self._conn_threads if t.is_alive()]
                if len(self._conn_threads) >= _MAX_CONNECTIONS:
                    busy = reply(False, error="too many polytask ctl connections", kind="busy")
                    self._send_quietly(conn, busy)
                    conn.close()
                    continue
                self._conns.add(conn)
                t = threading.Thread(
                    target=self._serve, args=(conn,), name="polytask-control-conn", daemon=True
                )
                self._conn_threads.append(t)
            t.start()

    @staticmethod
    def _send_quietly(conn: socket.socket, msg: dict[str, Any]) -> None:
        try:
            conn.settimeout(_SEND)
            conn.sendall(encode(msg))
        except OSError:
            pass

    def _serve(self, conn: socket.socket) -> None:
        buf = LineBuffer(MAX_REQUEST)
        # A request must arrive whole within _IDLE of its first byte: a client that
        # trickles bytes would otherwise hold one of the _MAX_CONNECTIONS for ever.
        begun: float | None = None
        try:
            while not self._closing.is_set():
                left = _IDLE if begun is None else begun + _IDLE - time.monotonic()
                try:
                    if left <= 0:
                        raise TimeoutError
                    conn.settimeout(left)
                    data = conn.recv(65536)
                except TimeoutError:
                    if begun is not None:
                        why = f"the request did not arrive whole within {_IDLE:g}s"
                        self._send_quietly(conn, reply(False, error=why, kind="input"))
                    return
                if not data:
                    if buf.pending:  # `printf '{...}' | socat`: it still reads the answer
                        why = "a request ends with a newline: this one was cut off"
                        self._send_quietly(conn, reply(False, error=why, kind="input"))
                    return
                try:
                    lines = buf.feed(data)
                except ControlProtocolError as exc:
                    self._send_quietly(conn, reply(False, error=str(exc), kind="input"))
                    return
                for line in lines:
                    if not self._handle(conn, line):
                        return
                # The clock of an unfinished request starts once the ones before it
                # were answered (a wait-ready may take a while).
                if not buf.pending:
                    begun = None
                elif lines or begun is None:
                    begun = time.monotonic()
        except OSError:
            return  # the client left, or was silent too long
        finally:
            with self._conn_lock:
                self._conns.discard(conn)
            conn.close()

    def _handle(self, conn: socket.socket, line: bytes) -> bool:
        """Answer one request; False when the connection is done."""
        conn.settimeout(_SEND)
        try:
            req = parse_request(line)
        except ControlProtocolError as exc:
            conn.sendall(encode(reply(False, error=str(exc), kind="input")))
            return True
        sup = self.sup
        timeout = DEFAULT_TIMEOUT if req.timeout is None else req.timeout
        try:
            if req.op == "status":
                out = reply(programs=[_status_json(s) for s in sup.status()])
            elif req.op == "logs":
                return self._logs(conn, req)
            elif req.op == "wait-ready":
                assert req.name is not None
                if sup.wait_ready(req.name, timeout=timeout):
                    out = reply(programs=_statuses_of(sup, req.name))
                else:
                    states = ", ".join(
                        f"{s['name']} {s['state']}"
                        + ("" if s["ready"] is None else ", ready" if s["ready"] else ", not ready")
                        for s in _statuses_of(sup, req.name)
                    )
                    out = reply(
                        False,
                        error=f"{req.name} not ready within {timeout:g}s ({states})",
                        kind="timeout",
                    )
            else:
                assert req.name is not None
                act = {
                    "start": sup.start_program,
                    "stop": sup.stop_program,
                    "restart": sup.restart_program,
                }[req.op]
                out = reply(programs=[_status_json(s) for s in act(req.name, timeout=timeout)])
        except ValueError as exc:  # an unknown name: the message lists the known ones
            out = reply(False, error=str(exc), kind="input")
        except TaskTimeout as exc:
            out = reply(False, error=str(exc), kind="timeout")
        except (PolytaskError, RuntimeError) as exc:
            out = reply(False, error=str(exc), kind="state")
        conn.sendall(encode(out))
        return True

    def _logs(self, conn: socket.socket, req: Request) -> bool:
        sup = self.sup
        try:
            names = None if req.name is None else sup._resolve(req.name)
        except ValueError as exc:
            conn.sendall(encode(reply(False, error=str(exc), kind="input")))
            return True
        lines, seq, over = sup._read_log(names, after=None, lines=req.lines, wait=0.0)
        conn.sendall(b"".join(encode(log_message(line)) for line in lines))
        if not req.follow:
            conn.sendall(encode(reply(lines=len(lines))))
            return True
        quiet_since = time.monotonic()
        while True:
            if over:
                conn.sendall(encode(reply(end="polytask up ended")))
                return False
            if self._closing.is_set():
                conn.sendall(encode(reply(end="polytask up is ending")))
                return False
            if _hung_up(conn):
                return False
            lines, seq, over = sup._read_log(names, after=seq, lines=None, wait=1.0)
            if lines:
                conn.sendall(b"".join(encode(log_message(line)) for line in lines))
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= _TICK:
                conn.sendall(encode({"tick": True}))
                quiet_since = time.monotonic()


def _hung_up(conn: socket.socket) -> bool:
    """The client closed the connection. Not when it only shut its sending side (socat
    does once its input ends) or sent more: it may still read. A Unix socket reports
    POLLHUP once both sides are shut, which a client's close does."""
    try:
        poller = select.poll()  # not select.select: a descriptor may be >= 1024
        poller.register(conn, 0)  # POLLHUP and POLLERR come whatever is asked
        return any(
            ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev in poller.poll(0)
        )
    except OSError:
        return True


def _connect(sock: socket.socket, address: str, wait: float) -> None:
    """``sock.connect``, waiting up to ``wait`` seconds while up's backlog is full (a burst
    of ctl): with a timeout set, a Unix socket says EAGAIN at once there, where TCP waits."""
    deadline = time.monotonic() + wait
    pause = 0.005
    while True:
        try:
            sock.connect(address)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError from None
            time.sleep(pause)
            pause = min(2 * pause, 0.1)


def _check_socket(dirfd: int, folder: str, name: str) -> None:
    """ControlError if the socket's name is something else (a file, a FIFO, a symlink):
    ``up`` refuses to start on one, so ctl does not connect through it either; or if
    another user owns it (in a folder others can write, /tmp say, anyone can put a
    socket there that answers like an ``up``)."""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except OSError:
        return  # connect() says what is wrong
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(
            f"no polytask up is running in {folder}: {socket_path(folder, name)} is not a socket "
            "(polytask up makes nothing else there); move it away"
        )
    if st.st_uid != os.geteuid():
        raise ControlError(
            f"{socket_path(folder, name)} belongs to user id {st.st_uid}, not to you: it is not "
            "your polytask up; run polytask ctl as its user"
        )


def _status_json(s: ProcessStatus) -> dict[str, Any]:
    return {
        "name": s.name,
        "kind": s.kind,
        "state": s.state,
        "pid": s.pid,
        "port": s.port,
        "restarts": s.restarts,
        "exitcode": s.exitcode,
        "uptime": round(s.uptime, 3),
        "ready": s.ready,
    }


def _statuses_of(sup: Supervisor, name: str) -> list[dict[str, Any]]:
    names = set(sup._resolve(name))
    return [_status_json(s) for s in sup.status() if s.name in names]


# =========================================================================== the client


def request(
    folder: str, req: Request, *, timeout: float, name: str = SOCKET_NAME
) -> Iterator[dict[str, Any]]:
    """Send ``req`` to the ``up`` running in ``folder``; yield every message of the answer
    (``log`` lines, then the reply). Each read waits at most ``timeout`` seconds.

    Raises ControlError when no ``up`` runs there or it stops answering.
    """
    folder = os.path.abspath(folder)
    path = socket_path(folder, name)
    try:
        dirfd = _open_folder(folder)
    except OSError as exc:
        raise ControlError(f"cannot open the folder {folder}: {exc.strerror or exc}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(min(timeout, 5.0))
        try:
            _check_socket(dirfd, folder, name)
            _connect(sock, _via(dirfd, name), min(timeout, 5.0))
        except FileNotFoundError:
            raise ControlError(
                f"no polytask up is running in {folder} (no {name} there); "
                "start one with 'polytask up' (or name its Procfile with -f)"
            ) from None
        except ConnectionRefusedError:
            raise ControlError(
                f"no polytask up is running in {folder}: {path} was left by one that was "
                "killed (the next 'polytask up' there removes it)"
            ) from None
        except PermissionError:
            raise ControlError(
                f"cannot connect to {path}: permission denied (another user's polytask up?)"
            ) from None
        except TimeoutError:
            raise ControlError(f"the polytask up in {folder} does not accept connections") from None
        except OSError as exc:
            raise ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        finally:
            os.close(dirfd)
        sock.settimeout(min(timeout, _LONGEST))
        unsent: OSError | None = None
        try:
            sock.sendall(encode(req.to_json()))
        except OSError as exc:
            # Closed at once, it may have said why first (too many connections): read it.
            unsent = exc
        buf = LineBuffer(MAX_REPLY)
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise ControlError(f"polytask up did not answer within {timeout:g}s") from None
            except OSError as exc:
                raise ControlError(f"polytask up closed the connection: {exc}") from None
            if not data:
                raise ControlError(
                    "polytask up closed the connection "
                    + (f"({unsent})" if unsent else "before answering")
                )
            for line in buf.feed(data):
                msg = parse_reply(line)
                # Only logs has lines before its reply, ticks only when following: a
                # server that sends them for ever would otherwise hang `ctl status`.
                if "ok" not in msg and not (req.op == "logs" and (req.follow or "log" in msg)):
                    what = "a log line" if "log" in msg else "a tick"
                    raise ControlProtocolError(f"{what} is no answer to {req.op}")
                yield msg
                if "ok" in msg:
                    return
    finally:
        sock.close()
