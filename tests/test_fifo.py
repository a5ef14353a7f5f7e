"""pt.Fifo: named pipes between unrelated processes, their formats and their safety.

The other side of each FIFO is a real process: a Python interpreter running
polytask (fed a pickled Fifo on stdin, as another program would get one), or
the shell's own ``echo`` and ``cat``.
"""

from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import polytask as pt
from helpers import wait_until
from polytask._os import proc as _proc

SRC = str(Path(__file__).resolve().parents[1] / "src")
HANG = 30.0  # a bound for "does not hang", never a speed check
NOBODY = 65534

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a FIFO to another user")


class Py:
    """A Python process running ``code`` with ``fifo`` (unpickled from stdin) in scope."""

    def __init__(self, code: str, fifo: pt.Fifo) -> None:
        prelude = (
            "import pickle, sys\nimport polytask as pt\nfifo = pickle.load(sys.stdin.buffer)\n"
        )
        env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", prelude + code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(pickle.dumps(fifo))
        self.proc.stdin.close()
        self.proc.stdin = None  # so that communicate() only reads

    def output(self) -> object:
        """What the code printed (a Python literal), after it exited 0."""
        try:
            out, err = self.proc.communicate(timeout=HANG)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError("the process did not finish") from None
        assert self.proc.returncode == 0, err.decode()
        return eval(out.decode())  # our own repr() output


def shell(command: str, *args: str, stdin: bytes = b"") -> bytes:
    """Run ``sh -c command`` (arguments as $1...), return its stdout."""
    return subprocess.run(
        ["sh", "-c", command, "sh", *args],
        input=stdin,
        capture_output=True,
        timeout=HANG,
        check=True,
    ).stdout


def in_thread(fn) -> tuple[threading.Thread, list]:
    out: list = []

    def run() -> None:
        try:
            out.append(("ok", fn()))
        except BaseException as exc:  # handed to the test
            out.append(("err", exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def joined(t: threading.Thread, out: list):
    t.join(HANG)
    assert not t.is_alive(), "the thread did not finish"
    kind, value = out[0]
    if kind == "err":
        raise value
    return value


# --------------------------------------------------------------------------- formats


def test_a_shell_echo_into_a_bytes_reader_and_a_bytes_writer_into_cat(tmp_path):
    path = tmp_path / "fifo"
    with pt.Fifo(path) as fifo:  # format="bytes": what shell tools write and read
        assert fifo.format == "bytes"
        with fifo.open("r") as r:
            shell('echo hello > "$1"', str(path))
            assert b"".join(r) == b"hello\n"
        cat, out = in_thread(lambda: shell('cat "$1"', str(path)))
        with fifo.open("w", timeout=HANG) as w:
            w.send(b"raw ")
            w.send(bytearray(b"bytes\n"))
            w.send(memoryview(b"x" * 100_000))  # more than a pipe holds: written in turns
        assert joined(cat, out) == b"raw bytes\n" + b"x" * 100_000
    assert not path.exists()


def test_lines_from_the_shell_and_to_cat(tmp_path):
    path = tmp_path / "fifo"
    with pt.Fifo(path, format="lines") as fifo:
        with fifo.open("r") as r:
            shell('printf "hello\\nwörld\\n\\nlast\\n" > "$1"', str(path))
            assert list(r) == ["hello", "wörld", "", "last"]
        cat, out = in_thread(lambda: shell('cat "$1"', str(path)))
        with fifo.open("w", timeout=HANG) as w:
            w.send("one")
            w.send("two ✓")
            w.send("y" * 10_000)
        assert joined(cat, out).decode() == "one\ntwo ✓\n" + "y" * 10_000 + "\n"


def test_pickle_messages_to_another_process(tmp_path):
    path = tmp_path / "fifo"
    with pt.Fifo(path, format="pickle") as fifo:
        assert os.stat(path).st_mode & 0o777 == 0o600
        reader = Py("print(repr(list(fifo.open('r'))))", fifo)
        big = os.urandom(200_000)
        with fifo.open("w", timeout=HANG) as w:
            w.send(b"raw bytes")
            w.send({"a": 1, "b": [1, 2]})
            w.send_bytes(big)
            w.send(("end",))
        assert reader.output() == [b"raw bytes", {"a": 1, "b": [1, 2]}, big, ("end",)]
    assert not path.exists()


def test_a_class_defined_in_main_crosses_a_pickle_fifo(tmp_path):
    """Objects of the writer's ``__main__`` travel by value, as task arguments do."""
    script = tmp_path / "writer.py"
    script.write_text(
        "import dataclasses, pickle, subprocess, sys\n"
        "import polytask as pt\n"
        "@dataclasses.dataclass\n"
        "class Point:\n"
        "    x: int\n"
        "if __name__ == '__main__':\n"
        "    with pt.Fifo(sys.argv[1], format='pickle') as fifo:\n"
        "        code = ('import pickle, sys; fifo = pickle.load(sys.stdin.buffer); '\n"
        "                'print([(type(m).__name__, m.x) for m in fifo.open(\"r\")])')\n"
        "        reader = subprocess.Popen([sys.executable, '-c', code], stdin=subprocess.PIPE)\n"
        "        reader.stdin.write(pickle.dumps(fifo))\n"
        "        reader.stdin.close()\n"
        "        with fifo.open('w', timeout=30) as w:\n"
        "            w.send(Point(7))\n"
        "            w.send(Point(8))\n"
        "        sys.exit(reader.wait(30))\n"
    )
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "fifo")],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[('Point', 7), ('Point', 8)]"


