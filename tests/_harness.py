"""Run a script as a child under a subreaper, so that a test can kill the script
and then see every descendant it left behind, even orphans.

Usage: python _harness.py SCRIPT [ARGS...]
Prints "PID <pid>" of the script once started. Reads commands on stdin:
  "wait <secs>"    wait for the script to exit, print "EXIT <code>"
                   (or "STILL-RUNNING" after secs)
  "report <secs>"  wait up to secs for every descendant to exit (reaping them),
                   print "LEFT <json list of [pid, cmdline]>", kill them, exit.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time

import psutil

libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER


def reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main() -> None:
    # The script gets SIGINT and SIGQUIT at their defaults, whoever started the
    # tests: a shell runs a background job ("make test &") with them ignored, an
    # ignored SIGINT is inherited, and Python then installs no KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    proc = subprocess.Popen([sys.executable, *sys.argv[1:]])
    print(f"PID {proc.pid}", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "wait":
            try:
                print(f"EXIT {proc.wait(timeout=float(cmd[1]))}", flush=True)
            except subprocess.TimeoutExpired:
                print(f"STILL-RUNNING after {cmd[1]} s", flush=True)
        elif cmd[0] == "report":
            deadline = time.monotonic() + float(cmd[1])
            me = psutil.Process()
            while True:
                reap_all()
                left = []
                for p in me.children(recursive=True):
                    try:
                        if p.status() != psutil.STATUS_ZOMBIE:
                            left.append([p.pid, " ".join(p.cmdline())])
                    except psutil.Error:
                        pass
                if not left or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            for pid, _ in left:
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
            # Until every one of them died and was reaped (orphans come to us as they do).
            deadline = time.monotonic() + 10
            while True:
                reap_all()
                if not me.children(recursive=True) or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            print("LEFT " + json.dumps(left), flush=True)
            return


if __name__ == "__main__":
    main()
