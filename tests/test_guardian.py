"""The guardian's protocol, without processes, and the guardian as ps shows it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

from polytask._os import proc as _proc
from polytask._os.guardian import Registry


def test_registry_applies_whole_lines_only():
    r = Registry()
    r.feed(b"+12\n+13\n-12\np/dev/shm/a\nq/dev/shm/a\np/dev/shm/b\nPpre\nekey=1\nk5 99")
    assert r.groups == {13}
    assert r.paths == {"/dev/shm/b"}
    assert r.prefixes == {"pre"}
    assert r.markers == {b"key=1"}
    assert r.procs == set()  # the last line is not complete yet
    r.feed(b"\nl5 99\n")
    assert r.procs == set()


def test_registry_markers_exact_or_by_variable():
    r = Registry()
    r.feed(b"eJOB=7\neOWNER_1=\n")
    assert r.matches(b"A=1\0JOB=7\0")
    assert not r.matches(b"JOB=70\0")
    assert r.matches(b"X=1\0OWNER_1=anything\0")
    assert r.matches(b"OWNER_1=\0")
    assert not r.matches(b"OWNER_10=3\0OWNER_=1\0")


def test_registry_ignores_empty_and_unknown_lines():
    r = Registry()
    r.feed(b"\n+\nZzz\n")
    assert not (r.groups or r.paths or r.markers or r.procs or r.prefixes)


def test_files_expands_prefixes(tmp_path):
    (tmp_path / "seg-1").write_text("")
    (tmp_path / "seg-2").write_text("")
    (tmp_path / "other").write_text("")
    r = Registry()
    r.feed(b"P" + os.fsencode(tmp_path / "seg-") + b"\n")
    assert r.files() == {str(tmp_path / "seg-1"), str(tmp_path / "seg-2")}


def test_guardian_is_named_in_ps():
    """`ps` shows polytask's helper by name, not a page of Python source."""
    code = (
        "import os, sys, time, psutil\nfrom polytask._os import proc as _proc\n"
        "_proc.guard_path('/nonexistent/x')\n"
        "g = psutil.Process(_proc._guardian.pid)\n"
        "end = time.monotonic() + 20\n"
        "while g.name() == 'python' and time.monotonic() < end: time.sleep(0.01)\n"
        "print(g.cmdline()[0], len(' '.join(g.cmdline())), g.name())"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=src)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    argv0, length, comm = out.stdout.split()
    assert argv0 == "polytask-guardian"
    assert int(length) < 200
    assert comm.startswith("polytask-guard")


def test_the_guardian_carries_no_job_mark():
    """An outer owner's clean-up must not end a nested owner's guardian early."""
    _proc.guard_path("/nonexistent/y")
    try:
        env = psutil.Process(_proc._guardian.pid).environ()
    finally:
        _proc.unguard_path("/nonexistent/y")
    assert not [k for k in env if k.startswith("POLYTASK_TREE_")]