def test_a_pickled_fifo_keeps_its_format_and_limits(tmp_path):
    path = tmp_path / "fifo"
    with pt.Fifo(path, format="lines", max_frame=100) as fifo:
        other = pickle.loads(pickle.dumps(fifo))
        assert (other.format, other.max_frame, other.trust_existing) == ("lines", 100, False)
        assert not other.created and "lines" in repr(other)
        reader = Py("print(repr(list(fifo.open('r'))))", fifo)
        with fifo.open("w", timeout=HANG) as w:
            w.send("fits")
            with pytest.raises(ValueError, match="max_frame"):
                w.send("z" * 101)
        assert reader.output() == ["fits"]


def fifo_writer_many(tag: str, n: int, size: int) -> str:
    return f"""
with fifo.open("w", timeout=30) as w:
    for i in range({n}):
        w.send(({tag!r}, i, bytes([i % 256]) * {size}))
print({n})
"""


def test_several_writers_do_not_interleave(tmp_path):
    path = tmp_path / "fifo"
    fifo = pt.Fifo(path, format="pickle")
    try:
        with fifo.open("r", keep_open=True) as r:
            writers = [Py(fifo_writer_many(t, 20, 20_000), fifo) for t in "ab"]
            got = [r.recv(timeout=HANG) for _ in range(40)]
            assert [w.output() for w in writers] == [20, 20]
        for tag in "ab":
            mine = [m for m in got if m[0] == tag]
            assert [m[1] for m in mine] == list(range(20))  # in order, each whole
            assert all(m[2] == bytes([m[1] % 256]) * 20_000 for m in mine)
    finally:
        fifo.unlink()


def test_what_each_format_sends(tmp_path):
    fifos = {f: pt.Fifo(tmp_path / f, format=f) for f in ("bytes", "lines", "pickle")}
    readers = {f: fifo.open("r") for f, fifo in fifos.items()}
    try:
        writers = {f: fifo.open("w", timeout=HANG) for f, fifo in fifos.items()}
        with pytest.raises(TypeError, match="format='pickle'"):
            writers["bytes"].send({"job": 1})  # no pickling unless asked for
        with pytest.raises(TypeError, match="sends bytes, not str"):
            writers["bytes"].send("text")
        with pytest.raises(TypeError, match="sends str"):
            writers["lines"].send(b"bytes")
        with pytest.raises(TypeError, match="text"):
            writers["lines"].send_bytes(b"bytes")
        with pytest.raises(ValueError, match="newline"):
            writers["lines"].send("two\nlines")
        with pytest.raises(UnicodeEncodeError):
            writers["lines"].send("\udcff")
        with pytest.raises(pt.SerializationError, match="cannot send"):
            writers["pickle"].send(threading.Lock())
        writers["bytes"].send_bytes(b"ok")
        writers["pickle"].send_bytes(b"ok")
        for w in writers.values():
            w.close()
        with pytest.raises(pt.ChannelClosed):
            writers["bytes"].send(b"late")
        assert list(readers["bytes"]) == [b"ok"]
        assert list(readers["lines"]) == []  # nothing reached it
        assert list(readers["pickle"]) == [b"ok"]
    finally:
        for r in readers.values():
            r.close()
        for fifo in fifos.values():
            fifo.unlink()


# --------------------------------------------------------------------------- malformed input


