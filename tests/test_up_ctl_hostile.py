"""``polytask up``'s control socket against hostile or careless clients and servers.

Real ``up`` processes and real sockets: requests no parser should choke on
(nested too deeply, numbers too long), servers that answer garbage to
``polytask ctl``, clients that trickle a request forever.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import polytask as pt
from helpers import wait_until
from polytask import _upcontrol
from polytask._control import (
    MAX_REQUEST,
    SOCKET_NAME,
    ControlProtocolError,
    encode,
    parse_reply,
    parse_request,
)
from test_up_ctl import PY, Up, env

# =========================================================================== the protocol, pure

#: Lines json.loads refuses with something else than JSONDecodeError.
NESTED = b"[" * 50_000
LONG_INT = b'{"v": 1, "op": "logs", "lines": ' + b"1" * 5000 + b"}"


def test_a_line_the_json_parser_chokes_on_is_a_protocol_error():
    assert len(NESTED) < MAX_REQUEST and len(LONG_INT) < MAX_REQUEST
    for parse in (parse_request, parse_reply):
        with pytest.raises(ControlProtocolError, match="nested too deeply"):
            parse(NESTED)
        with pytest.raises(ControlProtocolError, match="a number with too many digits"):
            parse(LONG_INT)


def test_only_utf8_and_version_1_not_true():
    utf16 = '{"v": 1, "op": "status"}'.encode("utf-16")
    with pytest.raises(ControlProtocolError, match="not a JSON line"):
        parse_request(utf16)  # json.loads(bytes) alone would take it
    with pytest.raises(ControlProtocolError, match="protocol version True"):
        parse_request(b'{"v": true, "op": "status"}')


def test_a_reply_with_programs_that_are_not_objects_is_refused():
    for line in (b'{"ok": true, "programs": 5}', b'{"ok": true, "programs": [1]}'):
        with pytest.raises(ControlProtocolError, match="programs must be a list of objects"):
            parse_reply(line)
    assert parse_reply(b'{"ok": true, "programs": []}')["programs"] == []


# =========================================================================== a real up


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    (tmp_path / "Procfile").write_text("worker: while true; do echo tick; sleep 0.2; done\n")
    u = Up(tmp_path)
    try:
        u.wait_serving()
        yield u
        assert u.finish(signal.SIGINT) == 130
        assert "Traceback" not in u.err_path.read_text()
    finally:
        u.finish(signal.SIGKILL)


def connect(folder: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(folder / SOCKET_NAME))  # blocking: waits while up's backlog is full
    s.settimeout(30)
    return s


def read_line(s: socket.socket, buf: bytearray) -> dict:
    while b"\n" not in buf:
        data = s.recv(65536)
        assert data, "the server closed the connection without a reply"
        buf += data
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return json.loads(line)


def test_requests_the_parser_chokes_on_get_an_error_reply_and_the_connection_lives(up: Up):
    with connect(up.folder) as s:
        buf = bytearray()
        for line in (NESTED, LONG_INT, b'{"v": true, "op": "status"}'):
            s.sendall(line + b"\n")
            msg = read_line(s, buf)
            assert msg["ok"] is False and msg["kind"] == "input", msg
        s.sendall(encode({"v": 1, "op": "status"}))
        assert read_line(s, buf)["programs"][0]["name"] == "worker.1"
    assert "Traceback" not in up.err_path.read_text()


# =========================================================================== ctl against a bad server


def serve_once(folder: Path, answer: bytes, *, endless: bool = False) -> threading.Thread:
    """A fake up in ``folder``: reads one request, sends ``answer`` (``endless``: again
    and again until the client leaves), closes."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(folder / SOCKET_NAME))
    srv.listen()

    def serve() -> None:
        with srv:
            srv.settimeout(60)
            conn, _ = srv.accept()
            with conn:
                conn.recv(65536)
                try:
                    conn.sendall(answer)
                    while endless:
                        conn.sendall(answer)
                except OSError:
                    pass  # ctl gave up reading: what it printed is checked
        os.unlink(folder / SOCKET_NAME)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize(
    "answer",
    [
        NESTED + b"\n",
        LONG_INT + b"\n",
        b'{"ok": true, "programs": 5}\n',
        b'{"ok": true, "programs": [1]}\n',
    ],
    ids=["nested", "long-int", "programs-int", "program-int"],
)
@pytest.mark.parametrize("command", ["status", "restart"])
def test_ctl_reports_a_garbage_answer_without_a_traceback(
    tmp_path: Path, answer: bytes, command: str
):
    t = serve_once(tmp_path, answer)
    args = ["status"] if command == "status" else ["restart", "web"]
    r = subprocess.run(
        [PY, "-m", "polytask.cli", "ctl", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env(),
        timeout=60,
    )
    t.join(60)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("polytask ctl: error: ") and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("answer", "args", "error"),
    [
        (b'{"tick": true}\n', ["status", "--timeout", "1"], "a tick is no answer to status"),
        (
            b'{"log": "w.1", "time": 1, "line": "x"}\n',
            ["stop", "w"],
            "a log line is no answer to stop",
        ),
        (b'{"tick": true}\n', ["logs", "-n", "1"], "a tick is no answer to logs"),
    ],
    ids=["ticks-to-status", "logs-to-stop", "ticks-to-logs-without-f"],
)
def test_ctl_is_not_kept_waiting_by_endless_messages_that_are_no_answer(
    tmp_path: Path, answer: bytes, args: list[str], error: str
):
    t = serve_once(tmp_path, answer, endless=True)
    r = subprocess.run(
        [PY, "-m", "polytask.cli", "ctl", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env(),
        timeout=30,
    )
    t.join(60)
    assert r.returncode == 1 and f"polytask ctl: error: {error}" in r.stderr, r.stderr


def test_ctl_prints_odd_fields_of_a_server_without_a_traceback(tmp_path: Path):
    t = serve_once(tmp_path, b'{"ok": true, "programs": [{"name": "a", "uptime": "x"}]}\n')
    r = subprocess.run(
        [PY, "-m", "polytask.cli", "ctl", "status"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env(),
        timeout=60,
    )
    t.join(60)
    assert r.returncode == 0 and r.stdout.split("\n")[1].split() == [
        "a",
        "?",
        "-",
        "0.0s",
        "0",
        "-",
    ]
    # A surrogate no decoder makes (garbage): the line's surrogates are printed as '?'.
    t = serve_once(
        tmp_path, b'{"log": "w.1", "time": 1, "line": "a\\ud800b\\udcff"}\n{"ok": true}\n'
    )
    r2 = subprocess.run(
        [PY, "-m", "polytask.cli", "ctl", "logs"],
        cwd=tmp_path,
        capture_output=True,
        env=env(),
        timeout=60,
    )
    t.join(60)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout == b"w.1 | a?b?\n"


def test_ctl_with_a_timeout_too_long_for_a_socket_waits_instead_of_crashing(tmp_path: Path):
    t = serve_once(tmp_path, b'{"ok": true, "programs": []}\n')
    r = subprocess.run(
        [PY, "-m", "polytask.cli", "ctl", "status", "--timeout", "1e300"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env(),
        timeout=60,
    )
    t.join(60)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


# =========================================================================== slow clients


def test_a_request_trickled_byte_by_byte_is_cut_off(tmp_path: Path, monkeypatch):
    """A client sending a byte now and then, never a whole line, would hold one of
    the 32 connections for ever: a request must arrive whole within _IDLE."""
    monkeypatch.setattr(_upcontrol, "_IDLE", 1.0)
    sup = pt.Supervisor({"sleeper": "sleep 300"}, output=io.StringIO())
    with sup, _upcontrol.ControlServer(sup, str(tmp_path)).claim() as server:
        server.start()
        with connect(tmp_path) as s:
            s.sendall(b'{"v": 1, "op": "status"}\n')  # a whole request: answered
            buf = bytearray()
            assert read_line(s, buf)["ok"] is True
            trickle = iter(b'{"v": 1, "op": "status"' + b" " * 10_000)

            def answered() -> bool:
                if select.select([s], [], [], 0.2)[0]:
                    return True
                s.send(bytes([next(trickle)]))  # well within _IDLE of the last byte
                return False

            wait_until(answered, timeout=30, what="the server to cut the trickle off")
            msg = read_line(s, buf)
            assert msg["ok"] is False and msg["kind"] == "input"
            assert msg["error"] == "the request did not arrive whole within 1s"
            assert s.recv(1) == b""  # and closed
        # Silence between requests is not a trickle: the connection is closed without
        # a word once _IDLE passed (as before).
        with connect(tmp_path) as s:
            assert s.recv(1) == b""


# =========================================================================== the filesystem


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_ctl_does_not_connect_through_something_up_would_not_make(tmp_path: Path, kind: str):
    """A file is not a socket left by a killed up (up would not remove it); a symlink
    to someone's socket is not followed, as up does not follow one."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with srv:
        srv.bind(str(elsewhere / "their.sock"))
        srv.listen()
        if kind == "file":
            (tmp_path / SOCKET_NAME).write_text("not a socket")
        else:
            (tmp_path / SOCKET_NAME).symlink_to(elsewhere / "their.sock")
        r = subprocess.run(
            [PY, "-m", "polytask.cli", "ctl", "status", "--timeout", "1"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env(),
            timeout=60,
        )
        assert r.returncode == 1
        assert "is not a socket (polytask up makes nothing else there)" in r.stderr, r.stderr
        srv.setblocking(False)
        with pytest.raises(BlockingIOError):
            srv.accept()  # nobody connected to it


@pytest.mark.skipif(os.geteuid() != 0, reason="gives a socket to another user: needs root")
def test_ctl_does_not_talk_to_another_users_socket(tmp_path: Path):
    """In a folder others can write (/tmp), anyone can put a socket that answers like
    up (a world-writable one: connect works): its answers would be believed."""
    t = serve_once(tmp_path, b'{"ok": true, "programs": []}\n')
    os.chown(tmp_path / SOCKET_NAME, 65534, 65534, follow_symlinks=False)
    os.chmod(tmp_path / SOCKET_NAME, 0o777)
    r = subprocess.run(
        [PY, "-m", "polytask.cli", "ctl", "status", "--timeout", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env(),
        timeout=60,
    )
    assert r.returncode == 1
    assert "belongs to user id 65534, not to you" in r.stderr, r.stderr
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # let the fake end
        s.connect(str(tmp_path / SOCKET_NAME))
        s.sendall(b"\n")
        s.recv(100)
    t.join(60)


# =========================================================================== half-closed clients


def test_a_client_that_shut_its_sending_side_still_gets_its_answer(up: Up):
    """As `printf ... | socat - UNIX-CONNECT:.polytask.sock` does once its input ends."""
    with connect(up.folder) as s:  # the last request without its newline: cut off
        s.sendall(b'{"v": 1, "op": "status"}\n{"v": 1, "op": "status"}')
        s.shutdown(socket.SHUT_WR)
        buf = bytearray()
        assert read_line(s, buf)["ok"] is True
        msg = read_line(s, buf)
        assert msg["ok"] is False and msg["kind"] == "input"
        assert msg["error"] == "a request ends with a newline: this one was cut off"


def test_a_follower_that_shut_its_sending_side_still_gets_lines(up: Up):
    """Only a client's close ends a follow, not a shutdown of its sending side."""
    with connect(up.folder) as s:
        s.sendall(encode({"v": 1, "op": "logs", "name": "worker", "lines": 0, "follow": True}))
        s.shutdown(socket.SHUT_WR)
        buf = bytearray()
        for _ in range(2):
            msg = read_line(s, buf)
            assert msg["log"] == "worker.1" and msg["line"] == "tick", msg


# =========================================================================== resources


def counts(pid: int) -> tuple[int, int]:
    """The descriptors and threads of process ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))


def test_connections_over_the_limit_and_storms_leave_nothing_behind(up: Up):
    """32 followers (that never read), more connections than that, a connect/close
    storm: busy replies, the run goes on, and up's threads and descriptors come
    back to what they were."""
    pid = up.proc.pid
    base = counts(pid)  # a thread of wait_serving's ctl may still end: a bound, not exact
    followers = []
    try:
        for _ in range(32):
            s = connect(up.folder)
            s.sendall(encode({"v": 1, "op": "logs", "lines": 0, "follow": True}))
            followers.append(s)

        def refused() -> bool:
            with connect(up.folder) as s:  # answered and closed without a request
                msg = read_line(s, bytearray())
                return msg["ok"] is False and msg.get("kind") == "busy"

        wait_until(refused, what="the 33rd connection refused")
        for _ in range(8):
            assert refused()
        # ctl sends its request after up closed: it still shows why (not EPIPE).
        r = up.ctl("status")
        assert r.returncode == 1, r.stderr
        assert "error: too many polytask ctl connections" in r.stderr, r.stderr
        fds, threads = counts(pid)
        assert fds >= base[0] + 31 and threads >= base[1] + 31  # base: maybe one more
    finally:
        for s in followers:
            s.close()
    for _ in range(300):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(up.folder / SOCKET_NAME))
            except BlockingIOError:
                pass  # the backlog is full: up accepts more slowly than this
    wait_until(
        lambda: all(n <= b for n, b in zip(counts(pid), base, strict=True)),
        what=f"up's descriptors and threads back to {base}",
    )
    r = up.ctl("status")
    assert r.returncode == 0 and "worker.1" in r.stdout


def has_a_socket(pid: int) -> bool:
    try:
        return any(
            os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
            for fd in os.listdir(f"/proc/{pid}/fd")
        )
    except OSError:
        return False


def test_ctl_waits_while_the_backlog_is_full(tmp_path: Path):
    """Many ctl at once fill up's backlog (16); with a timeout set, connect() on a Unix
    socket fails at once (EAGAIN) there: ctl must wait for room, as it would on TCP."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(tmp_path / SOCKET_NAME))
    srv.listen(1)
    fillers = []
    try:
        while True:  # fill the backlog: nobody accepts yet
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.setblocking(False)
            try:
                c.connect(str(tmp_path / SOCKET_NAME))
            except BlockingIOError:
                c.close()
                break
            fillers.append(c)
        ctl = subprocess.Popen(
            [PY, "-m", "polytask.cli", "ctl", "status"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
        try:
            # Before the fix ctl gives up at its first connect; after it, it keeps trying.
            wait_until(lambda: ctl.poll() is not None or has_a_socket(ctl.pid), what="ctl")
            srv.settimeout(30)
            for _ in fillers:  # room in the backlog: ctl's connection comes next
                srv.accept()[0].close()
            if ctl.poll() is None:
                conn, _ = srv.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(b'{"ok": true, "programs": []}\n')
            out, err = ctl.communicate(timeout=60)
        finally:
            if ctl.poll() is None:
                ctl.kill()
                ctl.communicate()
        assert ctl.returncode == 0, err
    finally:
        for c in fillers:
            c.close()
        srv.close()
