"""Run a script as a child under a subreaper, so that a test can kill the script
and then see every descendant it left behind, even orphans.

Usage: python _harness.py SCRIPT [ARGS...]
Prints "PID <pid>" of the script once started. Reads commands on stdin:
  "wait"           wait for the script to exit, print "EXIT <code>"
  "report <secs>"  wait up to secs for every descendant to exit (reaping them),
                   print "LEFT <json list of [pid, cmdline]>", kill them, exit.
"""

from __future__ import annotations

import ctypes
import json
import os
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
    proc = subprocess.Popen([sys.executable, *sys.argv[1:]])
    print(f"PID {proc.pid}", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "wait":
            print(f"EXIT {proc.wait()}", flush=True)
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
            time.sleep(0.1)
            reap_all()
            print("LEFT " + json.dumps(left), flush=True)
            return


if __name__ == "__main__":
    main()