def test_echo_into_a_pickle_reader_is_an_error_not_silence(tmp_path):
    """`echo hello` into a pickle reader used to give [] (its 4 bytes read as a length)."""
    path = tmp_path / "fifo"
    with pt.Fifo(path, format="pickle") as fifo:
        with fifo.open("r") as r:
            shell('echo hello > "$1"', str(path))
            with pytest.raises(ValueError, match="pickle framing") as err:
                list(r)
            assert "b'hello\\n'" in str(err.value)
        with fifo.open("r") as r:
            shell('printf hi > "$1"', str(path))  # shorter than a frame header
            with pytest.raises(ValueError, match="ended inside a frame"):
                list(r)


def test_truncated_foreign_and_oversized_frames(tmp_path):
    path = tmp_path / "fifo"
    with pt.Fifo(path, format="pickle", max_frame=1000) as fifo:
        cases = [
            (b"\x00\x00\x00\x10\x01" + b"12345", "ended inside a frame \\(5 of 16 bytes"),
            (b"\x00\x00\x00\x02\x07ab", "type 7"),
            (b"\x00\x00\x03\xe9\x00" + b"z" * 1001, "1001 bytes, more than max_frame"),
            (b"\x00\x00\x00\x03\x01abc", "could not be unpickled"),
        ]
        for raw, match in cases:
            with fifo.open("r") as r:
                shell('cat > "$1"', str(path), stdin=raw)
                with pytest.raises((ValueError, pt.SerializationError), match=match):
                    r.recv(timeout=HANG)
        with fifo.open("r") as r, fifo.open("w", timeout=HANG) as w:
            with pytest.raises(ValueError, match="max_frame"):
                w.send(b"y" * 1001)  # refused at the call, before anything is written
            w.send(b"y" * 1000)
            assert r.recv(timeout=HANG) == b"y" * 1000


def test_bad_lines_are_errors_and_the_reader_goes_on(tmp_path):
    path = tmp_path / "fifo"
    with pt.Fifo(path, format="lines", max_frame=50) as fifo:
        with fifo.open("r", keep_open=True) as r:
            shell('cat > "$1"', str(path), stdin=b"good\n\xff\xfe bad\nafter\n")
            assert r.recv(timeout=HANG) == "good"
            with pytest.raises(ValueError, match="not UTF-8"):
                r.recv(timeout=HANG)
            assert r.recv(timeout=HANG) == "after"
            shell('cat > "$1"', str(path), stdin=b"x" * 60 + b"\nnext\n")
            with pytest.raises(ValueError, match="longer than max_frame"):
                r.recv(timeout=HANG)
        with fifo.open("r") as r:
            shell('printf "whole\\ncut" > "$1"', str(path))
            assert r.recv(timeout=HANG) == "whole"
            with pytest.raises(ValueError, match="ended inside a line"):
                r.recv(timeout=HANG)
            with pytest.raises(EOFError):
                r.recv(timeout=HANG)


def test_after_a_bad_message_nothing_is_read_out_of_step(tmp_path):
    """A line reader drops the whole of a line too long (even when its end comes
    later) and goes on at the next line; a pickle reader, which cannot know where the
    next frame starts, refuses to read on until the stream ends."""
    path = tmp_path / "fifo"
    with pt.Fifo(path, format="lines", max_frame=50) as fifo:
        with fifo.open("r", keep_open=True) as r:
            w = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            try:
                os.write(w, b"x" * 60)  # no newline yet
                with pytest.raises(ValueError, match="longer than max_frame"):
                    r.recv(timeout=HANG)
                os.write(w, b"x" * 10 + b"\nnext\n")  # the end of that line, then another
                assert r.recv(timeout=HANG) == "next"
            finally:
                os.close(w)
    with pt.Fifo(path, format="pickle") as fifo:
        with fifo.open("r", keep_open=True) as r:
            shell('echo hello > "$1"', str(path))
            with pytest.raises(ValueError, match="pickle framing"):
                r.recv(timeout=HANG)
            with fifo.open("w", timeout=HANG) as w:
                w.send({"a": 1})
                with pytest.raises(ValueError, match="out of step"):
                    r.recv(timeout=HANG)
        with fifo.open("r") as r:  # a new reader, a new stream
            shell('echo hello > "$1"', str(path))
            with pytest.raises(ValueError, match="pickle framing"):
                r.recv(timeout=HANG)
            with pytest.raises(EOFError):  # the stream ended: in step again
                r.recv(timeout=HANG)
            with fifo.open("w", timeout=HANG) as w:
                w.send(("back", 1))
                assert r.recv(timeout=HANG) == ("back", 1)


# --------------------------------------------------------------------------- whose FIFO


