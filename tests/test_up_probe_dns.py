"""A tcp readiness probe on a host name whose lookup hangs must not stall ``up``.

As root, the test makes a network namespace whose resolver (``/etc/netns/NS/
resolv.conf``, which ``ip netns exec`` mounts over /etc/resolv.conf) is a UDP
socket on 127.0.0.1:53 that reads every query and answers none: each lookup of
a name not in /etc/hosts blocks for the resolver's timeout (5 s). ``up`` runs in
that namespace with a program that prints a line every 0.1 s and another whose
tcp probe names such a host. The loop forwards every program's output, so the
lines must keep coming while lookups hang. Before: the lookup ran on the loop's
thread, and the output stopped for 5 s at every probe attempt.

Skipped only where a namespace cannot be made here (not root, no ``ip``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from test_up_cli import env, write_procfile

BLACKHOLE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
open(sys.argv[1], "w").write("ready")
while True:
    s.recv(4096)  # a query, never answered
"""

TICKER = (
    "import time\nfor i in range(200):\n    print('tick', i, flush=True)\n    time.sleep(0.1)\n"
)


def _cannot_make_namespace() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    return None


@pytest.fixture
def namespace():
    why = _cannot_make_namespace()
    if why:
        pytest.skip(why)
    ns = f"pt-dns-{uuid.uuid4().hex[:8]}"
    etc = Path("/etc/netns") / ns
    made = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"`ip netns add` failed: {made.stderr.strip()}")
    try:
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:5 attempts:1\n")
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        yield ns
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def test_a_tcp_probe_whose_lookup_hangs_does_not_stall_the_output(tmp_path: Path, namespace):
    ready = tmp_path / "blackhole-ready"
    (tmp_path / "blackhole.py").write_text(BLACKHOLE)
    (tmp_path / "ticker.py").write_text(TICKER)
    write_procfile(tmp_path, ticker=f"{sys.executable} ticker.py", web="exec sleep 300")
    (tmp_path / "polytask.toml").write_text("[web]\nready = {tcp = 'db.slow.example:5432'}\n")
    run = ["ip", "netns", "exec", namespace]
    blackhole = subprocess.Popen([*run, sys.executable, "blackhole.py", str(ready)], cwd=tmp_path)
    up = None
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert blackhole.poll() is None, "the blackhole resolver could not start"
            assert time.monotonic() < deadline, "the blackhole resolver never started"
            time.sleep(0.02)
        # The lookup does hang in the namespace (else the test proves nothing).
        t0 = time.monotonic()
        probe = subprocess.run(
            [*run, sys.executable, "-c", "import socket; socket.getaddrinfo('x.slow.example', 1)"],
            capture_output=True,
            timeout=60,
        )
        assert probe.returncode != 0 and time.monotonic() - t0 > 3, probe
        up = subprocess.Popen(
            [*run, sys.executable, "-m", "polytask.cli", "up", "--color", "never"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env(),
        )
        assert up.stdout is not None
        seen: list[float] = []
        lines: list[str] = []
        while len(seen) < 60:  # 6 s of ticks: more than one lookup's timeout
            line = up.stdout.readline().decode(errors="replace")
            assert line, f"up ended early:\n{''.join(lines)}"
            lines.append(line)
            if "tick" in line:
                seen.append(time.monotonic())
        gaps = [b - a for a, b in zip(seen, seen[1:])]
        # Lines 0.1 s apart; a stalled loop delivers them after a 5 s gap.
        assert max(gaps) < 2.5, f"the output stalled for {max(gaps):.1f} s:\n{''.join(lines)}"
    finally:
        for p in (up, blackhole):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if up is not None and up.stdout is not None:
            up.stdout.close()