@as_root
def test_a_fifo_planted_by_another_user_is_refused(tmp_path):
    """Another local user who creates the FIFO first could feed the reader (and with
    pickle run code as it): refused, naming the owner and what to do."""
    path = tmp_path / "fifo"
    os.mkfifo(path, 0o600)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(PermissionError, match="uid 65534") as err:
        pt.Fifo(path)
    assert "trust_existing=True" in str(err.value)
    with pytest.raises(PermissionError):
        pt.Fifo(path, create=False, format="pickle")
    fifo = pt.Fifo(path, trust_existing=True)  # said explicitly: accepted
    with fifo.open("r") as r:
        shell('echo trusted > "$1"', str(path))
        assert b"".join(r) == b"trusted\n"
    assert path.exists()  # not ours to remove


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
def test_a_fifo_others_can_write_to_is_refused(tmp_path, mode):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    os.chmod(path, mode)
    with pytest.raises(PermissionError, match=f"mode {mode:#o}") as err:
        pt.Fifo(path)
    assert "chmod go-w" in str(err.value) and "trust_existing=True" in str(err.value)
    with pt.Fifo(path, trust_existing=True).open("r") as r:
        assert r.format == "bytes"
    # the mode of a FIFO pt.Fifo creates is held to the same rule, at the call
    with pytest.raises(ValueError, match="write into the FIFO"):
        pt.Fifo(tmp_path / "new", mode=mode)
    assert not (tmp_path / "new").exists()
    with pt.Fifo(tmp_path / "new", mode=mode, trust_existing=True):
        assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == mode


def test_a_symlink_is_not_followed(tmp_path):
    target = tmp_path / "real"
    os.mkfifo(target, 0o600)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(FileExistsError, match="symbolic link"):
        pt.Fifo(link)
    with pytest.raises(FileExistsError, match="symbolic link"):
        pt.Fifo(link, trust_existing=True)


@as_root
def test_open_checks_the_fifo_it_opened_not_the_one_checked_before(tmp_path):
    """The path is checked when the Fifo is made, and each descriptor again when it is
    opened (fstat): a FIFO swapped in between by another user is refused."""
    path = tmp_path / "fifo"
    fifo = pt.Fifo(path)
    os.unlink(path)
    os.mkfifo(path, 0o600)
    os.chown(path, NOBODY, NOBODY)  # another user's FIFO at the same path
    with pytest.raises(PermissionError, match="uid 65534"):
        fifo.open("r")
    other_reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # so that a writer can open
    try:
        with pytest.raises(PermissionError, match="uid 65534"):
            fifo.open("w", timeout=HANG)
    finally:
        os.close(other_reader)
    os.unlink(path)
    link_target = tmp_path / "mine"
    os.mkfifo(link_target, 0o600)
    path.symlink_to(link_target)  # and a symlink to a FIFO of ours: not followed either
    with pytest.raises(FileExistsError, match="symbolic link"):
        fifo.open("r")
    fifo.unlink()


def test_a_newline_in_the_path_is_refused_before_anything_is_made(tmp_path):
    """The guardian takes paths one per line: such a FIFO used to be made, then left."""
    path = tmp_path / "two\nlines"
    with pytest.raises(ValueError, match="newline"):
        pt.Fifo(path)
    assert not path.exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="format must be one of"):
        pt.Fifo(tmp_path / "f", format="json")
    for bad in (0, -1, 1 << 32, 1.5, True):
        with pytest.raises(ValueError, match="max_frame"):
            pt.Fifo(tmp_path / "f", max_frame=bad)
    with pytest.raises(ValueError, match="mode"):
        pt.Fifo(tmp_path / "f", mode=0o1777)
    assert not (tmp_path / "f").exists()


# --------------------------------------------------------------------------- the rest


def test_timeouts_and_errors(tmp_path):
    path = tmp_path / "fifo"
    fifo = pt.Fifo(path)
    try:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="no reader"):
            fifo.open("w", timeout=0.2)
        assert time.monotonic() - t0 < HANG
        with fifo.open("r") as r:
            with pytest.raises(TimeoutError, match="no message"):
                r.recv(timeout=0.1)
        with pytest.raises(ValueError):
            fifo.open("rw")
    finally:
        fifo.unlink()
    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(FileExistsError, match="not a FIFO"):
        pt.Fifo(regular)
    with pytest.raises(FileNotFoundError):
        pt.Fifo(tmp_path / "nothing", create=False)


def test_removed_when_creator_exits(tmp_path):
    path = tmp_path / "fifo"
    script = (
        f"import sys; sys.path.insert(0, {SRC!r}); import polytask as pt; pt.Fifo({str(path)!r})"
    )
    proc = _proc.start_in_group([sys.executable, "-c", script])
    assert proc.wait(HANG) == 0
    _proc.unguard(proc.pid)
    wait_until(lambda: not path.exists())
